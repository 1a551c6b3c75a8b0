"""Build a FiLo++ model from a config (the one place that wires loader, tokenizer and model)."""

from __future__ import annotations

import torch

from fgad.backbone.clip_loader import create_clip, get_tokenizer
from fgad.config import ModelConfig
from fgad.methods.filo.model import FiLoPlusPlus


def build_model(cfg: ModelConfig, pretrained: str | None = None, seed: int = 0) -> FiLoPlusPlus:
    """A FiLo++ model with frozen CLIP towers; ``pretrained`` overrides the config's weights.

    The learnable parts (context vectors, meta-nets, heads, adapter) are initialised from
    ``seed`` without touching the global RNG, so the same call always builds the same model.
    """
    clip = create_clip(cfg.backbone, pretrained=pretrained)
    tokenizer = get_tokenizer(cfg.backbone)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return FiLoPlusPlus(cfg, clip, tokenizer)
