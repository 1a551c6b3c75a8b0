"""INT8 (Q/DQ) against fp32 on an MVTec-layout class: maps, scores, AUROC and ONNX Runtime CPU latency.

    python benchmarks/int8_accuracy.py --config tiny-test --root ../shared/data/magnetic_tile \
        --class-name magnetic_tile --shots 4 --calib 16 --limit 60 --sensitivity \
        --out benchmarks/results/cpu/int8_tiny
    python benchmarks/int8_accuracy.py --config vitb16-224 --root ../shared/data/magnetic_tile \
        --class-name magnetic_tile --shots 4 --calib 16 --limit 60 \
        --out benchmarks/results/cpu/int8_vitb16_224
    python benchmarks/int8_accuracy.py --bundle my_fp32_bundle --root DATA --class-name CLASS --calib 32 --out OUT

With ``--config`` the model is built with random weights (``--pretrained none``: no download), exported to an
fp32 bundle with ``--shots`` reference images of ``train/good`` (seeded; the MDCI offset convolutions get
random weights, as in the tests, unless ``--zero-offsets``: a fresh model samples on the regular grid), and
quantized with ``--calib`` other ``train/good`` images; with ``--bundle`` an existing fp32 bundle is quantized.
Both bundles then run through the runtime's ``Detector`` (few-shot memory from the same reference images, each
computed by its own graph) on the test images (``--limit``: an even spread over the sorted list, so every
defect type stays in), one image at a time, fp32 and int8 interleaved (alternating which goes first) after a
warm-up, so latencies are taken at the same moment.

Reported (``int8_accuracy.json`` and ``.md`` in ``--out``): per-image Pearson correlation of the final anomaly maps
(median, min), image-score correlation and differences, image and pixel AUROC of both and their difference, median
per-image latency (whole Detector call and engine only) of both and the ratio, model file sizes. With
``--sensitivity`` also the node-family study of ``fgad.calibration.sensitivity`` (``sensitivity.json``/``.md``) on
``--sensitivity-images`` of the test images. Random weights give chance-level AUROC: the point is int8 vs fp32.
"""

from __future__ import annotations

import json
import logging
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import numpy as np


def _spread(items: list[Any], limit: int | None) -> list[Any]:
    """``limit`` items evenly spread over the (sorted) list."""
    if limit is None or len(items) <= limit:
        return list(items)
    idx = np.linspace(0, len(items) - 1, limit).round().astype(int)
    return [items[i] for i in sorted(set(idx.tolist()))]


def _split_train(paths: list[Path], shots: int, calib: int, seed: int) -> tuple[list[Path], list[Path]]:
    """Disjoint seeded draws from train/good: ``shots`` references and ``calib`` calibration images."""
    if shots + calib > len(paths):
        raise click.ClickException(f"--shots {shots} + --calib {calib} exceed the {len(paths)} train/good images")
    order = np.random.default_rng(seed).permutation(len(paths)).tolist()
    refs = sorted(paths[i] for i in order[:shots])
    cal = sorted(paths[i] for i in order[shots : shots + calib])
    return refs, cal


def _export_random(config: str, class_name: str, refs: list[Path], out: Path, seed: int, offsets: bool) -> Path:
    import torch

    from fgad.config import load_config
    from fgad.export.bundle import export_bundle
    from fgad.methods.filo.build import build_model

    cfg = load_config(config, {"model": {"backbone": {"pretrained": None}}}).model
    with torch.no_grad():
        model = build_model(cfg, seed=seed).eval()
        if offsets:
            model.mdci.randomize_offsets(seed)
        return export_bundle(out, model, cfg, class_name, refs)


def _median_ms(values: list[float]) -> float:
    return 1000.0 * statistics.median(values)


