"""Results for sink tests without a detector: a LineResult with a given source, index and score."""

from __future__ import annotations

import numpy as np

from fgad.runtime.line import LineResult
from fgad.runtime.pipeline import Result


def line_result(source: str, index: int, score: float = 0.5, threshold: float | None = 0.6,
                run_id: str = "run1") -> LineResult:
    amap = np.zeros((8, 8), np.float32)
    amap[2:4, 5:7] = score
    result = Result(score=score, is_anomalous=None if threshold is None else score >= threshold,
                    threshold=threshold, anomaly_map=amap, best_description="scratch", position="top right")
    return LineResult(run_id, source, index, index, 1000.0 + index, 1000.1 + index, 12.5, 2, result,
                      np.zeros((16, 16, 3), np.uint8))
