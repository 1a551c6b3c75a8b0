"""ctypes bindings of the deformable-convolution libraries in ``cpp_ext/`` (CPU and CUDA builds).

Used by ``tests/cpp_ext`` and ``cpp_ext/tools/bench_gpu.py``; it needs only numpy (torch tensors are
passed to the CUDA build as raw device pointers by the caller). The libraries are built with the
plain compiler commands below (no CMake needed), which are also the ones README.md documents:

* CPU: ``g++ -O2 -std=c++17 -shared -fPIC -fvisibility=hidden -I cpp_ext
  cpp_ext/deformConv2dPlugin/deformConv2dCpu.cpp -o libfgad_deform_cpu.so``
* CUDA: ``nvcc -O3 -std=c++17 -shared -Xcompiler -fPIC,-fvisibility=hidden -I cpp_ext
  -gencode arch=compute_XY,code=sm_XY cpp_ext/deformConv2dPlugin/deformConv2dKernel.cu
  -o libfgad_deform_cuda.so``
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np

CPP_EXT_DIR = Path(__file__).resolve().parents[1]
PLUGIN_DIR = CPP_EXT_DIR / "deformConv2dPlugin"
CPU_SOURCE = PLUGIN_DIR / "deformConv2dCpu.cpp"
CUDA_SOURCE = PLUGIN_DIR / "deformConv2dKernel.cu"

FLOAT32 = 0  # FGAD_DEFORM_FLOAT32
FLOAT16 = 1  # FGAD_DEFORM_FLOAT16
ALGO_AUTO = 0  # FGAD_DEFORM_ALGO_AUTO
ALGO_TILED = 1  # FGAD_DEFORM_ALGO_TILED
ALGO_DIRECT = 2  # FGAD_DEFORM_ALGO_DIRECT

_MESSAGE_CAPACITY = 512
_SHAPE_FIELDS = (
    "batch",
    "inChannels",
    "height",
    "width",
    "outChannels",
    "kernelH",
    "kernelW",
    "strideH",
    "strideW",
    "padTop",
    "padLeft",
    "padBottom",
    "padRight",
    "dilationH",
    "dilationW",
    "group",
    "offsetGroup",
    "outH",
    "outW",
)


class DeformShape(ctypes.Structure):
    """Mirror of ``FgadDeformConvShape`` (deformConv2dShape.h); field order must match."""

    _fields_ = [(name, ctypes.c_int32) for name in _SHAPE_FIELDS]

    def as_dict(self) -> dict[str, int]:
        return {name: int(getattr(self, name)) for name in _SHAPE_FIELDS}


class DeformLibraryError(RuntimeError):
    """A library call failed; the message is the library's own (it names the bad field)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _run_compiler(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"building the deform-conv library failed (exit {result.returncode}):\n{' '.join(command)}\n"
            f"{result.stdout}{result.stderr}"
        )


def find_cxx() -> str | None:
    """The C++ compiler to use: $CXX, else g++, else c++ (None when there is none)."""
    for candidate in (os.environ.get("CXX"), "g++", "c++"):
        if candidate and shutil.which(candidate):
            return candidate
    return None


def find_nvcc() -> str | None:
    """nvcc from PATH, else $CUDA_HOME/bin or /usr/local/cuda/bin (None when there is none)."""
    found = shutil.which("nvcc")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and (Path(root) / "bin" / "nvcc").is_file():
            return str(Path(root) / "bin" / "nvcc")
    return None


def cpu_build_command(output: Path, compiler: str = "g++") -> list[str]:
    return [
        compiler,
        "-O2",
        "-std=c++17",
        "-shared",
        "-fPIC",
        "-fvisibility=hidden",
        "-Wall",
        "-Wextra",
        "-I",
        str(CPP_EXT_DIR),
        str(CPU_SOURCE),
        "-o",
        str(output),
    ]


def build_cpu_library(out_dir: Path, compiler: str | None = None) -> Path:
    """Compile deformConv2dCpu.cpp into ``out_dir/libfgad_deform_cpu.so`` and return its path."""
    compiler = compiler or find_cxx()
    if compiler is None:
        raise RuntimeError("no C++ compiler found (set CXX or install g++)")
    output = Path(out_dir) / "libfgad_deform_cpu.so"
    _run_compiler(cpu_build_command(output, compiler))
    return output


