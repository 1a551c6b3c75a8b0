"""Numpy map resizing and smoothing, equal to the PyTorch reference in ``fgad.backbone.postprocess``.

* :func:`upsample_align_corners`: bilinear resize with ``align_corners=True``
  (``torch.nn.functional.interpolate``), as two precomputed interpolation matrices: ``A_h @ map @ A_w.T``.
* :func:`gaussian_reflect`: ``scipy.ndimage.gaussian_filter(mode='reflect')`` on each 2-D map (scipy's kernel,
  radius ``int(truncate * sigma + 0.5)``), via an explicit reflect padding that stays correct when the radius
  exceeds the map size, then ``cv2.sepFilter2D``.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

__all__ = [
    "gaussian_kernel1d",
    "gaussian_radius",
    "gaussian_reflect",
    "map_batch",
    "reflect_index",
    "upsample_align_corners",
]


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int | np.integer):
        pair = (int(size), int(size))
    else:
        if len(size) != 2:
            raise ValueError(f"size must be an int or an (H, W) pair, got {size!r}")
        pair = (int(size[0]), int(size[1]))
    if min(pair) < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return pair


def map_batch(maps: np.ndarray, name: str) -> tuple[np.ndarray, bool]:
    """[B, H, W] float32 view of ``maps``; the flag says whether a single [H, W] map was given."""
    arr = np.asarray(maps, dtype=np.float32)
    if arr.ndim == 2:
        return arr[None], True
    if arr.ndim != 3 or 0 in arr.shape[1:]:
        raise ValueError(f"{name}: maps must be [B, H, W] or [H, W], got shape {arr.shape}")
    return arr, False


@lru_cache(maxsize=64)
def _interp_matrix(in_size: int, out_size: int) -> np.ndarray:
    """``[out, in]`` weights of 1-D linear interpolation with align_corners=True.

    Follows PyTorch's CPU kernel: scale ``(in - 1) / (out - 1)`` and source ``scale * i`` in float32, left
    neighbour ``floor(src)``, right neighbour clamped to ``in - 1``.
    """
    matrix = np.zeros((out_size, in_size), dtype=np.float32)
    scale = np.float32((in_size - 1) / (out_size - 1)) if out_size > 1 else np.float32(0.0)
    src = scale * np.arange(out_size, dtype=np.float32)
    left = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    frac = (src - left.astype(np.float32)).astype(np.float32)
    right = np.minimum(left + 1, in_size - 1)
    rows = np.arange(out_size)
    np.add.at(matrix, (rows, left), np.float32(1.0) - frac)
    np.add.at(matrix, (rows, right), frac)
    matrix.setflags(write=False)
    return matrix


def upsample_align_corners(maps: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Bilinear resize of ``[B, h, w]`` (or ``[h, w]``) maps to ``size`` with ``align_corners=True``; float32."""
    batch, single = map_batch(maps, "upsample_align_corners")
    out_h, out_w = _pair(size)
    _, in_h, in_w = batch.shape
    a_h = _interp_matrix(in_h, out_h)
    a_w = _interp_matrix(in_w, out_w)
    out = np.matmul(np.matmul(a_h, batch), a_w.T)
    out = np.ascontiguousarray(out, dtype=np.float32)
    return out[0] if single else out


def gaussian_radius(sigma: float, truncate: float = 4.0) -> int:
    """scipy's kernel radius: ``int(truncate * sigma + 0.5)``."""
    return int(float(truncate) * float(sigma) + 0.5)


@lru_cache(maxsize=32)
def gaussian_kernel1d(sigma: float, radius: int) -> np.ndarray:
    """Normalised taps over ``[-radius, radius]``, computed in float64 as scipy does, returned as float32."""
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    if radius < 0:
        raise ValueError(f"radius must be non-negative, got {radius}")
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    phi = np.exp(-0.5 / (sigma * sigma) * x * x)
    phi /= phi.sum()
    taps = phi.astype(np.float32)
    taps.setflags(write=False)
    return taps


def reflect_index(length: int, radius: int) -> np.ndarray:
    """Source indices padding a line of ``length`` by ``radius`` each side, scipy ``mode='reflect'``.

    ``d c b a | a b c d | d c b a``, folded over a period of ``2 * length`` so any radius works.
    """
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    pos = np.arange(-radius, length + radius, dtype=np.int64)
    period = 2 * length
    folded = np.mod(pos, period)
    return np.where(folded >= length, period - 1 - folded, folded)


def gaussian_reflect(maps: np.ndarray, sigma: float, truncate: float = 4.0) -> np.ndarray:
    """Gaussian blur of each 2-D map, equal to ``scipy.ndimage.gaussian_filter(m, sigma, mode='reflect',
    truncate=truncate)`` per map (float32; ``[B, H, W]`` or ``[H, W]``)."""
    batch, single = map_batch(maps, "gaussian_reflect")
    radius = gaussian_radius(sigma, truncate)
    taps = gaussian_kernel1d(float(sigma), radius)
    _, height, width = batch.shape
    idx_h = reflect_index(height, radius)
    idx_w = reflect_index(width, radius)
    out = np.empty_like(batch)
    for i, m in enumerate(batch):
        # padding covers the kernel's whole reach, so the border mode of sepFilter2D never matters in the crop
        padded = np.ascontiguousarray(m[np.ix_(idx_h, idx_w)])
        filtered = cv2.sepFilter2D(padded, cv2.CV_32F, taps, taps, borderType=cv2.BORDER_REFLECT)
        out[i] = filtered[radius : radius + height, radius : radius + width]
    return out[0] if single else out
