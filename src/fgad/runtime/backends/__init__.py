"""Inference backends, chosen by the bundle's ``engine.kind``.

=================  ===============  ==================================
``engine.kind``    backend          package
=================  ===============  ==================================
``onnx``           ``onnxruntime``  onnxruntime / onnxruntime-gpu
``tensorrt``       ``tensorrt``     tensorrt (JetPack / NVIDIA)
=================  ===============  ==================================

Backend classes are imported on demand and their packages only when a backend is created.
"""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fgad.runtime.backends.base import Backend
from fgad.runtime.manifest import BundleError

if TYPE_CHECKING:
    from fgad.runtime.manifest import Manifest

__all__ = [
    "BACKENDS",
    "ENGINE_BACKENDS",
    "Backend",
    "available_backends",
    "backend_class",
    "create_backend",
    "select_backend",
]

#: backend name -> (module, class)
BACKENDS: dict[str, tuple[str, str]] = {
    "onnxruntime": ("fgad.runtime.backends.ort", "OrtBackend"),
    "tensorrt": ("fgad.runtime.backends.trt", "TensorRTBackend"),
}
#: engine.kind -> backends able to run it, preferred first
ENGINE_BACKENDS: dict[str, tuple[str, ...]] = {"onnx": ("onnxruntime",), "tensorrt": ("tensorrt",)}
_ALIASES = {"ort": "onnxruntime", "onnx": "onnxruntime", "trt": "tensorrt"}
_INSTALL = {
    "onnxruntime": "install onnxruntime (pip install onnxruntime, or onnxruntime-gpu)",
    "tensorrt": "TensorRT engines need the tensorrt package; install it from JetPack/NVIDIA, and cuda-python "
                "(pip install cuda-python)",
}


def backend_class(name: str) -> type[Any]:
    """The backend class registered as ``name`` (aliases: ort, onnx, trt)."""
    key = _ALIASES.get(name, name)
    if key not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of: auto, {', '.join(BACKENDS)}")
    module, cls = BACKENDS[key]
    return getattr(importlib.import_module(module), cls)


def available_backends() -> list[str]:
    """Names of the backends whose packages are installed."""
    return [name for name in BACKENDS if backend_class(name).is_available()]


def select_backend(engine_kind: str, requested: str = "auto", where: str = "manifest.json") -> str:
    """The backend that will run an ``engine_kind`` bundle, or a :class:`BundleError` naming ``engine.kind``."""
    if engine_kind not in ENGINE_BACKENDS:
        raise BundleError(
            f"{where}: field 'engine.kind' is {engine_kind!r}, which this fgad cannot run (known: "
            f"{', '.join(ENGINE_BACKENDS)}); upgrade fgad or re-export the bundle with --engine onnx",
            "engine.kind",
        )
    candidates = ENGINE_BACKENDS[engine_kind]
    if requested != "auto":
        name = _ALIASES.get(requested, requested)
        if name not in BACKENDS:
            raise ValueError(f"unknown backend {requested!r}; choose one of: auto, {', '.join(BACKENDS)}")
        if name not in candidates:
            raise BundleError(
                f"{where}: field 'engine.kind' is {engine_kind!r}, which backend {name!r} cannot run; use "
                f"--backend {' or '.join(candidates)} (or auto)",
                "engine.kind",
            )
        candidates = (name,)
    for name in candidates:
        if backend_class(name).is_available():
            return name
    raise BundleError(
        f"{where}: field 'engine.kind' is {engine_kind!r}, but no installed backend runs it: "
        f"{_INSTALL[candidates[0]]}",
        "engine.kind",
    )


def create_backend(
    manifest: Manifest,
    bundle_dir: str | os.PathLike[str],
    requested: str = "auto",
    *,
    threads: int | None = None,
) -> Backend:
    """Create the backend for a checked manifest (see :func:`fgad.runtime.manifest.check_manifest`).

    The engine is :func:`fgad.runtime.manifest.resolve_engine`'s choice: a TensorRT engine where it can run,
    else the ONNX graph it was built from (``engine.fallback``). With ``requested="auto"`` an engine that
    still fails to load (a plan TensorRT refuses to deserialize) also falls back, with a warning.
    """
    from fgad.runtime.manifest import resolve_engine

    engine = resolve_engine(manifest, bundle_dir, requested, quiet=True)
    try:
        return _create(engine, manifest, bundle_dir, requested, threads)
    except BundleError as err:
        fallback = manifest.engine.fallback
        if requested != "auto" or fallback is None or engine is fallback:
            raise
        logging.getLogger(__name__).warning("%s; running %s (engine.fallback) instead", err, fallback.file)
        return _create(fallback, manifest, bundle_dir, requested, threads)


def _create(engine: Any, manifest: Manifest, bundle_dir: str | os.PathLike[str], requested: str,
            threads: int | None) -> Backend:
    name = select_backend(engine.kind, requested, str(Path(bundle_dir) / "manifest.json"))
    cls = backend_class(name)
    path = Path(bundle_dir) / engine.file
    if engine.plugins:
        plugins = [Path(bundle_dir) / p.file for p in engine.plugins]
        return cls(path, input_name=manifest.input.name, threads=threads, plugins=plugins)
    return cls(path, input_name=manifest.input.name, threads=threads)
