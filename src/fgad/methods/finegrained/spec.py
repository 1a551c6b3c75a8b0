"""FineGrainedAD as fgad's registry sees it (torch-free): its config section, checks, checkpoint marker."""

from __future__ import annotations

from fgad.config import ConfigError, ModelConfig
from fgad.methods.base import Method
from fgad.methods.finegrained.config import FineGrainedConfig, finegrained_config_problems

__all__ = ["CHECKPOINT_MARKER", "METHOD", "check_finegrained_config"]

#: the file that marks a FineGrainedAD checkpoint (fgad.methods.finegrained.checkpoint.FINEGRAINED_FILE)
CHECKPOINT_MARKER = "finegrained.json"


def check_finegrained_config(cfg: ModelConfig) -> None:
    """``model.finegrained`` against the backbone; FiLo++'s heads and memory are not part of this model."""
    problems = finegrained_config_problems(cfg.finegrained, cfg.backbone.layers)
    if problems:
        raise ConfigError("; ".join(problems))


METHOD = Method(
    name="finegrained",
    title="FineGrainedAD",
    implementation="fgad.methods.finegrained.entry",
    config_section=("finegrained", FineGrainedConfig),
    check_config=check_finegrained_config,
    checkpoint_marker=CHECKPOINT_MARKER,
    per_class=True,
    train_options=("class_name", "shots", "epochs", "seed_file", "captions", "banks"),
)
