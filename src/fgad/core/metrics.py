"""Anomaly-detection metrics: image/pixel AUROC, F1-max and AUPRO, plus per-class tables.

Numpy-only (connected components come from OpenCV, which the runtime install already has), so the
evaluation can run without torch or scipy.

Conventions
-----------
* Labels and masks are binary: ``1``/``True`` is anomalous.
* Higher scores mean "more anomalous".
* Undefined metrics (a single class present, no anomalous regions) are ``float('nan')``; the table
  and mean helpers treat NaN as missing.
* Pixel-level functions take ``masks`` and ``maps`` of identical shape ``[N, H, W]`` (a single
  ``[H, W]`` image is accepted too). Maps are evaluated in float32 to halve memory; resize them to
  the mask resolution before calling.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np

__all__ = [
    "aupro",
    "compute_metrics",
    "f1_max",
    "image_auroc",
    "markdown_table",
    "mean_metrics",
    "pixel_auroc",
]

# Queries per np.searchsorted call in the AUROC; bounds the int64 temporaries to ~16 MiB.
_CHUNK = 1 << 21


# --------------------------------------------------------------------------- input checks


def _as_binary(values: np.ndarray, name: str) -> np.ndarray:
    """Return ``values`` as a bool array, rejecting anything that is not 0/1."""
    arr = np.asarray(values)
    if arr.dtype == np.bool_:
        return arr
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be bool or numeric 0/1, got dtype {arr.dtype}")
    is_one = arr == 1
    valid = is_one | (arr == 0)
    if not valid.all():
        bad = np.unique(arr[~valid])[:5]
        raise ValueError(
            f"{name} must be binary (bool or 0/1); found other values such as {bad.tolist()} "
            "(threshold it first, e.g. mask > 127)"
        )
    return is_one


def _as_scores(values: np.ndarray, name: str, dtype: type = np.float64) -> np.ndarray:
    arr = np.asarray(values)
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(dtype, copy=False)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values; every score must be a finite number")
    return arr


def _check_image_inputs(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lab = np.asarray(labels)
    sco = np.asarray(scores)
    if lab.ndim != 1 or sco.ndim != 1 or lab.shape != sco.shape:
        raise ValueError(
            f"labels and scores must be 1-D arrays of equal length, got shapes {lab.shape} and {sco.shape}"
        )
    return _as_binary(lab, "labels"), _as_scores(sco, "scores")


def _check_pixel_inputs(masks: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate and normalise to bool masks and float32 maps of shape [N, H, W]."""
    msk = np.asarray(masks)
    amp = np.asarray(maps)
    if msk.shape != amp.shape:
        raise ValueError(
            f"masks shape {msk.shape} != maps shape {amp.shape}; resize the anomaly maps to the mask "
            "resolution first"
        )
    if msk.ndim not in (2, 3):
        raise ValueError(f"masks/maps must be [N, H, W] or [H, W], got shape {msk.shape}")
    if msk.size == 0:
        raise ValueError(f"masks/maps are empty (shape {msk.shape})")
    if msk.ndim == 2:
        msk, amp = msk[None], amp[None]
    return _as_binary(msk, "masks"), _as_scores(amp, "maps", np.float32)


# --------------------------------------------------------------------------- core kernels


def _auroc_split(pos: np.ndarray, neg: np.ndarray) -> float:
    """Exact ROC AUC = P(pos > neg) + 0.5 * P(pos == neg), i.e. Mann-Whitney U with tie correction.

    Only the larger group is sorted; the smaller one is counted against it with ``searchsorted`` in
    chunks, so memory stays at one sorted copy plus bounded temporaries. Integer counts keep the
    result exact (identical to sklearn's trapezoidal ROC AUC, ties included).
    """
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    flip = pos.size > neg.size
    query, ref = (neg, pos) if flip else (pos, neg)
    ref = np.sort(ref)
    twice_wins = 0  # 2 * #(query > ref) + #(query == ref)
    for start in range(0, query.size, _CHUNK):
        q = query[start : start + _CHUNK]
        twice_wins += int(np.searchsorted(ref, q, side="left").sum(dtype=np.int64))
        twice_wins += int(np.searchsorted(ref, q, side="right").sum(dtype=np.int64))
    auc = twice_wins / (2 * pos.size * neg.size)
    return 1.0 - auc if flip else auc


def _f1_max_split(pos: np.ndarray, neg: np.ndarray) -> float:
    """Maximum F1 over thresholds ``score >= t``.

    The maximum is always reached at a threshold equal to some positive score (moving the threshold
    down to a negative-only value adds false positives and no true positives), so only the distinct
    positive scores are tried. F1 is computed as ``2 TP / (TP + FP + P)``, which avoids 0/0.
    """
    if pos.size == 0:
        return float("nan")
    pos_sorted = np.sort(pos)
    neg_sorted = np.sort(neg)
    keep = np.empty(pos_sorted.size, dtype=bool)
    keep[0] = True
    np.not_equal(pos_sorted[1:], pos_sorted[:-1], out=keep[1:])
    thresholds = pos_sorted[keep]
    tp = pos_sorted.size - np.searchsorted(pos_sorted, thresholds, side="left")
    fp = neg_sorted.size - np.searchsorted(neg_sorted, thresholds, side="left")
    f1 = 2.0 * tp / (tp + fp + pos_sorted.size)
    return float(f1.max())


