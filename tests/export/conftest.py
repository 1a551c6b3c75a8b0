"""Shared fixtures of the export tests: small FiLo++ models, synthetic data, one exported bundle.

Exporting the full ``tiny-test`` graph (4 linear + 3 x 6 MDCI kernels) takes about a minute on
2 CPU cores, almost all of it in ``torch.export`` decompositions and the ONNX optimiser, which
grow with the number of nodes. The fast tests therefore use ``tiny-test`` with fewer heads
(:data:`MINI_HEADS`: 2 linear stages, 2 MDCI stages of a 3x3 and a 1x5 kernel, 2 memory layers);
every code path is the same. The full ``tiny-test`` graph is exported in the ``slow`` tests.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from fgad.config import Config, load_config
from fgad.data.synthetic import make_synthetic_dataset
from fgad.models.build import build_model
from fgad.models.filo import FiLoPlusPlus

logging.getLogger("root").setLevel(logging.ERROR)  # open_clip's "initialized randomly" notices

CLASS_NAME = "tile"
#: Fewer heads than tiny-test, so that one export takes seconds (see the module docstring).
MINI_HEADS: dict[str, Any] = {
    "heads": {"linear_layers": [2, 4], "mdci_layers": [3, 4], "mdci_kernels": [[3, 3], [1, 5]]},
    "fewshot": {"memory_layers": [2, 4]},
}


def make_config(mini: bool = True, **prompts: Any) -> Config:
    """tiny-test with the synthetic description bank, optionally with fewer heads and prompt overrides."""
    model: dict[str, Any] = {"prompts": {"banks": ["synthetic"], **prompts}}
    if mini:
        model.update(MINI_HEADS)
    return load_config("tiny-test", {"model": model})


def perturb_offsets(model: FiLoPlusPlus, seed: int = 0) -> FiLoPlusPlus:
    """Give the MDCI offset/modulation convs non-zero weights (a fresh layer is an ordinary conv),
    so the deformable sampling itself is exercised: fractional offsets and modulation != 1."""
    model.mdci.randomize_offsets(seed)
    return model


def make_model(config: Config, seed: int = 3) -> FiLoPlusPlus:
    return perturb_offsets(build_model(config.model, seed=seed), seed).eval()


def make_images(batch: int, size: int = 112, seed: int = 7) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, size, size, generator=gen)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic MVTec-layout data: tile, 4 train/good (the references), 3 good + 1 defect test images."""
    root = tmp_path_factory.mktemp("export_data")
    return make_synthetic_dataset(root, classes=(CLASS_NAME,), n_train_good=4, n_test_good=3, n_test_defect=1,
                                  image_size=112, seed=0)


@pytest.fixture(scope="session")
def refs_dir(data_root: Path) -> Path:
    return data_root / CLASS_NAME / "train" / "good"


@pytest.fixture(scope="session")
def cocoop_model() -> FiLoPlusPlus:
    """The default (CoCoOp, filtering) mini model; tests must not change its weights."""
    return make_model(make_config())


@pytest.fixture(scope="session")
def coop_model() -> FiLoPlusPlus:
    """CoOp context with per-image filtering: the text does not depend on the image, so freezing is exact."""
    return make_model(make_config(conditioning="coop", filtering=True), seed=5)
