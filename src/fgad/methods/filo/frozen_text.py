"""The text side of FiLo++ computed once, at export time, for one class (ARCHITECTURE decision 3).

A deployed graph holds no text encoder. Everything text-related is evaluated here and becomes a
constant of the graph:

* prompts are built and encoded with the model's own :class:`~fgad.methods.filo.prompts.PromptLearner`;
* CoCoOp's meta-nets are conditioned on ``n(mean G)``, the normalised mean of the reference
  images' global features (with no reference images: on the zero vector, and the summary says so);
* ``frozen`` mode applies the runtime prompt filtering (:func:`fgad.methods.filo.scoring.filter_masks`)
  once, "over the reference set", with ``n(mean G_a)`` of the references (no references: no
  filtering), and keeps only the resulting pair ``T_n, T_a``;
* ``bank`` mode keeps every normal and abnormal prompt embedding so that the graph filters per
  image with masks (the CoCoOp conditioning is still the reference-set one).

Box priors: with ``none`` all 9 positions are valid. With a prior in the graph (``objectness``) the
position is chosen per image inside the graph: ``frozen`` mode then also holds one filtered pair per
position (``position_normal`` / ``position_abnormal``, ``[9, C]``, each filtered over the reference
set within that position's prompts) and the graph gathers the row of the chosen cell; ``bank`` mode
masks the prompts of the other positions and filters per image. Both modes approximate the per-image
CoCoOp computation; :func:`fgad.export.bundle.frozen_text_error` measures by how much.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from fgad.core.cells import NUM_POSITIONS
from fgad.methods.filo.model import FiLoPlusPlus
from fgad.methods.filo.scoring import filter_masks, l2n, masked_direction

__all__ = ["TEXT_MODES", "FrozenText", "freeze_text", "freeze_text_bank", "reference_globals"]

TEXT_MODES = ("frozen", "bank")


@dataclass
class FrozenText:
    """Text constants of one class. All feature rows are L2-normalised.

    In ``frozen`` mode the graph uses ``t_normal`` / ``t_abnormal`` (and ``abnormal`` with
    ``valid_abnormal`` for the best description). In ``bank`` mode it uses ``normal`` / ``abnormal``
    and filters per image within ``valid_abnormal``; ``t_normal`` / ``t_abnormal`` are then the
    unfiltered pair, kept for information only.
    """

    class_name: str
    mode: str  # "frozen" | "bank"
    t_normal: torch.Tensor  # [C]
    t_abnormal: torch.Tensor  # [C]
    normal: torch.Tensor  # [Pn, C]
    abnormal: torch.Tensor  # [P, C], P = 9 * K_pos, position-major rows
    keep_normal: torch.Tensor  # [Pn] bool
    keep_abnormal: torch.Tensor  # [P] bool, kept after filtering (bank: = valid_abnormal)
    valid_abnormal: torch.Tensor  # [P] bool, at a selected position (box prior "none": all)
    descriptions: list[str]  # one per abnormal row
    num_normal: int
    num_abnormal: int
    conditioning: str  # "cocoop" | "coop"
    conditioned_on: str  # what the meta-nets saw, in words
    filtering: str  # "reference-set" | "per-image" | "none"
    num_references: int
    notes: list[str] = field(default_factory=list)
    position_normal: torch.Tensor | None = None  # [9, C] frozen T_n when only position p's prompts are used
    position_abnormal: torch.Tensor | None = None  # [9, C] frozen T_a of position p
    position_kept_abnormal: list[int] | None = None  # per position, abnormal prompts kept by the filtering

    def abnormal_positions(self) -> torch.Tensor:
        """``[P]`` int64: the position cell (0..8) of each abnormal row (rows are position-major)."""
        per_position = self.abnormal.shape[0] // NUM_POSITIONS
        return torch.arange(self.abnormal.shape[0], device=self.abnormal.device) // per_position

    def summary(self) -> dict[str, Any]:
        """The manifest's ``text`` entry (without the measured approximation)."""
        out: dict[str, Any] = {
            "mode": self.mode,
            "conditioning": self.conditioning,
            "conditioned_on": self.conditioned_on,
            "filtering": self.filtering,
            "positions": "all",
            "descriptions": list(self.descriptions),
            "num_normal": self.num_normal,
            "num_abnormal": self.num_abnormal,
            "num_references": self.num_references,
        }
        if self.mode == "frozen":
            out["kept_normal"] = int(self.keep_normal.sum())
            out["kept_abnormal"] = int(self.keep_abnormal.sum())
        if self.position_kept_abnormal is not None:
            out["positions"] = "per image: the box prior's cell selects one of 9 frozen pairs in the graph"
            out["kept_abnormal_per_position"] = list(self.position_kept_abnormal)
        if self.notes:
            out["notes"] = list(self.notes)
        return out


