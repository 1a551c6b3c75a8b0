"""The checkpoint format of every method: learned weights (safetensors), the config (JSON), resumable training state.

A checkpoint directory holds

* ``config.json``: the full config, the weights source and a fingerprint of the frozen backbone
  (a randomly initialised backbone is rebuilt from its seed; the fingerprint proves it matched);
* ``weights.safetensors``: only the learned tensors (prompt context, meta-nets, heads, adapter);
* ``state.pt``: optimiser state and the position in the schedule, for ``--resume``.

Each file is written to a temporary name and renamed, so an interrupted save never leaves a
half-written file; ``config.json`` is written last and marks a complete checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fgad import __version__
from fgad.backbone.clip_loader import state_fingerprint
from fgad.config import Config, to_dict
from fgad.core.atomic import atomic_path, atomic_write_json

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
STATE_FILE = "state.pt"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete or does not fit the model."""


@dataclass
class TrainState:
    phase: int = 1  # 1: heads + prompts, 2: adapter, 3: finished
    epoch: int = 0  # epochs completed in the current phase
    step: int = 0  # optimiser steps taken in total
    optimizer: dict[str, Any] | None = None


def backbone_fingerprint(model: Any) -> str:
    return state_fingerprint(model.backbone) + ":" + state_fingerprint(model.text_encoder)


def save_checkpoint(
    out_dir: str | Path,
    model: Any,
    config: Config,
    pretrained: str | None,
    state: TrainState | None = None,
    fingerprint: str | None = None,
) -> Path:
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.trainable_state_dict().items()}
    with atomic_path(out / WEIGHTS_FILE) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", "fgad_version": __version__})
    if state is not None:
        with atomic_path(out / STATE_FILE) as tmp:
            torch.save(
                {"phase": state.phase, "epoch": state.epoch, "step": state.step, "optimizer": state.optimizer},
                tmp,
            )
    meta = {
        "fgad_version": __version__,
        "config": to_dict(config),
        "pretrained": pretrained,
        "backbone_fingerprint": fingerprint or backbone_fingerprint(model),
        "phase": state.phase if state is not None else None,
    }
    atomic_write_json(out / CONFIG_FILE, meta)
    return out


def read_checkpoint_meta(ckpt_dir: str | Path) -> dict[str, Any]:
    path = Path(ckpt_dir) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{ckpt_dir}: no {CONFIG_FILE}; is this an fgad checkpoint directory (fgad-train --out)?")
    return json.loads(path.read_text())


def load_trainable(model: Any, weights_path: Path) -> None:
    from safetensors.torch import load_file

    if not weights_path.is_file():
        raise CheckpointError(f"missing {weights_path}")
    tensors = load_file(str(weights_path))
    expected = model.trainable_state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{weights_path}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
    for k, v in tensors.items():
        if v.shape != expected[k].shape:
            raise CheckpointError(
                f"{weights_path}: {k} has shape {tuple(v.shape)}, model expects {tuple(expected[k].shape)}"
            )
    model.load_state_dict(tensors, strict=False)


def load_train_state(ckpt_dir: str | Path) -> TrainState | None:
    path = Path(ckpt_dir) / STATE_FILE
    if not path.is_file():
        return None
    raw = torch.load(path, map_location="cpu", weights_only=False)
    return TrainState(phase=raw["phase"], epoch=raw["epoch"], step=raw["step"], optimizer=raw["optimizer"])