def gencode_flags(archs: Sequence[str]) -> list[str]:
    """``-gencode`` flags for SM numbers like "87"; "native" builds for the GPU of this machine."""
    flags: list[str] = []
    for arch in archs:
        if arch == "native":
            flags.append("-arch=native")
        else:
            flags += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    return flags


def cuda_compile_command(output: Path, archs: Sequence[str], nvcc: str = "nvcc", shared: bool = True) -> list[str]:
    """nvcc command for the CUDA kernels: a shared library, or an object file (``shared=False``)."""
    return [
        nvcc,
        "-O3",
        "-std=c++17",
        "-shared" if shared else "-c",
        "-Xcompiler",
        "-fPIC,-fvisibility=hidden",
        "-I",
        str(CPP_EXT_DIR),
        *gencode_flags(archs),
        str(CUDA_SOURCE),
        "-o",
        str(output),
    ]


def build_cuda_library(out_dir: Path, archs: Sequence[str] = ("native",), nvcc: str | None = None) -> Path:
    """Compile deformConv2dKernel.cu into ``out_dir/libfgad_deform_cuda.so`` and return its path."""
    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        raise RuntimeError("nvcc not found (install the CUDA toolkit or set CUDA_HOME)")
    output = Path(out_dir) / "libfgad_deform_cuda.so"
    _run_compiler(cuda_compile_command(output, archs, nvcc))
    return output


def _pointer(array: np.ndarray | None) -> ctypes.c_void_p | None:
    return None if array is None else ctypes.c_void_p(array.ctypes.data)


