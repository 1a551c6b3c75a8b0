"""Loading a FiLo++ checkpoint (the format is :mod:`fgad.backbone.checkpoint`'s)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fgad.backbone.checkpoint import (
    WEIGHTS_FILE,
    CheckpointError,
    backbone_fingerprint,
    load_trainable,
    read_checkpoint_meta,
)
from fgad.config import Config, config_from_dict
from fgad.methods.filo.model import FiLoPlusPlus

__all__ = ["load_checkpoint"]


def load_checkpoint(
    ckpt_dir: str | Path,
    pretrained: str | None = None,
    verify_backbone: bool = True,
) -> tuple[FiLoPlusPlus, Config, dict[str, Any]]:
    """Rebuild the model of a checkpoint; ``pretrained`` overrides the recorded weights source."""

    from fgad.methods.filo.build import build_model

    ckpt = Path(ckpt_dir)
    meta = read_checkpoint_meta(ckpt)
    config = config_from_dict(meta["config"])
    source = pretrained if pretrained is not None else meta.get("pretrained")
    model = build_model(config.model, pretrained=source)
    if verify_backbone and meta.get("backbone_fingerprint"):
        actual = backbone_fingerprint(model)
        if actual != meta["backbone_fingerprint"]:
            raise CheckpointError(
                f"{ckpt}: the backbone built from {source!r} differs from the one this checkpoint was "
                "trained with (fingerprint mismatch); pass the same --pretrained weights"
            )
    load_trainable(model, ckpt / WEIGHTS_FILE)
    return model, config, meta