# --------------------------------------------------------------------------- public metrics


def image_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of image-level ``scores`` against binary ``labels``; NaN if only one class is present."""
    lab, sco = _check_image_inputs(labels, scores)
    return _auroc_split(sco[lab], sco[~lab])


def pixel_auroc(masks: np.ndarray, maps: np.ndarray) -> float:
    """ROC AUC over every pixel of every image (maps evaluated in float32); NaN if one class only."""
    msk, amp = _check_pixel_inputs(masks, maps)
    return _auroc_split(amp[msk], amp[~msk])


def f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    """Maximum F1 over all thresholds of the precision-recall curve; NaN if there are no positives."""
    lab, sco = _check_image_inputs(labels, scores)
    return _f1_max_split(sco[lab], sco[~lab])


def _region_labels(mask: np.ndarray) -> tuple[int, np.ndarray]:
    """8-connected components of one 2-D bool mask: (number of regions, int32 label image)."""
    import cv2  # runtime dependency; imported lazily so `import fgad.core.metrics` stays cheap

    n_labels, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    return n_labels - 1, labels


def _count_thresholds_below(values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """For each value, the number of ``thresholds`` strictly below it (``searchsorted(..., 'left')``).

    ``thresholds`` is a linspace grid, so the bin follows from one division; floating-point rounding
    can leave it one off near a grid point, which the exact comparisons below repair. This is ~5x
    faster than a binary search per pixel and gives identical results.
    """
    lo, n = float(thresholds[0]), thresholds.size
    step = (float(thresholds[-1]) - lo) / (n - 1)
    if not step > 0.0:
        return np.searchsorted(thresholds, values, side="left")
    v = values.astype(np.float64, copy=False)
    idx = np.ceil((v - lo) / step)
    np.clip(idx, 0, n, out=idx)
    idx = idx.astype(np.intp)
    upper = np.append(thresholds, np.inf)  # upper[j] = thresholds[j], must be >= v
    lower = np.insert(thresholds, 0, -np.inf)  # lower[j] = thresholds[j - 1], must be < v
    while True:
        too_low = upper[idx] < v
        too_high = lower[idx] >= v
        if not (too_low.any() or too_high.any()):
            return idx
        idx += too_low
        idx -= too_high


def _trapezoid_until(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid integral of y(x) over [x[0], x_max] for non-decreasing ``x`` with ``x[-1] >= x_max``.

    The curve is linearly interpolated at exactly ``x_max``.
    """
    n_keep = int(np.searchsorted(x, x_max, side="right"))
    xs, ys = x[:n_keep], y[:n_keep]
    if xs[-1] < x_max:
        x0, x1, y0, y1 = x[n_keep - 1], x[n_keep], y[n_keep - 1], y[n_keep]
        y_at = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
        xs, ys = np.append(xs, x_max), np.append(ys, y_at)
    return float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1]) / 2.0))


