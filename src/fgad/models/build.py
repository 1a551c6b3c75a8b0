"""Build a FiLo++ model from a config (the one place that wires loader, tokenizer and model)."""

from __future__ import annotations

from fgad.config import ModelConfig
from fgad.models.clip_loader import create_clip, get_tokenizer
from fgad.models.filo import FiLoPlusPlus


def build_model(cfg: ModelConfig, pretrained: str | None = None) -> FiLoPlusPlus:
    """A FiLo++ model with frozen CLIP towers; ``pretrained`` overrides the config's weights."""
    clip = create_clip(cfg.backbone, pretrained=pretrained)
    return FiLoPlusPlus(cfg, clip, get_tokenizer(cfg.backbone))
