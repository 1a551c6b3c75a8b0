"""The native sources build: nvcc compiles the CUDA kernels (desktop and Jetson architectures), CMake
configures and builds the kernel targets, and the TensorRT plugin compiles where TensorRT's headers
exist. Nothing built for the GPU runs here (see test_cuda_gpu.py for that, on a GPU machine).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from tests.helpers.cpp_ext import CPP_EXT_DIR


def _nvcc_or_skip(deform_ctypes: ModuleType) -> str:
    nvcc = deform_ctypes.find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (no CUDA toolkit on this machine): the CUDA sources cannot be compiled")
    return nvcc


def _supported_archs(nvcc: str) -> set[str]:
    listed = subprocess.run([nvcc, "--list-gpu-arch"], capture_output=True, text=True, check=False).stdout
    return set(re.findall(r"compute_(\d+)", listed))


def tensorrt_include_dir() -> Path | None:
    """Where NvInfer.h is: $TensorRT_ROOT/include, else the Debian/JetPack include folders."""
    root = os.environ.get("TensorRT_ROOT")  # the variable CMakeLists.txt reads
    candidates = [Path(root) / "include"] if root else []
    candidates += [Path("/usr/include/x86_64-linux-gnu"), Path("/usr/include/aarch64-linux-gnu"), Path("/usr/include")]
    return next((c for c in candidates if (c / "NvInfer.h").is_file()), None)


def test_cpu_build_compiles_without_warnings(deform_ctypes: ModuleType, tmp_path: Path) -> None:
    """The shared headers and the CPU build are warning-free with this machine's compiler."""
    compiler = deform_ctypes.find_cxx()
    if compiler is None:
        pytest.skip("no C++ compiler (g++/c++ or $CXX) on this machine")
    command = deform_ctypes.cpu_build_command(tmp_path / "lib.so", compiler)
    result = subprocess.run([*command, "-Werror", "-Wshadow", "-fsyntax-only"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_nvcc_compiles_the_kernels_for_orin_and_desktop(deform_ctypes: ModuleType, tmp_path: Path) -> None:
    """sm_87 (Jetson Orin) and sm_90 (Hopper), both in one object (the CMake test adds Thor)."""
    nvcc = _nvcc_or_skip(deform_ctypes)
    supported = _supported_archs(nvcc)
    archs = ["87", "90"]
    assert set(archs) <= supported, f"this nvcc cannot target {archs}; it lists {sorted(supported)}"
    output = tmp_path / "deformConv2dKernel.o"
    result = subprocess.run(
        [
            *deform_ctypes.cuda_compile_command(output, archs, nvcc, shared=False),
            "-Xcompiler",
            "-Wall",
            "-Werror",
            "all-warnings",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert output.stat().st_size > 10_000
    # Every requested architecture is embedded (cubins carry their "sm_XY" target in the fatbinary).
    blob = output.read_bytes()
    for arch in archs:
        assert f"sm_{arch}".encode() in blob, f"no sm_{arch} image in the object"


@pytest.mark.slow
def test_cmake_builds_the_kernel_targets(deform_ctypes: ModuleType, tmp_path: Path) -> None:
    """CMake configure + build (CPU reference always, CUDA kernels when nvcc is present, the plugin
    only with TensorRT headers); the CMake-built CPU library computes what the direct g++ build does."""
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake not installed: the CMake build cannot be checked")
    build = tmp_path / "build"
    nvcc = deform_ctypes.find_nvcc()
    # Jetson Orin, plus Jetson Thor (sm_110 since CUDA 13) where this nvcc has it.
    archs = "87;110" if nvcc is not None and "110" in _supported_archs(nvcc) else "87"
    configure = subprocess.run(
        [
            cmake,
            "-S",
            str(CPP_EXT_DIR),
            "-B",
            str(build),
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DCMAKE_CUDA_ARCHITECTURES={archs}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert configure.returncode == 0, configure.stdout + configure.stderr
    compile_ = subprocess.run([cmake, "--build", str(build), "-j", "2"], capture_output=True, text=True, check=False)
    assert compile_.returncode == 0, compile_.stdout + compile_.stderr

    cpu_path = build / "libfgad_deform_cpu.so"
    assert cpu_path.is_file()
    has_nvcc = nvcc is not None
    assert (build / "libfgad_deform_cuda.so").is_file() == has_nvcc
    has_trt = tensorrt_include_dir() is not None and has_nvcc
    assert (build / "libfgad_trt_plugin.so").is_file() == has_trt
    if not has_trt:
        assert "TensorRT headers not found: building the kernels only" in configure.stdout

    lib = deform_ctypes.DeformLibrary(cpu_path)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 2, 5, 5)).astype(np.float32)
    w = rng.normal(size=(3, 2, 3, 3)).astype(np.float32)
    shape = lib.make_shape(x.shape, w.shape, (1, 1), (1, 1, 1, 1))
    offset = rng.normal(0, 2, (1, 18, shape.outH, shape.outW)).astype(np.float32)
    got = lib.run_cpu(shape, x, w, offset)
    import torch

    import fgad.backbone.deform  # noqa: F401

    expected = torch.ops.fgad.deform_conv2d(
        torch.from_numpy(x).double(),
        torch.from_numpy(offset).double(),
        torch.from_numpy(w).double(),
        None,
        None,
        [1, 1],
        [1, 1],
        [1, 1],
        1,
        1,
    ).numpy()
    assert np.abs(got - expected).max() <= 1e-5


def test_plugin_compiles_against_tensorrt_headers(deform_ctypes: ModuleType, tmp_path: Path) -> None:
    """Syntax and type check of the IPluginV3 plugin against the real TensorRT 10 headers."""
    include = tensorrt_include_dir()
    if include is None:
        pytest.skip(
            "TensorRT headers (NvInfer.h) not found in $TensorRT_ROOT/include or /usr/include/*-linux-gnu: "
            "the plugin source cannot be compiled on this machine"
        )
    compiler = deform_ctypes.find_cxx()
    nvcc = deform_ctypes.find_nvcc()
    if compiler is None or nvcc is None:
        pytest.skip("the plugin needs a C++ compiler and the CUDA headers (nvcc's toolkit)")
    cuda_include = Path(nvcc).resolve().parents[1] / "include"
    result = subprocess.run(
        [
            compiler,
            "-std=c++17",
            "-fsyntax-only",
            "-Wall",
            "-Wextra",
            "-I",
            str(CPP_EXT_DIR),
            "-I",
            str(CPP_EXT_DIR / "deformConv2dPlugin"),
            "-I",
            str(include),
            "-I",
            str(cuda_include),
            str(CPP_EXT_DIR / "deformConv2dPlugin" / "deformConv2dPlugin.cpp"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