def _markdown(result: dict[str, Any]) -> str:
    acc, lat, size = result["accuracy"], result["latency"], result["size_bytes"]
    rows = [
        f"# INT8 (Q/DQ) vs fp32: {result['model']}, {result['class_name']}, {result['images']} test images",
        "",
        f"Calibration: {result['calibration']['method']} on {result['calibration']['images']} normal images; "
        f"{result['shots']} reference images; kept float: {', '.join(result['kept_float'])}.",
        "",
        "| | fp32 | int8 | int8 - fp32 |",
        "|---|---:|---:|---:|",
        f"| image AUROC | {acc['image_auroc_fp32']:.4f} | {acc['image_auroc_int8']:.4f} | "
        f"{acc['image_auroc_diff']:+.4f} |",
        f"| pixel AUROC | {acc['pixel_auroc_fp32']:.4f} | {acc['pixel_auroc_int8']:.4f} | "
        f"{acc['pixel_auroc_diff']:+.4f} |",
        f"| median ms / image (Detector) | {lat['median_ms_fp32']:.1f} | {lat['median_ms_int8']:.1f} | "
        f"x{lat['speedup_int8']:.2f} speed-up |",
        f"| median ms / image (engine only) | {lat['engine_median_ms_fp32']:.1f} | "
        f"{lat['engine_median_ms_int8']:.1f} | x{lat['engine_speedup_int8']:.2f} speed-up |",
        f"| model.onnx | {size['fp32'] / 2**20:.1f} MiB | {size['int8'] / 2**20:.1f} MiB | "
        f"x{size['fp32'] / size['int8']:.2f} smaller |",
        "",
        f"Per-image anomaly-map correlation int8 vs fp32: median {acc['map_corr_median']:.5f}, "
        f"min {acc['map_corr_min']:.5f}; image scores: correlation {acc['score_corr']:.5f}, "
        f"max |diff| {acc['score_max_abs_diff']:.4f}, mean |diff| {acc['score_mean_abs_diff']:.4f} "
        f"(fp32 scores: std {acc['score_std_fp32']:.4f}); "
        f"best description agrees on {100 * acc['best_description_agreement']:.0f} % of images.",
        "",
        f"    {result['command']}",
        "",
    ]
    return "\n".join(rows)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", default=None, help="Model config to build with random weights (e.g. tiny-test, vitb16-224).")
@click.option("--bundle", "bundle_dir", type=click.Path(path_type=Path), default=None,
              help="An existing fp32 ONNX bundle instead of --config.")
@click.option("--root", required=True, type=click.Path(path_type=Path), help="MVTec-layout data root.")
@click.option("--class-name", required=True)
@click.option("--shots", type=click.IntRange(min=0), default=4, show_default=True,
              help="Reference images for the exported bundle (--config only).")
@click.option("--calib", type=click.IntRange(min=1), default=16, show_default=True,
              help="Calibration images drawn from train/good (not among the references).")
@click.option("--limit", type=click.IntRange(min=2), default=None, help="Test images (an even spread).")
@click.option("--method", type=click.Choice(["entropy", "percentile", "minmax"]), default="entropy",
              show_default=True)
