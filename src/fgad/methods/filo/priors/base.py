"""Box priors (DefLoc, METHOD.md §1.5): where to look, and which position prompts to use.

A prior turns images into boxes and, from them, a region mask R (λ-suppression outside it) and a
one-hot mask over the 9 position cells (which abnormal position prompts are used). ``none`` is
the whole image and all positions. Priors plug in behind one interface (here) and one registry
(:mod:`fgad.methods.filo.priors.registry`):

* ``none``: :class:`NoBoxPrior`;
* ``objectness``: :class:`fgad.methods.filo.priors.objectness.ObjectnessPrior`, foreground vs background
  prompts on the patch tokens the model already computes (cheap; part of the exported graph);
* ``grounding-dino``: :class:`fgad.methods.filo.priors.grounding.GroundingDinoPrior`, the detector of
  CODE-FiLo (PyTorch path; needs ``pip install 'fgad[detect]'``).

The geometry below (:func:`cell_index`, :func:`best_box_position`, :func:`region_from_boxes`) is
written for export: fixed shapes, comparisons instead of Python branches on data, ``where`` /
``gather`` instead of boolean indexing. Boxes are ``xyxy`` in pixels of the model input
(``s x s``); pixel ``u`` covers ``[u, u + 1)`` and is inside a box when its centre ``u + 0.5`` is.

CHOICE: when a prior keeps no box, R is the whole image and the position is the cell of the
image centre (METHOD: "(259, 259) -> center" at 518). An empty R would damp every pixel by λ,
which only lowers the scores of images on which the detector found nothing matching.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from fgad.core.cells import NUM_POSITIONS, position_bands, position_index

if TYPE_CHECKING:
    from fgad.backbone.dual_path import VisualFeatures

__all__ = [
    "BoxPrior",
    "BoxPriorResult",
    "NoBoxPrior",
    "all_positions",
    "best_box_position",
    "cell_index",
    "one_hot_positions",
    "positions_from_masks",
    "region_from_boxes",
    "result_from_boxes",
]

_GRID = 3


@dataclass
class BoxPriorResult:
    region: torch.Tensor | None  # [B, 1, s, s] in {0, 1}; None = whole image
    positions: torch.Tensor  # [B, 9] in {0, 1}
    boxes: torch.Tensor | None = None  # [B, K, 4] xyxy pixels at the model input size
    valid: torch.Tensor | None = None  # [B, K] bool: which of the K slots hold a kept box
    scores: torch.Tensor | None = None  # [B, K] confidence of each box (the best valid one sets the position)
    position: torch.Tensor | None = None  # [B] int64 cell 0..8 of the chosen position (None: all positions)
    phrases: list[list[str]] | None = None  # per image, the detector's phrase of each valid box (detectors only)


class BoxPrior(Protocol):
    name: str

    def __call__(
        self, images: torch.Tensor, class_name: str, features: VisualFeatures | None = None
    ) -> BoxPriorResult:
        """``images`` [B, 3, s, s] as the model takes them; ``features`` the model's own backbone outputs for
        them, when the caller has computed them already (a prior that reads tokens then needs no second pass)."""
        ...


class NoBoxPrior:
    """The whole image, every position."""

    name = "none"

    def __call__(
        self, images: torch.Tensor, class_name: str, features: VisualFeatures | None = None
    ) -> BoxPriorResult:
        return BoxPriorResult(region=None, positions=all_positions(images.shape[0], images.device))


def all_positions(batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.ones(batch, NUM_POSITIONS, device=device)


# ---------------------------------------------------------------------------------- geometry (export-safe)


def _band(coord: torch.Tensor, size: int) -> torch.Tensor:
    """Band 0..2 of pixel coordinates along one axis of ``size`` pixels (:func:`position_bands`' rule)."""
    (_, _), (e1, _), (e2, _) = position_bands(size)  # Python ints from the config's size, not from tensors
    pixel = torch.floor(coord.clamp(0.0, float(size - 1)))
    return (pixel >= e1).to(torch.int64) + (pixel >= e2).to(torch.int64)


def cell_index(x: torch.Tensor, y: torch.Tensor, size: int) -> torch.Tensor:
    """Position cell 0..8 (row-major) of pixel coordinates, like :func:`fgad.methods.filo.fusdes.position_index`.

    ``x`` is the column, ``y`` the row; a fractional coordinate belongs to pixel ``floor``; coordinates
    outside the image are clamped to the nearest edge cell. Works on tensors of any shape.
    """
    return _band(y, size) * _GRID + _band(x, size)


def one_hot_positions(index: torch.Tensor) -> torch.Tensor:
    """``[B]`` cell indices -> ``[B, 9]`` float one-hot rows."""
    cells = torch.arange(NUM_POSITIONS, device=index.device)
    return (index.unsqueeze(-1) == cells).to(torch.float32)


def best_box_position(boxes: torch.Tensor, valid: torch.Tensor, scores: torch.Tensor, size: int) -> torch.Tensor:
    """Cell ``[B]`` of the centre of the highest-scoring valid box; the image centre's cell without one.

    boxes ``[B, K, 4]`` xyxy pixels, valid ``[B, K]`` bool, scores ``[B, K]``.
    """
    masked = torch.where(valid, scores.to(boxes.dtype), torch.full_like(scores, -1e9, dtype=boxes.dtype))
    best = masked.argmax(dim=1, keepdim=True)  # [B, 1]
    box = boxes.gather(1, best.unsqueeze(-1).expand(-1, -1, 4)).squeeze(1)  # [B, 4]
    cx = (box[:, 0] + box[:, 2]) * 0.5
    cy = (box[:, 1] + box[:, 3]) * 0.5
    has_box = valid.to(boxes.dtype).amax(dim=1) > 0  # (float reduction: every ONNX backend has it)
    centre = torch.full_like(cx, size / 2.0)
    return cell_index(torch.where(has_box, cx, centre), torch.where(has_box, cy, centre), size)


def region_from_boxes(boxes: torch.Tensor, valid: torch.Tensor, size: int, released: bool = False) -> torch.Tensor:
    """R = union of the valid boxes as a ``[B, 1, s, s]`` float mask; the whole image when none is valid.

    A pixel is inside a box when its centre is (edges inclusive): symmetric, and for integer corners the
    same pixels as the released code. ``released``: the released slice ``[int(y0):int(y1), int(x0):int(x1)]``
    (corners truncated, far edge exclusive), one pixel different at a fractional corner.
    """
    x0, y0, x1, y1 = (boxes[..., i].unsqueeze(-1) for i in range(4))  # [B, K, 1]
    if released:
        pixels = torch.arange(size, device=boxes.device, dtype=boxes.dtype)
        in_x = ((pixels >= torch.trunc(x0)) & (pixels < torch.trunc(x1))).to(boxes.dtype)
        in_y = ((pixels >= torch.trunc(y0)) & (pixels < torch.trunc(y1))).to(boxes.dtype)
    else:
        centres = torch.arange(size, device=boxes.device, dtype=boxes.dtype) + 0.5  # [s]
        in_x = ((centres >= x0) & (centres <= x1)).to(boxes.dtype)  # [B, K, s]
        in_y = ((centres >= y0) & (centres <= y1)).to(boxes.dtype)
    weight = valid.to(boxes.dtype).unsqueeze(-1)  # [B, K, 1]
    inside = torch.einsum("bky,bkx->bkyx", in_y * weight, in_x).amax(dim=1)  # [B, s, s]
    no_box = 1.0 - weight.amax(dim=1, keepdim=True)  # [B, 1, 1]: 1 where no box is valid
    return torch.maximum(inside, no_box).unsqueeze(1)


def result_from_boxes(boxes: torch.Tensor, valid: torch.Tensor, scores: torch.Tensor, size: int) -> BoxPriorResult:
    """The region and the one chosen position of a set of boxes (METHOD.md §1.5)."""
    position = best_box_position(boxes, valid, scores, size)
    return BoxPriorResult(
        region=region_from_boxes(boxes, valid, size),
        positions=one_hot_positions(position),
        boxes=boxes,
        valid=valid,
        scores=scores,
        position=position,
    )


# ---------------------------------------------------------------------------------- training option


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
