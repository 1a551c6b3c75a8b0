"""The released FiLo code's test-time scoring, reproduced on purpose (``model.reproduce: released``).

METHOD.md §5 lists how the released test differs from fgad's FiLo++ (§1.4-§1.7); this module computes the
released way, for the PyTorch path only (a bundle is fgad's own numerics; export refuses this mode):

* stage maps (§1.6): the two-way logits are upsampled to the input size first, then softmaxed; an MDCI stage
  sums its six kernel outputs into one feature before a single softmax (fgad: softmax at g x g, then upsample;
  mean of the per-kernel probabilities).
* P5: each of the 7 stage maps is smoothed with torchvision's ``GaussianBlur(kernel_size=3, sigma=4)`` (three
  taps, reflect padding without the edge pixel), and the final map gets no other smoothing (fgad: one
  sigma-4 Gaussian of radius 16 on the fused map). CHOICE: the few-shot map (FiLo has none) gets the same
  3x3 blur.
* P4: the image score uses the un-softmaxed ``cos(G_a, T_a) / sqrt(2)`` (the row norm of the released text
  features) instead of the two-way probability.
* P6: the image score takes the maximum of the map *before* box suppression, and the suppression runs after
  fusion and smoothing as ``torch.where(copy == 1, map, lam * map)`` where ``copy`` is the map with the boxes
  set to 1: outside pixels whose score is exactly 1 stay unsuppressed.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from fgad.backbone.postprocess import upsample
from fgad.methods.filo.scoring import l2n, two_way_logits

__all__ = [
    "ReleasedMaps",
    "blur3",
    "blur3_taps",
    "released_image_score",
    "released_maps",
    "released_stage_logits",
    "released_suppress",
    "released_vl_map",
]

#: torchvision ``GaussianBlur(kernel_size=3, sigma=4)`` of the released test (P5)
KERNEL_SIZE = 3
SIGMA = 4.0


class ReleasedMaps(NamedTuple):
    anomaly_map: torch.Tensor  # [B, s, s], after suppression
    image_score: torch.Tensor  # [B]
    vl_map: torch.Tensor  # [B, s, s], mean of the blurred stage maps (before suppression)
    fewshot_map: torch.Tensor | None  # [B, s, s], blurred (before suppression)


def blur3_taps(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """torchvision's 1-D Gaussian taps for kernel size 3, sigma 4: exp(-x^2 / 2 sigma^2) at x = -1, 0, 1, sum 1."""
    half = (KERNEL_SIZE - 1) * 0.5
    x = torch.linspace(-half, half, steps=KERNEL_SIZE, dtype=torch.float64)
    pdf = torch.exp(-0.5 * (x / SIGMA).pow(2))
    return (pdf / pdf.sum()).to(dtype)


def blur3(maps: torch.Tensor) -> torch.Tensor:
    """``GaussianBlur(kernel_size=3, sigma=4)`` on ``[B, H, W]`` maps: separable, torch ``reflect`` padding."""
    taps = blur3_taps(maps.dtype).to(maps.device)
    pad = KERNEL_SIZE // 2
    x = F.pad(maps.unsqueeze(1), (pad, pad, pad, pad), mode="reflect")
    x = F.conv2d(x, taps.view(1, 1, 1, -1))
    x = F.conv2d(x, taps.view(1, 1, -1, 1))
    return x[:, 0]


def released_stage_logits(
    linear_features: list[torch.Tensor],
    mdci_features: list[list[torch.Tensor]],
    t_normal: torch.Tensor,
    t_abnormal: torch.Tensor,
    tau: float,
    grid: int,
) -> list[torch.Tensor]:
    """Per-stage two-way logits ``[B, 2, g, g]``: the linear stages, then each MDCI stage's summed kernels."""
    feats = list(linear_features) + [torch.stack(kernels, dim=0).sum(dim=0) for kernels in mdci_features]
    return [two_way_logits(l2n(f), t_normal, t_abnormal, tau).unflatten(2, (grid, grid)) for f in feats]


def released_vl_map(stage_logits: list[torch.Tensor], size: int) -> torch.Tensor:
    """Mean over stages of blur3((p_a + 1 - p_n) / 2), p = softmax of the logits upsampled to ``size``."""
    maps = []
    for logits in stage_logits:
        probs = upsample(logits, size, align_corners=True).softmax(dim=1)
        maps.append(blur3((probs[:, 1] + 1.0 - probs[:, 0]) / 2.0))
    return torch.stack(maps, dim=0).mean(dim=0)


def released_image_score(global_adapted: torch.Tensor, t_abnormal: torch.Tensor,
                         anomaly_map: torch.Tensor) -> torch.Tensor:
    """P4 + P6: ½ (cos(G_a, T_a) / √2 + max M), M before box suppression."""
    raw = (global_adapted * t_abnormal).sum(dim=-1) / math.sqrt(2.0)
    return 0.5 * (raw + anomaly_map.flatten(1).amax(dim=1))


def released_suppress(maps: torch.Tensor, region: torch.Tensor, lam: float) -> torch.Tensor:
    """P6: ``where(copy == 1, M, lam * M)``, ``copy``: M with the region set to 1 (M [B, s, s], region [B, 1, s, s])."""
    inside = region[:, 0] == 1
    copy = torch.where(inside, torch.ones_like(maps), maps)
    return torch.where(copy == 1, maps, lam * maps)


def released_maps(
    stage_logits: list[torch.Tensor],
    fewshot: torch.Tensor | None,
    global_adapted: torch.Tensor,
    t_abnormal: torch.Tensor,
    region: torch.Tensor | None,
    lam: float,
    size: int,
) -> ReleasedMaps:
    """The released test's final map and image score from the stage logits and the (unsmoothed) few-shot map."""
    vl = released_vl_map(stage_logits, size)
    few = blur3(fewshot) if fewshot is not None else None
    fused = vl if few is None else (vl + few) / 2.0
    score = released_image_score(global_adapted, t_abnormal, fused)
    final = released_suppress(fused, region, lam) if region is not None else fused
    return ReleasedMaps(final, score, vl, few)
