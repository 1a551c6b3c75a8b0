"""The CPU build of the CUDA kernels' math (``cpp_ext/deformConv2dPlugin/deformConv2dCpu.cpp``) against
the project's PyTorch op.

The CPU library runs the same ``__host__ __device__`` functions as the CUDA kernels, both algorithms
(direct: one output element per thread; tiled: the block steps of the implicit-GEMM kernel, run
thread by thread). Ground truth is ``torch.ops.fgad.deform_conv2d`` evaluated in float64 on the same
float32 inputs (itself checked against the explicit loop reference in tests/backbone/test_deform.py), and
the loop reference directly for one case. Tolerance: 1e-5 absolute in fp32 (``FP32_ATOL``).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch

from tests.cpp_ext.cases import CASES, FP32_ATOL, Case, case_id, make_inputs, torch_reference
from tests.helpers.deform_loop import deform_conv2d_loop_reference


def _run(lib: Any, case: Case, arrays: dict[str, np.ndarray | None], algo: int) -> np.ndarray:
    x, weight = arrays["x"], arrays["weight"]
    assert x is not None and weight is not None and arrays["offset"] is not None
    shape = lib.make_shape(
        x.shape, weight.shape, case.stride, case.pads, case.dilation, case.groups, case.offset_groups
    )
    return lib.run_cpu(shape, x, weight, arrays["offset"], arrays["bias"], arrays["mask"], algo=algo)


def test_shape_struct_matches_the_binding(cpu_lib: Any, deform_ctypes: ModuleType) -> None:
    import ctypes

    assert cpu_lib.shape_size() == ctypes.sizeof(deform_ctypes.DeformShape)


@pytest.mark.parametrize("algo_name", ["tiled", "direct"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_fp32_matches_torch_op(cpu_lib: Any, deform_ctypes: ModuleType, case: Case, algo_name: str) -> None:
    algo = {"tiled": deform_ctypes.ALGO_TILED, "direct": deform_ctypes.ALGO_DIRECT}[algo_name]
    arrays = make_inputs(case)
    expected = torch_reference(case, arrays)
    got = _run(cpu_lib, case, arrays, algo)
    assert got.shape == expected.shape  # the library's output size agrees with PyTorch's
    assert got.dtype == np.float32
    diff = np.abs(got.astype(np.float64) - expected).max()
    assert diff <= FP32_ATOL, f"max |cpu - torch| = {diff:.3g} > {FP32_ATOL}"
    assert np.abs(expected).max() > 1.0  # not a vacuous comparison of near-zero outputs


def test_auto_is_the_tiled_algorithm(cpu_lib: Any, deform_ctypes: ModuleType) -> None:
    case = CASES[3]
    arrays = make_inputs(case, seed=5)
    auto = _run(cpu_lib, case, arrays, deform_ctypes.ALGO_AUTO)
    tiled = _run(cpu_lib, case, arrays, deform_ctypes.ALGO_TILED)
    np.testing.assert_array_equal(auto, tiled)


def test_matches_loop_reference(cpu_lib: Any, deform_ctypes: ModuleType) -> None:
    """Independent of the PyTorch body: the explicit-loop numpy reference, float64."""
    case = Case(1, 4, 4, 5, 6, (3, 3), stride=(1, 2), padding=(1, 1), groups=2, offset_groups=2)
    arrays = make_inputs(case, seed=3)
    expected = deform_conv2d_loop_reference(
        arrays["x"],
        arrays["offset"],
        arrays["weight"],
        arrays["bias"],
        arrays["mask"],
        stride=case.stride,
        padding=case.padding,
        dilation=case.dilation,
        groups=case.groups,
        offset_groups=case.offset_groups,
    )
    for algo in (deform_ctypes.ALGO_TILED, deform_ctypes.ALGO_DIRECT):
        got = _run(cpu_lib, case, arrays, algo)
        assert np.abs(got - expected).max() <= FP32_ATOL


def test_zero_offsets_and_unit_mask_give_a_regular_convolution(cpu_lib: Any, deform_ctypes: ModuleType) -> None:
    case = Case(2, 6, 4, 7, 6, (3, 3), stride=(2, 1), padding=(1, 1), dilation=(1, 2), groups=2)
    arrays = make_inputs(case, seed=9)
    assert arrays["offset"] is not None and arrays["mask"] is not None
    arrays["offset"][:] = 0.0
    arrays["mask"][:] = 1.0
    expected = torch.nn.functional.conv2d(
        torch.from_numpy(arrays["x"]).double(),
        torch.from_numpy(arrays["weight"]).double(),
        torch.from_numpy(arrays["bias"]).double() if arrays["bias"] is not None else None,
        stride=case.stride,
        padding=case.padding,
        dilation=case.dilation,
        groups=case.groups,
    ).numpy()
    got = _run(cpu_lib, case, arrays, deform_ctypes.ALGO_TILED)
    assert np.abs(got - expected).max() <= FP32_ATOL


def test_asymmetric_pads_only_change_the_output_size(cpu_lib: Any, deform_ctypes: ModuleType) -> None:
    """ONNX pads (top, left, bottom, right): bottom/right only add output rows/columns, so a smaller
    bottom/right pad is the symmetric result cropped."""
    case = Case(1, 3, 4, 6, 7, (3, 3), padding=(2, 1))
    arrays = make_inputs(case, seed=11)
    full = _run(cpu_lib, case, arrays, deform_ctypes.ALGO_TILED)
    x, weight, offset, mask = arrays["x"], arrays["weight"], arrays["offset"], arrays["mask"]
    assert x is not None and weight is not None and offset is not None and mask is not None
    shape = cpu_lib.make_shape(x.shape, weight.shape, (1, 1), (2, 1, 0, 0), (1, 1))
    h_out, w_out = shape.outH, shape.outW
    assert (h_out, w_out) == (full.shape[2] - 2, full.shape[3] - 1)
    cropped = [np.ascontiguousarray(a[:, :, :h_out, :w_out]) for a in (offset, mask)]
    got = cpu_lib.run_cpu(shape, x, weight, cropped[0], arrays["bias"], cropped[1])
    np.testing.assert_array_equal(got, full[:, :, :h_out, :w_out])


def test_fp16_io_rounds_the_fp32_arithmetic_once(cpu_lib: Any, deform_ctypes: ModuleType) -> None:
    """The fp16 kernels load fp16, compute in fp32 and round once on store: on fp16-representable
    inputs their output is exactly the fp32 path's output rounded to fp16 (numpy's IEEE rounding),
    and within half an fp16 ulp (+ fp32 accumulation error) of the float64 reference."""
    case = Case(2, 4, 70, 7, 9, (3, 3), padding=(1, 1), groups=2, offset_groups=2)
    arrays16 = {k: None if v is None else v.astype(np.float16) for k, v in make_inputs(case, seed=13).items()}
    arrays32 = {k: None if v is None else v.astype(np.float32) for k, v in arrays16.items()}
    expected = torch_reference(case, arrays32)
    for algo in (deform_ctypes.ALGO_TILED, deform_ctypes.ALGO_DIRECT):
        got16 = _run(cpu_lib, case, arrays16, algo)
        got32 = _run(cpu_lib, case, arrays32, algo)
        assert got16.dtype == np.float16
        np.testing.assert_array_equal(got16, got32.astype(np.float16))
        bound = np.abs(expected) * 2.0**-11 + FP32_ATOL
        assert (np.abs(got16.astype(np.float64) - expected) <= bound).all()


def test_half_conversions_match_ieee(cpu_lib: Any) -> None:
    every_half = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    expected = every_half.view(np.float16).astype(np.float32)
    got = cpu_lib.half_to_float(every_half)
    nan = np.isnan(expected)
    np.testing.assert_array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(got[~nan].view(np.uint32), expected[~nan].view(np.uint32))  # signed zeros too

    rng = np.random.default_rng(0)
    floats = np.concatenate(
        [
            rng.normal(0.0, 1.0, 20000),
            rng.normal(0.0, 3e4, 5000),  # near and past the fp16 maximum 65504
            rng.uniform(-2e-4, 2e-4, 5000),  # fp16 subnormals
            np.ldexp(rng.integers(1, 1 << 11, 5000), -25),  # exact ties between subnormals
            np.ldexp(rng.integers(1 << 11, 1 << 12, 5000) * 2 + 1, -12),  # ties between normals
            [0.0, -0.0, 65504.0, 65519.99, 65520.0, -65520.0, 2.0**-24, 2.0**-25, 3 * 2.0**-26, np.inf, -np.inf],
        ]
    ).astype(np.float32)
    with np.errstate(over="ignore"):  # numpy warns when rounding to inf, which is the point
        expected_bits = floats.astype(np.float16).view(np.uint16)
    np.testing.assert_array_equal(cpu_lib.float_to_half(floats), expected_bits)
    assert np.isnan(cpu_lib.float_to_half(np.array([np.nan], np.float32)).view(np.float16)).all()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"group": 3}, "group=3 must be >= 1 and divide both C=4 and Cout=6"),
        ({"offsetGroup": 3}, "offset_group=3 must be >= 1 and divide C=4"),
        ({"kernelH": 9}, "a 9x3 kernel does not fit a 5x5 input"),
        ({"strideH": 0}, "strides and dilations must be >= 1"),
        ({"padLeft": -1}, "pads must be >= 0"),
        ({"batch": 0}, "must all be >= 1"),
    ],
)
def test_invalid_shapes_are_refused_with_a_message(
    cpu_lib: Any, deform_ctypes: ModuleType, fields: dict[str, int], message: str
) -> None:
    shape = cpu_lib.make_shape((1, 4, 5, 5), (6, 4, 3, 3))
    assert cpu_lib.validate(shape) is None
    for name, value in fields.items():
        setattr(shape, name, value)
    cpu_lib.fill_output_size(shape)
    assert message in (cpu_lib.validate(shape) or "")
    x = np.zeros((1, 4, 5, 5), np.float32)
    w = np.zeros((6, 4, 3, 3), np.float32)
    off = np.zeros((1, 18, 3, 3), np.float32)
    with pytest.raises(deform_ctypes.DeformLibraryError, match=message) as raised:
        cpu_lib.run_cpu(shape, x, w, off)
    assert raised.value.code == 1


def test_output_size_must_be_filled_in(cpu_lib: Any) -> None:
    shape = cpu_lib.make_shape((1, 2, 6, 6), (2, 2, 3, 3))
    assert cpu_lib.validate(shape) is None
    shape.outH += 1
    assert "disagrees with the geometry" in (cpu_lib.validate(shape) or "")


def test_plugin_contract_matches_the_exporter_attributes(cpu_lib: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The TensorRT plugin accepts exactly the attributes the exporter's DeformConv translation emits
    (names and number of values), and registers under the documented name/version/namespace."""
    from onnxscript import opset19

    from fgad.export.onnx_export import deform_conv2d_to_onnx

    captured: dict[str, Any] = {}
    monkeypatch.setattr(opset19, "DeformConv", lambda *args, **attrs: captured.update(attrs))

    class _Weight:
        shape = (6, 2, 5, 1)

    deform_conv2d_to_onnx("x", "offset", _Weight(), None, None, (2, 1), (2, 0), (1, 3), 2, 2)
    name, version, namespace, fields = cpu_lib.plugin_contract()
    assert (name, version, namespace) == ("FgadDeformConv2d", "1", "fgad")
    assert set(captured) == set(fields)
    for attr, value in captured.items():
        length = len(value) if isinstance(value, list | tuple) else 1
        assert length == fields[attr], f"exporter gives {attr}={value!r}, plugin expects {fields[attr]} values"


