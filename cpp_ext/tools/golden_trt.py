"""Run one golden case through a TensorRT engine of a one-node ONNX graph holding the FgadDeformConv2d plugin.

Written against the TensorRT 10 Python API and NOT yet run: the machines this was written on have neither a
GPU nor TensorRT. Treat its first run on a device as the test of this module; ``check_golden.py`` reports
any exception here as a failed check with its message.

Needs ``tensorrt`` and ``onnx`` (both imported lazily, only when this path runs) and the CUDA runtime library
``libcudart`` (called through ctypes, so neither torch nor cuda-python is needed). The graph is what the
exporter emits for a ``DeformConv`` node (op type, domain and ``plugin_namespace`` / ``plugin_version``
attributes from spec.json, all five inputs present) except that every input, ``W`` and ``B`` included, is a
graph input with the case's static shape, so the engine needs no optimization profile. The network is
created STRONGLY_TYPED: the plugin then runs in exactly the graph's type (float32 or float16 I/O).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from pathlib import Path
from typing import Any

import numpy as np

_CUDA_MEMCPY_HOST_TO_DEVICE = 1
_CUDA_MEMCPY_DEVICE_TO_HOST = 2
_LOADED_PLUGINS: dict[str, Any] = {}  # resolved path -> handle: load each library once per process


class TensorRTUnavailable(RuntimeError):
    """tensorrt, onnx or libcudart cannot be imported / loaded here."""


def unavailable_reason() -> str | None:
    """None when tensorrt and onnx are importable, else why not (nothing is imported)."""
    import importlib.util

    for module in ("tensorrt", "onnx"):
        if importlib.util.find_spec(module) is None:
            return f"python module {module!r} is not installed"
    return None


# ---------------------------------------------------------------------------------------------- CUDA runtime


def _load_cudart() -> ctypes.CDLL:
    names = [ctypes.util.find_library("cudart"), "libcudart.so", "libcudart.so.13", "libcudart.so.12"]
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root:
            names += [str(Path(root) / "lib64" / "libcudart.so"), str(Path(root) / "lib" / "libcudart.so")]
    errors = []
    for name in names:
        if not name:
            continue
        try:
            return ctypes.CDLL(name)
        except OSError as exc:
            errors.append(f"{name}: {exc}")
    raise TensorRTUnavailable("cannot load the CUDA runtime library (libcudart): " + "; ".join(errors))


class _Cudart:
    """The few CUDA runtime calls a synchronous engine run needs, errors checked."""

    def __init__(self) -> None:
        self.lib = _load_cudart()
        self.lib.cudaGetErrorString.restype = ctypes.c_char_p
        self.lib.cudaGetErrorString.argtypes = [ctypes.c_int]
        self.lib.cudaMalloc.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t]
        self.lib.cudaFree.argtypes = [ctypes.c_void_p]
        self.lib.cudaMemcpy.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        self.lib.cudaStreamCreate.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
        self.lib.cudaStreamSynchronize.argtypes = [ctypes.c_void_p]
        self.lib.cudaStreamDestroy.argtypes = [ctypes.c_void_p]

    def check(self, code: int, what: str) -> None:
        if code != 0:
            text = self.lib.cudaGetErrorString(code)
            raise RuntimeError(f"CUDA error in {what}: {text.decode() if text else code}")

    def malloc(self, nbytes: int) -> int:
        pointer = ctypes.c_void_p()
        self.check(self.lib.cudaMalloc(ctypes.byref(pointer), max(int(nbytes), 1)), "cudaMalloc")
        return int(pointer.value or 0)

    def free(self, pointer: int) -> None:
        self.check(self.lib.cudaFree(ctypes.c_void_p(pointer)), "cudaFree")

    def to_device(self, pointer: int, array: np.ndarray) -> None:
        self.check(self.lib.cudaMemcpy(ctypes.c_void_p(pointer), ctypes.c_void_p(array.ctypes.data), array.nbytes,
                                       _CUDA_MEMCPY_HOST_TO_DEVICE), "cudaMemcpy to the device")

    def to_host(self, array: np.ndarray, pointer: int) -> None:
        self.check(self.lib.cudaMemcpy(ctypes.c_void_p(array.ctypes.data), ctypes.c_void_p(pointer), array.nbytes,
                                       _CUDA_MEMCPY_DEVICE_TO_HOST), "cudaMemcpy to the host")

    def stream(self) -> int:
        handle = ctypes.c_void_p()
        self.check(self.lib.cudaStreamCreate(ctypes.byref(handle)), "cudaStreamCreate")
        return int(handle.value or 0)

    def synchronize(self, stream: int) -> None:
        self.check(self.lib.cudaStreamSynchronize(ctypes.c_void_p(stream)), "cudaStreamSynchronize")

    def destroy(self, stream: int) -> None:
        self.check(self.lib.cudaStreamDestroy(ctypes.c_void_p(stream)), "cudaStreamDestroy")


# ---------------------------------------------------------------------------------------------- graph + engine


def plugin_onnx_model(
    spec: Any, inputs: dict[str, np.ndarray], fields: dict[str, Any], output_shape: tuple[int, ...]
) -> bytes:
    """The serialized one-node graph: every plugin input a graph input of its array's shape and type, the
    output declared with ``output_shape`` (the golden output's)."""
    import onnx
    from onnx import helper

    elem = {np.dtype(np.float32): onnx.TensorProto.FLOAT, np.dtype(np.float16): onnx.TensorProto.FLOAT16}
    first = next(iter(inputs.values()))
    if np.dtype(first.dtype) not in elem:
        raise ValueError(f"plugin inputs must be float32 or float16, got {first.dtype}")
    elem_type = elem[np.dtype(first.dtype)]
    weight = inputs["W"]
    node_attributes = dict(spec.raw["onnx_node"]["attributes"])
    node = helper.make_node(
        spec.onnx_op_type, list(inputs), list(spec.output_names), name="golden", domain=spec.onnx_domain,
        **{k: (list(v) if isinstance(v, list) else int(v)) for k, v in fields.items()},
        kernel_shape=[int(d) for d in weight.shape[2:]], **node_attributes,
    )  # fmt: skip
    graph = helper.make_graph(
        [node],
        "fgad_golden",
        [helper.make_tensor_value_info(name, elem_type, list(a.shape)) for name, a in inputs.items()],
        [helper.make_tensor_value_info(spec.output_names[0], elem_type, [int(d) for d in output_shape])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 19), helper.make_opsetid(spec.onnx_domain, spec.onnx_domain_version)],
        producer_name="fgad-check-golden",
    )
    model.ir_version = 9  # opset 19 (the exporter's) needs IR 9; newer onnx packages would write a newer IR
    return bytes(model.SerializeToString())


