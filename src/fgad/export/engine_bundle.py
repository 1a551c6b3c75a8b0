"""Add a TensorRT engine to a bundle, on the machine that will run it (torch-free: onnx, onnxruntime, tensorrt).

:func:`add_engine` takes a bundle written by :func:`fgad.export.bundle.write_bundle` (its ``model.onnx`` runs in
onnxruntime) and

1. makes the graph TensorRT is given: ``model.onnx`` as exported, or with ``deform="plugin"`` its ``DeformConv``
   nodes rewritten to our plugin's node (:func:`fgad.export.deform_flavours.deformconv_to_plugin`); for
   ``int8`` first the Q/DQ graph ``model.qdq.onnx`` from calibration images (:mod:`fgad.calibration`);
2. checks every node of that graph against TensorRT's ONNX support matrix (:mod:`fgad.export.op_coverage`)
   and stops before the (long) build when something is not supported;
3. builds the engine (:func:`fgad.export.tensorrt_build.build_engine`);
4. runs the engine and onnxruntime (the fp32 ``model.onnx``) on the check images and compares every output
   against the tolerance of the precision (:data:`ENGINE_TOLERANCES`); a failed check installs nothing;
5. installs ``model.engine``, the plugin libraries (``plugins/``) and the manifest: ``engine`` becomes the
   TensorRT engine (``kind``, ``precision``, ``tensorrt_version``, ``compute_capability``, ``deform``,
   ``plugins``, ``build``, ``coverage``, ``parity``) and the ONNX graph stays as ``engine.fallback``, which
   ``fgad-run`` uses where the engine cannot run. Every new file is listed in ``sha256``; the manifest is
   written with a new ``manifest.digest`` (and, with a key, ``manifest.sig``: an earlier signature is removed,
   it signed the old manifest) by :func:`fgad.bundle.staging.write_manifest`.

The bundle's ONNX graph, references and text are not touched, so the same bundle folder can be copied to a
device and given its engine there (``fgad-export --bundle DIR --engine fp16``, docs/jetson.md).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fgad.bundle import ENGINE_FILE, MANIFEST_FILE, PLUGIN_DIR, QDQ_FILE, Manifest, file_sha256, load_manifest
from fgad.bundle.staging import SigningKeySpec, parity_tolerance, signing_key, write_manifest
from fgad.core.atomic import atomic_path
from fgad.core.onnx_external import check_external_data
from fgad.export.deform_flavours import PLUGIN_ID, deformconv_to_plugin, normalize_deform
from fgad.export.op_coverage import MIN_TENSORRT, CoverageReport, check_tensorrt_coverage
from fgad.export.tensorrt_build import (
    INSTALL_TENSORRT,
    EngineBuildError,
    EngineBuildOptions,
    EngineInfo,
    TensorRTUnavailableError,
    build_engine,
    tensorrt_installed,
)
from fgad.runtime.backends import check_manifest

__all__ = [
    "ENGINE_FILE",
    "ENGINE_TOLERANCES",
    "PLUGIN_DIR",
    "QDQ_FILE",
    "EngineBundleResult",
    "EngineParityError",
    "add_engine",
    "compare_engine",
    "synthetic_images",
]

log = logging.getLogger(__name__)

#: Largest accepted |TensorRT - onnxruntime fp32| per output, by engine precision. fp32 engines are built with
#: TF32 off, so only GPU vs CPU reduction order differs (~1e-5 measured for the ONNX graph on CPU; the bound
#: leaves room for ViT-L's longer sums). fp16 and int8 bounds are first estimates from the output ranges
#: (maps and probabilities in [0, 1], unit-norm tokens): not yet measured on a device; the values of every
#: build are recorded in the manifest (``engine.parity``) so they can be tightened.
ENGINE_TOLERANCES: dict[str, dict[str, float]] = {
    "fp32": {"vl_map": 1e-3, "global_prob": 1e-3, "tokens": 1e-3, "default": 1e-3},
    "fp16": {"vl_map": 3e-2, "global_prob": 3e-2, "tokens": 3e-2, "default": 3e-2},
    "int8": {"vl_map": 0.15, "global_prob": 0.15, "tokens": 0.15, "default": 0.15},
}
#: Without reference images the engine is checked on this many seeded standard-normal images.
SYNTHETIC_IMAGES = 3
SYNTHETIC_SEED = 0
_INSTALL_CALIBRATION = "--engine int8 needs fgad.calibration (quantize_qdq, read_calibration_images)"


class EngineParityError(EngineBuildError):
    """The engine and onnxruntime disagree beyond the precision's tolerance; nothing was installed."""

    def __init__(self, output: str, diff: float, tolerance: float, precision: str, report: dict[str, Any]) -> None:
        self.output = output
        self.diff = diff
        self.tolerance = tolerance
        self.report = report
        super().__init__(
            f"engine parity check failed for output {output!r}: max |TensorRT {precision} - onnxruntime fp32| = "
            f"{diff:.3g} > tolerance {tolerance:.3g}; the engine was not installed (the ONNX bundle is unchanged). "
            "Try a higher precision (fp32), or keep more layers in fp32")


