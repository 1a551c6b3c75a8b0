"""The procedural MVTec-layout dataset (fgad.data.synthetic)."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from fgad.core.io import read_image, read_mask
from fgad.data import synthetic
from fgad.data.datasets import discover
from fgad.data.synthetic import SYNTHETIC_DEFECTS, SYNTHETIC_STYLES, make_synthetic_dataset


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def default_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    start = time.perf_counter()
    root = make_synthetic_dataset(tmp_path_factory.mktemp("syn") / "data")
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0, f"default synthetic dataset took {elapsed:.2f}s (budget 2s)"
    return root


def test_default_layout_and_counts(default_root: Path) -> None:
    for cls in ("tile", "disc"):
        base = default_root / cls
        assert len(list((base / "train" / "good").glob("*.png"))) == 8
        assert len(list((base / "test" / "good").glob("*.png"))) == 6
        assert not (base / "ground_truth" / "good").exists()
        for defect in SYNTHETIC_DEFECTS:
            images = sorted((base / "test" / defect).glob("*.png"))
            masks = sorted((base / "ground_truth" / defect).glob("*_mask.png"))
            assert [p.stem for p in images] == ["000", "001", "002", "003"]
            assert [p.name for p in masks] == [f"{p.stem}_mask.png" for p in images]
    assert sorted(p.name for p in default_root.iterdir()) == ["disc", "tile"]
    assert not list(default_root.parent.glob(".*partial"))
    image = read_image(default_root / "tile" / "train" / "good" / "000.png")
    assert image.shape == (128, 128, 3)


def test_masks_binary_and_nonempty_exactly_for_defects(default_root: Path) -> None:
    for s in discover(default_root, "test"):
        if s.label == 0:
            assert s.mask_path is None
            continue
        raw = cv2.imdecode(np.fromfile(s.mask_path, np.uint8), cv2.IMREAD_UNCHANGED)
        assert raw.dtype == np.uint8 and raw.ndim == 2 and set(np.unique(raw)) == {0, 255}
        frac = (raw > 0).mean()
        assert 0.002 < frac < 0.1, (s.image_path, frac)


def test_defects_are_visible_inside_their_masks(default_root: Path) -> None:
    for cls in ("tile", "disc"):
        goods = np.stack([read_image(s.image_path) for s in discover(default_root, "train", cls)])
        reference = np.median(goods.astype(np.float32), axis=0)
        for s in discover(default_root, "test", cls):
            if s.label == 0:
                continue
            diff = np.abs(read_image(s.image_path).astype(np.float32) - reference).mean(axis=2)
            mask = read_mask(s.mask_path)
            inside, outside = diff[mask].mean(), diff[~mask].mean()
            assert inside > 2.5 * outside and inside > 40, (s.image_path, inside, outside)


@pytest.mark.parametrize("style", SYNTHETIC_STYLES)
@pytest.mark.parametrize("defect", SYNTHETIC_DEFECTS)
def test_defect_changes_only_masked_pixels(style: str, defect: str) -> None:
    def render(kind: str) -> tuple[np.ndarray, np.ndarray]:
        return synthetic._render(style, 96, kind, synthetic._rng(7, 1, 2), synthetic._rng(7, 3))

    clean, empty = render("good")
    broken, mask = render(defect)
    assert not empty.any() and mask.any()
    changed = np.any(clean != broken, axis=2)
    assert not changed[~mask].any(), "pixels outside the mask were modified"
    assert changed[mask].mean() > 0.9


def test_same_seed_same_bytes_and_seed_matters(tmp_path: Path) -> None:
    kw = {"n_train_good": 2, "n_test_good": 1, "n_test_defect": 1, "image_size": 64}
    a = _files(make_synthetic_dataset(tmp_path / "a", seed=3, **kw))
    b = _files(make_synthetic_dataset(tmp_path / "b", seed=3, **kw))
    c = _files(make_synthetic_dataset(tmp_path / "c", seed=4, **kw))
    assert a == b
    assert a.keys() == c.keys() and a != c
    # A class looks the same whatever other classes are generated with it.
    solo = _files(make_synthetic_dataset(tmp_path / "d", classes=("tile",), seed=3, **kw))
    assert solo == {k: v for k, v in a.items() if k.startswith("tile")}


def test_normal_images_vary(default_root: Path) -> None:
    goods = [read_image(p) for p in sorted((default_root / "disc" / "train" / "good").glob("*.png"))]
    assert all(not np.array_equal(goods[0], g) for g in goods[1:])


def test_mesh_and_grayscale(tmp_path: Path) -> None:
    root = make_synthetic_dataset(
        tmp_path / "g", classes=("mesh", "tile"), n_train_good=1, n_test_good=1, n_test_defect=1,
        image_size=48, grayscale_classes=("mesh",),
    )
    mesh = cv2.imdecode(np.fromfile(root / "mesh/train/good/000.png", np.uint8), cv2.IMREAD_UNCHANGED)
    tile = cv2.imdecode(np.fromfile(root / "tile/train/good/000.png", np.uint8), cv2.IMREAD_UNCHANGED)
    assert mesh.shape == (48, 48) and tile.shape == (48, 48, 3)
    assert read_image(root / "mesh/train/good/000.png").shape == (48, 48, 3)


def test_argument_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="available: tile, disc, mesh"):
        make_synthetic_dataset(tmp_path / "x", classes=("tile", "bottle"))
    with pytest.raises(ValueError, match="grayscale_classes"):
        make_synthetic_dataset(tmp_path / "x", classes=("tile",), grayscale_classes=("disc",))
    with pytest.raises(ValueError, match="image_size"):
        make_synthetic_dataset(tmp_path / "x", image_size=8)
    with pytest.raises(ValueError, match="n_test_defect"):
        make_synthetic_dataset(tmp_path / "x", n_test_defect=-1)
    assert not (tmp_path / "x").exists()


def test_existing_root_and_overwrite(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    root.mkdir()
    (root / "keep.txt").write_text("user data")
    kw = {"classes": ("disc",), "n_train_good": 1, "n_test_good": 0, "n_test_defect": 1, "image_size": 32}
    with pytest.raises(FileExistsError, match="overwrite=True"):
        make_synthetic_dataset(root, **kw)
    assert (root / "keep.txt").exists()
    make_synthetic_dataset(root, overwrite=True, **kw)
    assert not (root / "keep.txt").exists() and (root / "disc/train/good/000.png").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no temp folders left behind


def test_failure_leaves_no_partial_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real_write = synthetic._write_png

    def flaky_write(path: Path, array: np.ndarray) -> None:
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError("disk full (simulated)")
        real_write(path, array)

    monkeypatch.setattr(synthetic, "_write_png", flaky_write)
    with pytest.raises(OSError, match="simulated"):
        make_synthetic_dataset(tmp_path / "ds", n_train_good=2, image_size=32)
    assert list(tmp_path.iterdir()) == []
