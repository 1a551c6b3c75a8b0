"""FiLo++'s entry points for :class:`fgad.methods.base.Method` (imported on first use: torch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fgad.backbone.checkpoint import CheckpointError
from fgad.config import Config, ModelConfig
from fgad.methods.base import TrainOptionError, TrainRequest
from fgad.methods.filo.build import build_model
from fgad.methods.filo.evaluate import evaluate_class
from fgad.methods.filo.export import export_plan, resize_model
from fgad.methods.filo.model import FiLoPlusPlus

__all__ = ["build", "evaluate_class", "export_plan", "load_checkpoint", "resize_model", "train"]


def build(cfg: ModelConfig, pretrained: str | None = None, seed: int = 0,
          class_name: str | None = None) -> FiLoPlusPlus:
    """An untrained FiLo++ model (the backbone from ``pretrained``, the trainable parts from ``seed``)."""
    return build_model(cfg, pretrained=pretrained, seed=seed)


def load_checkpoint(ckpt_dir: str | Path, pretrained: str | None = None, combine_with: str | Path | None = None,
                    combine: bool = True) -> tuple[FiLoPlusPlus, Config, dict[str, Any]]:
    from fgad.methods.filo.checkpoint import load_checkpoint as load

    if combine_with is not None:
        raise CheckpointError(f"{ckpt_dir} is a FiLo++ checkpoint: pass the FineGrainedAD one as --checkpoint "
                              "and the FiLo++ one as --combine-with")
    return load(ckpt_dir, pretrained=pretrained)


def train(request: TrainRequest) -> Any:
    """Phase 1 (prompts, linear heads, MDCI) and phase 2 (adapter) on an auxiliary dataset, as fgad-train asks."""
    from fgad.config import load_config
    from fgad.methods.filo.train import train as train_filo

    r = request
    if r.class_name or r.shots is not None or r.epochs is not None or r.seed_file or r.captions:
        raise TrainOptionError("--class-name/--shots/--epochs/--seed-file/--captions need a FineGrainedAD config "
                               "(e.g. --config fgad-vitb16p-240)")
    overrides: dict[str, dict[str, Any]] = {"train": {}, "model": {}}
    for key, value in (("epochs_phase1", r.epochs_phase1), ("epochs_phase2", r.epochs_phase2),
                       ("max_steps_per_epoch", r.max_steps_per_epoch), ("seed", r.seed)):
        if value is not None:
            overrides["train"][key] = value
    if r.banks:
        overrides["model"]["prompts"] = {"banks": list(r.banks)}
    if r.pretrained is not None:
        overrides["model"]["backbone"] = {"pretrained": r.pretrained}
    if r.reproduce is not None:
        overrides["model"]["reproduce"] = r.reproduce
    config = load_config(r.config, overrides)
    model = build_model(config.model, seed=config.train.seed)
    result = train_filo(model, config, r.data_root, r.out_dir, pretrained=config.model.backbone.pretrained,
                        classes=list(r.classes) or None, resume=r.resume, progress=r.progress)
    for rec in result.losses:
        r.echo(f"phase {rec['phase']} epoch {rec['epoch']}: loss {rec['loss']:.4f} "
               f"({rec['steps']} steps, {rec['seconds']:.1f}s)")
    r.echo(f"checkpoint: {result.out_dir}")
    return result
