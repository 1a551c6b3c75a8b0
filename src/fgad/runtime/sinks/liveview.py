"""The live view as a sink: every result handed to ``fgad.runtime.liveview.LiveView.publish``.

Overlays (``fgad.runtime.overlay.heatmap_overlay``) cost a resize and a blend per frame, so they are made for
at most ``overlay_fps`` frames per second per source, and for every NG frame (the page's gallery).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fgad.runtime.line.reader import SourceEvent
    from fgad.runtime.line.results import LineResult

__all__ = ["LiveViewSink"]


class LiveViewSink:
    """Hands results to a live view (any object with the ``publish`` of ``fgad.runtime.liveview.LiveView``)."""

    def __init__(self, view: Any, overlay_fps: float = 10.0) -> None:
        self.view = view
        self.name = "live view"
        self.overlay_fps = overlay_fps
        self._last_overlay: dict[str, float] = {}

    def open(self) -> None:
        pass

    def write(self, result: LineResult) -> None:
        from fgad.runtime.overlay import heatmap_overlay

        now = time.monotonic()
        due = now - self._last_overlay.get(result.source, -1e9) >= 1.0 / self.overlay_fps
        overlay = None
        if due or result.decision == "NG":
            overlay = heatmap_overlay(result.rgb, result.result.anomaly_map)
            self._last_overlay[result.source] = now
        r = result.result
        self.view.publish(source=result.source, frame_index=result.index, timestamp=result.captured_at,
                          decision=result.decision, score=float(r.score), latency_ms=result.latency_ms,
                          threshold=r.threshold, overlay_rgb=overlay, description=r.best_description)

    def source_event(self, event: SourceEvent) -> None:
        pass

    def close(self) -> None:
        pass
