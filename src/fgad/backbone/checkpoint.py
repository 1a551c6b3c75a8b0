"""The checkpoint format of every method: learned weights (safetensors), the config (JSON), resumable training state.

A checkpoint directory holds

* ``config.json``: the full config, the weights source and a fingerprint of the frozen backbone
  (a randomly initialised backbone is rebuilt from its seed; the fingerprint proves it matched);
* ``weights.safetensors``: only the learned tensors (prompt context, meta-nets, heads, adapter);
* ``state.pt``: optimiser state and the position in the schedule, for ``--resume``. It is read with
  ``torch.load(weights_only=True)``: tensors, numbers, strings and containers only, so a crafted file
  cannot run code (a file that needs more is refused, see :func:`load_train_state`).

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
from fgad.backbone.clip_loader import state_fingerprint, unpickle_refusal_detail
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
    """``config.json`` of a checkpoint: a JSON object whose ``config`` is an object (the rest is checked by
    :func:`fgad.config.config_from_dict` and the loaders); raises :class:`CheckpointError` naming the file."""
    path = Path(ckpt_dir) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{ckpt_dir}: no {CONFIG_FILE}; is this an fgad checkpoint directory (fgad-train --out)?")
    return read_json_object(path, required={"config": dict})


def read_json_object(path: Path, required: dict[str, type] | None = None) -> dict[str, Any]:
    """A checkpoint's JSON file as a dict, its ``required`` keys of the given types, or a :class:`CheckpointError`."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc}); the checkpoint is damaged, train it again") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(data).__name__}; the checkpoint is damaged")
    for key, kind in (required or {}).items():
        if not isinstance(data.get(key), kind):
            found = "nothing" if key not in data else type(data[key]).__name__
            raise CheckpointError(
                f"{path}: field '{key}' must be a JSON {_JSON_NAMES.get(kind, kind.__name__)}, found {found}; "
                "the checkpoint is damaged or not an fgad checkpoint"
            )
    return data


_JSON_NAMES = {dict: "object", list: "array", str: "string", int: "integer"}


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
    """The resumable state in ``state.pt`` (``None`` without one), read with ``torch.load(weights_only=True)``.

    A pickle that needs anything but tensors, numbers, strings and containers (a class, a function: what a
    crafted file uses to run code) is refused with a :class:`CheckpointError` before any of it runs, as is a
    file that is damaged or not shaped like the state :func:`save_checkpoint` writes.
    """
    path = Path(ckpt_dir) / STATE_FILE
    if not path.is_file():
        return None
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ... on a bad file
        raise CheckpointError(_state_refusal(path, exc)) from exc
    if not isinstance(raw, dict) or not all(isinstance(raw.get(k), int) for k in ("phase", "epoch", "step")):
        raise CheckpointError(
            f"{path}: not the training state fgad-train writes (a dict with integer phase, epoch and step); "
            f"delete it and train again ({_AFRESH})"
        )
    optimizer = raw.get("optimizer")
    if optimizer is not None and not isinstance(optimizer, dict):
        raise CheckpointError(f"{path}: 'optimizer' must be a state dict; delete it and train again ({_AFRESH})")
    return TrainState(phase=raw["phase"], epoch=raw["epoch"], step=raw["step"], optimizer=optimizer)


def _state_refusal(path: Path, exc: BaseException) -> str:
    text = str(exc)
    what = unpickle_refusal_detail(exc)
    if what or "Weights only load failed" in text or "Unsupported operand" in text:
        return (
            f"{path}: refused to load: this file holds Python objects beyond tensors and numbers{what}, and "
            "unpickling them could run code, so fgad reads training state with torch.load(weights_only=True) only. "
            "fgad-train never writes such a file; do not trust it unless you made it yourself: delete it and train "
            f"again ({_AFRESH})"
        )
    return (
        f"{path}: cannot be read ({type(exc).__name__}: {text.splitlines()[0] if text else 'no details'}); the file "
        f"is damaged: delete it and train again ({_AFRESH})"
    )


_AFRESH = f"without {STATE_FILE}, --resume starts from the first epoch"
