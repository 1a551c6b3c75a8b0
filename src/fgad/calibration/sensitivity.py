"""Which node families can be INT8: quantize with each family kept float / quantized, compare with fp32.

Every variant is the fp32 bundle's graph quantized by :func:`fgad.calibration.qdq.quantize_qdq` with one
:class:`~fgad.calibration.qdq.KeepFloat`, calibrated once (the activation ranges are cached and shared, so
variants differ only in where Q/DQ sits). fp32 and each variant run through the runtime's
:class:`~fgad.runtime.pipeline.Detector` on the same held-out images (preprocess, engine, few-shot memory
built *by that graph* from the same reference images, fusion, smoothing, score), and the final results are
compared (:class:`Agreement`): per-image Pearson correlation of the anomaly maps (median and worst), largest
map difference, image-score differences and correlation, and how often the best description agrees.

Three studies (:func:`study_variants`):

* ``leave_one_out``: everything int8, then each family kept float in turn (what keeping it float buys);
* ``only_one``: only one family int8 at a time (what quantizing it alone costs);
* ``default``: :data:`~fgad.calibration.qdq.DEFAULT_KEEP_FLOAT` and each of its decisions flipped.

``benchmarks/int8_accuracy.py --sensitivity`` runs it; ``docs/int8.md`` has the numbers that set the default.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fgad.calibration.families import FAMILIES
from fgad.calibration.qdq import DEFAULT_KEEP_FLOAT, DEFAULT_PERCENTILE, KeepFloat, quantize_qdq

__all__ = [
    "STUDIES",
    "Agreement",
    "SensitivityRow",
    "Variant",
    "compare_results",
    "measure_sensitivity",
    "pearson_rows",
    "sensitivity_markdown",
    "study_variants",
]

log = logging.getLogger(__name__)

STUDIES = ("leave_one_out", "only_one", "default")


@dataclass(frozen=True)
class Agreement:
    """A model's final results against fp32 on the same images (the runtime's map and score)."""

    images: int
    map_corr_median: float  # per-image Pearson correlation of the anomaly maps
    map_corr_min: float
    map_max_abs_diff: float
    score_max_abs_diff: float
    score_mean_abs_diff: float
    score_corr: float  # Pearson correlation of the image scores over the images
    best_description_agreement: float  # fraction of images with the same best description


@dataclass(frozen=True)
class Variant:
    """One quantization configuration of the study."""

    name: str
    keep_float: KeepFloat


@dataclass(frozen=True)
class SensitivityRow:
    variant: str
    kept_float: tuple[str, ...]  # families kept float
    int8_nodes: int  # nodes with Q/DQ on their inputs
    agreement: Agreement

    def to_dict(self) -> dict[str, Any]:
        return {"variant": self.variant, "kept_float": list(self.kept_float), "int8_nodes": self.int8_nodes,
                **asdict(self.agreement)}


def pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row of ``a`` with the same row of ``b`` (``[N, ...]`` flattened per row).

    A row that is constant in both is a perfect match (1.0); constant in only one, no correlation (0.0).
    """
    x = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    y = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    if x.shape != y.shape:
        raise ValueError(f"cannot correlate arrays of shapes {x.shape} and {y.shape}")
    x = x - x.mean(axis=1, keepdims=True)
    y = y - y.mean(axis=1, keepdims=True)
    nx, ny = np.linalg.norm(x, axis=1), np.linalg.norm(y, axis=1)
    out = np.zeros(len(x))
    both = (nx > 0) & (ny > 0)
    out[both] = (x[both] * y[both]).sum(axis=1) / (nx[both] * ny[both])
    out[(nx == 0) & (ny == 0)] = 1.0
    return out


def compare_results(reference: Sequence[Any], other: Sequence[Any]) -> Agreement:
    """:class:`Agreement` of two lists of runtime ``Result`` for the same images (``reference``: fp32)."""
    if len(reference) != len(other) or not reference:
        raise ValueError(f"need two equally long, non-empty result lists, got {len(reference)} and {len(other)}")
    maps_a = np.stack([r.anomaly_map for r in reference])
    maps_b = np.stack([r.anomaly_map for r in other])
    corr = pearson_rows(maps_a, maps_b)
    sa = np.array([r.score for r in reference], dtype=np.float64)
    sb = np.array([r.score for r in other], dtype=np.float64)
    score_corr = float(pearson_rows(sa[None], sb[None])[0]) if len(sa) > 1 else float("nan")
    same = np.mean([r.best_description_index == o.best_description_index for r, o in zip(reference, other,
                                                                                          strict=True)])
    return Agreement(
        images=len(reference),
        map_corr_median=float(np.median(corr)),
        map_corr_min=float(corr.min()),
        map_max_abs_diff=float(np.abs(maps_a - maps_b).max()),
        score_max_abs_diff=float(np.abs(sa - sb).max()),
        score_mean_abs_diff=float(np.abs(sa - sb).mean()),
        score_corr=score_corr,
        best_description_agreement=float(same),
    )


