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

from fgad.runtime.backends.base import Backend
from fgad.runtime.backends.select import (
    BACKENDS,
    ENGINE_BACKENDS,
    available_backends,
    backend_class,
    check_engine,
    check_manifest,
    create_backend,
    resolve_engine,
    select_backend,
)

__all__ = [
    "BACKENDS",
    "ENGINE_BACKENDS",
    "Backend",
    "available_backends",
    "backend_class",
    "check_engine",
    "check_manifest",
    "create_backend",
    "resolve_engine",
    "select_backend",
]

