"""Can this machine honour a TensorRT engine's fields: the TensorRT major version and GPU compute capability it was
built for. TensorRT and the CUDA helpers are imported lazily, and only for ``engine.kind == "tensorrt"``; which
backend and which engine run is the runtime's (:mod:`fgad.runtime.backends.select`).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import re
import subprocess
from pathlib import Path
from typing import Any

from fgad.bundle.errors import REEXPORT, BundleError
from fgad.bundle.spec import EngineSpec

__all__ = ["check_tensorrt_engine", "detect_compute_capability", "parse_compute_capability"]

# the package's name, as before it was split: log lines keep their logger name
logger = logging.getLogger("fgad.bundle")


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


def check_tensorrt_engine(engine: EngineSpec, where: Path) -> None:
    """A TensorRT engine can run here: tensorrt installed, the major version and the GPU it was built for."""
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
