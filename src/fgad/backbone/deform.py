"""Deformable convolution (DCNv1 / DCNv2) owned by the project.

Layout follows ``torchvision.ops.deform_conv2d`` and ONNX ``DeformConv`` (opset 19):

* ``x`` ``[B, C_in, H, W]``, ``weight`` ``[C_out, C_in / groups, kh, kw]``;
* ``offset`` ``[B, 2 * offset_groups * kh * kw, H_out, W_out]``; for offset group ``g`` and tap
  ``k = i * kw + j`` the channels ``2 * (g * kh * kw + k)`` and ``2 * (g * kh * kw + k) + 1`` hold
  ``(dy, dx)``;
* ``mask`` ``[B, offset_groups * kh * kw, H_out, W_out]`` (DCNv2 modulation, optional);
* tap ``(i, j)`` of output pixel ``(oy, ox)`` samples ``x`` bilinearly at
  ``y = oy * stride_h - pad_h + i * dil_h + dy``, ``x = ox * stride_w - pad_w + j * dil_w + dx``,
  every bilinear corner outside the image contributing zero.

There are three entry points:

* :func:`deform_conv2d_reference`: the pure-PyTorch body (``grid_sample`` + grouped matmul).
  Differentiable by ordinary autograd and traceable, so ``torch.onnx.export(dynamo=True)`` emits
  ``GridSample`` + ``MatMul`` (the "decomposed" ONNX flavour).
* ``torch.ops.fgad.deform_conv2d``: a ``torch.library`` custom op around the same body, so eager,
  ``torch.compile`` and exporters with a translation table see one opaque node.
* :func:`deform_conv2d`: the validated public wrapper. It calls the custom op, or the pure body
  while :func:`is_exportable` is true (see :func:`set_exportable` / :func:`exportable`).
"""

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ModulatedDeformConv2d",
    "conv_output_size",
    "deform_conv2d",
    "deform_conv2d_reference",
    "exportable",
    "is_exportable",
    "set_exportable",
]

IntPair = tuple[int, int]

# --------------------------------------------------------------------------------------------------
# Export switch
# --------------------------------------------------------------------------------------------------

_EXPORTABLE = False


def set_exportable(flag: bool) -> None:
    """Route :func:`deform_conv2d` through the pure body (``True``) or the custom op (``False``).

    Exporters that only understand core aten ops (``torch.onnx.export``, TensorRT via ONNX) need the
    body traced into ``GridSample`` + ``MatMul``; everything else should keep the opaque op.
    """
    global _EXPORTABLE
    _EXPORTABLE = bool(flag)


def is_exportable() -> bool:
    """Whether :func:`deform_conv2d` currently calls the pure body instead of the custom op."""
    return _EXPORTABLE


@contextmanager
def exportable(flag: bool = True) -> Iterator[None]:
    """Temporarily :func:`set_exportable`; the previous value is restored on exit."""
    previous = _EXPORTABLE
    set_exportable(flag)
    try:
        yield
    finally:
        set_exportable(previous)


# --------------------------------------------------------------------------------------------------
# Argument handling
# --------------------------------------------------------------------------------------------------