def aupro(masks: np.ndarray, maps: np.ndarray, max_fpr: float = 0.3, num_thresholds: int = 200) -> float:
    """Normalised area under the per-region-overlap (PRO) curve up to ``max_fpr`` (MVTec AD protocol).

    For ``num_thresholds`` thresholds ``t`` spaced linearly over ``[maps.min(), maps.max()]``:

    * PRO(t) = mean over all 8-connected ground-truth regions (of all images) of the fraction of the
      region's pixels with ``map > t`` -- every defect counts equally, whatever its size;
    * FPR(t) = fraction of all normal (``mask == 0``) pixels with ``map > t``.

    The point (FPR=1, PRO=1) of a threshold below every score is appended so the curve always reaches
    ``max_fpr`` (the linear piece to it is the randomised-threshold interpolation used by ROC curves;
    a constant map therefore scores ``max_fpr / 2``, the chance level). PRO is integrated over FPR
    with the trapezoid rule up to ``max_fpr`` (interpolating there) and divided by ``max_fpr``, so the
    result lies in [0, 1]. Returns NaN when there are no anomalous regions or no normal pixels.

    Each pixel is binned once against the threshold grid and the curve is read off per-threshold
    histograms (region pixels weighted by 1 / region size), image by image, so the cost is linear in
    the pixel count and memory is bounded by one image's temporaries.
    """
    if not 0.0 < max_fpr <= 1.0:
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}")
    if int(num_thresholds) != num_thresholds or num_thresholds < 2:
        raise ValueError(f"num_thresholds must be an integer >= 2, got {num_thresholds}")
    num_thresholds = int(num_thresholds)
    msk, amp = _check_pixel_inputs(masks, maps)

    thresholds = np.linspace(float(amp.min()), float(amp.max()), num_thresholds)
    # bin[j] counts pixels with exactly j thresholds strictly below them, i.e. map > t_k for all k < j.
    normal_hist = np.zeros(num_thresholds + 1, dtype=np.int64)
    region_hist = np.zeros(num_thresholds + 1, dtype=np.float64)  # weighted by 1 / region size
    n_regions = 0
    for mask, amap in zip(msk, amp, strict=True):
        bins = _count_thresholds_below(amap.ravel(), thresholds)
        flat_mask = mask.ravel()
        normal_hist += np.bincount(bins[~flat_mask], minlength=num_thresholds + 1)
        if not flat_mask.any():
            continue
        n_img_regions, labels = _region_labels(mask)
        region_of_pixel = labels.ravel()[flat_mask]
        region_size = np.bincount(region_of_pixel, minlength=n_img_regions + 1)
        weights = 1.0 / region_size[region_of_pixel]
        region_hist += np.bincount(bins[flat_mask], weights=weights, minlength=num_thresholds + 1)
        n_regions += n_img_regions

    n_normal = int(normal_hist.sum())
    if n_regions == 0 or n_normal == 0:
        return float("nan")

    # Number above t_k = sum(hist[k + 1:]); reverse the order so FPR (and PRO) are non-decreasing.
    fpr = (np.cumsum(normal_hist[::-1])[:-1] / n_normal).astype(np.float64)
    pro = np.cumsum(region_hist[::-1])[:-1] / n_regions
    fpr = np.append(fpr, 1.0)
    pro = np.append(pro, 1.0)
    area = _trapezoid_until(fpr, pro, max_fpr) / max_fpr
    return min(max(area, 0.0), 1.0)


def compute_metrics(
    labels: np.ndarray,
    scores: np.ndarray,
    masks: np.ndarray | None = None,
    maps: np.ndarray | None = None,
) -> dict[str, float]:
    """All metrics for one class.

    Keys: ``image_auroc``, ``image_f1_max``, and with ``masks``/``maps`` also ``pixel_auroc``,
    ``pixel_f1_max`` and ``aupro``. The pixel AUROC and F1 share one pass over the pixels.
    """
    out = {"image_auroc": image_auroc(labels, scores), "image_f1_max": f1_max(labels, scores)}
    if (masks is None) != (maps is None):
        raise ValueError("masks and maps must be given together (got only one of them)")
    if masks is not None and maps is not None:
        msk, amp = _check_pixel_inputs(masks, maps)
        pos, neg = amp[msk], amp[~msk]
        out["pixel_auroc"] = _auroc_split(pos, neg)
        out["pixel_f1_max"] = _f1_max_split(pos, neg)
        del pos, neg
        out["aupro"] = aupro(msk, amp)
    return out


# --------------------------------------------------------------------------- aggregation / reporting


def _keys_in_order(rows: Iterable[Mapping[str, float]]) -> list[str]:
    keys: dict[str, None] = {}
    for row in rows:
        keys.update(dict.fromkeys(row))
    return list(keys)


def mean_metrics(per_class: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Mean of each metric over classes, ignoring NaN (and classes lacking the key).

    A metric that is NaN for every class stays NaN. Keys keep their first-seen order.
    """
    mean: dict[str, float] = {}
    for key in _keys_in_order(per_class.values()):
        values = [float(row[key]) for row in per_class.values() if key in row]
        finite = [v for v in values if not math.isnan(v)]
        mean[key] = sum(finite) / len(finite) if finite else float("nan")
    return mean


def _fmt_pct(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "–"
    return f"{100.0 * value:.1f}"


def markdown_table(
    per_class: Mapping[str, Mapping[str, float]], mean: Mapping[str, float] | None = None
) -> str:
    """Markdown table with one row per class and a bold ``mean`` row; values in percent (1 decimal).

    NaN or missing values are shown as "–". When ``mean`` is None it is computed with
    :func:`mean_metrics`.
    """
    if not per_class:
        raise ValueError("markdown_table needs at least one class, got an empty mapping")
    if mean is None:
        mean = mean_metrics(per_class)
    keys = _keys_in_order([*per_class.values(), mean])
    lines = [
        "| class | " + " | ".join(keys) + " |",
        "|:---|" + "---:|" * len(keys),
    ]
    for name, row in per_class.items():
        lines.append(f"| {name} | " + " | ".join(_fmt_pct(row.get(k)) for k in keys) + " |")
    bold = [_fmt_pct(mean.get(k)) for k in keys]
    lines.append("| **mean** | " + " | ".join(v if v == "–" else f"**{v}**" for v in bold) + " |")
    return "\n".join(lines) + "\n"