class DeformLibrary:
    """One loaded library (CPU build, CUDA build, or the TensorRT plugin, which embeds the kernels)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lib = ctypes.CDLL(str(self.path))
        self._has_cpu = hasattr(self._lib, "fgad_deform_conv2d_cpu")
        self._has_cuda = hasattr(self._lib, "fgad_deform_conv2d_cuda")
        lib = self._lib
        # Exported by every build (deformConv2dCApi.h).
        lib.fgad_deform_conv2d_shape_size.restype = ctypes.c_int32
        lib.fgad_deform_conv2d_fill_output_size.argtypes = [ctypes.POINTER(DeformShape)]
        lib.fgad_deform_conv2d_validate.argtypes = [ctypes.POINTER(DeformShape), ctypes.c_char_p, ctypes.c_int32]
        lib.fgad_deform_conv2d_validate.restype = ctypes.c_int32
        if self._has_cpu:
            lib.fgad_deform_conv2d_cpu.argtypes = [
                ctypes.POINTER(DeformShape),
                ctypes.c_int32,
                ctypes.c_int32,
                *([ctypes.c_void_p] * 6),
                ctypes.c_char_p,
                ctypes.c_int32,
            ]
            lib.fgad_deform_conv2d_cpu.restype = ctypes.c_int32
            lib.fgad_half_to_float.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
            lib.fgad_float_to_half.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
            lib.fgad_deform_conv2d_plugin_contract.restype = ctypes.c_char_p
        if self._has_cuda:
            self._lib.fgad_deform_conv2d_cuda.argtypes = [
                ctypes.POINTER(DeformShape),
                ctypes.c_int32,
                ctypes.c_int32,
                *([ctypes.c_void_p] * 7),
                ctypes.c_char_p,
                ctypes.c_int32,
            ]
            self._lib.fgad_deform_conv2d_cuda.restype = ctypes.c_int32

    # ------------------------------------------------------------------ shapes

    def shape_size(self) -> int:
        return int(self._lib.fgad_deform_conv2d_shape_size())

    def make_shape(
        self,
        x_shape: Sequence[int],
        w_shape: Sequence[int],
        stride: Sequence[int] = (1, 1),
        pads: Sequence[int] = (0, 0, 0, 0),
        dilation: Sequence[int] = (1, 1),
        group: int = 1,
        offset_group: int = 1,
    ) -> DeformShape:
        """The shape struct for X/W shapes and ONNX-style attributes (pads = top, left, bottom, right),
        with the output size filled in by the library."""
        n, c, h, w = (int(v) for v in x_shape)
        cout, _, kh, kw = (int(v) for v in w_shape)
        shape = DeformShape(
            n, c, h, w, cout, kh, kw, *map(int, stride), *map(int, pads), *map(int, dilation), group, offset_group, 0, 0
        )
        self.fill_output_size(shape)
        return shape

    def fill_output_size(self, shape: DeformShape) -> None:
        """Set ``shape.outH``/``outW`` from the other fields (the library's formula)."""
        self._lib.fgad_deform_conv2d_fill_output_size(ctypes.byref(shape))

    def validate(self, shape: DeformShape) -> str | None:
        """None for a valid shape, else the library's message."""
        message = ctypes.create_string_buffer(_MESSAGE_CAPACITY)
        code = self._lib.fgad_deform_conv2d_validate(ctypes.byref(shape), message, _MESSAGE_CAPACITY)
        return None if code == 0 else message.value.decode()

    def _require_cpu(self) -> None:
        if not self._has_cpu:
            raise RuntimeError(f"{self.path} is not the CPU build (build it with build_cpu_library)")

    def plugin_contract(self) -> tuple[str, str, str, dict[str, int]]:
        """(name, version, namespace, {field: number of INT32 values}) of the TensorRT plugin."""
        self._require_cpu()
        name, version, namespace, fields = self._lib.fgad_deform_conv2d_plugin_contract().decode().split("|")
        lengths = {f.split(":")[0]: int(f.split(":")[1]) for f in fields.split(",")}
        return name, version, namespace, lengths

    # ------------------------------------------------------------------ CPU

    def run_cpu(
        self,
        shape: DeformShape,
        x: np.ndarray,
        weight: np.ndarray,
        offset: np.ndarray,
        bias: np.ndarray | None = None,
        mask: np.ndarray | None = None,
        algo: int = ALGO_AUTO,
    ) -> np.ndarray:
        """Run the CPU build. float32 arrays, or float16 arrays for the fp16-I/O emulation."""
        self._require_cpu()
        dtype = np.dtype(x.dtype)
        if dtype not in (np.dtype(np.float32), np.dtype(np.float16)):
            raise TypeError(f"x must be float32 or float16, got {dtype}")
        arrays = [x, weight, offset, bias, mask]
        for name, a in zip(("x", "weight", "offset", "bias", "mask"), arrays, strict=True):
            if a is not None and (a.dtype != dtype or not a.flags.c_contiguous):
                raise TypeError(f"{name} must be a C-contiguous {dtype} array like x, got {a.dtype}")
        problem = self.validate(shape)
        if problem is not None:
            raise DeformLibraryError(problem, 1)
        out = np.empty((shape.batch, shape.outChannels, shape.outH, shape.outW), dtype=dtype)
        message = ctypes.create_string_buffer(_MESSAGE_CAPACITY)
        code = self._lib.fgad_deform_conv2d_cpu(
            ctypes.byref(shape),
            FLOAT16 if dtype == np.float16 else FLOAT32,
            algo,
            *(_pointer(a) for a in arrays),
            _pointer(out),
            message,
            _MESSAGE_CAPACITY,
        )
        if code != 0:
            raise DeformLibraryError(message.value.decode(), code)
        return out

    def half_to_float(self, bits: np.ndarray) -> np.ndarray:
        self._require_cpu()
        src = np.ascontiguousarray(bits, dtype=np.uint16)
        dst = np.empty(src.shape, dtype=np.float32)
        self._lib.fgad_half_to_float(_pointer(src), _pointer(dst), src.size)
        return dst

    def float_to_half(self, values: np.ndarray) -> np.ndarray:
        self._require_cpu()
        src = np.ascontiguousarray(values, dtype=np.float32)
        dst = np.empty(src.shape, dtype=np.uint16)
        self._lib.fgad_float_to_half(_pointer(src), _pointer(dst), src.size)
        return dst

    # ------------------------------------------------------------------ CUDA

    def run_cuda(
        self,
        shape: DeformShape,
        dtype: int,
        algo: int,
        pointers: Sequence[int | None],
        output: int,
        stream: int = 0,
    ) -> None:
        """Enqueue the CUDA kernels on device pointers (x, weight, offset, bias, mask) -> output."""
        if not self._has_cuda:
            raise RuntimeError(f"{self.path} has no CUDA entry point (build it with build_cuda_library)")
        message = ctypes.create_string_buffer(_MESSAGE_CAPACITY)
        code = self._lib.fgad_deform_conv2d_cuda(
            ctypes.byref(shape),
            dtype,
            algo,
            *(None if p is None else ctypes.c_void_p(p) for p in pointers),
            ctypes.c_void_p(output),
            ctypes.c_void_p(stream),
            message,
            _MESSAGE_CAPACITY,
        )
        if code != 0:
            raise DeformLibraryError(message.value.decode() or f"CUDA error {code}", code)