@torch.no_grad()
def reference_globals(
    model: FiLoPlusPlus, ref_images: torch.Tensor, batch_size: int = 8
) -> tuple[torch.Tensor, torch.Tensor]:
    """(G [k, C], G_a [k, C]) of the reference images: raw global features and n(adapter(G))."""
    if ref_images.dim() != 4 or ref_images.shape[0] == 0:
        raise ValueError(f"reference images must be a non-empty [k, 3, s, s] batch, got {tuple(ref_images.shape)}")
    chunks = []
    for start in range(0, ref_images.shape[0], batch_size):
        chunks.append(model.encode_images(ref_images[start : start + batch_size]).global_embed)
    g = torch.cat(chunks, dim=0)
    return g, model.adapted_global(g)


@torch.no_grad()
def _encode(
    model: FiLoPlusPlus, class_name: str, ref_images: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, str, int]:
    """Normalised prompt features (normal [Pn, C], abnormal [P, C]), n(mean G_a) or None, and the wording."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        embed_dim = model.cfg.backbone.embed_dim
        if ref_images is not None and ref_images.shape[0] > 0:
            g, g_a = reference_globals(model, ref_images.to(device))
            condition = l2n(g.mean(dim=0, keepdim=True))
            adapted = l2n(g_a.mean(dim=0, keepdim=True))
            k = int(g.shape[0])
            words = f"n(mean G) of {k} reference image{'s' if k != 1 else ''}"
        else:
            condition = torch.zeros(1, embed_dim, device=device)
            adapted = None
            k = 0
            words = "zero vector (no reference images)"
        if model.cfg.prompts.conditioning != "cocoop":
            words = "none (CoOp context does not depend on the image)"
        normal, abnormal = model.prompts(class_name, condition)
        normal = l2n(normal)[0]  # [Pn, C]
        abnormal = l2n(abnormal).flatten(1, 2)[0]  # [9 * K_pos, C]
    finally:
        model.train(was_training)
    return normal, abnormal, adapted, words, k


def _descriptions(model: FiLoPlusPlus, class_name: str, expected: int) -> list[str]:
    descriptions = model.prompts.prepare(class_name).abnormal_descriptions()
    if len(descriptions) != expected:
        raise RuntimeError(f"{len(descriptions)} descriptions for {expected} abnormal prompts of {class_name!r}")
    return descriptions


def _position_pairs(
    normal: torch.Tensor, abnormal: torch.Tensor, adapted: torch.Tensor | None, filtering: bool
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Per position p: (T_n, T_a) with only p's abnormal prompts valid, filtered over the reference set."""
    per_position = abnormal.shape[0] // NUM_POSITIONS
    rows = torch.arange(abnormal.shape[0], device=abnormal.device) // per_position
    t_n, t_a, kept = [], [], []
    for p in range(NUM_POSITIONS):
        valid = (rows == p).unsqueeze(0)
        if filtering and adapted is not None:
            keep_n, keep_a = filter_masks(adapted, normal.unsqueeze(0), abnormal.unsqueeze(0), valid)
        else:
            keep_n = torch.ones(1, normal.shape[0], dtype=torch.bool, device=normal.device)
            keep_a = valid
        t_n.append(masked_direction(normal.unsqueeze(0), keep_n)[0])
        t_a.append(masked_direction(abnormal.unsqueeze(0), keep_a)[0])
        kept.append(int(keep_a.sum()))
    return torch.stack(t_n), torch.stack(t_a), kept


