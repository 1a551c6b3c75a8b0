"""The runtime's last step for FiLo++-style bundles: fuse, smooth and score as ``docs/bundle.md`` prescribes."""

from __future__ import annotations

import numpy as np

from fgad.core.smoothing import gaussian_reflect, map_batch

__all__ = ["finish"]


def finish(
    vl_map: np.ndarray,
    global_prob: np.ndarray,
    few_map: np.ndarray | None,
    sigma: float,
    truncate: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Fuse, smooth and score (``docs/bundle.md`` steps 2-4).

    Args:
        vl_map: ``[B, s, s]`` M^vl from the graph.
        global_prob: ``[B]`` p_a from the graph.
        few_map: ``[B, s, s]`` few-shot distance map (already upsampled), or None in zero-shot.
        sigma, truncate: ``post.sigma`` / ``post.truncate`` of the manifest.

    Returns:
        ``(anomaly_map [B, s, s], score [B])`` with ``anomaly_map = blur((vl + few) / 2)`` (or ``blur(vl)``) and
        ``score = 0.5 * (global_prob + max(anomaly_map))``, both float32.
    """
    vl, _ = map_batch(vl_map, "finish(vl_map)")
    prob = np.asarray(global_prob, dtype=np.float32).reshape(-1)
    if prob.shape[0] != vl.shape[0]:
        raise ValueError(f"global_prob has {prob.shape[0]} values for {vl.shape[0]} maps")
    if few_map is None:
        fused = vl
    else:
        few, _ = map_batch(few_map, "finish(few_map)")
        if few.shape != vl.shape:
            raise ValueError(f"few_map {few.shape} and vl_map {vl.shape} must have the same shape")
        fused = (vl + few) / np.float32(2.0)
    anomaly_map = gaussian_reflect(fused, sigma, truncate)
    score = np.float32(0.5) * (prob + anomaly_map.reshape(anomaly_map.shape[0], -1).max(axis=1))
    return anomaly_map, score.astype(np.float32, copy=False)
