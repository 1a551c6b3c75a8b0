"""The CUDA kernels on a real GPU against the PyTorch op (skipped without a CUDA device).

Compiles ``deformConv2dKernel.cu`` for the local GPU (``nvcc -arch=native``), runs both algorithms in
fp32 and fp16 on the geometries of the CPU-build tests and on one MDCI-sized layer, and compares with
``torch.ops.fgad.deform_conv2d`` in float64 on the same device. Timings against the PyTorch op:
``python cpp_ext/tools/bench_gpu.py``.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch

from tests.cpp_ext.cases import CASES, FP32_ATOL, Case, case_id, make_inputs, reference_tensor

pytestmark = pytest.mark.gpu

#: fp16 I/O: one rounding of the fp32 result (2^-11 relative), and fp16-rounded inputs against a
#: reference on the rounded inputs, so the fp32 accumulation error on top.
FP16_RTOL = 2.0**-10
FP16_ATOL = 1e-4


@pytest.fixture(scope="module")
def cuda_lib(deform_ctypes: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Any:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device visible to PyTorch: the CUDA kernels cannot run here")
    built = os.environ.get("FGAD_CUDA_LIB")
    if built:
        if not Path(built).is_file():
            pytest.fail(f"FGAD_CUDA_LIB={built}: no such file (build it with cpp_ext/tools/bench_gpu.py --build DIR)")
        return deform_ctypes.DeformLibrary(Path(built))
    if deform_ctypes.find_nvcc() is None:
        pytest.skip("nvcc not found: cannot build the CUDA kernels for this GPU")
    path: Path = deform_ctypes.build_cuda_library(tmp_path_factory.mktemp("cpp_ext_cuda"), ("native",))
    return deform_ctypes.DeformLibrary(path)


def _run_cuda(lib: Any, deform_ctypes: ModuleType, case: Case, arrays: dict[str, Any], half: bool, algo: int) -> Any:
    dtype = torch.float16 if half else torch.float32
    tensors = {k: None if v is None else torch.from_numpy(v).to("cuda", dtype) for k, v in arrays.items()}
    x, w = tensors["x"], tensors["weight"]
    shape = lib.make_shape(x.shape, w.shape, case.stride, case.pads, case.dilation, case.groups, case.offset_groups)
    out = torch.full((shape.batch, shape.outChannels, shape.outH, shape.outW), float("nan"), device="cuda", dtype=dtype)
    pointers = [
        None if tensors[k] is None else tensors[k].data_ptr() for k in ("x", "weight", "offset", "bias", "mask")
    ]
    lib.run_cuda(shape, deform_ctypes.FLOAT16 if half else deform_ctypes.FLOAT32, algo, pointers, out.data_ptr())
    torch.cuda.synchronize()
    return out


MDCI_LIKE = Case(2, 96, 80, 37, 37, (7, 7), padding=(3, 3))  # several tiles on every axis, 4704 column rows
#: every MDCI kernel shape (the heads' 1x1, 3x3, 5x5, 7x7, 1x5, 5x1, 'same' padding) at a reduced MDCI size
MDCI_KERNEL_CASES = [Case(1, 72, 40, 24, 24, (kh, kw), padding=(kh // 2, kw // 2))
                     for kh, kw in ((1, 1), (3, 3), (5, 5), (7, 7), (1, 5), (5, 1))]
LONG_CASES = (MDCI_LIKE, *MDCI_KERNEL_CASES)
#: For MDCI_LIKE the fp32 error is relative to the output scale: sampling positions are rounded to fp32
#: (|y| ~ 40 -> ~4e-6 px) in every one of the 4704 terms. The CPU build of the same arithmetic measured
#: max |diff| = 7.8e-4 at max |ref| = 282 (2.8e-6 relative), against this bound of 1e-5 relative.
LONG_REDUCTION_RTOL = 1e-5


@pytest.mark.parametrize("algo_name", ["tiled", "direct"])
@pytest.mark.parametrize("case", [*CASES, *LONG_CASES], ids=case_id)
def test_cuda_matches_torch_op(cuda_lib: Any, deform_ctypes: ModuleType, case: Case, algo_name: str) -> None:
    algo = {"tiled": deform_ctypes.ALGO_TILED, "direct": deform_ctypes.ALGO_DIRECT}[algo_name]
    arrays = make_inputs(case)
    expected = reference_tensor(case, arrays, "cuda")
    got = _run_cuda(cuda_lib, deform_ctypes, case, arrays, half=False, algo=algo).double()
    assert got.shape == expected.shape
    assert not got.isnan().any(), "some outputs were never written"
    bound = LONG_REDUCTION_RTOL * expected.abs().max().item() if case in LONG_CASES else FP32_ATOL
    assert (got - expected).abs().max().item() <= bound

    arrays16 = {k: None if v is None else v.astype(np.float16).astype(np.float32) for k, v in arrays.items()}
    expected16 = reference_tensor(case, arrays16, "cuda")
    got16 = _run_cuda(cuda_lib, deform_ctypes, case, arrays16, half=True, algo=algo)
    assert got16.dtype == torch.float16 and not got16.isnan().any()
    assert ((got16.double() - expected16).abs() <= expected16.abs() * FP16_RTOL + bound + FP16_ATOL).all()


def test_cuda_matches_the_cpu_build(cuda_lib: Any, cpu_lib: Any, deform_ctypes: ModuleType) -> None:
    """Same source, two compilers: the GPU result equals the CPU build's within fp32 rounding."""
    case = CASES[3]
    arrays = make_inputs(case, seed=21)
    shape = cpu_lib.make_shape(
        arrays["x"].shape,
        arrays["weight"].shape,
        case.stride,
        case.pads,
        case.dilation,
        case.groups,
        case.offset_groups,
    )
    cpu = cpu_lib.run_cpu(shape, arrays["x"], arrays["weight"], arrays["offset"], arrays["bias"], arrays["mask"])
    gpu = _run_cuda(cuda_lib, deform_ctypes, case, arrays, half=False, algo=deform_ctypes.ALGO_TILED).cpu().numpy()
    assert np.abs(cpu - gpu).max() <= 1e-5
