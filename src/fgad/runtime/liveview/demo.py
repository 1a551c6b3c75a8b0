"""Synthetic frames for the live view's demo, tests and docs: a textured part, a moving defect, its heat map."""

from __future__ import annotations

import math
import threading
import time

import numpy as np

from fgad.runtime.overlay import heatmap_overlay

from .server import LiveView

__all__ = ["DemoResult", "run_demo", "synthetic_result"]

DEMO_SOURCES = ("cam0", "st2")


class DemoResult:
    """One synthetic detector result: the overlay and what the runtime would publish with it."""

    def __init__(self, overlay: np.ndarray, score: float, decision: str, description: str | None) -> None:
        self.overlay = overlay
        self.score = score
        self.decision = decision
        self.description = description


def synthetic_result(source_index: int, frame_index: int, threshold: float, height: int = 240,
                     width: int = 320) -> DemoResult:
    """A deterministic frame: a brushed-metal plate with a scratch that appears on every fifth frame."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    plate = 120 + 40 * np.sin(xx / 7.0 + source_index) * np.cos(yy / 23.0) + 0.15 * xx
    image = np.clip(np.stack([plate, plate * 0.98, plate * 0.93], axis=-1), 0, 255).astype(np.uint8)
    defect = frame_index % 5 == 4
    cx = width * (0.3 + 0.4 * (0.5 + 0.5 * math.sin(frame_index / 9.0 + source_index)))
    cy = height * (0.5 + 0.25 * math.cos(frame_index / 13.0))
    strength = 0.95 if defect else 0.25
    amap = strength * np.exp(-(((xx - cx) / 18.0) ** 2 + ((yy - cy) / 12.0) ** 2))
    if defect:
        image[(np.abs(yy - cy - 0.3 * (xx - cx)) < 1.5) & (np.abs(xx - cx) < 25)] = (40, 35, 30)
    score = float(amap.max())
    decision = "NG" if score >= threshold else "OK"
    return DemoResult(heatmap_overlay(image, amap), score, decision, "scratch on surface" if defect else None)


def run_demo(view: LiveView, *, fps: float = 10.0, seconds: float | None = None,
             stop: threading.Event | None = None) -> int:
    """Publish synthetic frames from two sources at ``fps`` until ``seconds`` pass or ``stop`` is set."""
    stop = stop or threading.Event()
    start = time.monotonic()
    frame_index = 0
    while not stop.is_set() and (seconds is None or time.monotonic() - start < seconds):
        for i, source in enumerate(DEMO_SOURCES):
            t0 = time.perf_counter()
            threshold = view.threshold if view.threshold is not None else 0.5
            result = synthetic_result(i, frame_index, threshold)
            view.publish(source=source, frame_index=frame_index, timestamp=time.time(), decision=result.decision,
                         score=result.score, latency_ms=(time.perf_counter() - t0) * 1000, threshold=threshold,
                         overlay_rgb=result.overlay, description=result.description)
        frame_index += 1
        stop.wait(1.0 / fps)
    return frame_index
