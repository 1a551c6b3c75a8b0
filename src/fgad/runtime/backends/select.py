"""Which backend runs a bundle and which of its engines: installed backends, ``engine.kind``, the TensorRT engine
or its ONNX fallback, and the runtime's checks before the first frame (:func:`check_manifest`)."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

from fgad.bundle.checks import check_contents
from fgad.bundle.engine import check_tensorrt_engine
from fgad.bundle.errors import BundleError
from fgad.bundle.files import check_files
from fgad.bundle.integrity import TrustSpec, check_integrity
from fgad.bundle.spec import MANIFEST_FILE, EngineSpec, Manifest
from fgad.runtime.backends.base import Backend

__all__ = [
    "BACKENDS",
    "ENGINE_BACKENDS",
    "available_backends",
    "backend_class",
    "check_engine",
    "check_manifest",
    "create_backend",
    "resolve_engine",
    "select_backend",
]

# the bundle checks' logger name, as before the split: log lines keep it
logger = logging.getLogger("fgad.bundle")

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
    """Create the backend for a checked manifest (see :func:`fgad.bundle.check_manifest`).

    The engine is :func:`fgad.bundle.resolve_engine`'s choice: a TensorRT engine where it can run,
    else the ONNX graph it was built from (``engine.fallback``). With ``requested="auto"`` an engine that
    still fails to load (a plan TensorRT refuses to deserialize) also falls back, with a warning.
    """
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
    if name == "onnxruntime" and engine.precision == "int8":  # a Q/DQ graph (fgad.runtime.backends.ort)
        return cls(path, input_name=manifest.input.name, threads=threads, quantized=True)
    return cls(path, input_name=manifest.input.name, threads=threads)


#: --backend names -> the engine kind they run (aliases as in fgad.runtime.backends)
_BACKEND_KINDS = {"onnxruntime": "onnx", "ort": "onnx", "onnx": "onnx", "tensorrt": "tensorrt", "trt": "tensorrt"}


def _resolve(manifest: Manifest, root: Path, backend: str, quiet: bool) -> tuple[EngineSpec, bool]:
    """(engine to run, whether its TensorRT checks already passed); see :func:`resolve_engine`."""
    engine, fallback = manifest.engine, manifest.engine.fallback
    if fallback is None:
        return engine, False
    where = root / MANIFEST_FILE
    if backend != "auto":
        kind = _BACKEND_KINDS.get(backend)
        if kind is not None and kind != engine.kind and kind == fallback.kind:
            if not quiet:
                logger.info("--backend %s: running %s (engine.fallback) instead of %s", backend, fallback.file,
                            engine.file)
            return fallback, False
        return engine, False
    try:
        select_backend(engine.kind, "auto", where=str(where))
        if engine.kind == "tensorrt":
            if importlib.util.find_spec("cuda") is None:
                raise BundleError("the TensorRT backend needs cuda-python (pip install cuda-python)", "engine.kind")
            check_tensorrt_engine(engine, where)
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
    engine, checked = _resolve(manifest, root, backend, quiet=False)
    select_backend(engine.kind, backend, where=str(root / MANIFEST_FILE))
    if engine.kind == "tensorrt" and not checked:
        check_tensorrt_engine(engine, root / MANIFEST_FILE)


def check_manifest(
    manifest: Manifest,
    bundle_dir: str | os.PathLike[str],
    *,
    backend: str = "auto",
    verify_hashes: bool = True,
    strict: bool = False,
    trust: TrustSpec | None = None,
) -> None:
    """Everything that can be checked before an engine is created; raises :class:`BundleError`.

    Order: the manifest's integrity (:func:`fgad.bundle.integrity.check_integrity`: its digest, with ``trust``
    a signature by one of those public keys, files ``sha256`` does not list: refused with ``strict``, else a
    warning), files and sha256 (``verify_hashes=False`` only checks presence; not allowed with ``trust``),
    engine kind vs installed backends (``backend`` as in :func:`select_backend`), then the bundle's contents
    (:func:`fgad.bundle.checks.check_contents`: output names and shapes vs ``input.size``/``grid``, few-shot
    layers vs ``tokens_<layer>`` outputs, the references file).
    """
    root = Path(bundle_dir)
    if trust and not verify_hashes:
        raise ValueError("a trusted signature vouches for the files only when their sha256 are checked: "
                         "trust needs verify_hashes=True")
    check_integrity(manifest, root, trust=trust, strict=strict)
    check_files(manifest, root, verify_hashes)
    check_engine(manifest, root, backend)
    check_contents(manifest, root)
