"""TensorRT backend: runs a bundle's ``model.engine`` (a plain serialized TensorRT 10 plan) on the GPU.

Torch-free. GPU memory, copies and the stream come from cuda-python (``cuda.bindings.runtime``, or the older
``cuda.cudart`` of cuda-python < 12.6); both ``tensorrt`` and ``cuda`` are imported only when a backend is
created. The engine's I/O tensor names, types and shapes are read from the engine itself; the batch axis is
dynamic within the engine's optimization profile (``set_input_shape`` per call, larger batches are split).
Plugin libraries named in the manifest (``engine.plugins``) are loaded into TensorRT's plugin registry before
the plan is deserialized.

Where to get the packages: on Jetson, ``tensorrt`` comes with JetPack (``python3-libnvinfer``; make the venv
with ``--system-site-packages``); on a desktop, ``pip install tensorrt``. cuda-python: ``pip install
cuda-python`` (the major version of the CUDA it was built against: 12 for JetPack 6, 13 for JetPack 7).
See docs/jetson.md.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fgad.bundle import BundleError

if TYPE_CHECKING:
    import tensorrt as trt

__all__ = [
    "CUDA_MISSING_MESSAGE",
    "MISSING_MESSAGE",
    "TensorRTBackend",
    "cuda_available",
    "import_cudart",
    "load_plugin_libraries",
    "tensorrt_available",
]

logger = logging.getLogger(__name__)

MISSING_MESSAGE = (
    "TensorRT engines need the tensorrt package; install it from JetPack/NVIDIA (Jetson: it comes with JetPack, "
    "sudo apt install python3-libnvinfer, and the venv needs --system-site-packages; desktop: pip install tensorrt)"
)
CUDA_MISSING_MESSAGE = (
    "the TensorRT backend needs cuda-python for GPU memory and streams: pip install cuda-python "
    "(12.x for CUDA 12 / JetPack 6, 13.x for CUDA 13 / JetPack 7)"
)


#: plugin libraries already loaded in this process: (registry id, resolved path) -> (registry, handle)
_LOADED: dict[tuple[int, str], tuple[Any, Any]] = {}


def tensorrt_available() -> bool:
    """True when the ``tensorrt`` package is installed (checked without importing it)."""
    return importlib.util.find_spec("tensorrt") is not None


def cuda_available() -> bool:
    """True when cuda-python is installed (checked without importing it)."""
    try:
        return importlib.util.find_spec("cuda") is not None
    except (ImportError, ValueError):  # a broken namespace package
        return False


def import_cudart() -> Any:
    """cuda-python's runtime API module (``cuda.bindings.runtime``; ``cuda.cudart`` before cuda-python 12.6)."""
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise ImportError(CUDA_MISSING_MESSAGE)


