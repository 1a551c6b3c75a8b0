"""Q/DQ graphs in onnxruntime: exact arithmetic where the CPU's int8 kernels would saturate."""

from __future__ import annotations

import onnxruntime as ort
import pytest

from fgad.runtime.backends import ort as ort_backend
from fgad.runtime.backends.ort import cpu_int8_kernels_exact, session_options

AVX2_ONLY = "processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma bmi2\n"
AVX512_VNNI = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 avx512f avx512_vnni\n"
AVX_VNNI = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 avx_vnni\n"
NO_AVX2 = "processor\t: 0\nflags\t\t: fpu sse sse2 sse4_2\n"


@pytest.mark.parametrize(("cpuinfo", "exact"), [(AVX2_ONLY, False), (AVX512_VNNI, True), (AVX_VNNI, True),
                                                (NO_AVX2, True), ("", True)])
def test_saturating_cpus_are_the_avx2_ones_without_vnni(cpuinfo: str, exact: bool) -> None:
    assert cpu_int8_kernels_exact(cpuinfo) is exact


@pytest.mark.parametrize("exact", [False, True])
def test_quantized_graphs_keep_basic_optimisations_only_where_int8_saturates(
    monkeypatch: pytest.MonkeyPatch, exact: bool
) -> None:
    monkeypatch.setattr(ort_backend, "cpu_int8_kernels_exact", lambda: exact)
    level = session_options(quantized=True).graph_optimization_level
    want = ort.GraphOptimizationLevel.ORT_ENABLE_ALL if exact else ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert level == want
    assert session_options(quantized=False).graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL


def test_threads_are_checked_and_set() -> None:
    assert session_options(threads=2).intra_op_num_threads == 2
    with pytest.raises(ValueError, match="threads must be >= 1"):
        session_options(threads=0)
