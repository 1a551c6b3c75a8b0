"""MLSA (b): the multi-level alignment losses of FineGrainedAD (METHOD.md §2.6).

For one level with normal anchor ``n̄`` (normalised), normalised abnormal features ``{a_j}``, their
direction ``ā = n(mean of the raw a_j)`` and token features ``X`` ``[k, N, C]``:

* :func:`v2t_loss`: token-wise cross-entropy of ``t·[<X, n̄>, <X, a_1> .. <X, a_J>]`` with target 0;
* :func:`eam_loss` (explicit anomaly margin): mean over tokens of ``relu(‖X − n̄‖² − ‖X − ā‖² + m)``,
  the norms over channels (CHOICE: the released code summed over the token axis, F2, which
  ``mlsa_loss(released=True)`` reproduces);
* :func:`match_loss`: ``‖mean n(t_handle) − mean n(t_learned)‖²``;
* :func:`reg_loss`: ``‖mean n(t_img,learned) − mean n(Σ_e t_e,learned) − mean n(t_bg,normal)‖₂`` (not squared).

:func:`mlsa_loss` adds them up as METHOD.md's total and returns the parts for the training log.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fgad.methods.finegrained.mllp import PromptFeatures

__all__ = ["eam_loss", "match_loss", "mlsa_loss", "reg_loss", "v2t_loss"]


def v2t_loss(x: Tensor, normal: Tensor, abnormal: Tensor, scale: Tensor | float) -> Tensor:
    """Mean token-wise CE: ``x`` ``[..., N, C]``, ``normal`` ``[C]``, ``abnormal`` ``[J, C]`` (all as given)."""
    logits = torch.cat([(x @ normal).unsqueeze(-1), x @ abnormal.T], dim=-1) * scale  # [..., N, 1 + J]
    return (torch.logsumexp(logits, dim=-1) - logits[..., 0]).mean()


def eam_loss(x: Tensor, normal: Tensor, abnormal: Tensor, margin: float = 1.0, norm_dim: int = -1) -> Tensor:
    """Mean over tokens of ``relu(‖x − normal‖² − ‖x − abnormal‖² + margin)``; ``x`` ``[..., C]``.

    ``norm_dim``: the axis the squared norms sum over: -1 the channels; the released code's ``dim=1`` on
    ``[k, N, C]`` is the token axis (F2, ``model.reproduce: released``), and the mean is then over ``[k, C]``."""
    to_normal = (x - normal).pow(2).sum(dim=norm_dim)
    to_abnormal = (x - abnormal).pow(2).sum(dim=norm_dim)
    return F.relu(to_normal - to_abnormal + margin).mean()


def match_loss(handle: Tensor, learned: Tensor) -> Tensor:
    """``‖mean n(handle) − mean n(learned)‖²`` for raw features ``[H, C]`` and ``[L, C]``."""
    diff = F.normalize(handle, dim=-1).mean(dim=0) - F.normalize(learned, dim=-1).mean(dim=0)
    return diff.pow(2).sum()


def reg_loss(image_learned: Tensor, entity_learned: Tensor, background_normal: Tensor) -> Tensor:
    """``‖mean n(image_learned) − mean n(Σ_e entity_learned[e]) − mean n(background_normal)‖₂``.

    ``image_learned`` ``[L, C]``, ``entity_learned`` ``[E, L, C]`` (summed over entities prompt by prompt),
    ``background_normal`` ``[Pn, C]``, all raw features.
    """
    image = F.normalize(image_learned, dim=-1).mean(dim=0)
    entities = F.normalize(entity_learned.sum(dim=0), dim=-1).mean(dim=0)
    background = F.normalize(background_normal, dim=-1).mean(dim=0)
    return torch.linalg.vector_norm(image - entities - background)


def _level(
    x: Tensor, feats: PromptFeatures, family: int, scale: Tensor | float, margin: float, norm_dim: int = -1
) -> tuple[Tensor, Tensor]:
    normal = F.normalize(feats.normal(family).mean(dim=0), dim=-1)
    raw_abnormal = feats.abnormal(family)
    abnormal = F.normalize(raw_abnormal, dim=-1)
    direction = F.normalize(raw_abnormal.mean(dim=0), dim=-1)
    return v2t_loss(x, normal, abnormal, scale), eam_loss(x, normal, direction, margin, norm_dim)


def mlsa_loss(
    patches: Tensor,
    weights: Tensor,
    feats: PromptFeatures,
    image_family: int,
    background_family: int,
    scale: Tensor | float,
    margin: float = 1.0,
    lambda_match: float = 1e-3,
    released: bool = False,
) -> tuple[Tensor, dict[str, float]]:
    """METHOD.md §2.6's total loss and its parts.

    Args:
        patches: ``F`` = normalised patch features of the k shots ``[k, N, C]``.
        weights: region weights ``omega`` ``[E + 1, k, N]`` (entities in family order, then the background).
        feats: the prompt features (families in pair order: entities, image, background).
        image_family, background_family: indices of those families in ``feats``.
        scale: ``t``, the raw logit scale (F3).
        margin, lambda_match: the margin of the EAM loss and ``lambda_1``.
        released: the released code's EAM norms over the token axis (F2, ``model.reproduce: released``).

    Returns:
        The scalar loss and ``{"v2t", "eam", "match", "reg"}`` (float) for the log.
    """
    entity_families = [f for f in range(len(feats.layout)) if f not in (image_family, background_family)]
    if weights.shape[0] != len(entity_families) + 1:
        raise ValueError(f"weights has {weights.shape[0]} levels, expected {len(entity_families) + 1} (E + 1)")
    norm_dim = 1 if released else -1  # F2: the release's dim=1 of [k, N, C]
    v2t, eam = _level(patches, feats, image_family, scale, margin, norm_dim)
    match = match_loss(feats.handle(image_family), feats.learned(image_family))
    for level, family in enumerate([*entity_families, background_family]):
        x = patches * weights[level].unsqueeze(-1)
        lv, le = _level(x, feats, family, scale, margin, norm_dim)
        v2t = v2t + lv
        eam = eam + le
        if family != background_family and feats.handle(family).shape[0]:
            match = match + match_loss(feats.handle(family), feats.learned(family))
    if entity_families:
        entity_learned = torch.stack([feats.learned(f) for f in entity_families])
        reg = reg_loss(feats.learned(image_family), entity_learned, feats.normal(background_family))
    else:
        reg = patches.new_zeros(())
    total = v2t + eam + lambda_match * match + reg
    parts = {"v2t": float(v2t.detach()), "eam": float(eam.detach()), "match": float(match.detach()),
             "reg": float(reg.detach())}
    return total, parts
