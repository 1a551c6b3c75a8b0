"""Anomaly-map post-processing: Gaussian smoothing, resizing, region suppression and fusion.

Everything here is export-safe: shapes are fixed at construction time, the blur is a pair of
fixed-weight convolutions and the boundary handling is a precomputed gather, so the graph
exports to plain ``Gather`` + ``Conv`` nodes in ONNX.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fgad.core.smoothing import reflect_index  # one padding rule for the torch and numpy sides

__all__ = [
    "GaussianBlur",
    "gaussian_kernel1d",
    "harmonic_fusion",
    "mean_fusion",
    "reflect_index",
    "suppress_outside",
    "upsample",
]


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    if len(size) != 2:
        raise ValueError(f"size must be an int or an (H, W) pair, got {size!r}")
    return int(size[0]), int(size[1])


def gaussian_kernel1d(sigma: float, radius: int) -> Tensor:
    """Normalised 1-D Gaussian taps over ``x in [-radius, radius]``, as ``scipy.ndimage`` builds them.

    The kernel is computed in float64 (as scipy does) and only then rounded to float32.
    """
    # one definition, shared with the torch-free runtime so both smooth with identical taps
    from fgad.core.smoothing import gaussian_kernel1d as taps

    return torch.from_numpy(taps(float(sigma), int(radius)).copy())


class GaussianBlur(nn.Module):
    """Separable Gaussian blur matching ``scipy.ndimage.gaussian_filter(mode='reflect')`` per 2-D map.

    Args:
        size: spatial size ``H`` or ``(H, W)`` of the maps; fixed because the reflect padding is a
            gather with a precomputed index.
        sigma: standard deviation of the Gaussian, in pixels.
        truncate: kernel radius in units of sigma (scipy's ``truncate``).

    Input and output are ``[B, C, H, W]``; each ``(b, c)`` map is filtered independently.
    """

    kernel_h: Tensor
    kernel_w: Tensor
    index_h: Tensor
    index_w: Tensor

    def __init__(self, size: int | tuple[int, int], sigma: float = 4.0, truncate: float = 4.0) -> None:
        super().__init__()
        self.size = _pair(size)
        self.sigma = float(sigma)
        self.truncate = float(truncate)
        self.radius = int(truncate * sigma + 0.5)
        height, width = self.size
        taps = gaussian_kernel1d(self.sigma, self.radius)
        # scipy correlates rather than convolves; the kernel is symmetric so conv2d is the same.
        self.register_buffer("kernel_w", taps.view(1, 1, 1, -1).clone())
        self.register_buffer("kernel_h", taps.view(1, 1, -1, 1).clone())
        self.register_buffer("index_w", torch.from_numpy(reflect_index(width, self.radius)))
        self.register_buffer("index_h", torch.from_numpy(reflect_index(height, self.radius)))

    def extra_repr(self) -> str:
        return f"size={self.size}, sigma={self.sigma}, truncate={self.truncate}, radius={self.radius}"

    def forward(self, maps: Tensor) -> Tensor:
        height, width = self.size
        flat = maps.reshape(-1, 1, height, width)
        kernel_w = self.kernel_w.to(flat.dtype)
        kernel_h = self.kernel_h.to(flat.dtype)
        out = F.conv2d(flat.index_select(3, self.index_w), kernel_w)
        out = F.conv2d(out.index_select(2, self.index_h), kernel_h)
        return out.reshape(maps.shape)


def upsample(maps: Tensor, size: int | tuple[int, int], align_corners: bool = True) -> Tensor:
    """Bilinearly resize ``[B, C, h, w]`` maps to ``size``."""
    return F.interpolate(maps, size=_pair(size), mode="bilinear", align_corners=align_corners)


def suppress_outside(maps: Tensor, region: Tensor, lam: float = 0.7) -> Tensor:
    """Damp scores outside a region: inside is kept, outside is multiplied by ``lam``.

    Args:
        maps: ``[B, C, H, W]`` anomaly maps.
        region: ``[B, 1, H, W]`` mask in ``{0, 1}`` (1 = inside), broadcast over channels.
        lam: factor applied outside the region.
    """
    return maps * (region + lam * (1.0 - region))


def harmonic_fusion(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Elementwise harmonic combination ``1 / (1/a + 1/b)`` of two non-negative maps.

    Written as ``a * b / (a + b + eps)``, which is the same value for positive inputs but stays
    finite (and zero) where either map is zero.
    """
    return a * b / (a + b + eps)


def mean_fusion(*maps: Tensor) -> Tensor:
    """Elementwise mean of any number of same-shaped maps."""
    if not maps:
        raise ValueError("mean_fusion needs at least one map")
    return torch.stack(maps, dim=0).mean(dim=0)
