"""Prometheus text exposition format (version 0.0.4) of a :meth:`ViewState.snapshot`."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["CONTENT_TYPE", "render_metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float | int | None) -> str:
    if value is None:
        return "NaN"
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value) if not value.is_integer() else str(int(value))


class _Family:
    def __init__(self, name: str, kind: str, help_text: str) -> None:
        self.lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        self.name = name

    def sample(self, value: float | int | None, suffix: str = "", **labels: str) -> None:
        text = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
        self.lines.append(f"{self.name}{suffix}{{{text}}} {_number(value)}" if text
                          else f"{self.name}{suffix} {_number(value)}")


def render_metrics(snap: dict[str, Any], stream_clients: int, jpeg_encodes: int) -> str:
    """Counters and gauges per source, with ``# HELP``/``# TYPE`` before each family."""
    sources: dict[str, dict[str, Any]] = snap["sources"]
    frames = _Family("fgad_frames_total", "counter", "Frames published to the live view, by source and decision.")
    latency = _Family("fgad_latency_ms", "summary",
                      "Per-frame latency in milliseconds (quantiles over the last frames; sum and count of the run).")
    fps = _Family("fgad_fps", "gauge", "Frames per second of a source over the last seconds.")
    score = _Family("fgad_last_score", "gauge", "Anomaly score of a source's newest frame.")
    ng = _Family("fgad_last_decision_ng", "gauge", "1 when a source's newest frame was NG, else 0.")
    age = _Family("fgad_last_frame_age_seconds", "gauge", "Seconds since a source's newest frame was published.")
    index = _Family("fgad_last_frame_index", "gauge", "Frame index of a source's newest frame.")
    for name, s in sources.items():
        for decision, count in sorted(s["counts"].items()):
            frames.sample(count, source=name, decision=decision)
        latency.sample(s["latency_p50_ms"], source=name, quantile="0.5")
        latency.sample(s["latency_p99_ms"], source=name, quantile="0.99")
        latency.sample(s["latency_sum_ms"], "_sum", source=name)
        latency.sample(s["frames"], "_count", source=name)
        fps.sample(s["fps"], source=name)
        score.sample(s["score"], source=name)
        ng.sample(1 if s["decision"] == "NG" else 0, source=name)
        age.sample(s["last_frame_age_s"], source=name)
        index.sample(s["frame_index"], source=name)
    threshold = _Family("fgad_threshold", "gauge", "Decision threshold the runtime applies (NaN when unknown).")
    threshold.sample(snap["threshold"])
    uptime = _Family("fgad_liveview_uptime_seconds", "gauge", "Seconds since the live view started.")
    uptime.sample(snap["uptime_s"])
    clients = _Family("fgad_liveview_stream_clients", "gauge", "MJPEG streams being served now.")
    clients.sample(stream_clients)
    encodes = _Family("fgad_liveview_jpeg_encodes_total", "counter", "Frames JPEG-encoded for the browser.")
    encodes.sample(jpeg_encodes)
    dropped = _Family("fgad_liveview_dropped_total", "counter",
                      "Frames not shown because their source was beyond the live view's source limit.")
    dropped.sample(snap["dropped"])
    families = (frames, latency, fps, score, ng, age, index, threshold, uptime, clients, encodes, dropped)
    return "\n".join(line for f in families for line in f.lines) + "\n"
