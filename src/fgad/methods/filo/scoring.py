"""Text-side pooling, runtime prompt filtering and two-way scores (METHOD.md §0.3, §1.4).

All selection is done with 0/1 masks and masked means, so the same code runs in an exported
graph: no boolean indexing, no data-dependent shapes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_BIG = 1e4  # larger than any cosine distance (which lies in [0, 2])


def l2n(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)


def masked_direction(features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """n(mean of the kept rows): features [B, P, C] (normalised), mask [B, P] in {0,1} -> [B, C]."""
    m = mask.to(features.dtype).unsqueeze(-1)
    total = (features * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)
    return l2n(total)


def filter_masks(
    global_adapted: torch.Tensor,
    normal: torch.Tensor,
    abnormal: torch.Tensor,
    valid_abnormal: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Overlap-interval prompt filtering; returns keep masks (bool) [B, Pn] and [B, Pa].

    D_n / D_a are the cosine distances of the (normalised) prompts to the adapted global
    feature G_a. If the intervals [min D_n, max D_n] and [min D_a, max D_a] overlap in
    [lo, hi], every prompt of either set whose distance lies in [lo, hi] is dropped. A set that
    would become empty is kept whole. ``valid_abnormal`` excludes prompts of positions that
    were not selected: they neither count for the interval nor survive.
    """
    valid = valid_abnormal.bool()
    dn = 1.0 - torch.einsum("bc,bpc->bp", global_adapted, normal)
    da = 1.0 - torch.einsum("bc,bpc->bp", global_adapted, abnormal)
    big = torch.full_like(da, _BIG)
    min_a = torch.where(valid, da, big).amin(dim=-1)
    max_a = torch.where(valid, da, -big).amax(dim=-1)
    lo = torch.maximum(dn.amin(dim=-1), min_a).unsqueeze(-1)
    hi = torch.minimum(dn.amax(dim=-1), max_a).unsqueeze(-1)
    overlap = lo <= hi
    keep_n = ~(overlap & (dn >= lo) & (dn <= hi))
    keep_a = valid & ~(overlap & (da >= lo) & (da <= hi))
    # "never empty" as plain logic (a bool Where has no ONNX Runtime CPU kernel)
    keep_n = keep_n | ~keep_n.any(dim=-1, keepdim=True)
    keep_a = keep_a | (valid & ~keep_a.any(dim=-1, keepdim=True))
    return keep_n, keep_a


def two_way_logits(
    features: torch.Tensor, t_normal: torch.Tensor, t_abnormal: torch.Tensor, tau: float
) -> torch.Tensor:
    """tau * [cos(f, T_n), cos(f, T_a)]: features [B, N, C] or [B, C] (normalised) -> [B, 2, N] or [B, 2]."""
    if features.dim() == 2:
        return tau * torch.stack([(features * t_normal).sum(-1), (features * t_abnormal).sum(-1)], dim=1)
    text = torch.stack([t_normal, t_abnormal], dim=1)  # [B, 2, C]
    return tau * torch.einsum("bnc,bkc->bkn", features, text)


def two_way_probs(features: torch.Tensor, t_normal: torch.Tensor, t_abnormal: torch.Tensor, tau: float) -> torch.Tensor:
    """softmax over [normal, abnormal]: [B, 2, N] (or [B, 2] for global features)."""
    return two_way_logits(features, t_normal, t_abnormal, tau).softmax(dim=1)
