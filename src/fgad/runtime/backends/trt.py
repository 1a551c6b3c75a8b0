"""TensorRT backend (placeholder).

The engine runner is written against the TensorRT 10 API in a later step. Until then this module only makes the
failure clear: without the ``tensorrt`` package it says where to get it, with it it says the runner is not there yet.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping, Sequence

import numpy as np

from fgad.runtime.manifest import BundleError

__all__ = ["TensorRTBackend"]

MISSING_MESSAGE = "TensorRT engines need the tensorrt package; install it from JetPack/NVIDIA"


class TensorRTBackend:
    """Runs a serialized TensorRT engine (not implemented yet)."""

    name = "tensorrt"

    @classmethod
    def is_available(cls) -> bool:
        return importlib.util.find_spec("tensorrt") is not None

    def __init__(
        self,
        engine_path: str | os.PathLike[str],
        input_name: str = "image",
        threads: int | None = None,
    ) -> None:
        if not self.is_available():
            raise BundleError(f"field 'engine.kind' is 'tensorrt': {MISSING_MESSAGE}", "engine.kind")
        raise NotImplementedError(
            "the TensorRT backend of fgad-run is not implemented yet; use a bundle exported with --engine onnx"
        )

    @property
    def output_names(self) -> list[str]:  # pragma: no cover - placeholder
        raise NotImplementedError

    @property
    def input_shapes(self) -> Mapping[str, tuple[int | None, ...]]:  # pragma: no cover - placeholder
        raise NotImplementedError

    @property
    def output_shapes(self) -> Mapping[str, tuple[int | None, ...]]:  # pragma: no cover - placeholder
        raise NotImplementedError

    def run(
        self, image_batch: np.ndarray, names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:  # pragma: no cover - placeholder
        raise NotImplementedError