def study_variants(studies: Sequence[str] = STUDIES, families: Sequence[str] = tuple(FAMILIES)) -> list[Variant]:
    """The variants of the named studies (see the module docstring), without duplicates."""
    unknown = [s for s in studies if s not in STUDIES]
    if unknown:
        raise ValueError(f"unknown study {unknown}; choose from {', '.join(STUDIES)}")
    everything = tuple(families)
    out: list[Variant] = []
    if "leave_one_out" in studies:
        out.append(Variant("all int8", KeepFloat()))
        out += [Variant(f"all int8, {f} float", KeepFloat((f,))) for f in everything]
    if "only_one" in studies:
        out += [Variant(f"only {f} int8", KeepFloat(tuple(g for g in everything if g != f))) for f in everything]
    if "default" in studies:
        out.append(Variant("default", DEFAULT_KEEP_FLOAT))
        for f in everything:
            if f in DEFAULT_KEEP_FLOAT.families:
                out.append(Variant(f"default, {f} int8", DEFAULT_KEEP_FLOAT.without_families(f)))
            else:
                out.append(Variant(f"default, {f} float", DEFAULT_KEEP_FLOAT.with_families(f)))
    seen: set[tuple[frozenset[str], tuple[str, ...]]] = set()
    unique = []
    for v in out:
        key = (frozenset(v.keep_float.families), v.keep_float.nodes)
        if key not in seen:
            seen.add(key)
            unique.append(v)
    return unique


def _detector(manifest: Any, onnx_path: Path, refs: Sequence[np.ndarray] | None, threads: int | None,
              quantized: bool = False) -> Any:
    from fgad.bundle import check_graph
    from fgad.runtime.backends.ort import OrtBackend
    from fgad.runtime.pipeline import Detector

    backend = OrtBackend(onnx_path, input_name=manifest.input.name, threads=threads,
                         providers=["CPUExecutionProvider"], quantized=quantized)
    check_graph(manifest, backend.input_shapes, backend.output_shapes, str(onnx_path))
    detector = Detector(manifest, backend, knn="numpy")
    if refs:
        detector.add_references(list(refs), recalibrate=False)
    return detector


def measure_sensitivity(
    bundle_dir: str | os.PathLike[str],
    calibration: np.ndarray,
    held_out: Sequence[np.ndarray],
    *,
    refs: Sequence[np.ndarray] | None = None,
    method: str = "entropy",
    percentile: float = DEFAULT_PERCENTILE,
    variants: Sequence[Variant] | None = None,
    threads: int | None = None,
    progress: bool = True,
) -> list[SensitivityRow]:
    """Quantize the fp32 bundle's graph in every variant and compare its results with fp32's.

    Args:
        bundle_dir: an fp32 bundle (its manifest describes the graph; its references are not used).
        calibration: preprocessed normal images ``[N, 3, S, S]`` (calibrated once, shared by all variants).
        held_out: RGB uint8 images not used for calibration (good and defective), scored by every model.
        refs: RGB uint8 normal reference images: each model builds its own few-shot memory from them
            (as an int8 bundle does); ``None``: zero-shot.
        method, percentile: calibration method (see :func:`~fgad.calibration.qdq.quantize_qdq`).
        variants: default: all of :func:`study_variants`.
        threads: onnxruntime intra-op threads.
    """
    from tqdm import tqdm

    from fgad.bundle import load_manifest
    from fgad.runtime.backends import check_manifest

    if not held_out:
        raise ValueError("held_out is empty: give images (good and defective) that were not used for calibration")
    root = Path(bundle_dir)
    manifest = load_manifest(root)
    check_manifest(manifest, root)
    if manifest.engine.kind != "onnx" or manifest.engine.precision != "fp32":
        raise ValueError(f"{root} is a {manifest.engine.precision} {manifest.engine.kind} bundle; measure on an "
                         "fp32 ONNX bundle (fgad-export --engine onnx)")
    fp32_path = root / manifest.engine.file
    reference = _detector(manifest, fp32_path, refs, threads).batch(held_out)
    rows: list[SensitivityRow] = []
    with tempfile.TemporaryDirectory(prefix="fgad-int8-") as work:
        cache = Path(work) / "ranges.json"
        for variant in tqdm(variants or study_variants(), desc="int8 variants", disable=not progress):
            q_path = Path(work) / "variant.onnx"
            report = quantize_qdq(fp32_path, q_path, calibration, method=method, percentile=percentile,
                                  keep_float=variant.keep_float, calibration_cache=cache)
            quantized = sum(report.quantized.values()) > 0
            results = _detector(manifest, q_path, refs, threads, quantized=quantized).batch(held_out)
            row = SensitivityRow(variant.name, variant.keep_float.families, sum(report.quantized.values()),
                                 compare_results(reference, results))
            log.info("%s: %s", variant.name, row.agreement)
            rows.append(row)
    return rows


def sensitivity_markdown(rows: Sequence[SensitivityRow]) -> str:
    """The rows as a markdown table."""
    lines = [
        "| variant | int8 nodes | map corr median | map corr min | map max abs diff | score max abs diff | "
        "score corr | best description |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        a = r.agreement
        lines.append(
            f"| {r.variant} | {r.int8_nodes} | {a.map_corr_median:.5f} | {a.map_corr_min:.5f} | "
            f"{a.map_max_abs_diff:.4f} | {a.score_max_abs_diff:.4f} | {a.score_corr:.5f} | "
            f"{a.best_description_agreement:.2f} |"
        )
    return "\n".join(lines) + "\n"
