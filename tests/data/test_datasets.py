"""Dataset discovery (MVTec / VisA layouts) and per-sample loading."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from fgad.core.io import read_image
from fgad.data.datasets import (
    Sample,
    count_by,
    discover,
    discover_mvtec,
    discover_visa,
    list_classes,
    load_sample_arrays,
    load_sample_raw,
)
from fgad.data.synthetic import SYNTHETIC_DEFECTS, make_synthetic_dataset

N_TRAIN, N_GOOD, N_DEFECT = 3, 2, 2


@pytest.fixture(scope="module")
def syn_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("syn") / "mvtec"
    return make_synthetic_dataset(
        root, n_train_good=N_TRAIN, n_test_good=N_GOOD, n_test_defect=N_DEFECT, image_size=64
    )


def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", array)
    assert ok
    path.write_bytes(buf.tobytes())
    return path


# --------------------------------------------------------------------------- MVTec


def test_list_classes_mvtec(syn_root: Path) -> None:
    assert list_classes(syn_root) == ["disc", "tile"]


def test_discover_train_is_good_only(syn_root: Path) -> None:
    samples = discover(syn_root, "train")
    assert len(samples) == 2 * N_TRAIN
    assert all(s.label == 0 and s.mask_path is None and s.defect_type == "good" for s in samples)
    assert all(s.split == "train" and s.image_path.parent.name == "good" for s in samples)
    assert count_by(samples, "class_name") == {"disc": N_TRAIN, "tile": N_TRAIN}


def test_discover_test_counts_labels_and_masks(syn_root: Path) -> None:
    samples = discover(syn_root, "test")
    expected = {"good": 2 * N_GOOD, **{d: 2 * N_DEFECT for d in SYNTHETIC_DEFECTS}}
    assert count_by(samples) == expected
    for s in samples:
        assert s.split == "test"
        assert s.image_path.is_file()
        if s.defect_type == "good":
            assert s.label == 0 and s.mask_path is None
        else:
            assert s.label == 1
            assert s.mask_path == syn_root / s.class_name / "ground_truth" / s.defect_type / (
                s.image_path.stem + "_mask.png"
            )


def test_discover_is_sorted_and_repeatable(syn_root: Path) -> None:
    a = discover(syn_root, "test")
    assert a == discover(syn_root, "test")
    assert [s.class_name for s in a] == sorted(s.class_name for s in a)
    first_class = [s for s in a if s.class_name == "disc"]
    assert first_class[0].defect_type == "good"  # good first inside a class


def test_discover_class_filter(syn_root: Path) -> None:
    only = discover(syn_root, "test", ["tile"])
    assert {s.class_name for s in only} == {"tile"}
    assert discover(syn_root, "test", "tile") == only


def test_unknown_class_lists_available(syn_root: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown class.*'bottle'.*available: disc, tile"):
        discover(syn_root, "test", ["tile", "bottle"])


def test_bad_split(syn_root: Path) -> None:
    with pytest.raises(ValueError, match="split must be one of"):
        discover(syn_root, "val")


def test_missing_and_empty_root(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="MVTec layout"):
        discover(tmp_path / "absent", "test")
    with pytest.raises(FileNotFoundError, match="no dataset classes"):
        discover(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="no dataset classes"):
        list_classes(tmp_path)


def test_class_folder_as_root_gives_hint(syn_root: Path) -> None:
    with pytest.raises(FileNotFoundError, match="single class folder"):
        discover(syn_root / "tile", "test")


def _mini_mvtec(root: Path) -> Path:
    img = np.full((10, 12, 3), 90, np.uint8)
    cls = root / "widget"
    _png(cls / "train" / "good" / "a.png", img)
    _png(cls / "test" / "good" / "g.png", img)
    _png(cls / "test" / "crack" / "c1.png", img)
    _png(cls / "test" / "crack" / "c2.png", img)
    mask = np.zeros((10, 12), np.uint8)
    mask[2:4, 3:6] = 255
    _png(cls / "ground_truth" / "crack" / "c1.png", mask)  # <stem>.png naming
    (cls / "test" / "crack" / "notes.txt").write_text("not an image")
    (cls / "test" / "crack" / ".DS_Store").write_bytes(b"\0")
    (root / "README.md").write_text("stray file at the root")
    return root


def test_alternative_mask_name_missing_mask_and_non_images(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = _mini_mvtec(tmp_path / "ds")
    with caplog.at_level(logging.WARNING, logger="fgad.data.datasets"):
        samples = discover_mvtec(root, "test")
    by_name = {s.image_path.name: s for s in samples}
    assert sorted(by_name) == ["c1.png", "c2.png", "g.png"]
    assert by_name["c1.png"].mask_path == root / "widget" / "ground_truth" / "crack" / "c1.png"
    assert by_name["c2.png"].mask_path is None and by_name["c2.png"].label == 1
    warnings = [r for r in caplog.records if "no ground-truth mask" in r.getMessage()]
    assert len(warnings) == 1 and "c2.png" in warnings[0].getMessage()
    # A defect without a mask loads with an empty mask instead of failing.
    _, mask = load_sample_raw(by_name["c2.png"])
    assert mask.shape == (10, 12) and not mask.any()


# --------------------------------------------------------------------------- VisA


def _mini_visa(root: Path) -> Path:
    rows = ["object,split,label,image,mask"]
    for obj in ("candle", "pcb1"):
        for i in range(2):
            rel = f"{obj}/Data/Images/Normal/{i:04d}.JPG"
            _png(root / rel, np.full((8, 8, 3), 100, np.uint8))
            rows.append(f"{obj},train,normal,{rel},")
        rel = f"{obj}/Data/Images/Normal/0009.JPG"
        _png(root / rel, np.full((8, 8, 3), 100, np.uint8))
        rows.append(f"{obj},test,normal,{rel},")
        rel, mrel = f"{obj}/Data/Images/Anomaly/000.JPG", f"{obj}/Data/Masks/Anomaly/000.png"
        _png(root / rel, np.full((8, 8, 3), 30, np.uint8))
        ids = np.zeros((8, 8), np.uint8)
        ids[1:3, 1:3] = 2  # raw VisA masks hold class ids, not 255
        _png(root / mrel, ids)
        rows.append(f"{obj},test,anomaly,{rel},{mrel}")
    csv = root / "split_csv" / "1cls.csv"
    csv.parent.mkdir(parents=True)
    csv.write_text("\n".join(rows) + "\n")
    return root


def test_visa_discovery(tmp_path: Path) -> None:
    root = _mini_visa(tmp_path / "visa")
    assert list_classes(root) == ["candle", "pcb1"]
    train = discover(root, "train")
    assert len(train) == 4 and all(s.label == 0 and s.mask_path is None for s in train)
    test = discover(root, "test", ["pcb1"])
    assert [(s.label, s.defect_type) for s in test] == [(0, "good"), (1, "anomaly")]
    anomaly = test[1]
    assert anomaly.mask_path == root / "pcb1/Data/Masks/Anomaly/000.png"
    assert anomaly.image_path == root / "pcb1/Data/Images/Anomaly/000.JPG"
    _, mask = load_sample_raw(anomaly)
    assert mask.sum() == 4  # class-id mask read as defect pixels
    assert discover_visa(root, "test", split_csv="split_csv/1cls.csv") == discover(root, "test")


def test_visa_errors(tmp_path: Path) -> None:
    root = _mini_visa(tmp_path / "visa")
    with pytest.raises(ValueError, match="available: candle, pcb1"):
        discover(root, "test", ["capsules"])
    csv = root / "split_csv" / "1cls.csv"
    csv.write_text(csv.read_text().replace("anomaly", "defective", 1))
    with pytest.raises(ValueError, match="'defective' is not one of"):
        discover(root, "test")
    csv.write_text("object,split,image\ncandle,train,x.png\n")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['label', 'mask'\]"):
        discover(root, "train")


# --------------------------------------------------------------------------- loading


def test_load_sample_arrays(syn_root: Path) -> None:
    samples = discover(syn_root, "test", ["tile"])
    good = next(s for s in samples if s.label == 0)
    bad = next(s for s in samples if s.label == 1)
    img, mask = load_sample_arrays(good, 32)
    assert img.shape == (3, 32, 32) and img.dtype == np.float32
    assert mask.shape == (32, 32) and mask.dtype == np.float32 and not mask.any()
    _, mask = load_sample_arrays(bad, 32)
    assert mask.any() and set(np.unique(mask)) == {0.0, 1.0}
    raw_img, raw_mask = load_sample_raw(bad)
    assert raw_img.shape == (64, 64, 3) and raw_img.dtype == np.uint8
    assert raw_mask.shape == (64, 64) and raw_mask.dtype == np.bool_ and raw_mask.any()


def test_broken_file_is_skipped_with_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG garbage")
    sample = Sample(broken, None, 0, "good", "x", "test")
    ok = _png(tmp_path / "ok.png", np.zeros((4, 4, 3), np.uint8))
    missing_mask = Sample(ok, tmp_path / "m.png", 1, "crack", "x", "test")
    with caplog.at_level(logging.WARNING, logger="fgad.data.datasets"):
        assert load_sample_arrays(sample, 16) is None
        assert load_sample_raw(missing_mask) is None
    text = caplog.text
    assert str(broken) in text and str(tmp_path / "m.png") in text


def test_mask_size_mismatch_is_resized(tmp_path: Path) -> None:
    img = _png(tmp_path / "i.png", np.zeros((20, 30, 3), np.uint8))
    m = np.zeros((10, 15), np.uint8)
    m[:5, :] = 255
    mask_path = _png(tmp_path / "i_mask.png", m)
    _, mask = load_sample_raw(Sample(img, mask_path, 1, "crack", "x", "test"))
    assert mask.shape == (20, 30) and mask[:10].all() and not mask[10:].any()


# --------------------------------------------------------------------------- real data

REAL_ROOT = Path(__file__).resolve().parents[3] / "shared/data/magnetic_tile"


@pytest.mark.realdata
def test_magnetic_tile_real_data() -> None:
    if not (REAL_ROOT / "magnetic_tile").is_dir():
        pytest.skip(f"real data not present at {REAL_ROOT} (see ../shared/data/README.md)")
    assert list_classes(REAL_ROOT) == ["magnetic_tile"]
    train = discover(REAL_ROOT, "train")
    assert len(train) == 400 and all(s.label == 0 for s in train)
    test = discover(REAL_ROOT, "test", ["magnetic_tile"])
    assert count_by(test) == {
        "good": 552,
        "blowhole": 115,
        "break": 85,
        "crack": 57,
        "fray": 32,
        "uneven": 103,
    }
    defects = [s for s in test if s.label == 1]
    assert all(s.mask_path is not None and s.mask_path.name.endswith("_mask.png") for s in defects)
    image = read_image(train[0].image_path)
    assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8
    # An `uneven` image with an all-zero mask is still a defect at image level.
    uneven = next(s for s in defects if s.image_path.stem == "exp3_num_45042")
    img, mask = load_sample_raw(uneven)
    assert uneven.label == 1 and mask.shape == img.shape[:2] and not mask.any()


def test_sample_coerces_paths_and_checks_label() -> None:
    s = Sample("a/b.png", "a/b_mask.png", 1, "crack", "x", "test")  # type: ignore[arg-type]
    assert s.image_path == Path("a/b.png") and s.mask_path == Path("a/b_mask.png")
    with pytest.raises(ValueError, match="label must be 0"):
        Sample(Path("a.png"), None, 2, "crack", "x", "test")
