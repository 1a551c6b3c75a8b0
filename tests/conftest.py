"""The test suite's fixtures, in one place. Torch-free at import: the runtime's tests also run in a venv
without torch (``make test-runtime``), so fixtures that need torch import it (and :mod:`tests.helpers.tiny`,
the one tiny-model builder) in their bodies.

Groups: tiny random CLIP models (FiLo++ on ``tiny-test``), synthetic MVTec-layout data, hand-made bundles
(:mod:`tests.helpers.fake_bundle`), a video file, and the CPU build of ``cpp_ext``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from fgad.core.io import read_image
from fgad.data.synthetic import make_synthetic_dataset
from tests.helpers.cpp_ext import load_deform_ctypes
from tests.helpers.fake_bundle import FakeBundle, make_bundle

if TYPE_CHECKING:
    import torch

    from fgad.config import ModelConfig
    from fgad.methods.filo.model import FiLoPlusPlus

logging.getLogger("root").setLevel(logging.ERROR)  # open_clip's "initialized randomly" notices

#: The class of the synthetic datasets below (also :data:`tests.helpers.tiny.CLASS_NAME`).
CLASS_NAME = "tile"


# ---------------------------------------------------------------- tiny models (torch)


@pytest.fixture(scope="session")
def tiny_cfg() -> ModelConfig:
    from tests.helpers.tiny import tiny_model_config

    return tiny_model_config()


@pytest.fixture(scope="module")
def tiny_clip(tiny_cfg: ModelConfig) -> torch.nn.Module:
    """The frozen open_clip model alone (same seed, so the same weights as ``tiny_model``'s towers)."""
    from fgad.backbone.clip_loader import create_clip

    return create_clip(tiny_cfg.backbone)


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_cfg: ModelConfig):  # noqa: ANN201 - open_clip's tokenizer type
    from fgad.backbone.clip_loader import get_tokenizer

    return get_tokenizer(tiny_cfg.backbone)


@pytest.fixture(scope="module")
def tiny_model(tiny_cfg: ModelConfig) -> FiLoPlusPlus:
    """FiLo++ on the tiny backbone, eval mode, trainable parts seeded with ``HEAD_SEED``."""
    from fgad.methods.filo.build import build_model
    from tests.helpers.tiny import HEAD_SEED

    return build_model(tiny_cfg, seed=HEAD_SEED).eval()


@pytest.fixture(scope="module")
def images(tiny_cfg: ModelConfig) -> torch.Tensor:
    """Two random images at the tiny model's input size."""
    from tests.helpers.tiny import make_images

    return make_images(2, tiny_cfg.backbone.image_size)


@pytest.fixture(scope="session")
def cocoop_model() -> FiLoPlusPlus:
    """The default (CoCoOp, filtering) mini model; tests must not change its weights."""
    from tests.helpers.tiny import make_config, make_model

    return make_model(make_config())


@pytest.fixture(scope="session")
def coop_model() -> FiLoPlusPlus:
    """CoOp context with per-image filtering: the text does not depend on the image, so freezing is exact."""
    from tests.helpers.tiny import make_config, make_model

    return make_model(make_config(conditioning="coop", filtering=True), seed=5)


# ---------------------------------------------------------------- synthetic data


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic MVTec-layout data: tile, 4 train/good (the references), 3 good + 1 defect test images, 112 px."""
    root = tmp_path_factory.mktemp("export_data")
    return make_synthetic_dataset(root, classes=(CLASS_NAME,), n_train_good=4, n_test_good=3, n_test_defect=1,
                                  image_size=112, seed=0)


@pytest.fixture(scope="session")
def refs_dir(data_root: Path) -> Path:
    return data_root / CLASS_NAME / "train" / "good"


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic MVTec layout, class 'tile': 4 train good, 3 test good, 2 per defect, 64 px."""
    root = tmp_path_factory.mktemp("runtime-data") / "data"
    return make_synthetic_dataset(root, classes=(CLASS_NAME,), n_train_good=4, n_test_good=3, n_test_defect=2,
                                  image_size=64, seed=3)


@pytest.fixture(scope="session")
def good_dir(dataset: Path) -> Path:
    return dataset / CLASS_NAME / "train" / "good"


@pytest.fixture(scope="session")
def good_images(good_dir: Path) -> list[np.ndarray]:
    return [read_image(p) for p in sorted(good_dir.glob("*.png"))]


@pytest.fixture(scope="session")
def test_images(dataset: Path) -> list[np.ndarray]:
    return [read_image(p) for p in sorted((dataset / CLASS_NAME / "test").rglob("*.png"))]


def write_video(path: Path, frames: list[np.ndarray], fps: float = 25.0) -> Path:
    """Write RGB frames to an MJPG .avi (OpenCV's built-in codec, available in every opencv-python wheel)."""
    import cv2

    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert writer.isOpened(), "OpenCV cannot write MJPG video here"
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


@pytest.fixture(scope="session")
def video_path(tmp_path_factory: pytest.TempPathFactory, test_images: list[np.ndarray],
               good_images: list[np.ndarray]) -> Path:
    """A 10-frame 64x64 video of the synthetic test images."""
    frames = (test_images + good_images)[:10]
    assert len(frames) == 10
    return write_video(tmp_path_factory.mktemp("video") / "parts.avi", frames)


# ---------------------------------------------------------------- hand-made bundles (torch-free)


@pytest.fixture()
def bundle(tmp_path: Path) -> FakeBundle:
    """A fresh zero-shot bundle per test (free to tamper with)."""
    return make_bundle(tmp_path / "bundle")


@pytest.fixture(scope="session")
def shared_bundle(tmp_path_factory: pytest.TempPathFactory) -> FakeBundle:
    """A read-only zero-shot bundle shared by the session."""
    return make_bundle(tmp_path_factory.mktemp("shared") / "bundle")


@pytest.fixture(scope="session")
def refs_bundle(tmp_path_factory: pytest.TempPathFactory, good_images: list[np.ndarray]) -> FakeBundle:
    """A read-only bundle whose references.npz holds the first 3 good training images."""
    return make_bundle(tmp_path_factory.mktemp("shared-refs") / "bundle", references=good_images[:3])


# ---------------------------------------------------------------- cpp_ext


@pytest.fixture(scope="session")
def deform_ctypes() -> ModuleType:
    return load_deform_ctypes()


@pytest.fixture(scope="session")
def cpu_lib(deform_ctypes: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The CPU build of the kernels' math, compiled once per session into a temporary folder."""
    compiler = deform_ctypes.find_cxx()
    if compiler is None:
        pytest.skip("no C++ compiler (g++/c++ or $CXX) on this machine: the CPU build cannot be compiled")
    path = deform_ctypes.build_cpu_library(tmp_path_factory.mktemp("cpp_ext_cpu"), compiler)
    return deform_ctypes.DeformLibrary(path)
