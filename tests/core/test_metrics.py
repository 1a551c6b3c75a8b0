"""Tests for fgad.core.metrics against sklearn and a slow, straightforward AUPRO reference."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from fgad.core.metrics import (
    aupro,
    compute_metrics,
    f1_max,
    image_auroc,
    markdown_table,
    mean_metrics,
    pixel_auroc,
)
from tests.helpers.references import scipy_ndimage, sklearn_metrics

SEEDS = [0, 1, 2, 3, 4]


def _random_scores(rng: np.random.Generator, n: int, ties: bool) -> np.ndarray:
    scores = rng.normal(size=n)
    # Rounding to a coarse grid creates many ties, including ties across the two classes.
    return np.round(scores, 1) if ties else scores


def _sklearn_f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    precision, recall, _ = sklearn_metrics().precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = 2 * precision * recall / (precision + recall)
    return float(np.nanmax(f1))


# --------------------------------------------------------------------------- AUROC


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("pos_frac", [0.1, 0.5, 0.9])  # 0.9 exercises the swapped (pos > neg) path
def test_image_auroc_matches_sklearn(seed: int, ties: bool, pos_frac: float) -> None:
    rng = np.random.default_rng(seed)
    n = 300
    labels = rng.random(n) < pos_frac
    labels[:2] = [True, False]
    scores = _random_scores(rng, n, ties) + 0.7 * labels
    assert image_auroc(labels, scores) == pytest.approx(sklearn_metrics().roc_auc_score(labels, scores), abs=1e-12)


def test_image_auroc_all_tied_is_half_and_accepts_int_labels() -> None:
    labels = np.array([0, 1, 0, 1, 1])
    assert image_auroc(labels, np.full(5, 3.0)) == pytest.approx(0.5)
    expected = sklearn_metrics().roc_auc_score(labels, -np.arange(5.0))
    assert image_auroc(labels, -np.arange(5.0)) == pytest.approx(expected)


@pytest.mark.parametrize("labels", [np.zeros(6, dtype=int), np.ones(6, dtype=bool)])
def test_single_class_gives_nan(labels: np.ndarray) -> None:
    scores = np.linspace(0, 1, 6)
    assert math.isnan(image_auroc(labels, scores))
    masks = np.broadcast_to(labels.reshape(1, 2, 3), (2, 2, 3))
    assert math.isnan(pixel_auroc(masks, np.broadcast_to(scores.reshape(1, 2, 3), (2, 2, 3))))


@pytest.mark.parametrize("seed", SEEDS[:3])
@pytest.mark.parametrize("ties", [False, True])
def test_pixel_auroc_matches_sklearn_on_flattened_pixels(seed: int, ties: bool) -> None:
    rng = np.random.default_rng(seed)
    masks = rng.random((4, 16, 20)) < 0.2
    maps = (_random_scores(rng, masks.size, ties).reshape(masks.shape) + masks).astype(np.float32)
    expected = sklearn_metrics().roc_auc_score(masks.ravel(), maps.ravel())
    assert pixel_auroc(masks.astype(np.uint8), maps) == pytest.approx(expected, abs=1e-12)
    # A single [H, W] image is accepted too.
    one = sklearn_metrics().roc_auc_score(masks[0].ravel(), maps[0].ravel())
    assert pixel_auroc(masks[0], maps[0]) == pytest.approx(one)


@pytest.mark.parametrize(
    ("labels", "scores", "match"),
    [
        (np.array([0, 1, 2]), np.array([0.1, 0.2, 0.3]), "labels must be binary"),
        (np.array([0, 1]), np.array([0.1, 0.2, 0.3]), "equal length"),
        (np.array([0, 1, 1]), np.array([0.1, np.nan, 0.3]), "scores contains NaN"),
        (np.array([0, 1, 1]), np.array([0.1, np.inf, 0.3]), "infinite"),
        (np.array([[0, 1]]), np.array([[0.1, 0.2]]), "1-D"),
    ],
)
def test_image_metrics_reject_bad_input(labels: np.ndarray, scores: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        image_auroc(labels, scores)
    with pytest.raises(ValueError, match=match):
        f1_max(labels, scores)


def test_pixel_metrics_reject_bad_input() -> None:
    masks = np.zeros((2, 4, 4), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"masks shape \(2, 4, 4\) != maps shape \(2, 8, 8\)"):
        pixel_auroc(masks, np.zeros((2, 8, 8)))
    with pytest.raises(ValueError, match="mask > 127"):
        aupro(masks + 255, np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="maps contains NaN"):
        aupro(masks, np.full((2, 4, 4), np.nan))
    with pytest.raises(ValueError, match="max_fpr"):
        aupro(masks, np.zeros((2, 4, 4)), max_fpr=0.0)
    with pytest.raises(ValueError, match="num_thresholds"):
        aupro(masks, np.zeros((2, 4, 4)), num_thresholds=1)


# --------------------------------------------------------------------------- F1-max


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("pos_frac", [0.05, 0.5, 0.95])
def test_f1_max_matches_sklearn(seed: int, ties: bool, pos_frac: float) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.random(200) < pos_frac
    labels[0] = True
    scores = _random_scores(rng, labels.size, ties) + 0.5 * labels
    assert f1_max(labels, scores) == pytest.approx(_sklearn_f1_max(labels, scores), abs=1e-12)


def test_f1_max_edge_cases() -> None:
    assert math.isnan(f1_max(np.zeros(4), np.arange(4.0)))
    assert f1_max(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])) == pytest.approx(1.0)
    # All positives: predicting everything anomalous is perfect.
    assert f1_max(np.ones(3), np.array([0.3, 0.1, 0.2])) == pytest.approx(1.0)


# --------------------------------------------------------------------------- AUPRO


def _reference_aupro(masks: np.ndarray, maps: np.ndarray, max_fpr: float, num_thresholds: int) -> float:
    """Slow, literal AUPRO: loop over thresholds and regions, integrate segment by segment."""
    structure = np.ones((3, 3), dtype=int)  # 8-connectivity
    region_masks = []
    for img_idx, mask in enumerate(masks):
        labelled, n = scipy_ndimage().label(mask, structure=structure)
        region_masks += [(img_idx, labelled == i) for i in range(1, n + 1)]
    if not region_masks:
        return float("nan")
    normal = masks == 0

    points = []
    for th in np.linspace(maps.min(), maps.max(), num_thresholds)[::-1]:  # high -> low threshold
        above = maps > th
        pro = np.mean([above[img_idx][region].mean() for img_idx, region in region_masks])
        fpr = above[normal].mean()
        points.append((float(fpr), float(pro)))
    points.append((1.0, 1.0))  # threshold below every score: everything flagged

    area = 0.0
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:], strict=True):
        if x0 >= max_fpr:
            break
        if x1 > max_fpr:
            y1 = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
            x1 = max_fpr
        area += (x1 - x0) * (y0 + y1) / 2.0
    return area / max_fpr


def _blob_masks(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    """Masks with a few rectangular/diagonal blobs, including an 8-connected-only diagonal pair."""
    masks = np.zeros((n, h, w), dtype=bool)
    for img in masks:
        for _ in range(rng.integers(0, 4)):
            y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
            img[y : y + rng.integers(1, 5), x : x + rng.integers(1, 5)] = True
    masks[0, 0, 0] = masks[0, 1, 1] = True  # one region only under 8-connectivity
    return masks


@pytest.mark.parametrize("seed", SEEDS[:4])
@pytest.mark.parametrize(("max_fpr", "num_thresholds"), [(0.3, 200), (0.05, 50), (1.0, 17)])
def test_aupro_matches_reference(seed: int, max_fpr: float, num_thresholds: int) -> None:
    rng = np.random.default_rng(seed)
    masks = _blob_masks(rng, 4, 20, 24)
    maps = (rng.random(masks.shape) + 0.6 * masks * rng.random(masks.shape)).astype(np.float32)
    if seed % 2:
        maps = np.round(maps * 8) / 8  # many pixels exactly on thresholds
    expected = _reference_aupro(masks, maps, max_fpr, num_thresholds)
    got = aupro(masks, maps, max_fpr=max_fpr, num_thresholds=num_thresholds)
    assert got == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("num_thresholds", [2, 3, 7, 200, 1001])
@pytest.mark.parametrize(("lo", "hi"), [(0.0, 1.0), (-3.3, 7.1), (1e-8, 3e-7), (0.1, 0.1 + 1e-6)])
def test_threshold_binning_equals_binary_search_at_grid_points(
    num_thresholds: int, lo: float, hi: float
) -> None:
    # aupro bins pixels by arithmetic on the linspace grid; values on or next to a grid point are where
    # rounding could put them one bin off, so compare those against an exact binary search.
    from fgad.core.metrics import _count_thresholds_below

    thresholds = np.linspace(lo, hi, num_thresholds)
    values = np.concatenate(
        [
            thresholds,
            np.nextafter(thresholds, np.inf),
            np.nextafter(thresholds, -np.inf),
            np.random.default_rng(0).uniform(lo, hi, 500),
        ]
    )
    for v in (values, values.astype(np.float32)):
        expected = np.searchsorted(thresholds, v.astype(np.float64), side="left")
        np.testing.assert_array_equal(_count_thresholds_below(v, thresholds), expected)


def test_aupro_counts_regions_with_8_connectivity() -> None:
    # Two diagonal touching pixels are one region; a lone pixel elsewhere is another. Only the lone
    # pixel is detected, so PRO is 1/2 at FPR 0 with 8-connectivity (1/3 with 4-connectivity).
    masks = np.zeros((1, 8, 8), dtype=bool)
    masks[0, 1, 1] = masks[0, 2, 2] = masks[0, 6, 6] = True
    maps = np.zeros((1, 8, 8), dtype=np.float32)
    maps[0, 6, 6] = 1.0
    expected = _reference_aupro(masks, maps, 0.3, 200)
    assert aupro(masks, maps) == pytest.approx(expected, abs=1e-12)
    # PRO = 0.5 from FPR 0 up to 0.3 (normal pixels are all tied at the minimum), then rising to 1.
    assert aupro(masks, maps) == pytest.approx(0.5 + 0.5 * 0.3 / 2, abs=1e-12)


def test_aupro_perfect_inverted_and_constant_maps() -> None:
    rng = np.random.default_rng(7)
    masks = _blob_masks(rng, 6, 32, 32)
    noise = rng.random(masks.shape)
    perfect = np.where(masks, 0.6 + 0.4 * noise, 0.4 * noise)
    assert aupro(masks, perfect) == pytest.approx(1.0, abs=1e-6)
    assert aupro(masks, 1.0 - perfect) == pytest.approx(0.0, abs=1e-6)
    # A constant map is at chance level: PRO == FPR, so the normalised area is max_fpr / 2.
    assert aupro(masks, np.full(masks.shape, 0.3), max_fpr=0.3) == pytest.approx(0.15)
    assert aupro(masks, np.full(masks.shape, 0.3), max_fpr=0.1) == pytest.approx(0.05)


def test_aupro_is_nan_without_regions_or_without_normal_pixels() -> None:
    maps = np.random.default_rng(0).random((2, 8, 8))
    assert math.isnan(aupro(np.zeros((2, 8, 8), dtype=bool), maps))
    assert math.isnan(aupro(np.ones((2, 8, 8), dtype=bool), maps))


def test_aupro_is_fast_on_100_maps_of_256() -> None:
    rng = np.random.default_rng(0)
    masks = np.zeros((100, 256, 256), dtype=bool)
    masks[:, 100:140, 50:90] = True
    masks[::3, 10:20, 200:230] = True
    maps = rng.random(masks.shape, dtype=np.float32) + 0.5 * masks
    start = time.perf_counter()
    value = aupro(masks, maps)
    elapsed = time.perf_counter() - start
    assert 0.0 < value < 1.0
    # Typically ~0.15 s; the generous bound only catches a fall-back to per-threshold loops.
    assert elapsed < 1.5, f"aupro took {elapsed:.2f}s on 100x256x256"


# --------------------------------------------------------------------------- aggregation


def test_compute_metrics_keys_and_values() -> None:
    rng = np.random.default_rng(3)
    labels = np.array([0, 0, 1, 1, 0, 1])
    scores = rng.random(6) + labels
    masks = _blob_masks(rng, 6, 16, 16) & labels[:, None, None].astype(bool)
    maps = rng.random(masks.shape) + masks

    image_only = compute_metrics(labels, scores)
    assert list(image_only) == ["image_auroc", "image_f1_max"]
    assert image_only["image_auroc"] == pytest.approx(sklearn_metrics().roc_auc_score(labels, scores))
    assert image_only["image_f1_max"] == pytest.approx(_sklearn_f1_max(labels, scores))

    full = compute_metrics(labels, scores, masks=masks, maps=maps)
    assert set(full) == {"image_auroc", "image_f1_max", "pixel_auroc", "pixel_f1_max", "aupro"}
    maps32 = maps.astype(np.float32)
    assert full["pixel_auroc"] == pytest.approx(sklearn_metrics().roc_auc_score(masks.ravel(), maps32.ravel()))
    assert full["pixel_f1_max"] == pytest.approx(_sklearn_f1_max(masks.ravel(), maps32.ravel()))
    assert full["aupro"] == pytest.approx(_reference_aupro(masks, maps32, 0.3, 200))

    with pytest.raises(ValueError, match="together"):
        compute_metrics(labels, scores, masks=masks)


def test_mean_metrics_ignores_nan_and_missing_keys() -> None:
    per_class = {
        "bottle": {"image_auroc": 0.5, "aupro": float("nan")},
        "cable": {"image_auroc": 0.7, "aupro": 0.9, "pixel_auroc": float("nan")},
        "zipper": {"image_auroc": 0.9, "aupro": 0.6, "pixel_auroc": float("nan")},
    }
    mean = mean_metrics(per_class)
    assert list(mean) == ["image_auroc", "aupro", "pixel_auroc"]
    assert mean["image_auroc"] == pytest.approx(0.7)
    assert mean["aupro"] == pytest.approx(0.75)
    assert math.isnan(mean["pixel_auroc"])


def test_markdown_table_layout_and_formatting() -> None:
    per_class = {
        "bottle": {"image_auroc": 0.98765, "aupro": float("nan")},
        "cable": {"image_auroc": 0.5, "aupro": 0.9, "pixel_auroc": 0.123},
    }
    table = markdown_table(per_class)
    lines = table.strip().splitlines()
    assert len(lines) == 2 + len(per_class) + 1
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
    assert cells[0] == ["class", "image_auroc", "aupro", "pixel_auroc"]
    assert all(len(row) == 4 for row in cells)
    assert cells[2] == ["bottle", "98.8", "–", "–"]
    assert cells[3] == ["cable", "50.0", "90.0", "12.3"]
    assert cells[4] == ["**mean**", "**74.4**", "**90.0**", "**12.3**"]

    explicit = markdown_table(per_class, mean={"image_auroc": float("nan"), "aupro": 0.25, "extra": 1.0})
    mean_row = [c.strip() for c in explicit.strip().splitlines()[-1].strip("|").split("|")]
    assert mean_row == ["**mean**", "–", "**25.0**", "–", "**100.0**"]

    with pytest.raises(ValueError, match="at least one class"):
        markdown_table({})