@dataclass
class EngineBundleResult:
    """What :func:`add_engine` did."""

    bundle: Path
    info: EngineInfo
    coverage: CoverageReport
    parity: dict[str, Any]
    quantization: dict[str, Any] | None = None
    files: list[str] = field(default_factory=list)


def synthetic_images(size: int, count: int = SYNTHETIC_IMAGES, seed: int = SYNTHETIC_SEED) -> np.ndarray:
    """Seeded standard-normal inputs ``[count, 3, size, size]`` (the scale of normalised images)."""
    return np.random.default_rng(seed).standard_normal((count, 3, size, size)).astype(np.float32)



def compare_engine(
    engine: Any, reference: Any, images: np.ndarray, precision: str, tolerances: Mapping[str, float] | None = None
) -> dict[str, Any]:
    """Run two backends (``run(batch) -> {name: array}``) on ``images``; max |diff| per float output.

    ``best_description`` (an argmax) is compared as agreement (fraction of equal indices): in reduced
    precision two nearly equal prompts may swap, which moves no map or score. Raises
    :class:`EngineParityError` for the first output beyond its tolerance.
    """
    tol = dict(tolerances or ENGINE_TOLERANCES[precision])
    step = int(getattr(engine, "max_batch", None) or 4)
    got_parts, want_parts = [], []
    for start in range(0, images.shape[0], step):
        batch = np.ascontiguousarray(images[start : start + step], dtype=np.float32)
        got_parts.append(engine.run(batch))
        want_parts.append(reference.run(batch))
    report: dict[str, Any] = {"images": int(images.shape[0]), "precision": precision, "tolerances": tol}
    failures = []
    for name in want_parts[0]:
        got = np.concatenate([p[name] for p in got_parts])
        want = np.concatenate([p[name] for p in want_parts])
        if got.shape != want.shape:
            raise EngineParityError(name, float("inf"), 0.0, precision, {"shape_engine": list(got.shape),
                                                                          "shape_onnx": list(want.shape)})
        if not np.issubdtype(want.dtype, np.floating):
            report[f"agreement_{name}"] = float(np.mean(got == want)) if want.size else 1.0
            continue
        diff = float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max()) if want.size else 0.0
        report[f"max_abs_diff_{name}"] = diff
        limit = parity_tolerance(name, tol)
        if not diff <= limit:  # also catches NaN
            failures.append((name, diff, limit))
    if failures:
        name, diff, limit = failures[0]
        raise EngineParityError(name, diff, limit, precision, report)
    return report


# ---------------------------------------------------------------------------------- steps


def _onnx_spec(manifest: Manifest, where: Path) -> tuple[str, int | None]:
    """The bundle's ONNX graph (the engine's own file for an ONNX bundle, else the fallback) and its opset."""
    engine = manifest.engine
    if engine.kind == "onnx":
        return engine.file, engine.opset
    if engine.fallback is not None and engine.fallback.kind == "onnx":
        return engine.fallback.file, engine.fallback.opset
    raise EngineBuildError(f"{where}: the bundle has no ONNX graph to build an engine from (engine.kind "
                           f"{engine.kind!r} without an onnx fallback); re-export it with fgad-export")


