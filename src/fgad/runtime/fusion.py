"""Fuse the graph's map with the few-shot distances, smooth and score, for either method (torch-free).

The manifest's ``post`` entry says how (docs/bundle.md); the defaults are FiLo++'s:

================  ==========================================  ================================================
field             FiLo++ (default)                            FineGrainedAD
================  ==========================================  ================================================
``map_size``      ``input.size``: ``vl_map`` is ``[B, s, s]``  ``grid``: the textual map ``[B, g, g]``
``fewshot_scale`` 1                                           ½ (``V = ½ · mean over layers of min distance``)
``fusion``        ``mean``: ``(vl + few) / 2``                  ``harmonic``: ``1 / (1/vl + 1/few)``
``output_size``   ``map_size``                                400: the fused map is upsampled before smoothing
``score``         ``mean``: ``½ (global_prob + max M)``          ``harmonic``: ``global_prob ⊕ max Up(few)``
================  ==========================================  ================================================

The few-shot distances arrive on the token grid ``[B, g, g]`` and are upsampled (bilinear) to ``map_size``
before fusion. ``post.align_corners`` says how every bilinear step samples: ``true`` (FiLo++, and every bundle
written before the field existed) aligns the corner pixels' centres; ``false`` (FineGrainedAD) is PyTorch's
``align_corners=False``, ONNX's ``half_pixel``, right for patch grids (each token covers a p×p square).
Without references the map is ``vl_map`` alone
and a ``harmonic`` score uses ``max Up(vl_map)`` in place of the few-shot peak (as the PyTorch model).
``a ⊕ b = a·b / (a + b + 1e-8)``, equal to ``fgad.backbone.postprocess.harmonic_fusion``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from fgad.core.smoothing import gaussian_reflect, map_batch, upsample_align_corners
from fgad.runtime.postprocess import finish

__all__ = ["FUSIONS", "SCORES", "FusionSpec", "finish_maps", "harmonic", "upsample_bilinear", "upsample_half_pixel"]

FUSIONS = ("mean", "harmonic")
SCORES = ("mean", "harmonic")
HARMONIC_EPS = np.float32(1e-8)


@dataclass(frozen=True)
class FusionSpec:
    sigma: float
    truncate: float
    map_size: int  # side of vl_map
    output_size: int  # side of the final map
    fusion: str = "mean"
    score: str = "mean"
    fewshot_scale: float = 1.0
    align_corners: bool = True  # post.align_corners: how the bilinear upsampling samples


@lru_cache(maxsize=64)
def _half_pixel_matrix(in_size: int, out_size: int) -> np.ndarray:
    """``[out, in]`` weights of 1-D linear interpolation with ``align_corners=False`` (ONNX ``half_pixel``).

    Follows PyTorch's CPU kernel for upsampling: source ``(i + 0.5) · in/out − 0.5`` clamped at 0, left
    neighbour ``floor(src)``, right neighbour clamped to ``in − 1`` (edge values are repeated).
    """
    matrix = np.zeros((out_size, in_size), dtype=np.float32)
    scale = np.float32(in_size / out_size)
    src = np.maximum(scale * (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5), 0)
    left = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    frac = (src - left.astype(np.float32)).astype(np.float32)
    right = np.minimum(left + 1, in_size - 1)
    rows = np.arange(out_size)
    np.add.at(matrix, (rows, left), np.float32(1.0) - frac)
    np.add.at(matrix, (rows, right), frac)
    matrix.setflags(write=False)
    return matrix


def upsample_half_pixel(maps: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of ``[B, h, w]`` (or ``[h, w]``) maps to ``size`` with ``align_corners=False``; float32."""
    batch, single = map_batch(maps, "upsample_half_pixel")
    _, in_h, in_w = batch.shape
    out = np.matmul(np.matmul(_half_pixel_matrix(in_h, size), batch), _half_pixel_matrix(in_w, size).T)
    out = np.ascontiguousarray(out, dtype=np.float32)
    return out[0] if single else out


def upsample_bilinear(maps: np.ndarray, size: int, align_corners: bool) -> np.ndarray:
    """Bilinear resize to ``size`` the way ``post.align_corners`` says (unchanged if already that size)."""
    if maps.shape[-1] == size and maps.shape[-2] == size:
        return maps
    return upsample_align_corners(maps, size) if align_corners else upsample_half_pixel(maps, size)


def harmonic(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a·b / (a + b + 1e-8)`` in float32 (``1 / (1/a + 1/b)`` for positive values, 0 where either is 0)."""
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    return (a * b / (a + b + HARMONIC_EPS)).astype(np.float32, copy=False)


def finish_maps(
    vl_map: np.ndarray, global_prob: np.ndarray, few_grid: np.ndarray | None, spec: FusionSpec
) -> tuple[np.ndarray, np.ndarray]:
    """``(anomaly_map [B, O, O], score [B])`` from ``vl_map`` ``[B, m, m]``, ``global_prob`` ``[B]`` and the
    mean few-shot distance on the token grid ``[B, g, g]`` (None without references); float32."""
    vl = np.asarray(vl_map, dtype=np.float32)
    prob = np.asarray(global_prob, dtype=np.float32).reshape(-1)
    few = None
    if few_grid is not None:
        few = np.asarray(few_grid, dtype=np.float32)
        if spec.fewshot_scale != 1.0:
            few = few * np.float32(spec.fewshot_scale)
        few = upsample_bilinear(few, spec.map_size, spec.align_corners)
    if spec.fusion == "mean" and spec.score == "mean" and spec.output_size == spec.map_size:
        return finish(vl, prob, few, spec.sigma, spec.truncate)  # FiLo++: exactly the original steps
    if spec.fusion not in FUSIONS:
        raise ValueError(f"post.fusion={spec.fusion!r}: this runtime implements {list(FUSIONS)}")
    if spec.score not in SCORES:
        raise ValueError(f"post.score={spec.score!r}: this runtime implements {list(SCORES)}")
    if few is None:
        fused = vl
    elif spec.fusion == "mean":
        fused = (vl + few) / np.float32(2.0)
    else:
        fused = harmonic(vl, few)
    up = upsample_bilinear(fused, spec.output_size, spec.align_corners)
    anomaly_map = gaussian_reflect(up, spec.sigma, spec.truncate)
    if spec.score == "mean":
        score = np.float32(0.5) * (prob + anomaly_map.reshape(anomaly_map.shape[0], -1).max(axis=1))
    else:
        reference = vl if few is None else few
        peak_map = upsample_bilinear(reference, spec.output_size, spec.align_corners)
        peak = peak_map.reshape(reference.shape[0], -1).max(axis=1)
        score = harmonic(prob, peak)
    return anomaly_map, score.astype(np.float32, copy=False)
