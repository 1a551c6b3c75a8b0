"""Naive, obviously-correct deformable convolution for tests (numpy, explicit loops).

Semantics are those of ``torchvision.ops.deform_conv2d`` / ONNX ``DeformConv``: tap ``(i, j)`` of
output pixel ``(oy, ox)`` samples the input at
``y = oy * stride_h - pad_h + i * dil_h + dy``, ``x = ox * stride_w - pad_w + j * dil_w + dx``
with bilinear interpolation, every corner outside the image contributing zero. ``dy``/``dx`` for
offset group ``g`` and tap ``k = i * kw + j`` live in offset channels ``2 * (g * kh * kw + k)`` and
``2 * (g * kh * kw + k) + 1``; the mask (optional) in channel ``g * kh * kw + k``.

Deliberately slow and simple: it is the ground truth for the vectorised PyTorch implementation and
for native kernels. Inputs may be numpy arrays or torch tensors; the result is a float64 array.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def _np(a: Any) -> np.ndarray | None:
    if a is None:
        return None
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def _pair(v: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def bilinear_zero_padded(img: np.ndarray, y: float, x: float) -> float:
    """Sample the 2-D array ``img`` at pixel coordinates ``(y, x)``; outside corners count as 0."""
    height, width = img.shape
    y0 = math.floor(y)
    x0 = math.floor(x)
    y1 = y0 + 1
    x1 = x0 + 1
    wy1 = y - y0  # weight of row y1
    wy0 = 1.0 - wy1  # weight of row y0
    wx1 = x - x0
    wx0 = 1.0 - wx1

    def pixel(r: int, c: int) -> float:
        if 0 <= r < height and 0 <= c < width:
            return float(img[r, c])
        return 0.0

    return (
        wy0 * wx0 * pixel(y0, x0)
        + wy0 * wx1 * pixel(y0, x1)
        + wy1 * wx0 * pixel(y1, x0)
        + wy1 * wx1 * pixel(y1, x1)
    )


def deform_conv2d_loop_reference(
    x: Any,
    offset: Any,
    weight: Any,
    bias: Any = None,
    mask: Any = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    offset_groups: int = 1,
) -> np.ndarray:
    """Deformable convolution with explicit loops over batch, out channel, pixel, in channel and tap."""
    x_np = _np(x)
    off = _np(offset)
    w = _np(weight)
    b = _np(bias)
    m = _np(mask)
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)

    batch, in_ch, height, width = x_np.shape
    out_ch, in_per_group, kh, kw = w.shape
    taps = kh * kw
    h_out = (height + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    w_out = (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    out_per_group = out_ch // groups
    in_per_offset_group = in_ch // offset_groups
    assert off.shape == (batch, 2 * offset_groups * taps, h_out, w_out), off.shape
    assert in_per_group * groups == in_ch

    out = np.zeros((batch, out_ch, h_out, w_out), dtype=np.float64)
    for n in range(batch):
        for oc in range(out_ch):
            group = oc // out_per_group
            for oy in range(h_out):
                for ox in range(w_out):
                    acc = 0.0 if b is None else float(b[oc])
                    for icg in range(in_per_group):
                        ic = group * in_per_group + icg
                        g = ic // in_per_offset_group
                        for i in range(kh):
                            for j in range(kw):
                                k = i * kw + j
                                dy = off[n, 2 * (g * taps + k), oy, ox]
                                dx = off[n, 2 * (g * taps + k) + 1, oy, ox]
                                y = oy * sh - ph + i * dh + dy
                                xx = ox * sw - pw + j * dw + dx
                                val = bilinear_zero_padded(x_np[n, ic], y, xx)
                                if m is not None:
                                    val *= m[n, g * taps + k, oy, ox]
                                acc += w[oc, icg, i, j] * val
                    out[n, oc, oy, ox] = acc
    return out
