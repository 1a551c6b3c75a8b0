"""Tests for the project-owned deformable convolution (``fgad.backbone.deform``).

Ground truth is the explicit-loop numpy implementation in ``tests/helpers/deform_loop.py``.
Parity tests run in float64 with an absolute tolerance of 1e-5 (``PARITY_ATOL``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from fgad.backbone import deform
from fgad.backbone.deform import (
    ModulatedDeformConv2d,
    deform_conv2d,
    deform_conv2d_reference,
    exportable,
    is_exportable,
    set_exportable,
)
from tests.helpers.deform_loop import bilinear_zero_padded, deform_conv2d_loop_reference

PARITY_ATOL = 1e-5  # float64 parity vs the loop reference
FLOAT32_ATOL = 1e-4  # float32 paths (grid normalisation round trip, ONNX Runtime)

BATCH, IN_CH, OUT_CH, HEIGHT, WIDTH = 2, 4, 6, 7, 8  # H != W catches transposed axes

KERNELS = [(1, 1), (3, 3), (1, 5), (5, 1), (3, 2)]
STRIDES = [1, 2]
PADDINGS: list[int | tuple[int, int]] = [0, 1, (2, 0)]
DILATIONS = [1, 2]


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else v


def _out_size(kernel: tuple[int, int], stride: int, padding: Any, dilation: int) -> tuple[int, int]:
    (ph, pw), (kh, kw) = _pair(padding), kernel
    return (
        (HEIGHT + 2 * ph - dilation * (kh - 1) - 1) // stride + 1,
        (WIDTH + 2 * pw - dilation * (kw - 1) - 1) // stride + 1,
    )


def _geometry_is_valid(kernel: tuple[int, int], stride: int, padding: Any, dilation: int) -> bool:
    return min(_out_size(kernel, stride, padding, dilation)) >= 1


def _make_inputs(
    kernel: tuple[int, int],
    stride: int,
    padding: Any,
    dilation: int,
    groups: int,
    offset_groups: int,
    with_mask: bool,
    with_bias: bool,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> dict[str, Any]:
    """Random inputs; offsets ~ N(0, 2) (many samples leave the image), ~30% rounded to integers."""
    gen = torch.Generator().manual_seed(seed)
    kh, kw = kernel
    h_out, w_out = _out_size(kernel, stride, padding, dilation)
    taps = kh * kw

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=gen, dtype=dtype)

    offset = randn(BATCH, 2 * offset_groups * taps, h_out, w_out) * 2.0
    integer = torch.rand(offset.shape, generator=gen, dtype=dtype) < 0.3
    offset = torch.where(integer, offset.round(), offset)
    return {
        "x": randn(BATCH, IN_CH, HEIGHT, WIDTH),
        "offset": offset,
        "weight": randn(OUT_CH, IN_CH // groups, kh, kw),
        "bias": randn(OUT_CH) if with_bias else None,
        "mask": torch.rand(BATCH, offset_groups * taps, h_out, w_out, generator=gen, dtype=dtype) * 2
        if with_mask
        else None,
        "stride": stride,
        "padding": padding,
        "dilation": dilation,
        "groups": groups,
        "offset_groups": offset_groups,
    }


def _check_parity(inputs: dict[str, Any]) -> None:
    expected = deform_conv2d_loop_reference(**inputs)
    reference = deform_conv2d_reference(**inputs)
    assert not is_exportable()
    op = deform_conv2d(**inputs)  # custom-op path
    assert reference.shape == op.shape == expected.shape
    np.testing.assert_allclose(reference.numpy(), expected, rtol=0, atol=PARITY_ATOL)
    np.testing.assert_allclose(op.numpy(), expected, rtol=0, atol=PARITY_ATOL)


# --------------------------------------------------------------------------------------------------
# Forward parity with the loop reference
# --------------------------------------------------------------------------------------------------

GEOMETRIES = [g for g in itertools.product(KERNELS, STRIDES, PADDINGS, DILATIONS) if _geometry_is_valid(*g)]


@pytest.mark.parametrize(
    ("groups", "offset_groups", "with_mask", "with_bias"), [(2, 2, True, True), (1, 1, False, False)]
)
@pytest.mark.parametrize(("kernel", "stride", "padding", "dilation"), GEOMETRIES)
def test_parity_geometry_grid(
    kernel: tuple[int, int],
    stride: int,
    padding: Any,
    dilation: int,
    groups: int,
    offset_groups: int,
    with_mask: bool,
    with_bias: bool,
) -> None:
    """Every kernel/stride/padding/dilation combination that fits a 7x8 input (float64, atol 1e-5)."""
    _check_parity(
        _make_inputs(kernel, stride, padding, dilation, groups, offset_groups, with_mask, with_bias)
    )


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("offset_groups", [1, 2])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "dilation"),
    [((3, 3), 1, 1, 1), ((3, 2), 2, (2, 0), 2), ((1, 5), 1, 1, 2)],
)
def test_parity_channel_grid(
    kernel: tuple[int, int],
    stride: int,
    padding: Any,
    dilation: int,
    groups: int,
    offset_groups: int,
    with_mask: bool,
    with_bias: bool,
) -> None:
    """groups x offset_groups x mask x bias on a few geometries (float64, atol 1e-5)."""
    _check_parity(
        _make_inputs(kernel, stride, padding, dilation, groups, offset_groups, with_mask, with_bias)
    )


@pytest.mark.parametrize(
    "position",
    [-1.5, -1.0, -0.75, -0.5, -1e-9, 0.0, 0.25, 3.0, 6.0, 6.5, 7.0, 7.25, 8.0, 9.0],
)
def test_sampling_at_and_beyond_image_edges(position: float) -> None:
    """A 1x1 kernel whose offset moves every sample to one row/column, including exactly onto the
    boundary pixel centres, half a pixel outside and fully outside (corners there count as 0)."""
    x = torch.randn(1, 1, HEIGHT, WIDTH, dtype=torch.float64)
    weight = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    oy = torch.arange(HEIGHT, dtype=torch.float64).view(1, 1, HEIGHT, 1).expand(1, 1, HEIGHT, WIDTH)
    ox = torch.arange(WIDTH, dtype=torch.float64).view(1, 1, 1, WIDTH).expand(1, 1, HEIGHT, WIDTH)
    offset = torch.cat([position - oy, position - ox], dim=1)  # dy, dx: sample at (position, position)
    out = deform_conv2d(x, offset, weight)
    expected = bilinear_zero_padded(x[0, 0].numpy(), position, position)
    np.testing.assert_allclose(out.numpy(), np.full(out.shape, expected), rtol=0, atol=PARITY_ATOL)
    np.testing.assert_allclose(
        out.numpy(), deform_conv2d_loop_reference(x, offset, weight), rtol=0, atol=PARITY_ATOL
    )


def test_zero_offsets_equal_conv2d() -> None:
    inputs = _make_inputs((3, 2), 2, (2, 0), 2, 2, 2, with_mask=False, with_bias=True)
    inputs["offset"] = torch.zeros_like(inputs["offset"])
    expected = torch.nn.functional.conv2d(
        inputs["x"], inputs["weight"], inputs["bias"], stride=2, padding=(2, 0), dilation=2, groups=2
    )
    torch.testing.assert_close(deform_conv2d(**inputs), expected, rtol=0, atol=PARITY_ATOL)


def test_float32_matches_loop_reference() -> None:
    inputs = _make_inputs((3, 3), 1, 1, 1, 2, 2, True, True, dtype=torch.float32)
    expected = deform_conv2d_loop_reference(**inputs)
    out = deform_conv2d(**inputs)
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=FLOAT32_ATOL)


def _torchvision_deform_conv2d() -> Callable[..., Tensor]:
    """torchvision.ops.deform_conv2d if its kernels work in this environment, else skip."""
    try:
        from torchvision.ops import deform_conv2d as tv_deform_conv2d

        probe = torch.zeros(1, 1, 3, 3)
        tv_deform_conv2d(probe, torch.zeros(1, 2, 3, 3), torch.ones(1, 1, 1, 1))
    except Exception as err:  # noqa: BLE001 - CUDA wheels against CPU torch fail in many ways
        pytest.skip(f"torchvision deform_conv2d unusable here: {type(err).__name__}: {err}")
    return tv_deform_conv2d


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "dilation", "groups", "offset_groups", "with_mask", "with_bias"),
    [
        ((3, 3), 1, 1, 1, 1, 1, True, True),
        ((3, 2), 2, (2, 0), 2, 2, 2, True, False),
        ((1, 5), 1, 0, 1, 2, 1, False, True),
    ],
)
def test_matches_torchvision(
    kernel: tuple[int, int],
    stride: int,
    padding: Any,
    dilation: int,
    groups: int,
    offset_groups: int,
    with_mask: bool,
    with_bias: bool,
) -> None:
    tv_deform_conv2d = _torchvision_deform_conv2d()
    inputs = _make_inputs(kernel, stride, padding, dilation, groups, offset_groups, with_mask, with_bias)
    # torchvision infers groups / offset_groups from the weight and offset shapes.
    expected = tv_deform_conv2d(
        inputs["x"],
        inputs["offset"],
        inputs["weight"],
        inputs["bias"],
        stride=stride,
        padding=padding,
        dilation=dilation,
        mask=inputs["mask"],
    )
    torch.testing.assert_close(deform_conv2d(**inputs), expected, rtol=0, atol=PARITY_ATOL)


# --------------------------------------------------------------------------------------------------
# Autograd, fake tensors, opcheck
# --------------------------------------------------------------------------------------------------


def _tiny_inputs(with_mask: bool = True, with_bias: bool = True) -> tuple[Any, ...]:
    """Positional args of ``torch.ops.fgad.deform_conv2d`` for a tiny double case (all grads on).

    Kept tiny on purpose: slow-mode gradcheck evaluates the op twice per input element.
    """
    gen = torch.Generator().manual_seed(1)
    kh, kw, og, h, w = 2, 2, 2, 3, 4
    stride, padding = [2, 1], [1, 0]
    h_out, w_out = (h + 2 * padding[0] - kh) // stride[0] + 1, (w + 2 * padding[1] - kw) // stride[1] + 1

    def leaf(t: Tensor) -> Tensor:
        return t.to(torch.float64).requires_grad_()

    x = leaf(torch.randn(1, 2, h, w, generator=gen))
    # Offsets away from integers: bilinear sampling is not differentiable at pixel boundaries.
    offset = leaf(torch.rand(1, 2 * og * kh * kw, h_out, w_out, generator=gen) * 0.8 + 0.1 - 1.0)
    weight = leaf(torch.randn(2, 2, kh, kw, generator=gen))
    bias = leaf(torch.randn(2, generator=gen)) if with_bias else None
    mask = leaf(torch.rand(1, og * kh * kw, h_out, w_out, generator=gen)) if with_mask else None
    return (x, offset, weight, bias, mask, stride, padding, [1, 1], 1, og)


def test_gradcheck_custom_op() -> None:
    args = _tiny_inputs()
    assert torch.autograd.gradcheck(torch.ops.fgad.deform_conv2d, args, eps=1e-6, atol=1e-5)


def test_gradgradcheck_custom_op() -> None:
    """Second order (e.g. gradient penalties): backward(create_graph=True) must stay differentiable."""
    args = _tiny_inputs(with_bias=False)
    assert torch.autograd.gradgradcheck(torch.ops.fgad.deform_conv2d, args, eps=1e-6, atol=1e-5)


def test_custom_op_grads_match_reference_autograd_with_partial_requires_grad() -> None:
    """Only offset and mask require grad (frozen weight/bias, constant input)."""
    inputs = _make_inputs((3, 2), 2, (2, 0), 2, 2, 2, True, True, seed=3)
    inputs["offset"].requires_grad_()
    inputs["mask"].requires_grad_()
    grad_out = torch.randn_like(deform_conv2d_reference(**inputs))
    ref = torch.autograd.grad(deform_conv2d_reference(**inputs), (inputs["offset"], inputs["mask"]), grad_out)
    got = torch.autograd.grad(deform_conv2d(**inputs), (inputs["offset"], inputs["mask"]), grad_out)
    for r, g in zip(ref, got, strict=True):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-10)


def test_opcheck() -> None:
    """Schema, fake (meta) kernel, autograd registration and AOT dispatch of the custom op."""
    torch.library.opcheck(torch.ops.fgad.deform_conv2d.default, _tiny_inputs())


def test_opcheck_without_mask_and_bias() -> None:
    """``None`` optionals; the (slow) AOT-dispatch check already ran in :func:`test_opcheck`."""
    torch.library.opcheck(
        torch.ops.fgad.deform_conv2d.default,
        _tiny_inputs(with_mask=False, with_bias=False),
        test_utils=("test_schema", "test_autograd_registration", "test_faketensor"),
    )


def test_fake_tensor_shape() -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    inputs = _make_inputs((3, 2), 2, (2, 0), 2, 2, 2, True, True)
    expected_shape = deform_conv2d(**inputs).shape
    with FakeTensorMode() as mode:
        fake = {k: mode.from_tensor(v) if isinstance(v, Tensor) else v for k, v in inputs.items()}
        out = deform_conv2d(**fake)
    assert out.shape == expected_shape
    assert out.dtype == torch.float64


# --------------------------------------------------------------------------------------------------
# Argument validation
# --------------------------------------------------------------------------------------------------


def test_error_wrong_offset_channels() -> None:
    x = torch.randn(1, 4, 6, 6)
    with pytest.raises(
        ValueError, match=r"offset has 16 channels, expected 2\*offset_groups\*kh\*kw = 18 for a 3x3"
    ):
        deform_conv2d(x, torch.zeros(1, 16, 6, 6), torch.randn(4, 4, 3, 3), padding=1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"offset": torch.zeros(1, 18, 5, 6)}, r"offset has shape \(1, 18, 5, 6\), expected \[1, 18, 6, 6\]"),
        ({"mask": torch.ones(1, 18, 6, 6)}, r"mask has shape .* \(offset_groups\*kh\*kw = 9 channels\)"),
        ({"bias": torch.zeros(5)}, r"bias has shape \(5,\), expected \(4,\)"),
        ({"groups": 3}, r"groups=3 must divide"),
        ({"weight": torch.randn(4, 2, 3, 3)}, r"weight has 2 input channels, expected C_in/groups"),
        ({"offset_groups": 3}, r"offset_groups=3 must divide C_in=4"),
        ({"padding": 0, "dilation": 4}, r"does not fit a 6x6 input"),
        ({"stride": 0}, r"stride >= 1"),
    ],
)
def test_errors(kwargs: dict[str, Any], match: str) -> None:
    args: dict[str, Any] = {
        "x": torch.randn(1, 4, 6, 6),
        "offset": torch.zeros(1, 18, 6, 6),
        "weight": torch.randn(4, 4, 3, 3),
        "padding": 1,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        deform_conv2d(**args)


def test_type_errors() -> None:
    x, offset, weight = torch.randn(1, 4, 6, 6), torch.zeros(1, 18, 6, 6), torch.randn(4, 4, 3, 3)
    with pytest.raises(TypeError, match="offset has dtype torch.float64"):
        deform_conv2d(x, offset.double(), weight, padding=1)
    with pytest.raises(TypeError, match="stride must be an int or a pair"):
        deform_conv2d(x, offset, weight, padding=1, stride=(1, 1, 1))


# --------------------------------------------------------------------------------------------------
# Export switch
# --------------------------------------------------------------------------------------------------


def test_exportable_switch_and_context_manager() -> None:
    assert not is_exportable()
    with exportable():
        assert is_exportable()
        with exportable(False):
            assert not is_exportable()
        assert is_exportable()
    assert not is_exportable()
    with pytest.raises(RuntimeError, match="boom"), exportable():
        raise RuntimeError("boom")
    assert not is_exportable()
    set_exportable(True)
    try:
        assert is_exportable()
    finally:
        set_exportable(False)


def _exported_targets(module: nn.Module, x: Tensor) -> set[str]:
    program = torch.export.export(module, (x,))
    return {str(node.target) for node in program.graph.nodes if node.op == "call_function"}


def test_export_graph_uses_custom_op_or_decomposition() -> None:
    layer = ModulatedDeformConv2d(4, 4, 3).eval()
    x = torch.randn(1, 4, 6, 6)
    opaque = _exported_targets(layer, x)
    assert "fgad.deform_conv2d.default" in opaque
    assert not any("grid_sampler" in t for t in opaque)
    with exportable():
        decomposed = _exported_targets(layer, x)
    assert "fgad.deform_conv2d.default" not in decomposed
    assert any("grid_sampler" in t for t in decomposed)


# --------------------------------------------------------------------------------------------------
# Module
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("modulation", [True, False])
@pytest.mark.parametrize(
    ("kernel", "stride", "dilation", "groups", "offset_groups"),
    [
        ((1, 1), 1, 1, 1, 1),
        ((3, 3), 1, 1, 2, 2),
        ((1, 5), 1, 1, 1, 1),
        ((5, 1), 2, 1, 1, 2),
        ((3, 2), 1, 2, 2, 1),
    ],
)
def test_module_at_init_equals_conv2d(
    kernel: tuple[int, int], stride: int, dilation: int, groups: int, offset_groups: int, modulation: bool
) -> None:
    torch.manual_seed(0)
    layer = ModulatedDeformConv2d(
        IN_CH,
        OUT_CH,
        kernel,
        stride=stride,
        dilation=dilation,
        groups=groups,
        offset_groups=offset_groups,
        modulation=modulation,
    )
    assert layer.padding == (kernel[0] // 2, kernel[1] // 2)
    conv = nn.Conv2d(
        IN_CH, OUT_CH, kernel, stride=stride, padding=layer.padding, dilation=dilation, groups=groups
    )
    with torch.no_grad():
        conv.weight.copy_(layer.weight)
        conv.bias.copy_(layer.bias)
    x = torch.randn(BATCH, IN_CH, HEIGHT, WIDTH)
    torch.testing.assert_close(layer(x), conv(x), rtol=0, atol=1e-5)


def test_module_attributes_and_channels() -> None:
    layer = ModulatedDeformConv2d(4, 8, (3, 2), padding=(1, 0), stride=2, dilation=(1, 2), offset_groups=2)
    assert (layer.kernel_size, layer.padding, layer.stride, layer.dilation) == (
        (3, 2),
        (1, 0),
        (2, 2),
        (1, 2),
    )
    assert layer.offset_conv.out_channels == 3 * 2 * 6
    assert layer.offset_conv.stride == (2, 2) and layer.offset_conv.dilation == (1, 2)
    assert (
        torch.count_nonzero(layer.offset_conv.weight) == 0
        and torch.count_nonzero(layer.offset_conv.bias) == 0
    )
    assert (
        ModulatedDeformConv2d(4, 8, 3, offset_groups=2, modulation=False).offset_conv.out_channels
        == 2 * 2 * 9
    )
    assert ModulatedDeformConv2d(4, 8, 3, bias=False).bias is None
    with pytest.raises(ValueError, match="offset_groups=3 must divide in_channels=4"):
        ModulatedDeformConv2d(4, 8, 3, offset_groups=3)


@pytest.mark.parametrize("export_path", [False, True])
def test_module_under_autocast_runs_in_float32(export_path: bool) -> None:
    """Mixed bf16/fp32 inputs under autocast are accepted and computed in float32."""
    torch.manual_seed(0)
    layer = ModulatedDeformConv2d(4, 6, 3)  # zero offsets/unit mask are exact in bf16 too
    x = torch.randn(1, 4, 6, 7)
    with exportable(export_path):
        expected = layer(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = layer(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


def _randomise_offsets(layer: ModulatedDeformConv2d, scale: float = 0.5) -> None:
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        layer.offset_conv.weight.copy_(torch.randn(layer.offset_conv.weight.shape, generator=gen) * scale)
        layer.offset_conv.bias.copy_(torch.randn(layer.offset_conv.bias.shape, generator=gen) * scale)


def test_module_forward_matches_loop_reference_with_learned_offsets() -> None:
    layer = ModulatedDeformConv2d(4, 6, (3, 2), stride=2, offset_groups=2, groups=2).double()
    _randomise_offsets(layer)
    x = torch.randn(BATCH, 4, HEIGHT, WIDTH, dtype=torch.float64)
    pred = layer.offset_conv(x)
    offset, mask = pred[:, :24], 2 * torch.sigmoid(pred[:, 24:])
    expected = deform_conv2d_loop_reference(
        x, offset, layer.weight, layer.bias, mask, stride=2, padding=(1, 1), groups=2, offset_groups=2
    )
    np.testing.assert_allclose(layer(x).detach().numpy(), expected, rtol=0, atol=PARITY_ATOL)


def test_module_backward_reaches_all_parameters() -> None:
    layer = ModulatedDeformConv2d(4, 6, 3, offset_groups=2)
    _randomise_offsets(layer, scale=0.1)
    layer(torch.randn(1, 4, 6, 6)).square().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.count_nonzero(p.grad) > 0, name


# --------------------------------------------------------------------------------------------------
# ONNX export (decomposed flavour: GridSample + MatMul)
# --------------------------------------------------------------------------------------------------


def test_onnx_export_decomposed_runs_in_onnxruntime(tmp_path: Any) -> None:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    layer = ModulatedDeformConv2d(4, 6, 3, offset_groups=2).eval()
    _randomise_offsets(layer)
    x = torch.randn(2, 4, 9, 11)
    path = tmp_path / "dcn.onnx"
    dims = {
        0: torch.export.Dim("batch", min=1, max=16),
        2: torch.export.Dim("height", min=4, max=64),
        3: torch.export.Dim("width", min=4, max=64),
    }
    with exportable():
        torch.onnx.export(
            layer,
            (x,),
            str(path),
            dynamo=True,
            opset_version=19,
            input_names=["x"],
            output_names=["y"],
            dynamic_shapes={"x": dims},
        )
    assert not is_exportable()
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    op_types = {node.op_type for node in model.graph.node}
    assert "GridSample" in op_types and "DeformConv" not in op_types, op_types

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(2, 4, 9, 11), (1, 4, 6, 7), (3, 4, 13, 5)]:  # batch and H/W stayed symbolic
        xi = torch.randn(*shape)
        (got,) = session.run(None, {"x": xi.numpy()})
        with torch.no_grad():
            np.testing.assert_allclose(got, layer(xi).numpy(), rtol=0, atol=FLOAT32_ATOL)


def test_module_importable_names() -> None:
    assert set(deform.__all__) <= set(dir(deform))


@pytest.mark.slow
def test_torch_compile_inductor_matches_eager() -> None:
    """The opaque op compiles with fullgraph=True (no graph break) and its backward matches eager."""
    torch.manual_seed(0)
    layer = ModulatedDeformConv2d(4, 6, 3, offset_groups=2)
    _randomise_offsets(layer, scale=0.2)
    x = torch.randn(2, 4, 9, 11, requires_grad=True)
    compiled = torch.compile(layer, fullgraph=True)
    out_c = compiled(x)
    (grad_c,) = torch.autograd.grad(out_c.square().sum(), x)
    out_e = layer(x)
    (grad_e,) = torch.autograd.grad(out_e.square().sum(), x)
    torch.testing.assert_close(out_c, out_e, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grad_c, grad_e, rtol=1e-4, atol=1e-4)
