"""An fp32 ONNX bundle -> a new int8 bundle whose graph is the Q/DQ model (docs/int8.md).

The new bundle is a copy of the fp32 one with:

* ``model.onnx``: the Q/DQ graph of :func:`fgad.calibration.qdq.quantize_qdq` (``engine.kind`` stays
  ``"onnx"``: onnxruntime runs it on CPU; TensorRT builds an int8 engine from it);
* ``references.npz``: the few-shot memory recomputed *by the Q/DQ graph* from the same reference images
  (the rows must come from the graph that produces the test tokens); if those images are gone, the fp32
  rows are copied and the manifest says so;
* ``manifest.json``: ``engine.precision = "int8"``, new ``sha256``, and a ``quantization`` object (method,
  calibration images, kept-float families with the reason, per-op counts, file sizes, a Q/DQ-vs-fp32 check
  on the calibration images);
* ``quantization.json``: the full report, every kept-float node by name;
* ``manifest.digest`` (and with a key ``manifest.sig``), by :func:`fgad.bundle.staging.write_manifest`.

Everything is built in a temporary folder next to ``out_dir``, loaded by the runtime's own
:meth:`~fgad.runtime.pipeline.Detector.from_bundle`, and only then renamed onto ``out_dir``: a failure
leaves nothing behind. Torch-free (onnx + onnxruntime: ``pip install 'fgad[export]'``).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fgad.bundle import MANIFEST_FILE, QUANTIZATION_REPORT_FILE, BundleError, Manifest, file_sha256, load_manifest
from fgad.bundle.staging import (
    SigningKeySpec,
    check_target,
    signing_key,
    staged_bundle,
    utc_timestamp,
    write_manifest,
    write_references_npz,
)
from fgad.calibration.images import list_calibration_images, preprocess_images, seeded_subset
from fgad.calibration.qdq import DEFAULT_KEEP_FLOAT, DEFAULT_PERCENTILE, KeepFloat, QuantizationReport, quantize_qdq
from fgad.core.atomic import atomic_write_json
from fgad.runtime.backends import check_manifest

__all__ = ["MIN_CALIBRATION_IMAGES", "bundle_reference_paths", "calibration_paths", "quantize_bundle"]

log = logging.getLogger(__name__)

#: Fewest images accepted for calibration when they are taken from the bundle's references by default
#: (a handful of few-shot references gives ranges from too few views of the part).
MIN_CALIBRATION_IMAGES = 8
_BATCH = 8


def _reference_paths(manifest: Manifest, root: Path) -> list[Path]:
    """The reference image paths recorded in the bundle's references file (``[]`` for a zero-shot bundle)."""
    if not manifest.fewshot.file:
        return []
    with np.load(root / manifest.fewshot.file, allow_pickle=False) as data:
        if "paths" not in data.files:
            return []
        return [Path(str(p)) for p in data["paths"].tolist()]


def bundle_reference_paths(bundle_dir: str | os.PathLike[str]) -> list[Path]:
    """The reference image paths a bundle's references file records (they may no longer exist)."""
    root = Path(bundle_dir)
    return _reference_paths(load_manifest(root), root)


def calibration_paths(
    bundle_dir: str | os.PathLike[str],
    calib_dir: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    seed: int = 0,
) -> tuple[list[Path], str]:
    """The calibration images for a bundle and where they came from.

    ``calib_dir`` if given; else the bundle's reference images, if at least :data:`MIN_CALIBRATION_IMAGES`
    of them still exist at their recorded paths; else a ``ValueError`` asking for ``--calib-dir``.
    """
    if calib_dir is not None:
        return list_calibration_images(calib_dir, limit, seed), f"folder {calib_dir}"
    root = Path(bundle_dir)
    manifest = load_manifest(root)
    refs = _reference_paths(manifest, root)
    found = [p for p in refs if p.is_file()]
    if len(found) < MIN_CALIBRATION_IMAGES:
        why = f"it has {len(found)} usable reference images" if refs else "it has no reference images"
        if refs and len(found) < len(refs):
            why += f" ({len(refs) - len(found)} of them no longer exist at their recorded paths)"
        raise ValueError(
            f"{root}: cannot calibrate from the bundle's own images: {why}; at least {MIN_CALIBRATION_IMAGES} are "
            "needed. Pass --calib-dir with a folder of normal (defect-free) images of the class"
        )
    return seeded_subset(found, limit, seed), "the bundle's reference images"


