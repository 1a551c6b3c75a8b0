"""The one builder of tiny random models for the tests (torch; import it only from tests that need torch).

``tiny-test`` (``fgad-tiny``: 112 px, patch 16, 4 blocks, width 64, V-V from block 2) with the synthetic
description bank searched first (classes tile, disc, mesh). Exporting the full ``tiny-test`` graph (4 linear
+ 3 x 6 MDCI kernels) takes about a minute on 2 CPU cores, almost all of it in ``torch.export``
decompositions and the ONNX optimiser, which grow with the number of nodes; export tests therefore use
:data:`MINI_HEADS` (2 linear stages, 2 MDCI stages of a 3x3 and a 1x5 kernel, 2 memory layers), with every
code path the same. The full graph is exported in the ``slow`` tests.
"""

from __future__ import annotations

from typing import Any

import torch

from fgad.config import Config, ModelConfig, load_config
from fgad.methods.filo.build import build_model
from fgad.methods.filo.model import FiLoPlusPlus

#: A class of the synthetic bank used throughout the model tests.
CLASS_NAME = "tile"
#: Seed of the trainable (non-CLIP) parameters of the unit tests' tiny model.
HEAD_SEED = 1234
#: Seed of the random test images.
IMAGE_SEED = 7
#: Fewer heads than tiny-test, so that one export takes seconds (see the module docstring).
MINI_HEADS: dict[str, Any] = {
    "heads": {"linear_layers": [2, 4], "mdci_layers": [3, 4], "mdci_kernels": [[3, 3], [1, 5]]},
    "fewshot": {"memory_layers": [2, 4]},
}


def make_config(mini: bool = True, **prompts: Any) -> Config:
    """tiny-test with the synthetic description bank, optionally with fewer heads and ``prompts`` overrides."""
    model: dict[str, Any] = {"prompts": {"banks": ["synthetic"], **prompts}}
    if mini:
        model.update(MINI_HEADS)
    return load_config("tiny-test", {"model": model})


def tiny_model_config(**prompt_overrides: Any) -> ModelConfig:
    """The full tiny-test model config (all heads) with the synthetic bank, plus optional ``prompts`` overrides."""
    return make_config(mini=False, **prompt_overrides).model


def perturb_offsets(model: FiLoPlusPlus, seed: int = 0) -> FiLoPlusPlus:
    """Give the MDCI offset/modulation convs non-zero weights (a fresh layer is an ordinary conv),
    so the deformable sampling itself is exercised: fractional offsets and modulation != 1."""
    model.mdci.randomize_offsets(seed)
    return model


def make_model(config: Config, seed: int = 3) -> FiLoPlusPlus:
    """FiLo++ of ``config`` in eval mode, trainable parts and MDCI offsets seeded with ``seed``."""
    return perturb_offsets(build_model(config.model, seed=seed), seed).eval()


def make_images(batch: int, size: int = 112, seed: int = IMAGE_SEED) -> torch.Tensor:
    """Random CLIP-normalised-looking images ``[batch, 3, size, size]`` from a fixed seed."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, size, size, generator=gen)
