"""Training losses for segmentation (focal + dice per stage) and image-level classification."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["dice_loss", "focal_loss", "segmentation_loss", "two_way_ce"]


def _as_mask(target: Tensor, like: Tensor) -> Tensor:
    """Return ``target`` as a ``[B, 1, H, W]`` {0, 1} mask in ``like``'s dtype and device.

    Values are binarised at 0.5 so masks that went through bilinear resizing still give a hard
    one-hot, as the reference implementation (which casts to integer labels) intends.
    """
    if target.dim() == 3:
        target = target.unsqueeze(1)
    if target.dim() != 4 or target.shape[1] != 1:
        raise ValueError(f"target must be [B, H, W] or [B, 1, H, W], got {tuple(target.shape)}")
    return (target > 0.5).to(device=like.device, dtype=like.dtype)


def focal_loss(probs: Tensor, target: Tensor, gamma: float = 2.0, smooth: float = 1e-5) -> Tensor:
    """Focal loss on two-channel probabilities (channel 0 = normal, 1 = anomalous), alpha = 1.

    The one-hot target is clamped to ``[smooth, 1 - smooth]`` and ``smooth`` is added to ``p_t``
    so ``log`` never sees zero; the result is the mean over all pixels.
    """
    if probs.dim() != 4 or probs.shape[1] != 2:
        raise ValueError(f"probs must be [B, 2, H, W], got {tuple(probs.shape)}")
    mask = _as_mask(target, probs)
    if mask.shape[0] != probs.shape[0] or mask.shape[2:] != probs.shape[2:]:
        raise ValueError(f"target {tuple(target.shape)} does not match probs {tuple(probs.shape)}")
    one_hot = torch.cat([1.0 - mask, mask], dim=1).clamp(smooth, 1.0 - smooth)
    p_t = (one_hot * probs).sum(dim=1) + smooth
    return (-torch.pow(1.0 - p_t, gamma) * torch.log(p_t)).mean()


def dice_loss(prob: Tensor, target: Tensor) -> Tensor:
    """Soft dice loss ``1 - (2 sum(p y) + 1) / (sum(p) + sum(y) + 1)`` per image, averaged over the batch.

    ``prob`` and ``target`` may be ``[B, H, W]`` or ``[B, 1, H, W]``; each image is flattened whole.
    """
    p = prob.flatten(1)
    y = target.flatten(1).to(dtype=p.dtype, device=p.device)
    if p.shape != y.shape:
        raise ValueError(f"prob {tuple(prob.shape)} and target {tuple(target.shape)} differ in size")
    dice = (2.0 * (p * y).sum(dim=1) + 1.0) / (p.sum(dim=1) + y.sum(dim=1) + 1.0)
    return (1.0 - dice).mean()


def two_way_ce(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy of ``[B, 2]`` logits (normal, anomalous) against ``[B]`` integer labels."""
    return F.cross_entropy(logits, labels.long())


def segmentation_loss(stage_probs: Sequence[Tensor], target: Tensor) -> Tensor:
    """Sum over stages of ``focal(P, Y) + dice(P[:, 1], Y) + dice(P[:, 0], 1 - Y)``."""
    if len(stage_probs) == 0:
        raise ValueError("segmentation_loss needs at least one stage")
    total: Tensor | None = None
    for probs in stage_probs:
        mask = _as_mask(target, probs)
        term = focal_loss(probs, mask) + dice_loss(probs[:, 1], mask) + dice_loss(probs[:, 0], 1.0 - mask)
        total = term if total is None else total + term
    assert total is not None
    return total