@functools.lru_cache(maxsize=1)
def _session() -> tuple[Any, Any, _Cudart]:
    """(tensorrt module, its one logger, the CUDA runtime) for the process: TensorRT wants one logger for all
    builders and runtimes."""
    reason = unavailable_reason()
    if reason is not None:
        raise TensorRTUnavailable(reason)
    import tensorrt as trt

    return trt, trt.Logger(trt.Logger.WARNING), _Cudart()


def load_plugin(trt: Any, library: Path) -> None:
    path = Path(library)
    if not path.is_file():
        raise FileNotFoundError(f"TensorRT plugin library {path} does not exist (build cpp_ext with CMake)")
    key = str(path.resolve())
    if key in _LOADED_PLUGINS:
        return
    handle = trt.get_plugin_registry().load_library(key)
    if handle is None:
        raise RuntimeError(f"TensorRT could not load the plugin library {path} (see the TensorRT log above); it must "
                           "be built against this TensorRT and CUDA")
    _LOADED_PLUGINS[key] = handle


def build_engine(trt: Any, logger: Any, onnx_bytes: bytes) -> tuple[Any, Any]:
    """(runtime, engine) for the serialized graph; the runtime is returned so it outlives the engine."""
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        problems = [parser.get_error(i).desc() for i in range(parser.num_errors)]
        raise RuntimeError("TensorRT's ONNX parser rejected the plugin graph: " + "; ".join(problems or ["no error"]))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1 << 26)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT could not build the plugin engine (see the TensorRT log above)")
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(serialized)
    if engine is None:
        raise RuntimeError("TensorRT could not deserialize the plugin engine it just built")
    return runtime, engine


def run_case(spec: Any, case: Any, plugin_library: Path, precision: str) -> np.ndarray:
    """The plugin engine's output for ``case`` (a golden_io.GoldenCase) in ``precision`` ("fp32" / "fp16")."""
    dtypes = {"fp32": np.float32, "fp16": np.float16}
    if precision not in dtypes:
        raise ValueError(f"precision must be one of {sorted(dtypes)}, got {precision!r}")
    trt, logger, cuda = _session()
    load_plugin(trt, plugin_library)
    inputs = case.explicit_inputs(dtypes[precision])
    _runtime, engine = build_engine(trt, logger, plugin_onnx_model(spec, inputs, case.fields, case.expected.shape))
    context = engine.create_execution_context()
    output_name = spec.output_names[0]
    output = np.empty(tuple(int(d) for d in engine.get_tensor_shape(output_name)), dtype=dtypes[precision])
    buffers: list[int] = []
    stream = cuda.stream()
    try:
        for name, array in inputs.items():
            buffers.append(cuda.malloc(array.nbytes))
            cuda.to_device(buffers[-1], array)
            context.set_tensor_address(name, buffers[-1])
        buffers.append(cuda.malloc(output.nbytes))
        out_pointer = buffers[-1]
        context.set_tensor_address(output_name, out_pointer)
        if not context.execute_async_v3(stream):
            raise RuntimeError("IExecutionContext.execute_async_v3 failed (see the TensorRT log above)")
        cuda.synchronize(stream)
        cuda.to_host(output, out_pointer)
    finally:
        for pointer in buffers:
            cuda.free(pointer)
        cuda.destroy(stream)
    return output