def _pair(value: int | Sequence[int], name: str) -> IntPair:
    """Normalise an int or an ``(h, w)`` pair of ints."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        return (value, value)
    if (
        isinstance(value, Sequence)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        return (int(value[0]), int(value[1]))
    raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Output length of a convolution along one axis (also on symbolic ``SymInt`` sizes)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _validate(
    x: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    mask: Tensor | None,
    stride: IntPair,
    padding: IntPair,
    dilation: IntPair,
    groups: int,
    offset_groups: int,
    check_dtypes: bool = True,
) -> None:
    """Raise ``ValueError`` / ``TypeError`` with an actionable message for inconsistent arguments.

    ``check_dtypes=False`` under autocast, where mixed floating dtypes are expected and unified later.
    """
    for name, t in (("x", x), ("offset", offset), ("weight", weight)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D, got shape {tuple(t.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    for name, t in (("offset", offset), ("weight", weight), ("bias", bias), ("mask", mask)):
        if t is None:
            continue
        if check_dtypes and t.dtype != x.dtype:
            raise TypeError(f"{name} has dtype {t.dtype}, expected the dtype of x ({x.dtype})")
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device}, expected the device of x ({x.device})")
    if min(stride) < 1 or min(dilation) < 1 or min(padding) < 0:
        raise ValueError(
            f"need stride >= 1, dilation >= 1, padding >= 0; got stride={stride}, "
            f"padding={padding}, dilation={dilation}"
        )
    if groups < 1 or offset_groups < 1:
        raise ValueError(f"groups and offset_groups must be >= 1, got {groups} and {offset_groups}")

    batch, in_ch, height, width = x.shape
    out_ch, w_in_ch, kh, kw = weight.shape
    taps = kh * kw
    if in_ch % groups != 0 or out_ch % groups != 0:
        raise ValueError(
            f"groups={groups} must divide both C_in={in_ch} and C_out={out_ch} (weight {tuple(weight.shape)})"
        )
    if w_in_ch * groups != in_ch:
        raise ValueError(
            f"weight has {w_in_ch} input channels, expected "
            f"C_in/groups = {in_ch}/{groups} = {in_ch // groups}"
        )
    if in_ch % offset_groups != 0:
        raise ValueError(f"offset_groups={offset_groups} must divide C_in={in_ch}")

    h_out = conv_output_size(height, kh, stride[0], padding[0], dilation[0])
    w_out = conv_output_size(width, kw, stride[1], padding[1], dilation[1])
    if h_out < 1 or w_out < 1:
        raise ValueError(
            f"a {kh}x{kw} kernel with stride={stride}, padding={padding}, dilation={dilation} does not "
            f"fit a {height}x{width} input (output would be {h_out}x{w_out})"
        )

    expected = 2 * offset_groups * taps
    if offset.shape[1] != expected:
        raise ValueError(
            f"offset has {offset.shape[1]} channels, expected 2*offset_groups*kh*kw = {expected} "
            f"for a {kh}x{kw} kernel and offset_groups={offset_groups}"
        )
    if offset.shape[0] != batch or offset.shape[2] != h_out or offset.shape[3] != w_out:
        raise ValueError(
            f"offset has shape {tuple(offset.shape)}, expected [{batch}, {expected}, {h_out}, {w_out}] "
            "(batch of x, output spatial size)"
        )
    if mask is not None:
        if mask.dim() != 4:
            raise ValueError(f"mask must be 4-D, got shape {tuple(mask.shape)}")
        expected_mask = (batch, offset_groups * taps, h_out, w_out)
        if tuple(mask.shape) != expected_mask:
            raise ValueError(
                f"mask has shape {tuple(mask.shape)}, expected {list(expected_mask)} "
                f"(offset_groups*kh*kw = {offset_groups * taps} channels)"
            )
    if bias is not None and tuple(bias.shape) != (out_ch,):
        raise ValueError(f"bias has shape {tuple(bias.shape)}, expected ({out_ch},)")


# --------------------------------------------------------------------------------------------------
# Pure-PyTorch body
# --------------------------------------------------------------------------------------------------


def _deform_conv2d_body(
    x: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    mask: Tensor | None,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    offset_groups: int,
) -> Tensor:
    """Unvalidated body shared by the reference, the custom op and its backward."""
    height, width = x.shape[-2:]
    kh, kw = weight.shape[-2:]
    taps = kh * kw
    h_out = conv_output_size(height, kh, stride[0], padding[0], dilation[0])
    w_out = conv_output_size(width, kw, stride[1], padding[1], dilation[1])

    # Undeformed sampling positions in pixel coordinates: base_y [K, H_out, 1], base_x [K, 1, W_out].
    opts = {"dtype": x.dtype, "device": x.device}
    tap_i, tap_j = torch.meshgrid(torch.arange(kh, **opts), torch.arange(kw, **opts), indexing="ij")
    base_y = tap_i.reshape(taps, 1, 1) * dilation[0] + (
        torch.arange(h_out, **opts) * stride[0] - padding[0]
    ).reshape(1, -1, 1)
    base_x = tap_j.reshape(taps, 1, 1) * dilation[1] + (
        torch.arange(w_out, **opts) * stride[1] - padding[1]
    ).reshape(1, 1, -1)

    # offset [B, G*K*2, Ho, Wo] -> [B, G, K, 2, Ho, Wo]; positions [B, G, K, Ho, Wo].
    off = offset.unflatten(1, (offset_groups, taps, 2))
    pos_y = base_y + off[:, :, :, 0]
    pos_x = base_x + off[:, :, :, 1]

    # grid_sample(align_corners=False) maps normalised g to pixel ((g + 1) * size - 1) / 2, so pixel
    # p (p = 0 is the centre of the first pixel) is g = (2p + 1) / size - 1. Its zeros padding drops
    # each out-of-image bilinear corner individually, exactly like DeformConv.
    grid = torch.stack(((2 * pos_x + 1) / width - 1, (2 * pos_y + 1) / height - 1), dim=-1)
    grid = grid.flatten(0, 1).flatten(1, 2)  # [B*G, K*Ho, Wo, 2]

    x_g = x.unflatten(1, (offset_groups, -1)).flatten(0, 1)  # [B*G, C_in/G, H, W]
    cols = F.grid_sample(x_g, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    cols = cols.unflatten(0, (-1, offset_groups)).unflatten(3, (taps, -1))  # [B, G, C_in/G, K, Ho, Wo]
    if mask is not None:
        cols = cols * mask.unflatten(1, (offset_groups, 1, taps))

    # Grouped matmul: [groups, C_out/groups, C_in/groups*K] @ [B, groups, C_in/groups*K, Ho*Wo].
    cols = cols.flatten(1, 2).unflatten(1, (groups, -1)).flatten(2, 3).flatten(3, 4)
    w = weight.unflatten(0, (groups, -1)).flatten(2)
    out = torch.matmul(w, cols).flatten(1, 2).unflatten(2, (h_out, w_out))  # [B, C_out, Ho, Wo]
    if bias is not None:
        out = out + bias.reshape(1, -1, 1, 1)
    return out


def deform_conv2d_reference(
    x: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    mask: Tensor | None = None,
    stride: int | Sequence[int] = (1, 1),
    padding: int | Sequence[int] = (0, 0),
    dilation: int | Sequence[int] = (1, 1),
    groups: int = 1,
    offset_groups: int = 1,
) -> Tensor:
    """Deformable convolution in plain PyTorch ops (``grid_sample`` + grouped ``matmul``).

    Differentiable with ordinary autograd and traceable by ``torch.export`` / ONNX exporters.
    See the module docstring for the tensor layouts.
    """
    stride_p, padding_p, dilation_p = (
        _pair(stride, "stride"),
        _pair(padding, "padding"),
        _pair(dilation, "dilation"),
    )
    _validate(x, offset, weight, bias, mask, stride_p, padding_p, dilation_p, groups, offset_groups)
    return _deform_conv2d_body(
        x, offset, weight, bias, mask, stride_p, padding_p, dilation_p, groups, offset_groups
    )


# --------------------------------------------------------------------------------------------------
# Custom op
# --------------------------------------------------------------------------------------------------


@torch.library.custom_op("fgad::deform_conv2d", mutates_args=())
def _deform_conv2d_op(
    x: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    mask: Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    offset_groups: int,
) -> Tensor:
    return _deform_conv2d_body(
        x, offset, weight, bias, mask, stride, padding, dilation, groups, offset_groups
    )


@_deform_conv2d_op.register_fake
def _deform_conv2d_fake(
    x: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    mask: Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    offset_groups: int,
) -> Tensor:
    h_out = conv_output_size(x.shape[-2], weight.shape[-2], stride[0], padding[0], dilation[0])
    w_out = conv_output_size(x.shape[-1], weight.shape[-1], stride[1], padding[1], dilation[1])
    return x.new_empty((x.shape[0], weight.shape[0], h_out, w_out))


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    x, offset, weight, bias, mask, stride, padding, dilation, groups, offset_groups = inputs
    ctx.save_for_backward(x, offset, weight, bias, mask)
    ctx.config = (stride, padding, dilation, groups, offset_groups)


def _backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
    """VJP by differentiating the pure body again (recomputes the forward instead of saving columns).

    Grad mode is on here only for ``backward(create_graph=True)``; then the body is re-run on the
    saved inputs themselves so the returned gradients stay differentiable (double backward).
    """
    saved = ctx.saved_tensors  # x, offset, weight, bias, mask
    wanted = [i for i, t in enumerate(saved) if t is not None and ctx.needs_input_grad[i]]
    grads: list[Tensor | None] = [None] * 5
    if wanted:
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            if create_graph:
                inputs = list(saved)
            else:
                inputs = [
                    t.detach().requires_grad_(i in wanted) if t is not None else None
                    for i, t in enumerate(saved)
                ]
            out = _deform_conv2d_body(*inputs, *ctx.config)
            computed = torch.autograd.grad(
                out, [inputs[i] for i in wanted], grad_out, allow_unused=True, create_graph=create_graph
            )
        for i, g in zip(wanted, computed, strict=True):
            grads[i] = g if g is not None else torch.zeros_like(saved[i])
    return (*grads, None, None, None, None, None)


_deform_conv2d_op.register_autograd(_backward, setup_context=_setup_context)

# Under autocast, run in float32 (as autocast does for grid_sample): bilinear weights and sampling
# coordinates of a few hundred pixels are too coarse in half precision.
_AUTOCAST_DEVICE_TYPES = ("cpu", "cuda")
for _device_type in _AUTOCAST_DEVICE_TYPES:
    torch.library.register_autocast("fgad::deform_conv2d", _device_type, torch.float32)


def deform_conv2d(
    x: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    mask: Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    offset_groups: int = 1,
) -> Tensor:
    """Deformable convolution (DCNv2 when ``mask`` is given, DCNv1 otherwise).

    Validates the arguments, then calls ``torch.ops.fgad.deform_conv2d`` or, while
    :func:`is_exportable`, the traceable pure body. Layouts are those of
    ``torchvision.ops.deform_conv2d`` / ONNX ``DeformConv``.
    """
    stride_p, padding_p, dilation_p = (
        _pair(stride, "stride"),
        _pair(padding, "padding"),
        _pair(dilation, "dilation"),
    )
    autocast = (
        isinstance(x, Tensor)
        and x.device.type in _AUTOCAST_DEVICE_TYPES
        and torch.is_autocast_enabled(x.device.type)
    )
    _validate(
        x, offset, weight, bias, mask, stride_p, padding_p, dilation_p, groups, offset_groups, not autocast
    )
    if not _EXPORTABLE:
        return _deform_conv2d_op(
            x,
            offset,
            weight,
            bias,
            mask,
            list(stride_p),
            list(padding_p),
            list(dilation_p),
            groups,
            offset_groups,
        )
    if not autocast:
        return _deform_conv2d_body(
            x, offset, weight, bias, mask, stride_p, padding_p, dilation_p, groups, offset_groups
        )
    # Mirror the custom op's autocast rule so both paths agree.
    x, offset, weight, bias, mask = (
        t.float() if t is not None else None for t in (x, offset, weight, bias, mask)
    )
    with torch.autocast(x.device.type, enabled=False):
        return _deform_conv2d_body(
            x, offset, weight, bias, mask, stride_p, padding_p, dilation_p, groups, offset_groups
        )


# --------------------------------------------------------------------------------------------------
# Module
# --------------------------------------------------------------------------------------------------


class ModulatedDeformConv2d(nn.Module):
    """DCNv2 layer (DCNv1 with ``modulation=False``) that predicts its own offsets.

    ``offset_conv`` is a plain convolution with the main kernel's geometry predicting, per output
    pixel, ``2 * offset_groups * kh * kw`` offsets in DeformConv layout followed (with modulation) by
    ``offset_groups * kh * kw`` mask logits, mapped to ``2 * sigmoid(logit)``. It is zero-initialised,
    so a fresh layer computes exactly ``nn.Conv2d`` with the same weight and bias (offsets 0,
    modulation 1) and training starts from a regular convolution.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        padding: int | tuple[int, int] | None = None,
        stride: int | tuple[int, int] = 1,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        offset_groups: int = 1,
        bias: bool = True,
        modulation: bool = True,
    ) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}"
            )
        if in_channels % offset_groups:
            raise ValueError(f"offset_groups={offset_groups} must divide in_channels={in_channels}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size: IntPair = _pair(kernel_size, "kernel_size")
        self.padding: IntPair = (
            (self.kernel_size[0] // 2, self.kernel_size[1] // 2)
            if padding is None
            else _pair(padding, "padding")
        )
        self.stride: IntPair = _pair(stride, "stride")
        self.dilation: IntPair = _pair(dilation, "dilation")
        self.groups = groups
        self.offset_groups = offset_groups
        self.modulation = modulation

        kh, kw = self.kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, kh, kw))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self._num_offset_channels = 2 * offset_groups * kh * kw
        predicted = self._num_offset_channels + (offset_groups * kh * kw if modulation else 0)
        self.offset_conv = nn.Conv2d(
            in_channels,
            predicted,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            bias=True,
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``nn.Conv2d`` initialisation for the main weight/bias, zeros for ``offset_conv``."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight.shape[1] * self.weight.shape[2] * self.weight.shape[3]
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)
        nn.init.zeros_(self.offset_conv.weight)
        nn.init.zeros_(self.offset_conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        pred = self.offset_conv(x)
        if self.modulation:
            offset = pred[:, : self._num_offset_channels]
            mask = 2 * torch.sigmoid(pred[:, self._num_offset_channels :])
        else:
            offset, mask = pred, None
        return deform_conv2d(
            x,
            offset,
            self.weight,
            self.bias,
            mask,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            offset_groups=self.offset_groups,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
            f"offset_groups={self.offset_groups}, bias={self.bias is not None}, modulation={self.modulation}"
        )