@torch.no_grad()
def freeze_text(
    model: FiLoPlusPlus, class_name: str, ref_images: torch.Tensor | None, per_position: bool = False
) -> FrozenText:
    """The filtered text pair of ``class_name``, conditioned and filtered over the reference set.

    ``per_position``: also freeze one pair per position cell, for a graph whose box prior picks the
    position per image.
    """
    normal, abnormal, adapted, words, k = _encode(model, class_name, ref_images)
    if abnormal.shape[0] % NUM_POSITIONS:
        raise RuntimeError(f"{abnormal.shape[0]} abnormal prompts are not {NUM_POSITIONS} positions")
    notes: list[str] = []
    valid = torch.ones(1, abnormal.shape[0], dtype=torch.bool, device=abnormal.device)  # box prior "none"
    if model.cfg.prompts.filtering and adapted is not None:
        keep_n, keep_a = filter_masks(adapted, normal.unsqueeze(0), abnormal.unsqueeze(0), valid)
        filtering = "reference-set"
    else:
        keep_n = torch.ones(1, normal.shape[0], dtype=torch.bool, device=normal.device)
        keep_a = valid
        filtering = "none"
        if model.cfg.prompts.filtering:
            notes.append("no reference images: prompt filtering (needs G_a) was not applied")
    if model.cfg.prompts.conditioning == "cocoop" and k == 0:
        notes.append("no reference images: CoCoOp meta-nets conditioned on the zero vector")
    t_normal = masked_direction(normal.unsqueeze(0), keep_n)[0]
    t_abnormal = masked_direction(abnormal.unsqueeze(0), keep_a)[0]
    positions = None
    if per_position:
        positions = _position_pairs(normal, abnormal, adapted, filtering == "reference-set")
    return FrozenText(
        class_name=class_name,
        mode="frozen",
        t_normal=t_normal,
        t_abnormal=t_abnormal,
        normal=normal,
        abnormal=abnormal,
        keep_normal=keep_n[0],
        keep_abnormal=keep_a[0],
        valid_abnormal=valid[0],
        descriptions=_descriptions(model, class_name, abnormal.shape[0]),
        num_normal=int(normal.shape[0]),
        num_abnormal=int(abnormal.shape[0]),
        conditioning=model.cfg.prompts.conditioning,
        conditioned_on=words,
        filtering=filtering,
        num_references=k,
        notes=notes,
        position_normal=None if positions is None else positions[0],
        position_abnormal=None if positions is None else positions[1],
        position_kept_abnormal=None if positions is None else positions[2],
    )


@torch.no_grad()
def freeze_text_bank(
    model: FiLoPlusPlus, class_name: str, ref_images: torch.Tensor | None, per_position: bool = False
) -> FrozenText:
    """Every prompt embedding of ``class_name`` (same CoCoOp conditioning); the graph filters per image.

    ``per_position`` is accepted for symmetry with :func:`freeze_text`: a bank already holds every position's
    prompts, and the graph masks the unselected ones.
    """
    normal, abnormal, _, words, k = _encode(model, class_name, ref_images)
    keep_n = torch.ones(normal.shape[0], dtype=torch.bool, device=normal.device)
    valid = torch.ones(abnormal.shape[0], dtype=torch.bool, device=abnormal.device)  # box prior "none"
    if abnormal.shape[0] % NUM_POSITIONS:
        raise RuntimeError(f"{abnormal.shape[0]} abnormal prompts are not {NUM_POSITIONS} positions")
    notes = []
    if model.cfg.prompts.conditioning == "cocoop":
        notes.append("CoCoOp conditioning is fixed at export (reference set); filtering is per image in the graph")
        if k == 0:
            notes.append("no reference images: CoCoOp meta-nets conditioned on the zero vector")
    return FrozenText(
        class_name=class_name,
        mode="bank",
        t_normal=masked_direction(normal.unsqueeze(0), keep_n.unsqueeze(0))[0],
        t_abnormal=masked_direction(abnormal.unsqueeze(0), valid.unsqueeze(0))[0],
        normal=normal,
        abnormal=abnormal,
        keep_normal=keep_n,
        keep_abnormal=valid,
        valid_abnormal=valid,
        descriptions=_descriptions(model, class_name, abnormal.shape[0]),
        num_normal=int(normal.shape[0]),
        num_abnormal=int(abnormal.shape[0]),
        conditioning=model.cfg.prompts.conditioning,
        conditioned_on=words,
        filtering="per-image" if model.cfg.prompts.filtering else "none",
        num_references=k,
        notes=notes,
    )
