"""``python -m fgad.runtime.liveview --bench``: what ``LiveView.publish`` costs the line, unwatched and watched."""

from __future__ import annotations

import http.client
import statistics
import time
from urllib.parse import urlsplit

import numpy as np

from .server import LiveView
from .settings import ViewSettings

SIZES = ((240, 320), (480, 640), (720, 1280))


def _median_publish_us(view: LiveView, image: np.ndarray | None, calls: int) -> float:
    times = []
    for i in range(calls):
        t0 = time.perf_counter()
        view.publish(source="cam0", frame_index=i, timestamp=0.0, decision="OK", score=0.1, latency_ms=1.0,
                     threshold=0.5, overlay_rgb=image)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def run_bench(calls: int = 400) -> list[dict[str, float | str]]:
    """Median microseconds per publish for each overlay size: no client, one MJPEG client, no overlay."""
    rows: list[dict[str, float | str]] = []
    for height, width in SIZES:
        image = np.random.default_rng(0).integers(0, 255, (height, width, 3), np.uint8)
        with LiveView(ViewSettings(port=0), threshold=0.5) as view:
            unwatched = _median_publish_us(view, image, calls)
            assert view.url is not None
            url = urlsplit(view.url)
            conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=10)
            conn.request("GET", "/stream?source=cam0")
            response = conn.getresponse()
            response.fp.readline()  # the stream is open: a client is watching from here on
            watched = _median_publish_us(view, image, calls)
            response.close()
            conn.close()
            no_overlay = _median_publish_us(view, None, calls)
        rows.append({"overlay": f"{width}x{height}", "unwatched_us": unwatched, "watched_us": watched,
                     "no_overlay_us": no_overlay})
    return rows