def _prepare_target(out: Path, src: Path) -> None:
    if out.resolve() == src.resolve():
        raise ValueError(f"--out {out} is the fp32 bundle itself; write the int8 bundle to a new folder")
    check_target(out, MANIFEST_FILE)


def _run(backend: Any, images: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for start in range(0, len(images), _BATCH):
        out = backend.run(images[start : start + _BATCH], names)
        for n in names:
            parts[n].append(np.asarray(out[n]))
    return {n: np.concatenate(v) for n, v in parts.items()}


def _write_references(backend: Any, images: np.ndarray, layers: Sequence[int], paths: Sequence[Path],
                      target: Path) -> None:
    """references.npz as docs/bundle.md defines it, computed by ``backend``'s graph."""
    outputs = _run(backend, images, [f"tokens_{layer}" for layer in layers])
    write_references_npz(target, {layer: outputs[f"tokens_{layer}"] for layer in layers}, paths)


def _check_against_fp32(fp32: Any, int8: Any, images: np.ndarray) -> dict[str, Any]:
    """Q/DQ vs fp32 graph outputs on ``images``: a sanity figure for the manifest (optimistic: calibration data)."""
    from fgad.calibration.sensitivity import pearson_rows

    a = _run(fp32, images, ["vl_map", "global_prob"])
    b = _run(int8, images, ["vl_map", "global_prob"])
    corr = pearson_rows(a["vl_map"], b["vl_map"])
    return {
        "inputs": f"{len(images)} calibration images",
        "vl_map_corr_median": float(np.median(corr)),
        "vl_map_corr_min": float(corr.min()),
        "vl_map_max_abs_diff": float(np.abs(a["vl_map"] - b["vl_map"]).max()),
        "global_prob_max_abs_diff": float(np.abs(a["global_prob"] - b["global_prob"]).max()),
    }


def _backend(path: Path, input_name: str, quantized: bool = False) -> Any:
    from fgad.runtime.backends.ort import OrtBackend

    return OrtBackend(path, input_name=input_name, providers=["CPUExecutionProvider"], quantized=quantized)


def _manifest_entry(report: QuantizationReport, source: str, references: str, check: dict[str, Any],
                    fp32_sha: str) -> dict[str, Any]:
    import onnxruntime

    kept = {f: {"nodes": info["nodes"], "reason": info["reason"]}
            for f, info in report.families.items() if info["kept"]}
    return {
        "method": report.method,
        "percentile": report.percentile,
        "images": report.images,
        "image_source": source,
        "per_channel": report.per_channel,
        "format": "QDQ, symmetric int8 (zero point 0), per-tensor activations, per-channel weights",
        "kept_float": kept,
        "quantized_nodes": report.quantized,
        "qdq_nodes": report.qdq_nodes,
        "fp32_bytes": report.fp32_bytes,
        "int8_bytes": report.int8_bytes,
        "fp32_model_sha256": fp32_sha,
        "references": references,
        "check": check,
        "report": QUANTIZATION_REPORT_FILE,
        "onnxruntime": onnxruntime.__version__,
        "created": utc_timestamp(),
    }


def quantize_bundle(
    bundle_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    calib_dir: str | os.PathLike[str] | None = None,
    method: str = "entropy",
    limit: int | None = None,
    *,
    calib_images: Sequence[str | os.PathLike[str]] | None = None,
    percentile: float = DEFAULT_PERCENTILE,
    keep_float: KeepFloat = DEFAULT_KEEP_FLOAT,
    per_channel: bool = True,
    seed: int = 0,
    sign: SigningKeySpec = None,
) -> Path:
    """Write an int8 copy of the fp32 ONNX bundle ``bundle_dir`` to ``out_dir`` and return ``out_dir``.

    Calibration images: ``calib_images`` (paths) if given, else ``calib_dir`` (its images, ``limit`` of them
    drawn with ``seed``), else the bundle's reference images when there are enough
    (:func:`calibration_paths`). ``method``, ``percentile``, ``keep_float``, ``per_channel``: see
    :func:`~fgad.calibration.qdq.quantize_qdq`. ``sign``: an Ed25519 private key (PEM file or
    :class:`~fgad.bundle.signing.SigningKey`) that signs the new manifest.
    """
    root = Path(bundle_dir)
    key = signing_key(sign)  # a bad key fails before calibration
    manifest = load_manifest(root)
    check_manifest(manifest, root)
    if manifest.engine.kind != "onnx":
        raise BundleError(
            f"{root}: field 'engine.kind' is {manifest.engine.kind!r}; quantize the fp32 ONNX bundle (fgad-export "
            "--engine onnx): TensorRT int8 engines are built from the int8 ONNX bundle this writes",
            "engine.kind",
        )
    if manifest.engine.precision != "fp32":
        raise BundleError(
            f"{root}: field 'engine.precision' is {manifest.engine.precision!r}; quantize the fp32 bundle",
            "engine.precision",
        )
    out = Path(out_dir)
    _prepare_target(out, root)
    if calib_images is not None:
        paths, source = [Path(p) for p in calib_images], f"{len(calib_images)} given images"
        if not paths:
            raise ValueError("calib_images is empty: give normal images of the class to calibrate on")
    else:
        paths, source = calibration_paths(root, calib_dir, limit, seed)
    spec = manifest.input
    calibration = preprocess_images(paths, spec.size, spec.mean, spec.std)

    engine_files = {manifest.engine.file, *(manifest.raw.get("engine", {}).get("external_data") or [])}
    with staged_bundle(out) as tmp:
        for name in manifest.sha256:
            if name in engine_files or name == QUANTIZATION_REPORT_FILE:
                continue
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / name, tmp / name)
        model_file = manifest.engine.file
        report = quantize_qdq(root / model_file, tmp / model_file, calibration, method=method,
                              percentile=percentile, keep_float=keep_float, per_channel=per_channel)
        int8 = _backend(tmp / model_file, spec.name, quantized=True)
        fp32 = _backend(root / model_file, spec.name)
        check = _check_against_fp32(fp32, int8, calibration)

        references = "none (zero-shot bundle)"
        if manifest.fewshot.file:
            ref_paths = _reference_paths(manifest, root)
            missing = [p for p in ref_paths if not p.is_file()]
            if ref_paths and not missing:
                ref_images = preprocess_images(ref_paths, spec.size, spec.mean, spec.std, progress=False)
                _write_references(int8, ref_images, manifest.fewshot.layers, ref_paths, tmp / manifest.fewshot.file)
                references = f"recomputed by the int8 graph from the {len(ref_paths)} reference images"
            else:
                references = "copied from the fp32 bundle (reference images not found at their recorded paths)"
                log.warning("%s: reference images not found (%s); the int8 bundle keeps the fp32 few-shot rows. "
                            "Re-add references with fgad-run --refs DIR for rows computed by the int8 graph",
                            root, ", ".join(str(p) for p in missing[:3]) or "no paths recorded")
        del fp32, int8

        atomic_write_json(tmp / QUANTIZATION_REPORT_FILE, report.to_dict())
        data = dict(manifest.raw)
        data["engine"] = {**data["engine"], "precision": "int8", "external_data": None}
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)
        data["quantization"] = _manifest_entry(report, source, references, check, manifest.sha256[model_file])
        data["sha256"] = {name: file_sha256(tmp / name) for name in files}
        write_manifest(tmp, data, key)

        from fgad.runtime.pipeline import Detector

        # the runtime accepts it (signed by this key, with it), or nothing is installed
        Detector.from_bundle(tmp, backend="onnxruntime", strict=True, trust=None if key is None else [key.trusted()])
    log.info("int8 bundle %s: %s", out, report.summary())
    return out
