"""Shared fixtures for the unit tests: the tiny random CLIP config, model and images.

The tiny model (``tiny-test``: ``fgad-tiny``, 112 px, patch 16, 4 blocks, width 64, V-V from
block 2) is built once per test module, with its random CLIP towers from ``init_seed`` and its
trainable parts (context vectors, meta-nets, heads, adapter) from ``HEAD_SEED``.
"""

from __future__ import annotations

import logging

import pytest
import torch

from fgad.config import ModelConfig, load_config
from fgad.models.build import build_model
from fgad.models.clip_loader import create_clip, get_tokenizer
from fgad.models.filo import FiLoPlusPlus

logging.getLogger("root").setLevel(logging.ERROR)  # open_clip's "initialized randomly" notices

#: A class of the synthetic bank used throughout the model tests.
CLASS_NAME = "tile"
#: Seed of the trainable (non-CLIP) parameters of the tiny model.
HEAD_SEED = 1234
#: Seed of the random test images.
IMAGE_SEED = 7


def tiny_model_config(**prompt_overrides: object) -> ModelConfig:
    """The tiny-test model config with the synthetic bank searched first (classes tile, disc, mesh),
    plus optional ``prompts`` overrides."""
    prompts = {"banks": ["synthetic"], **prompt_overrides}
    return load_config("tiny-test", {"model": {"prompts": prompts}}).model


def make_images(batch: int, size: int, seed: int = IMAGE_SEED) -> torch.Tensor:
    """Random CLIP-normalised-looking images [batch, 3, size, size] from a fixed seed."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, size, size, generator=gen)


@pytest.fixture(scope="session")
def tiny_cfg() -> ModelConfig:
    return tiny_model_config()


@pytest.fixture(scope="module")
def tiny_clip(tiny_cfg: ModelConfig) -> torch.nn.Module:
    """The frozen open_clip model alone (same seed, so the same weights as ``tiny_model``'s towers)."""
    return create_clip(tiny_cfg.backbone)


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_cfg: ModelConfig):  # noqa: ANN201 - open_clip's tokenizer type
    return get_tokenizer(tiny_cfg.backbone)


@pytest.fixture(scope="module")
def tiny_model(tiny_cfg: ModelConfig) -> FiLoPlusPlus:
    """FiLo++ on the tiny backbone, eval mode, trainable parts seeded with ``HEAD_SEED``."""
    return build_model(tiny_cfg, seed=HEAD_SEED).eval()


@pytest.fixture(scope="module")
def images(tiny_cfg: ModelConfig) -> torch.Tensor:
    """Two random images at the tiny model's input size."""
    return make_images(2, tiny_cfg.backbone.image_size)
