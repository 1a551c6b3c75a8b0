"""onnxruntime backend: CUDA execution provider when the installed onnxruntime has it, else CPU.

Q/DQ (int8) graphs on x86 CPUs without VNNI: onnxruntime's extended graph optimisations fuse Q/DQ pairs into
integer kernels whose AVX2 path multiplies u8 x s8 pairs into saturating 16-bit sums, which on these graphs drops
the per-image correlation of the anomaly map with fp32 from 0.999 to 0.94 (tiny-test, synthetic tiles). There the
session keeps basic optimisations only (Q/DQ computed as written, in float: the graph's own arithmetic, which
TensorRT also follows), and says so once; CPUs with VNNI (and non-x86 CPUs) keep the integer kernels.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fgad.bundle import BundleError
from fgad.core.onnx_external import ExternalDataError, check_external_data

__all__ = ["OrtBackend", "cpu_int8_kernels_exact", "session_options"]

logger = logging.getLogger(__name__)
_WARNED: set[str] = set()
#: /proc/cpuinfo flags of x86 CPUs whose int8 dot products do not saturate (AVX512-VNNI, AVX-VNNI)
_VNNI_FLAGS = ("avx512_vnni", "avx_vnni")


def cpu_int8_kernels_exact(cpuinfo: str | None = None) -> bool:
    """Whether onnxruntime's CPU integer kernels compute a Q/DQ graph without 16-bit saturation here.

    False only on x86 Linux CPUs that report AVX2 but no VNNI flag; ``cpuinfo`` (the text of /proc/cpuinfo)
    is read when not given. Other platforms: True.
    """
    import platform

    if cpuinfo is None:
        if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
            return True
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return True
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[-1].split())
            break
    if "avx2" not in flags:
        return True  # no AVX2 u8s8 path: onnxruntime's SSE/reference kernels widen before summing
    return any(flag in flags for flag in _VNNI_FLAGS)


def session_options(quantized: bool = False, threads: int | None = None) -> Any:
    """``onnxruntime.SessionOptions`` as fgad runs a graph: errors-only logging, ``threads`` intra-op threads,
    and for a ``quantized`` (Q/DQ) graph on a CPU without exact int8 kernels, basic optimisations only
    (module docstring)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only; our own messages say what matters
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    if quantized and not cpu_int8_kernels_exact():
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        if "int8" not in _WARNED:
            _WARNED.add("int8")
            logger.info("this CPU has AVX2 but no VNNI: onnxruntime's int8 kernels would saturate, so the Q/DQ "
                        "graph runs with basic optimisations (as written, in float); exact, but slower")
    return options


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
        quantized: the graph is a Q/DQ (int8) graph (see :func:`session_options`).
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
        quantized: bool = False,
    ) -> None:
        import onnxruntime as ort
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

        self.model_path = Path(model_path)
        self.input_name = input_name
        try:  # before onnxruntime opens any of it: external data must stay next to the graph
            check_external_data(self.model_path)
        except (ExternalDataError, OSError) as exc:
            raise BundleError(f"field 'engine.file': {exc}", "engine.file") from exc
        options = session_options(quantized, threads)
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
