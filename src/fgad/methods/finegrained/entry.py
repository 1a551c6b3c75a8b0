"""FineGrainedAD's entry points for :class:`fgad.methods.base.Method` (imported on first use: torch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fgad.backbone.checkpoint import CheckpointError
from fgad.config import Config, ModelConfig
from fgad.methods.base import TrainOptionError, TrainRequest
from fgad.methods.finegrained.evaluate import evaluate_class_fgad as evaluate_class
from fgad.methods.finegrained.export import export_plan, resize_model

__all__ = ["build", "evaluate_class", "export_plan", "load_checkpoint", "resize_model", "train"]


def build(cfg: ModelConfig, pretrained: str | None = None, seed: int | None = None,
          class_name: str | None = None) -> Any:
    """An untrained model of ``class_name`` (its prompt texts from the shipped caption record and bank)."""
    from fgad.methods.finegrained.mllp import class_texts
    from fgad.methods.finegrained.model import build_finegrained

    if not class_name:
        raise ValueError(f"{cfg.name} is a FineGrainedAD config: train a class first (fgad-train --class-name NAME "
                         "--shots K) and evaluate its --checkpoint")
    texts = class_texts(cfg.finegrained, class_name, released=cfg.reproduce == "released")
    return build_finegrained(cfg, texts, pretrained=pretrained, seed=seed)


def load_checkpoint(ckpt_dir: str | Path, pretrained: str | None = None, combine_with: str | Path | None = None,
                    combine: bool = True) -> tuple[Any, Config, dict[str, Any]]:
    """A FineGrainedAD checkpoint; with ``combine`` (evaluation) wrapped into the combined mode
    (:mod:`fgad.methods.finegrained.combined`) with the FiLo++ checkpoint ``combine_with``, or with its config's
    ``finegrained.combine_with`` when ``finegrained.combined`` is true. Export passes ``combine=False``."""
    from fgad.methods.finegrained.checkpoint import load_finegrained_checkpoint

    model, config, meta = load_finegrained_checkpoint(ckpt_dir, pretrained=pretrained)
    if not combine:
        return model, config, meta
    fc = config.model.finegrained
    partner = combine_with if combine_with is not None else (fc.combine_with if fc.combined else None)
    if fc.combined and partner is None:
        raise CheckpointError(f"{ckpt_dir}: finegrained.combined is true but no FiLo++ checkpoint is named; "
                              "pass --combine-with FILO_CHECKPOINT")
    if partner is not None:
        from fgad.methods.finegrained.combined import load_combined

        meta["combined_with"] = str(partner)
        return load_combined(model, partner, pretrained=pretrained), config, meta
    return model, config, meta


def train(request: TrainRequest) -> Any:
    """One class from k normal shots, as fgad-train asks (``--class-name``, ``--shots``, ``--epochs``, ...)."""
    from fgad.methods.finegrained.train import cli_train

    r = request
    if r.classes or len(r.banks) > 1 or r.epochs_phase1 is not None or r.epochs_phase2 is not None \
            or r.max_steps_per_epoch:
        raise TrainOptionError("--classes/--epochs-phase1/2/--max-steps-per-epoch are FiLo++ options; a "
                               "FineGrainedAD config takes --class-name, --shots, --epochs and at most one --bank")
    return cli_train(r.config, r.data_root, r.out_dir, r.class_name, r.shots, pretrained=r.pretrained,
                     epochs=r.epochs, seed=r.seed, seed_file=r.seed_file, captions=r.captions,
                     bank=Path(r.banks[0]) if r.banks else None, resume=r.resume, progress=r.progress, echo=r.echo,
                     reproduce=r.reproduce)
