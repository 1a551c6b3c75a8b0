"""onnxruntime backend: CUDA execution provider when the installed onnxruntime has it, else CPU."""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fgad.bundle import BundleError

__all__ = ["OrtBackend"]

logger = logging.getLogger(__name__)


def _dims(shape: Sequence[Any] | None) -> tuple[int | None, ...]:
    """onnxruntime reports symbolic dims as strings or None; keep only the fixed ones."""
    return tuple(int(d) if isinstance(d, int) and d > 0 else None for d in (shape or ()))


class OrtBackend:
    """An ``onnxruntime.InferenceSession`` on one ONNX file.

    Args:
        model_path: the ``.onnx`` file.
        input_name: name of the image input.
        threads: intra-op threads for the CPU provider (None: onnxruntime's default, one per core).
        providers: explicit execution providers; default ``CUDAExecutionProvider`` (when available) then
            ``CPUExecutionProvider``.
    """

    name = "onnxruntime"

    @classmethod
    def is_available(cls) -> bool:
        return importlib.util.find_spec("onnxruntime") is not None

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        input_name: str = "image",
        threads: int | None = None,
        providers: Sequence[str] | None = None,
    ) -> None:
        import onnxruntime as ort
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

        self.model_path = Path(model_path)
        self.input_name = input_name
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only; our own messages say what matters
        if threads is not None:
            if threads < 1:
                raise ValueError(f"threads must be >= 1, got {threads}")
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        available = ort.get_available_providers()
        if providers is None:
            providers = ["CPUExecutionProvider"]
            if "CUDAExecutionProvider" in available:
                providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        ort_errors: tuple[type[BaseException], ...] = tuple(
            getattr(ort_state, n)
            for n in ("Fail", "InvalidGraph", "InvalidProtobuf", "NoSuchFile", "NotImplemented", "RuntimeException")
            if hasattr(ort_state, n)
        )
        try:
            self._session = ort.InferenceSession(str(self.model_path), sess_options=options, providers=list(providers))
        except (*ort_errors, RuntimeError, ValueError, OSError) as exc:
            raise BundleError(
                f"field 'engine.file': onnxruntime {ort.__version__} cannot load {self.model_path} ({exc}); "
                "re-export the bundle with fgad-export or upgrade onnxruntime",
                "engine.file",
            ) from exc
        self.providers: list[str] = list(self._session.get_providers())
        self._inputs = {i.name: _dims(i.shape) for i in self._session.get_inputs()}
        self._outputs = {o.name: _dims(o.shape) for o in self._session.get_outputs()}
        logger.debug("onnxruntime session on %s with %s", self.model_path, self.providers)

    @property
    def output_names(self) -> list[str]:
        return list(self._outputs)

    @property
    def input_shapes(self) -> Mapping[str, tuple[int | None, ...]]:
        return dict(self._inputs)

    @property
    def output_shapes(self) -> Mapping[str, tuple[int | None, ...]]:
        return dict(self._outputs)

    def run(self, image_batch: np.ndarray, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        batch = np.ascontiguousarray(image_batch, dtype=np.float32)
        wanted = list(names) if names is not None else self.output_names
        values = self._session.run(wanted, {self.input_name: batch})
        return dict(zip(wanted, values, strict=True))

    def __repr__(self) -> str:
        return f"OrtBackend({str(self.model_path)!r}, providers={self.providers})"
