"""FiLo++ as fgad's registry sees it (torch-free): its config checks and its entry points' module."""

from __future__ import annotations

from fgad.config import ConfigError, ModelConfig, validate_box_prior
from fgad.methods.base import Method

__all__ = ["METHOD", "check_filo_config"]


def check_filo_config(cfg: ModelConfig) -> None:
    """The sections FiLo++ reads: heads, few-shot memory, prompts and the box prior; raises ConfigError."""
    bb = cfg.backbone
    for name, layers in (
        ("heads.linear_layers", cfg.heads.linear_layers),
        ("heads.mdci_layers", cfg.heads.mdci_layers),
        ("fewshot.memory_layers", cfg.fewshot.memory_layers),
    ):
        bad = [i for i in layers if not 1 <= i <= bb.layers]
        if bad:
            raise ConfigError(f"{name} has layers {bad} outside [1, {bb.layers}] (blocks are 1-indexed)")
    early = [i for i in cfg.heads.mdci_layers if i < bb.vv_start]
    if early:
        raise ConfigError(
            f"heads.mdci_layers {early} come before backbone.vv_start={bb.vv_start}: they have no V-V path"
        )
    if not cfg.heads.linear_layers and not cfg.heads.mdci_layers:
        raise ConfigError("heads: at least one of linear_layers / mdci_layers must be non-empty")
    if cfg.prompts.conditioning not in ("coop", "cocoop"):
        raise ConfigError(f"prompts.conditioning={cfg.prompts.conditioning!r}: use 'coop' or 'cocoop'")
    if not (cfg.prompts.use_fixed or cfg.prompts.use_learnable):
        raise ConfigError("prompts: use_fixed and use_learnable cannot both be false")
    if cfg.heads.vl_map not in ("abnormal", "symmetric"):
        raise ConfigError(f"heads.vl_map={cfg.heads.vl_map!r}: use 'abnormal' or 'symmetric'")
    for k in cfg.heads.mdci_kernels:
        if len(k) != 2 or min(k) < 1:
            raise ConfigError(f"heads.mdci_kernels entry {k} must be a (kh, kw) pair of positive ints")
    validate_box_prior(cfg.post)


METHOD = Method(
    name="filo",
    title="FiLo++",
    implementation="fgad.methods.filo.entry",
    check_config=check_filo_config,
    box_priors=True,
    train_options=("classes", "epochs_phase1", "epochs_phase2", "max_steps_per_epoch", "banks"),
)
