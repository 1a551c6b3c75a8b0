"""FineGrainedAD checkpoints: fgad's checkpoint format plus one ``finegrained.json``.

The directory holds what :mod:`fgad.backbone.checkpoint` writes (``config.json`` with the full config,
weights source and backbone fingerprint; ``weights.safetensors`` with the learned MLLP tensors;
``state.pt``) and ``finegrained.json``: the class, its prompt texts (so the model is rebuilt from the
texts it was trained with, whatever the shipped caption records say later) and the k shots. The
galleries are not stored: they are recomputed from the recorded shot images.

:func:`fgad.methods.registry.load_any_checkpoint` loads any method's checkpoint, for the CLIs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fgad.backbone.checkpoint import (
    CheckpointError,
    backbone_fingerprint,
    load_trainable,
    read_checkpoint_meta,
    read_json_object,
)
from fgad.config import Config, config_from_dict
from fgad.core.atomic import atomic_write_json
from fgad.methods.finegrained.mllp import MllpTexts
from fgad.methods.finegrained.model import FineGrainedAD, build_finegrained
from fgad.methods.finegrained.spec import CHECKPOINT_MARKER

__all__ = [
    "FINEGRAINED_FILE",
    "is_finegrained_checkpoint",
    "load_finegrained_checkpoint",
    "read_finegrained_meta",
    "write_finegrained_meta",
]

FINEGRAINED_FILE = CHECKPOINT_MARKER


def write_finegrained_meta(out_dir: str | Path, texts: MllpTexts, shots: dict[str, Any]) -> Path:
    """Write ``finegrained.json`` (class, prompt texts, shots) atomically."""
    path = Path(out_dir) / FINEGRAINED_FILE
    atomic_write_json(path, {"class_name": texts.class_name, "texts": texts.to_dict(), "shots": shots})
    return path


def read_finegrained_meta(ckpt_dir: str | Path) -> dict[str, Any]:
    path = Path(ckpt_dir) / FINEGRAINED_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{ckpt_dir}: no {FINEGRAINED_FILE}; a FineGrainedAD checkpoint is written by "
            "fgad-train --config <finegrained config> --class-name NAME --shots K"
        )
    return read_json_object(path, required={"class_name": str, "texts": dict, "shots": dict})


def is_finegrained_checkpoint(ckpt_dir: str | Path) -> bool:
    meta = read_checkpoint_meta(ckpt_dir)
    return (meta.get("config", {}).get("model", {}) or {}).get("method") == "finegrained"


def load_finegrained_checkpoint(
    ckpt_dir: str | Path, pretrained: str | None = None, verify_backbone: bool = True
) -> tuple[FineGrainedAD, Config, dict[str, Any]]:
    """Rebuild a FineGrainedAD model from its checkpoint; ``meta["finegrained"]`` holds class and shots.

    The galleries are empty: fill them with :meth:`FineGrainedAD.set_reference_images` (the shots are
    in ``meta["finegrained"]["shots"]``).
    """
    ckpt = Path(ckpt_dir)
    meta = read_checkpoint_meta(ckpt)
    config = config_from_dict(meta["config"])
    if config.model.method != "finegrained":
        raise CheckpointError(f"{ckpt}: a {config.model.method!r} checkpoint, not a FineGrainedAD one")
    extra = read_finegrained_meta(ckpt)
    texts = MllpTexts.from_dict(extra["texts"])
    source = pretrained if pretrained is not None else meta.get("pretrained")
    model = build_finegrained(config.model, texts, pretrained=source)
    if verify_backbone and meta.get("backbone_fingerprint"):
        if backbone_fingerprint(model) != meta["backbone_fingerprint"]:  # type: ignore[arg-type]
            raise CheckpointError(
                f"{ckpt}: the backbone built from {source!r} differs from the one this checkpoint was "
                "trained with (fingerprint mismatch); pass the same --pretrained weights"
            )
    load_trainable(model, ckpt / "weights.safetensors")  # type: ignore[arg-type]
    model.reference_paths = list(extra.get("shots", {}).get("paths", []))  # galleries: loaded on demand
    meta["finegrained"] = extra
    return model.eval(), config, meta