def _flavour(exported: str | None, requested: str | None, where: Path) -> str:
    exported = normalize_deform(exported or "decomposed")
    if requested is None:
        return exported
    wanted = normalize_deform(requested)
    if wanted == exported or (wanted == "plugin" and exported == "onnx"):
        return wanted
    names = {"onnx": "native"}
    raise EngineBuildError(
        f"{where}: field 'deform' is {names.get(exported, exported)!r}, so the engine cannot be built with "
        f"--deform {names.get(wanted, wanted)}: the plugin and native flavours need a bundle exported with "
        "--deform native (ONNX DeformConv); re-export the bundle")


def _import_calibration() -> tuple[Any, Any]:
    try:
        from fgad.calibration import quantize_qdq, read_calibration_images
    except ImportError:
        try:
            from fgad.calibration.images import read_calibration_images
            from fgad.calibration.qdq import quantize_qdq
        except ImportError as exc:
            raise EngineBuildError(f"{_INSTALL_CALIBRATION}, which this installation of fgad lacks ({exc}); "
                                   "use --engine fp16 or fp32") from exc
    return quantize_qdq, read_calibration_images


def _external_files(graph: Path) -> list[str]:
    """External-data files a graph refers to (relative to its folder)."""
    import onnx

    model = onnx.load(str(graph), load_external_data=False)
    files = set()
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            files |= {entry.value for entry in init.external_data if entry.key == "location"}
    return sorted(files)


def _is_qdq(graph: Path) -> bool:
    """Whether the graph already holds Q/DQ nodes (explicitly quantized)."""
    import onnx

    model = onnx.load(str(graph), load_external_data=False)
    return any(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in model.graph.node)


def _plugin_graph(source: Path) -> Path:
    """``source`` with DeformConv -> plugin nodes, as a temporary graph next to it (external data resolves)."""
    import onnx

    model = onnx.load(str(source), load_external_data=False)
    count = deformconv_to_plugin(model)
    if not count:
        log.warning("%s has no DeformConv node: --deform plugin changes nothing", source.name)
    target = source.parent / f".{source.stem}.plugin.{uuid.uuid4().hex}.onnx"
    onnx.save(model, str(target))
    log.info("rewrote %d DeformConv node(s) to %s nodes for TensorRT", count, PLUGIN_ID)
    return target


def _copy_plugins(libraries: Sequence[Path], root: Path) -> list[dict[str, Any]]:
    entries = []
    for library in libraries:
        rel = f"{PLUGIN_DIR}/{library.name}"
        with atomic_path(root / rel) as tmp:
            shutil.copyfile(library, tmp)
        entries.append({"file": rel, "ops": [PLUGIN_ID], "sha256": file_sha256(root / rel)})
    return entries


def _old_engine_files(raw: Mapping[str, Any]) -> set[str]:
    """Files of an earlier engine of this bundle (replaced by the new one)."""
    engine = raw.get("engine") or {}
    if engine.get("kind") != "tensorrt":
        return set()
    files = {str(engine.get("file"))} | {str(p.get("file")) for p in engine.get("plugins") or []}
    quant = engine.get("quantization") or {}
    if quant.get("file"):
        files.add(str(quant["file"]))
    return {f for f in files if f and f != "None"}


