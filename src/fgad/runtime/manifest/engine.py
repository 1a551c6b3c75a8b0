"""Can this machine run the bundle's engine: engine kind vs installed backends, TensorRT and the GPU.

Which engine runs (:func:`resolve_engine`: ``engine`` or its ``fallback``), the backend for its kind, and for
TensorRT engines the TensorRT major version and the GPU compute capability they were built for. TensorRT, CUDA
helpers and the backends are imported lazily, and only for ``engine.kind == "tensorrt"``.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import re
import subprocess
from pathlib import Path
from typing import Any

from fgad.runtime.manifest.errors import REEXPORT, BundleError
from fgad.runtime.manifest.spec import MANIFEST_NAME, EngineSpec, Manifest

__all__ = ["check_engine", "detect_compute_capability", "parse_compute_capability", "resolve_engine"]

# the package's name, as before it was split: log lines keep their logger name
logger = logging.getLogger("fgad.runtime.manifest")


def parse_compute_capability(value: Any) -> str | None:
    """"8.7", 8.7, [8, 7] or "sm_87" -> "8.7"; None stays None; ValueError for anything else."""
    if value is None:
        return None
    if isinstance(value, list | tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return f"{value[0]}.{value[1]}"
    text = str(value).strip().lower()
    match = re.fullmatch(r"(?:sm_?)?(\d+)(?:\.(\d+)|(\d))", text)
    if not match:
        raise ValueError(value)
    minor = match.group(2) if match.group(2) is not None else match.group(3)
    return f"{int(match.group(1))}.{int(minor)}"


def _major(version: str) -> int | None:
    match = re.match(r"\s*(\d+)", str(version))
    return int(match.group(1)) if match else None


def detect_compute_capability() -> str | None:
    """Compute capability of GPU 0 as "major.minor", or None when it cannot be determined.

    Tries cuda-python, then pycuda, then ``nvidia-smi``; all are optional and imported lazily.
    """
    try:
        if importlib.util.find_spec("cuda") is not None:
            try:
                runtime = importlib.import_module("cuda.bindings.runtime")
            except ImportError:
                runtime = importlib.import_module("cuda.cudart")
            attr = runtime.cudaDeviceAttr
            err1, major = runtime.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMajor, 0)
            err2, minor = runtime.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMinor, 0)
            if int(err1) == 0 and int(err2) == 0:
                return f"{int(major)}.{int(minor)}"
    except (ImportError, AttributeError, RuntimeError, TypeError, ValueError) as exc:
        logger.debug("cuda-python could not report the compute capability: %s", exc)
    try:
        if importlib.util.find_spec("pycuda") is not None:
            importlib.import_module("pycuda.autoinit")
            driver = importlib.import_module("pycuda.driver")
            major, minor = driver.Device(0).compute_capability()
            return f"{int(major)}.{int(minor)}"
    except (ImportError, AttributeError, RuntimeError, TypeError, ValueError) as exc:
        logger.debug("pycuda could not report the compute capability: %s", exc)
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip().splitlines()
        if out:
            return parse_compute_capability(out[0])
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        logger.debug("nvidia-smi could not report the compute capability: %s", exc)
    return None


def _check_tensorrt(engine: EngineSpec, where: Path) -> None:
    if importlib.util.find_spec("tensorrt") is None:
        raise BundleError(
            f"{where}: field 'engine.kind' is 'tensorrt': TensorRT engines need the tensorrt package; install it from "
            "JetPack/NVIDIA, or use a bundle exported with --engine onnx",
            "engine.kind",
        )
    if engine.tensorrt_version is None:
        raise BundleError(
            f"{where}: field 'engine.tensorrt_version' is missing for a TensorRT engine; {REEXPORT}",
            "engine.tensorrt_version",
        )
    trt = importlib.import_module("tensorrt")
    installed = str(getattr(trt, "__version__", ""))
    built, have = _major(engine.tensorrt_version), _major(installed)
    if built is None or have is None or built != have:
        raise BundleError(
            f"{where}: field 'engine.tensorrt_version': the engine was built with TensorRT {engine.tensorrt_version} "
            f"but TensorRT {installed or '(unknown version)'} is installed; an engine only runs on the TensorRT major "
            "version that built it: rebuild the engine on this device with fgad-export",
            "engine.tensorrt_version",
        )
    if engine.compute_capability is None:
        raise BundleError(
            f"{where}: field 'engine.compute_capability' is missing for a TensorRT engine; {REEXPORT}",
            "engine.compute_capability",
        )
    gpu = detect_compute_capability()
    if gpu is None:
        logger.warning(
            "cannot determine this GPU's compute capability (install cuda-python to check it); the engine was "
            "built for %s",
            engine.compute_capability,
        )
    elif gpu != engine.compute_capability:
        raise BundleError(
            f"{where}: field 'engine.compute_capability': the engine was built for a GPU of compute capability "
            f"{engine.compute_capability}, this GPU is {gpu}; rebuild the engine on this device with fgad-export",
            "engine.compute_capability",
        )


#: --backend names -> the engine kind they run (aliases as in fgad.runtime.backends)
_BACKEND_KINDS = {"onnxruntime": "onnx", "ort": "onnx", "onnx": "onnx", "tensorrt": "tensorrt", "trt": "tensorrt"}


def _resolve(manifest: Manifest, root: Path, backend: str, quiet: bool) -> tuple[EngineSpec, bool]:
    """(engine to run, whether its TensorRT checks already passed); see :func:`resolve_engine`."""
    engine, fallback = manifest.engine, manifest.engine.fallback
    if fallback is None:
        return engine, False
    where = root / MANIFEST_NAME
    if backend != "auto":
        kind = _BACKEND_KINDS.get(backend)
        if kind is not None and kind != engine.kind and kind == fallback.kind:
            if not quiet:
                logger.info("--backend %s: running %s (engine.fallback) instead of %s", backend, fallback.file,
                            engine.file)
            return fallback, False
        return engine, False
    from fgad.runtime.backends import select_backend

    try:
        select_backend(engine.kind, "auto", where=str(where))
        if engine.kind == "tensorrt":
            if importlib.util.find_spec("cuda") is None:
                raise BundleError("the TensorRT backend needs cuda-python (pip install cuda-python)", "engine.kind")
            _check_tensorrt(engine, where)
    except BundleError as err:
        if not quiet:
            expected = err.field == "engine.kind"  # the package is simply not installed here
            (logger.info if expected else logger.warning)(
                "%s cannot run here (%s); running %s (engine.fallback, %s) instead", engine.file,
                str(err).split(": ", 1)[-1], fallback.file, fallback.kind)
        return fallback, False
    return engine, True


def resolve_engine(
    manifest: Manifest, bundle_dir: str | os.PathLike[str], backend: str = "auto", *, quiet: bool = False
) -> EngineSpec:
    """The engine this runtime will run: ``manifest.engine``, or its ``fallback`` where the engine cannot run.

    A bundle with a TensorRT engine keeps the ONNX graph it was built from as ``engine.fallback``. With
    ``backend="auto"`` the engine is preferred; when it cannot run here (TensorRT or cuda-python not installed,
    another TensorRT major version, another GPU) the fallback is used, with a log line saying why (unless
    ``quiet``). A ``backend`` that runs only the fallback's kind (``onnxruntime`` for a TensorRT bundle) picks
    the fallback; ``backend="tensorrt"`` insists on the engine, so its errors are raised by
    :func:`check_manifest`. Without a fallback this is always ``manifest.engine``.
    """
    return _resolve(manifest, Path(bundle_dir), backend, quiet)[0]


def check_engine(manifest: Manifest, root: Path, backend: str) -> None:
    """The engine :func:`resolve_engine` picks can run here: a backend for its kind, and for a TensorRT engine
    the TensorRT major version and GPU it was built for; raises :class:`BundleError`."""
    from fgad.runtime.backends import select_backend

    engine, checked = _resolve(manifest, root, backend, quiet=False)
    select_backend(engine.kind, backend, where=str(root / MANIFEST_NAME))
    if engine.kind == "tensorrt" and not checked:
        _check_tensorrt(engine, root / MANIFEST_NAME)

