"""Fixtures of the runtime tests: a synthetic dataset and hand-made bundles (see fake_bundle.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fgad.data.io import read_image
from fgad.data.synthetic import make_synthetic_dataset
from tests.runtime.fake_bundle import FakeBundle, make_bundle


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic MVTec layout, class 'tile': 4 train good, 3 test good, 2 per defect, 64 px."""
    root = tmp_path_factory.mktemp("runtime-data") / "data"
    return make_synthetic_dataset(root, classes=("tile",), n_train_good=4, n_test_good=3, n_test_defect=2,
                                  image_size=64, seed=3)


@pytest.fixture(scope="session")
def good_dir(dataset: Path) -> Path:
    return dataset / "tile" / "train" / "good"


@pytest.fixture(scope="session")
def good_images(good_dir: Path) -> list[np.ndarray]:
    return [read_image(p) for p in sorted(good_dir.glob("*.png"))]


@pytest.fixture(scope="session")
def test_images(dataset: Path) -> list[np.ndarray]:
    return [read_image(p) for p in sorted((dataset / "tile" / "test").rglob("*.png"))]


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