def add_engine(
    bundle_dir: str | os.PathLike[str],
    options: EngineBuildOptions,
    *,
    deform: str | None = None,
    check_images: np.ndarray | None = None,
    calibration: np.ndarray | None = None,
    calibration_method: str = "entropy",
    coverage: str = "fail",
    tolerances: Mapping[str, float] | None = None,
    sign: SigningKeySpec = None,
) -> EngineBundleResult:
    """Build a TensorRT engine for the bundle at ``bundle_dir`` and install it there (module docstring).

    Args:
        bundle_dir: a bundle folder (docs/bundle.md) whose ONNX graph runs in onnxruntime.
        options: precision, workspace, timing cache, plugin libraries, batch profile.
        deform: the flavour TensorRT gets: ``None`` (as exported), ``"native"``/``"onnx"`` (ONNX DeformConv,
            TensorRT >= 10.1), ``"plugin"`` (our plugin node; needs ``options.plugin_libraries``).
        check_images: preprocessed images ``[k, 3, s, s]`` for the parity check (default: seeded synthetic ones).
        calibration: preprocessed normal images for ``int8`` (required then).
        calibration_method: ``entropy`` / ``percentile`` / ``minmax`` (fgad.calibration).
        coverage: ``"fail"`` (default) stops before the build when the graph has a node TensorRT does not
            support; ``"warn"`` logs the findings and builds anyway.
        tolerances: per-output parity bounds (default :data:`ENGINE_TOLERANCES` of the precision).
        sign: an Ed25519 private key (PEM file or :class:`~fgad.bundle.signing.SigningKey`) that signs the new
            manifest; without it the bundle is left unsigned (a signature it had is removed, with a warning).

    Raises :class:`TensorRTUnavailableError` (nothing changed), :class:`EngineBuildError` (coverage, parser or
    builder failure, nothing changed), :class:`EngineParityError` (nothing installed).
    """
    if coverage not in ("fail", "warn"):
        raise ValueError(f"coverage={coverage!r}: use 'fail' or 'warn'")
    root = Path(bundle_dir)
    key = signing_key(sign)  # a bad key fails before the build
    manifest = load_manifest(root)
    where = root / MANIFEST_FILE
    check_manifest(manifest, root, backend="onnxruntime")  # the graph, references and hashes are intact
    onnx_file, opset = _onnx_spec(manifest, where)
    flavour = _flavour(manifest.deform, deform, where)
    if flavour == "plugin" and not options.plugin_libraries:
        raise EngineBuildError("--deform plugin needs the plugin library built from cpp_ext: pass --plugin PATH "
                               "(docs/jetson.md), or use --deform native")
    source = root / onnx_file
    check_external_data(source)  # TensorRT's parser opens external data as written: keep it inside the bundle
    quantized = _is_qdq(source)  # an int8 bundle of fgad-calibrate: model.onnx is already the Q/DQ graph
    if quantized and options.precision != "int8":
        raise EngineBuildError(f"{onnx_file} is a Q/DQ (int8) graph: build it with --engine int8, or give the fp32 "
                               "bundle for fp16/fp32")
    if not tensorrt_installed():
        raise TensorRTUnavailableError(INSTALL_TENSORRT)
    try:
        import tensorrt
    except ImportError as exc:  # installed but broken (libnvinfer not found)
        raise TensorRTUnavailableError(f"importing tensorrt failed ({exc}). {INSTALL_TENSORRT}") from exc
    if options.precision == "int8" and not quantized:
        _import_calibration()  # fail before any long step
    trt_version = str(getattr(tensorrt, "__version__", MIN_TENSORRT))
    images = check_images if check_images is not None else synthetic_images(manifest.input.size)
    raw = json.loads(json.dumps(manifest.raw))  # a deep copy of the manifest just checked, not a second read
    stage = root / f".engine.{uuid.uuid4().hex}.tmp"  # everything new is made here, moved in at the end
    stage.mkdir()
    plugin_graph: Path | None = None
    try:
        trt_source = source
        quantization: dict[str, Any] | None = None
        if options.precision == "int8" and not quantized:
            if calibration is None or len(calibration) == 0:
                raise EngineBuildError("--engine int8 needs calibration images of normal parts: pass --calib-dir DIR "
                                       "(or --refs)")
            quantize_qdq, _ = _import_calibration()
            report = quantize_qdq(source, stage / QDQ_FILE, calibration, method=calibration_method)
            quantization = {"file": QDQ_FILE, "method": calibration_method, "calibration_images": int(len(calibration)),
                            **(report.to_dict(include_nodes=False) if hasattr(report, "to_dict") else {})}
            trt_source = stage / QDQ_FILE
        if flavour == "plugin":
            plugin_graph = trt_source = _plugin_graph(trt_source)

        plugins = (PLUGIN_ID,) if flavour == "plugin" else ()
        found = check_tensorrt_coverage(trt_source, plugins=plugins, tensorrt_version=trt_version)
        if not found.ok:
            if coverage == "fail":
                raise EngineBuildError(found.summary() + "\nnot building the engine (--allow-unsupported builds "
                                                         "anyway)")
            log.warning("%s", found.summary())
        else:
            log.info("%s", found.summary().splitlines()[0])

        info = build_engine(trt_source, stage / ENGINE_FILE, options)
        parity = _parity(stage / ENGINE_FILE, source, manifest, options, images, tolerances)
        parity["inputs"] = "given images" if check_images is not None else f"{len(images)} synthetic images"

        # ---- install: the files first, the manifest last (until then the old manifest still holds)
        old = _old_engine_files(raw)
        new_files = [ENGINE_FILE]
        if quantization is not None:
            for name in [*_external_files(stage / QDQ_FILE), QDQ_FILE]:  # weights first, then the graph
                os.replace(stage / name, root / name)
                new_files.append(name)
        os.replace(stage / ENGINE_FILE, root / ENGINE_FILE)
        plugin_entries = _copy_plugins(options.plugin_libraries, root)
        new_files += [p["file"] for p in plugin_entries]
        engine_block: dict[str, Any] = {
            "kind": "tensorrt",
            "file": ENGINE_FILE,
            "opset": opset,
            "precision": options.precision,
            "tensorrt_version": info.tensorrt_version,
            "compute_capability": info.compute_capability,
            "deform": flavour,
            "plugins": plugin_entries,
            "build": info.to_manifest(),
            "coverage": {"ok": found.ok, "tensorrt_version": trt_version, "table": dict(found.source)},
            "parity": parity,
            "fallback": _fallback_block(raw),
            "external_data": None,
        }
        if quantization is not None:
            engine_block["quantization"] = quantization
        raw["engine"] = engine_block
        sha = {k: v for k, v in dict(raw.get("sha256") or {}).items() if k not in old}
        sha.update({name: file_sha256(root / name) for name in new_files})
        raw["sha256"] = sha
        write_manifest(root, raw, key)
        for stale in old - set(new_files):
            (root / stale).unlink(missing_ok=True)
        log.info("bundle %s: %s installed (%s, TensorRT %s, sm %s); %s stays as the fallback", root, ENGINE_FILE,
                 options.precision, info.tensorrt_version, info.compute_capability, onnx_file)
        return EngineBundleResult(root, info, found, parity, quantization, new_files)
    finally:
        if plugin_graph is not None:
            plugin_graph.unlink(missing_ok=True)
        shutil.rmtree(stage, ignore_errors=True)


