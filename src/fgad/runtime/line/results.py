"""A scored frame of a line and the JSON record every sink sends for it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from fgad.runtime.pipeline import Result

__all__ = ["LineResult", "decision_of"]


def decision_of(result: Result) -> str:
    """``"NG"`` (anomalous), ``"OK"``, or ``"n/a"`` when no threshold is set: what a PLC is sent."""
    if result.is_anomalous is None:
        return "n/a"
    return "NG" if result.is_anomalous else "OK"


@dataclass(frozen=True)
class LineResult:
    """The detector's :class:`~fgad.runtime.pipeline.Result` for one frame, with where and when it came from.

    ``message_id`` (``<run id>:<source>:<index>``) is unique across runs of the line; consumers deduplicate on it
    (the MQTT and webhook sinks deliver at least once). ``latency_ms`` runs from the moment the frame was read
    to the moment its result was ready (queueing, batching and the engine included). ``rgb`` is the frame.
    """

    run_id: str
    source: str
    index: int
    frame_id: Any
    captured_at: float
    scored_at: float
    latency_ms: float
    batch_size: int
    result: Result
    rgb: np.ndarray

    @property
    def message_id(self) -> str:
        return f"{self.run_id}:{self.source}:{self.index}"

    @property
    def decision(self) -> str:
        return decision_of(self.result)

    def to_record(self) -> dict[str, Any]:
        """The JSON-ready record of this frame (no map, no pixels)."""
        r = self.result
        record: dict[str, Any] = {
            "message_id": self.message_id,
            "source": self.source,
            "frame_index": self.index,
            "frame": self.frame_id if isinstance(self.frame_id, str | int) else str(self.frame_id),
            "captured_at": round(self.captured_at, 6),
            "scored_at": round(self.scored_at, 6),
            "latency_ms": round(self.latency_ms, 3),
            "decision": self.decision,
            "score": round(float(r.score), 6),
            "threshold": None if r.threshold is None else float(r.threshold),
            "best_description": r.best_description,
            "global_prob": None if math.isnan(r.global_prob) else round(float(r.global_prob), 6),
            "batch_size": self.batch_size,
        }
        record["cell"] = r.position  # the box prior's cell ("top left" ...), None without a prior
        record["box"] = _hot_box(r.anomaly_map, self.rgb.shape[:2]) if r.is_anomalous else None
        return record


def _hot_box(amap: np.ndarray, frame_hw: tuple[int, int]) -> list[int] | None:
    """``[x0, y0, x1, y1]`` in frame pixels around the map's values at or above half its maximum."""
    peak = float(amap.max())
    if not math.isfinite(peak) or peak <= 0:
        return None
    ys, xs = np.nonzero(amap >= 0.5 * peak)
    if ys.size == 0:
        return None
    sy, sx = frame_hw[0] / amap.shape[0], frame_hw[1] / amap.shape[1]
    return [int(xs.min() * sx), int(ys.min() * sy), int(math.ceil((xs.max() + 1) * sx)),
            int(math.ceil((ys.max() + 1) * sy))]
