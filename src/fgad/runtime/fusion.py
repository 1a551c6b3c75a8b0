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

The few-shot distances arrive on the token grid ``[B, g, g]`` and are upsampled (bilinear,
``align_corners=True``) to ``map_size`` before fusion. Without references the map is ``vl_map`` alone
and a ``harmonic`` score uses ``max Up(vl_map)`` in place of the few-shot peak (as the PyTorch model).
``a ⊕ b = a·b / (a + b + 1e-8)``, equal to ``fgad.backbone.postprocess.harmonic_fusion``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fgad.core.smoothing import gaussian_reflect, upsample_align_corners
from fgad.runtime.postprocess import finish

__all__ = ["FUSIONS", "SCORES", "FusionSpec", "finish_maps", "harmonic"]

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


def harmonic(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a·b / (a + b + 1e-8)`` in float32 (``1 / (1/a + 1/b)`` for positive values, 0 where either is 0)."""
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    return (a * b / (a + b + HARMONIC_EPS)).astype(np.float32, copy=False)


def _resize(maps: np.ndarray, size: int) -> np.ndarray:
    return maps if maps.shape[-1] == size and maps.shape[-2] == size else upsample_align_corners(maps, size)


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
        few = _resize(few, spec.map_size)
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
    anomaly_map = gaussian_reflect(_resize(fused, spec.output_size), spec.sigma, spec.truncate)
    if spec.score == "mean":
        score = np.float32(0.5) * (prob + anomaly_map.reshape(anomaly_map.shape[0], -1).max(axis=1))
    else:
        reference = vl if few is None else few
        peak = _resize(reference, spec.output_size).reshape(reference.shape[0], -1).max(axis=1)
        score = harmonic(prob, peak)
    return anomaly_map, score.astype(np.float32, copy=False)