@click.option("--zero-offsets", is_flag=True,
              help="Keep a fresh model's zero deformable offsets (--config; default: random offsets, see docs).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="ONNX Runtime intra-op threads.")
@click.option("--warmup", type=click.IntRange(min=0), default=3, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--sensitivity", is_flag=True, help="Also run the node-family study (fgad.calibration.sensitivity).")
@click.option("--sensitivity-images", type=click.IntRange(min=2), default=30, show_default=True,
              help="Test images (an even spread) the study scores per variant.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path))
def main(config: str | None, bundle_dir: Path | None, root: Path, class_name: str, shots: int, calib: int,
         limit: int | None, method: str, zero_offsets: bool, threads: int | None, warmup: int, seed: int,
         sensitivity: bool, sensitivity_images: int, out_dir: Path) -> None:
    """Measure the int8 bundle against the fp32 one (see the module docstring)."""
    if (config is None) == (bundle_dir is None):
        raise click.UsageError("give exactly one of --config or --bundle")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import onnxruntime

    from fgad.calibration.bundle import bundle_reference_paths, quantize_bundle
    from fgad.calibration.images import preprocess_images
    from fgad.calibration.qdq import DEFAULT_KEEP_FLOAT
    from fgad.calibration.sensitivity import compare_results, pearson_rows
    from fgad.core.atomic import atomic_write_json, atomic_write_text
    from fgad.core.io import read_image
    from fgad.core.metrics import image_auroc, pixel_auroc
    from fgad.core.transforms import preprocess_mask
    from fgad.data.datasets import discover, load_sample_raw
    from fgad.runtime.pipeline import Detector

    train = sorted(s.image_path for s in discover(root, "train", [class_name]))
    refs, calib_paths = _split_train(train, shots if config else 0, calib, seed)
    samples = _spread(discover(root, "test", [class_name]), limit)
    work = Path(tempfile.mkdtemp(prefix="fgad-int8-bench-"))
    t0 = time.perf_counter()
    fp32_dir = _export_random(config, class_name, refs, work / "fp32", seed,
                                                                 not zero_offsets) if config else bundle_dir
    assert fp32_dir is not None
    export_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    int8_dir = quantize_bundle(fp32_dir, work / "int8", method=method, calib_images=calib_paths)
    quantize_s = time.perf_counter() - t0
    detectors = {"fp32": Detector.from_bundle(fp32_dir, threads=threads, knn="numpy"),
                 "int8": Detector.from_bundle(int8_dir, threads=threads, knn="numpy")}

    loaded = [(s, raw) for s in samples if (raw := load_sample_raw(s)) is not None]
    size = detectors["fp32"].size
    for _, (image, _) in loaded[:warmup]:
        for det in detectors.values():
            det(image)
    results: dict[str, list[Any]] = {"fp32": [], "int8": []}
    seconds: dict[str, list[float]] = {"fp32": [], "int8": []}
    for i, (_, (image, _)) in enumerate(loaded):
        for name in (("fp32", "int8") if i % 2 == 0 else ("int8", "fp32")):
            t = time.perf_counter()
            results[name].append(detectors[name](image))
            seconds[name].append(time.perf_counter() - t)

    labels = np.array([s.label for s, _ in loaded])
    masks = np.stack([preprocess_mask(mask, size) > 0.5 for _, (_, mask) in loaded])
    acc: dict[str, Any] = {}
    for name, res in results.items():
        acc[f"image_auroc_{name}"] = image_auroc(labels, np.array([r.score for r in res]))
        acc[f"pixel_auroc_{name}"] = pixel_auroc(masks, np.stack([r.anomaly_map for r in res]))
    acc["score_std_fp32"] = float(np.std([r.score for r in results["fp32"]]))  # the scale score diffs compare to
    acc["image_auroc_diff"] = acc["image_auroc_int8"] - acc["image_auroc_fp32"]
    acc["pixel_auroc_diff"] = acc["pixel_auroc_int8"] - acc["pixel_auroc_fp32"]
    agreement = compare_results(results["fp32"], results["int8"])
    acc.update({k: v for k, v in agreement.__dict__.items() if k != "images"})
    corr = pearson_rows(np.stack([r.anomaly_map for r in results["fp32"]]),
                        np.stack([r.anomaly_map for r in results["int8"]]))
    acc["map_corr_by_label"] = {lab: float(np.median(corr[labels == v])) for lab, v in (("good", 0), ("defect", 1))
                                if np.any(labels == v)}
    engine = {n: [r.timings["engine"] / 1000.0 for r in res] for n, res in results.items()}
    lat = {
        "median_ms_fp32": _median_ms(seconds["fp32"]),
        "median_ms_int8": _median_ms(seconds["int8"]),
        "engine_median_ms_fp32": _median_ms(engine["fp32"]),
        "engine_median_ms_int8": _median_ms(engine["int8"]),
    }
    lat["speedup_int8"] = lat["median_ms_fp32"] / lat["median_ms_int8"]
    lat["engine_speedup_int8"] = lat["engine_median_ms_fp32"] / lat["engine_median_ms_int8"]
    manifest = json.loads((int8_dir / "manifest.json").read_text())
    quant = manifest["quantization"]
    result: dict[str, Any] = {
        "model": config or str(bundle_dir),
        "class_name": class_name,
        "root": str(root),
        "images": len(loaded),
        "defect_images": int(labels.sum()),
        "shots": len(refs) if config else manifest["fewshot"]["num_references"],
        "calibration": {"method": method, "images": len(calib_paths), "paths": [str(p) for p in calib_paths]},
        "kept_float": list(DEFAULT_KEEP_FLOAT.families),
        "quantized_nodes": quant["quantized_nodes"],
        "accuracy": acc,
        "latency": lat,
        "size_bytes": {"fp32": quant["fp32_bytes"], "int8": quant["int8_bytes"]},
        "export_seconds": export_s,
        "quantize_seconds": quantize_s,
        "threads": threads,
        "onnxruntime": onnxruntime.__version__,
        "machine": platform.machine(),
        "command": "python benchmarks/int8_accuracy.py " + " ".join(sys.argv[1:]),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "int8_accuracy.json", result)
    atomic_write_text(out_dir / "int8_accuracy.md", _markdown(result))
    click.echo(_markdown(result))

    if sensitivity:
        from fgad.calibration.sensitivity import measure_sensitivity, sensitivity_markdown

        held = [raw[0] for _, raw in _spread(loaded, sensitivity_images)]
        spec = detectors["fp32"].manifest.input
        calibration = preprocess_images(calib_paths, spec.size, spec.mean, spec.std)
        ref_paths = refs if config else [p for p in bundle_reference_paths(fp32_dir) if p.is_file()]
        ref_images = [read_image(p) for p in ref_paths] or None
        rows = measure_sensitivity(fp32_dir, calibration, held, refs=ref_images, method=method, threads=threads)
        table = sensitivity_markdown(rows)
        atomic_write_json(out_dir / "sensitivity.json", {"model": result["model"], "images": len(held),
                                                         "method": method, "rows": [r.to_dict() for r in rows]})
        atomic_write_text(out_dir / "sensitivity.md", f"# Node-family sensitivity: {result['model']}, "
                                                      f"{class_name}, {len(held)} test images\n\n{table}")
        click.echo(table)


if __name__ == "__main__":
    main()