def _parity(
    engine_path: Path,
    onnx_path: Path,
    manifest: Manifest,
    options: EngineBuildOptions,
    images: np.ndarray,
    tolerances: Mapping[str, float] | None,
) -> dict[str, Any]:
    """The freshly built engine vs onnxruntime on the fp32 graph (see :func:`compare_engine`)."""
    from fgad.runtime.backends.ort import OrtBackend
    from fgad.runtime.backends.trt import TensorRTBackend

    engine = TensorRTBackend(engine_path, manifest.input.name, plugins=options.plugin_libraries)
    try:
        report = compare_engine(engine, OrtBackend(onnx_path, manifest.input.name), images, options.precision,
                                tolerances)
    finally:
        engine.close()
    log.info("engine vs onnxruntime: %s", {k: v for k, v in report.items() if k.startswith(("max_", "agree"))})
    return report


def _fallback_block(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The ONNX engine block of the manifest (the current ``engine``, or its fallback for a rebuilt bundle)."""
    engine = dict(raw.get("engine") or {})
    if engine.get("kind") == "tensorrt":
        engine = dict(engine.get("fallback") or {})
    keep = ("file", "opset", "precision", "external_data")
    return {"kind": "onnx", "precision": "fp32"} | {k: engine[k] for k in keep if engine.get(k) is not None}