def load_plugin_libraries(registry: trt.IPluginRegistry, libraries: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Load each plugin library into TensorRT's plugin ``registry`` (before parsing or deserializing).

    Raises FileNotFoundError for a missing file and RuntimeError when TensorRT refuses a library (wrong
    TensorRT or CUDA version, missing symbols); both name the library.
    """
    loaded: list[Path] = []
    for library in libraries:
        path = Path(library)
        if not path.is_file():
            raise FileNotFoundError(f"TensorRT plugin library {path} does not exist; build cpp_ext on this device "
                                    "(docs/jetson.md) and pass its path")
        key = (id(registry), str(path.resolve()))
        if key in _LOADED:  # once per process: a second load would register the same creators again
            loaded.append(path)
            continue
        try:
            handle = registry.load_library(key[1])
        except RuntimeError as exc:  # the bindings raise on a library that cannot be dlopen'ed
            raise RuntimeError(f"TensorRT could not load the plugin library {path}: {exc}; it must be built "
                               "against this TensorRT and CUDA") from exc
        if handle is None:
            raise RuntimeError(f"TensorRT could not load the plugin library {path}; it must be built against this "
                               "TensorRT and CUDA (see the TensorRT log above)")
        _LOADED[key] = (registry, handle)  # the registry is kept alive, so its id stays unique
        loaded.append(path)
        logger.debug("loaded TensorRT plugin library %s", path)
    return loaded


def _dims(shape: Any) -> tuple[int | None, ...]:
    """A TensorRT Dims as a tuple, None for dynamic (-1) dimensions."""
    return tuple(int(shape[i]) if int(shape[i]) >= 0 else None for i in range(len(shape)))


def _numpy_dtype(trt_module: Any, dtype: trt.DataType, name: str) -> np.dtype[Any]:
    """numpy type of an engine I/O tensor (the graph's I/O is float32, int64 and, in tests, int32/bool)."""
    table = {
        trt_module.DataType.FLOAT: np.float32,
        trt_module.DataType.HALF: np.float16,
        trt_module.DataType.INT32: np.int32,
        trt_module.DataType.INT64: np.int64,
        trt_module.DataType.INT8: np.int8,
        trt_module.DataType.UINT8: np.uint8,
        trt_module.DataType.BOOL: np.bool_,
    }
    if dtype not in table:
        raise BundleError(f"engine tensor {name!r} has type {dtype}, which the runtime does not read; re-export the "
                          "bundle", "engine.file")
    return np.dtype(table[dtype])


class _Cuda:
    """The few cuda-python runtime calls the backend needs, with errors checked."""

    def __init__(self, cudart: Any) -> None:
        self.rt = cudart

    def check(self, result: Any, what: str) -> Any:
        err, *values = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            try:
                text = self.rt.cudaGetErrorString(err)[1]
                text = text.decode() if isinstance(text, bytes) else str(text)
            except Exception:  # noqa: BLE001 - the error text is a courtesy
                text = str(err)
            raise RuntimeError(f"CUDA error in {what}: {text}")
        if not values:
            return None
        return values[0] if len(values) == 1 else tuple(values)

    def malloc(self, nbytes: int) -> int:
        return int(self.check(self.rt.cudaMalloc(max(int(nbytes), 1)), "cudaMalloc"))

    def free(self, pointer: int) -> None:
        self.check(self.rt.cudaFree(pointer), "cudaFree")

    def to_device(self, pointer: int, array: np.ndarray, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self.check(self.rt.cudaMemcpyAsync(pointer, array.ctypes.data, array.nbytes, kind, stream), "cudaMemcpyAsync")

    def to_host(self, array: np.ndarray, pointer: int, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self.check(self.rt.cudaMemcpyAsync(array.ctypes.data, pointer, array.nbytes, kind, stream), "cudaMemcpyAsync")


class TensorRTBackend:
    """A deserialized TensorRT engine with one execution context and one CUDA stream.

    Args:
        engine_path: the plan file (``model.engine``).
        input_name: name of the image input.
        threads: accepted for the backend interface; TensorRT does not use CPU threads for inference.
        plugins: plugin libraries to load before deserializing (the manifest's ``engine.plugins``).
    """

    name = "tensorrt"

    @classmethod
    def is_available(cls) -> bool:
        """tensorrt is installed (not imported). cuda-python is checked when the backend is created, with its
        own message, and by :func:`fgad.runtime.backends.resolve_engine` before it prefers an engine."""
        return tensorrt_available()

    def __init__(
        self,
        engine_path: str | os.PathLike[str],
        input_name: str = "image",
        threads: int | None = None,
        plugins: Sequence[str | os.PathLike[str]] = (),
    ) -> None:
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)
        self._stream: Any = None
        self._cuda: _Cuda | None = None
        if not tensorrt_available():
            raise BundleError(f"field 'engine.kind' is 'tensorrt': {MISSING_MESSAGE}", "engine.kind")
        if not cuda_available():
            raise BundleError(f"field 'engine.kind' is 'tensorrt': {CUDA_MISSING_MESSAGE}", "engine.kind")
        try:
            import tensorrt as trt_module
        except ImportError as exc:  # installed but broken (e.g. libnvinfer missing)
            raise BundleError(f"field 'engine.kind' is 'tensorrt': importing tensorrt failed ({exc}); "
                              f"{MISSING_MESSAGE}", "engine.kind") from exc
        self._cuda = _Cuda(import_cudart())
        self.engine_path = Path(engine_path)
        self.input_name = input_name
        self.tensorrt_version = str(getattr(trt_module, "__version__", "?"))
        self._logger = trt_module.Logger(trt_module.Logger.WARNING)
        try:
            self.plugins = load_plugin_libraries(trt_module.get_plugin_registry(), plugins)
        except (FileNotFoundError, RuntimeError) as exc:
            raise BundleError(f"field 'engine.plugins': {exc}", "engine.plugins") from exc
        trt_module.init_libnvinfer_plugins(self._logger, "")
        self._runtime = trt_module.Runtime(self._logger)
        self._engine = self._deserialize()
        context = self._engine.create_execution_context()
        if context is None:
            raise RuntimeError(f"TensorRT could not create an execution context for {self.engine_path} "
                               "(out of GPU memory?)")
        self._context: trt.IExecutionContext = context
        self._inputs: dict[str, tuple[int | None, ...]] = {}
        self._outputs: dict[str, tuple[int | None, ...]] = {}
        self._dtypes: dict[str, np.dtype[Any]] = {}
        for index in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(index)
            shape = _dims(self._engine.get_tensor_shape(name))
            self._dtypes[name] = _numpy_dtype(trt_module, self._engine.get_tensor_dtype(name), name)
            if self._engine.get_tensor_mode(name) == trt_module.TensorIOMode.INPUT:
                self._inputs[name] = shape
            else:
                self._outputs[name] = shape
        if input_name not in self._inputs:
            raise BundleError(
                f"field 'input.name' is '{input_name}', but the engine's inputs are {sorted(self._inputs)}; "
                "re-export the bundle with fgad-export", "input.name")
        self.max_batch = self._max_batch()
        self._stream = self._cuda.check(self._cuda.rt.cudaStreamCreate(), "cudaStreamCreate")
        logger.debug("TensorRT %s engine %s: inputs %s, outputs %s, max batch %s", self.tensorrt_version,
                     self.engine_path, self._inputs, list(self._outputs), self.max_batch)

    def _deserialize(self) -> trt.ICudaEngine:
        try:
            plan = self.engine_path.read_bytes()
        except OSError as exc:
            raise BundleError(f"field 'engine.file': cannot read {self.engine_path} ({exc})", "engine.file") from exc
        engine = self._runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise BundleError(
                f"field 'engine.file': TensorRT {self.tensorrt_version} could not deserialize {self.engine_path}; an "
                "engine only loads with the TensorRT version and GPU that built it, and with its plugin libraries: "
                "rebuild it on this device with fgad-export --bundle DIR --engine fp16 (docs/jetson.md)",
                "engine.file",
            )
        engine_type: trt.ICudaEngine = engine
        return engine_type

    def _max_batch(self) -> int | None:
        """Largest batch of the first optimization profile (None: static batch, the engine's own)."""
        if self._inputs[self.input_name][0] is not None:
            return self._inputs[self.input_name][0]
        _, _, largest = self._engine.get_tensor_profile_shape(self.input_name, 0)
        return int(largest[0])

    # ------------------------------------------------------------------ Backend protocol

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
        """Run the engine on ``[B, 3, s, s]``; batches above the profile's maximum run in chunks."""
        wanted = list(names) if names is not None else self.output_names
        unknown = [n for n in wanted if n not in self._outputs]
        if unknown:
            raise KeyError(f"the engine has no output(s) {unknown}; it has {self.output_names}")
        batch = np.ascontiguousarray(image_batch, dtype=self._dtypes[self.input_name])
        step = self.max_batch or batch.shape[0]
        if batch.shape[0] <= step:
            return self._run_chunk(batch, wanted)
        parts = [self._run_chunk(batch[i : i + step], wanted) for i in range(0, batch.shape[0], step)]
        return {n: np.concatenate([p[n] for p in parts], axis=0) for n in wanted}

    def _buffer(self, name: str, nbytes: int) -> int:
        assert self._cuda is not None
        pointer, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if pointer:
                self._cuda.free(pointer)
            pointer = self._cuda.malloc(nbytes)
            self._buffers[name] = (pointer, nbytes)
        return pointer

    def _run_chunk(self, batch: np.ndarray, wanted: Sequence[str]) -> dict[str, np.ndarray]:
        assert self._cuda is not None
        cuda, context = self._cuda, self._context
        if not context.set_input_shape(self.input_name, tuple(int(d) for d in batch.shape)):
            raise ValueError(
                f"the engine does not accept input shape {list(batch.shape)} (declared "
                f"{list(self._inputs[self.input_name])}, batch up to {self.max_batch}); rebuild it with a larger "
                "--max-batch")
        pointer = self._buffer(self.input_name, batch.nbytes)
        cuda.to_device(pointer, batch, self._stream)
        context.set_tensor_address(self.input_name, pointer)
        results: dict[str, np.ndarray] = {}
        for name in self._outputs:
            shape = tuple(int(d) for d in _dims(context.get_tensor_shape(name)) if d is not None)
            host = np.empty(shape, dtype=self._dtypes[name])
            context.set_tensor_address(name, self._buffer(name, host.nbytes))
            if name in wanted:
                results[name] = host
        if not context.execute_async_v3(int(self._stream)):
            raise RuntimeError(f"TensorRT failed to run {self.engine_path} (see the TensorRT log above)")
        for name, host in results.items():
            cuda.to_host(host, self._buffers[name][0], self._stream)
        cuda.check(cuda.rt.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return {name: results[name] for name in wanted}

    def close(self) -> None:
        """Free the GPU buffers and the stream (also done when the backend is garbage collected)."""
        cuda = self._cuda
        if cuda is None:
            return
        for pointer, _ in self._buffers.values():
            cuda.free(pointer)
        self._buffers.clear()
        if self._stream is not None:
            cuda.check(cuda.rt.cudaStreamDestroy(self._stream), "cudaStreamDestroy")
            self._stream = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown may have unloaded CUDA already
            pass

    def __repr__(self) -> str:
        return f"TensorRTBackend({str(self.engine_path)!r}, tensorrt={self.tensorrt_version})"