def test_plugin_node_from_the_exporter_matches_the_plugin_contract(cpu_lib: Any) -> None:
    """The node the exporter's DeformConv -> plugin rewrite emits is what the plugin's creator accepts:
    op type = plugin name, plugin_namespace/plugin_version attributes, five inputs, and every other
    attribute a known field with the expected number of values."""
    flavours = pytest.importorskip(
        "fgad.export.deform_flavours", reason="fgad.export.deform_flavours (the plugin rewrite) is not in this tree"
    )
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.zeros((6, 2, 5, 1), np.float32), "W")
    node = helper.make_node(
        "DeformConv", ["X", "W", "offset"], ["Y"], strides=[2, 1], pads=[2, 0, 2, 0], dilations=[1, 3],
        group=2, offset_group=2,
    )  # fmt: skip
    graph = helper.make_graph(
        [node],
        "g",
        [
            helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 4, 9, 9]),
            helper.make_tensor_value_info("offset", TensorProto.FLOAT, ["N", 20, 5, 9]),
        ],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 6, 5, 9])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    assert flavours.deformconv_to_plugin(model) == 1
    (plugin,) = [n for n in model.graph.node if n.op_type != "DeformConv" and n.domain == flavours.PLUGIN_DOMAIN]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in plugin.attribute}

    name, version, namespace, fields = cpu_lib.plugin_contract()
    assert plugin.op_type == name
    assert attrs.pop("plugin_namespace").decode() == namespace
    assert attrs.pop("plugin_version").decode() == version
    assert len(plugin.input) == 5 and all(plugin.input)
    assert set(attrs) <= set(fields)
    for attr, value in attrs.items():
        length = len(value) if isinstance(value, list) else 1
        assert length == fields[attr], f"plugin node has {attr}={value!r}, the plugin expects {fields[attr]} values"
