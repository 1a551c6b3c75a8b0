"""Box priors (DefLoc, METHOD.md §1.5): where to look, and which position prompts to use.

A prior turns images into a region mask R (λ-suppression outside it) and a 0/1 mask over the 9
position cells (which abnormal position prompts are used). ``none`` is the whole image and all
positions. Detector-based priors plug in behind the same interface.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from fgad.data.fusdes import NUM_POSITIONS, position_index


@dataclass
class BoxPriorResult:
    region: torch.Tensor | None  # [B, 1, s, s] in {0, 1}; None = whole image
    positions: torch.Tensor  # [B, 9] in {0, 1}


class BoxPrior(Protocol):
    name: str

    def __call__(self, images: torch.Tensor, class_name: str) -> BoxPriorResult: ...


class NoBoxPrior:
    """The whole image, every position."""

    name = "none"

    def __call__(self, images: torch.Tensor, class_name: str) -> BoxPriorResult:
        return BoxPriorResult(region=None, positions=all_positions(images.shape[0], images.device))


def all_positions(batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.ones(batch, NUM_POSITIONS, device=device)


def positions_from_masks(masks: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Training option: the cell of the GT mask's bounding-box centre for anomalous images.

    masks [B, 1, s, s] in {0,1}, labels [B]. Normal images, and anomalous images whose mask is
    empty, use all 9 positions.
    """
    size = masks.shape[-1]
    out = all_positions(masks.shape[0], masks.device)
    arr = masks.detach().cpu().numpy()[:, 0] > 0.5
    for b in range(arr.shape[0]):
        if int(labels[b]) == 0 or not arr[b].any():
            continue
        ys, xs = np.nonzero(arr[b])
        cx = (xs.min() + xs.max()) / 2.0
        cy = (ys.min() + ys.max()) / 2.0
        out[b] = 0.0
        out[b, position_index(cx, cy, size)] = 1.0
    return out


_PRIORS = {"none": NoBoxPrior}


def build_box_prior(name: str) -> BoxPrior:
    try:
        return _PRIORS[name]()
    except KeyError:
        raise ValueError(f"unknown box prior {name!r}; available: {sorted(_PRIORS)}") from None
