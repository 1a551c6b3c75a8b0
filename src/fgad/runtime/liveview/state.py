"""What the live view knows: per source the newest frame and its counters, the last NG frames, the threshold.

Everything here is guarded by one lock that is held only for a few dictionary and deque updates, never for
I/O or encoding, so :meth:`ViewState.publish` returns at once whatever the web clients do. Frames are kept as
arrays; a frame is JPEG-encoded at most once, on the first request for it (:class:`Frame`), by the thread of
the client that asked.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

__all__ = ["Frame", "SourceStats", "ViewState", "percentile"]

#: Latencies kept per source for the p50/p99 (a sliding window, not the whole run).
LATENCY_WINDOW = 512
#: Frames/s is counted over this many seconds of arrivals.
FPS_WINDOW_S = 5.0
#: More sources than this are not shown (their frames are counted as dropped): the view's memory stays bounded.
MAX_SOURCES = 64


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


class Frame:
    """One overlay image and its JPEG, encoded on first use and then reused by every client."""

    __slots__ = ("_encode", "_jpeg", "_lock", "image", "seq")

    def __init__(self, seq: int, image: np.ndarray, encode: Callable[[np.ndarray], bytes]) -> None:
        self.seq = seq
        self.image: np.ndarray | None = image
        self._encode = encode
        self._jpeg: bytes | None = None
        self._lock = threading.Lock()

    def jpeg(self) -> bytes:
        with self._lock:
            if self._jpeg is None:
                assert self.image is not None
                self._jpeg = self._encode(self.image)
                self.image = None  # the JPEG replaces the array
            return self._jpeg


@dataclass
class SourceStats:
    """Counters of one source since the view started."""

    name: str
    counts: dict[str, int] = field(default_factory=dict)  #: frames per decision ("OK", "NG", ...)
    frames: int = 0
    latency_sum_ms: float = 0.0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    arrivals: deque[float] = field(default_factory=lambda: deque(maxlen=4096))  #: monotonic publish times
    first_seen: float = 0.0
    last_seen: float = 0.0
    frame_index: int = -1
    timestamp: float = 0.0
    decision: str = ""
    score: float = float("nan")
    threshold: float | None = None
    description: str | None = None
    frame: Frame | None = None

    def fps(self, now: float) -> float:
        while self.arrivals and self.arrivals[0] < now - FPS_WINDOW_S:
            self.arrivals.popleft()
        span = min(FPS_WINDOW_S, now - self.first_seen)
        return len(self.arrivals) / span if span > 0 else 0.0


@dataclass(frozen=True)
class GalleryEntry:
    """One NG frame of the gallery."""

    id: int
    source: str
    frame_index: int
    timestamp: float
    score: float
    description: str | None
    frame: Frame | None


class ViewState:
    """The thread-safe store between the runtime (``publish``) and the web handlers (everything else)."""

    def __init__(self, *, threshold: float | None, gallery_size: int,
                 encode: Callable[[np.ndarray], bytes]) -> None:
        self._lock = threading.Condition(threading.Lock())
        self._encode = encode
        self._sources: dict[str, SourceStats] = {}
        self._gallery: deque[GalleryEntry] = deque(maxlen=gallery_size)
        self._seq = 0
        self._closed = False
        self.threshold = threshold
        self.dropped = 0  #: publishes of sources beyond MAX_SOURCES
        self.started = time.monotonic()
        self.started_wall = time.time()

    # ------------------------------------------------------------------ the runtime's side

    def publish(self, *, source: str, frame_index: int, timestamp: float, decision: str, score: float,
                latency_ms: float, threshold: float | None, overlay_rgb: np.ndarray | None,
                description: str | None) -> None:
        if not isinstance(source, str) or not source:
            raise ValueError(f"source must be a non-empty string, got {source!r}")
        image = None
        if overlay_rgb is not None:
            image = _checked_image(overlay_rgb)
        verdict = str(decision).upper()
        now = time.monotonic()
        with self._lock:
            stats = self._sources.get(source)
            if stats is None:
                if len(self._sources) >= MAX_SOURCES:
                    self.dropped += 1
                    return
                stats = self._sources[source] = SourceStats(name=source, first_seen=now)
            self._seq += 1
            stats.counts[verdict] = stats.counts.get(verdict, 0) + 1
            stats.frames += 1
            stats.latency_sum_ms += float(latency_ms)
            stats.latencies.append(float(latency_ms))
            stats.arrivals.append(now)
            stats.last_seen = now
            stats.frame_index = int(frame_index)
            stats.timestamp = float(timestamp)
            stats.decision = verdict
            stats.score = float(score)
            stats.threshold = None if threshold is None else float(threshold)
            stats.description = description
            frame = Frame(self._seq, image, self._encode) if image is not None else None
            if frame is not None:
                stats.frame = frame
            if verdict == "NG":
                self._gallery.append(GalleryEntry(self._seq, source, int(frame_index), float(timestamp),
                                                  float(score), description, frame))
            self._lock.notify_all()

    def set_threshold(self, value: float | None) -> None:
        with self._lock:
            self.threshold = value
            self._lock.notify_all()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify_all()

    # ------------------------------------------------------------------ the web handlers' side

    @property
    def closed(self) -> bool:
        return self._closed

    def newest_frame(self, source: str) -> Frame | None:
        with self._lock:
            stats = self._sources.get(source)
            return stats.frame if stats is not None else None

    def has_source(self, source: str) -> bool:
        with self._lock:
            return source in self._sources

    def wait_for_frame(self, source: str, after_seq: int, timeout: float) -> Frame | None:
        """The source's newest frame once it is newer than ``after_seq``; None on timeout or close."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not self._closed:
                stats = self._sources.get(source)
                if stats is not None and stats.frame is not None and stats.frame.seq > after_seq:
                    return stats.frame
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._lock.wait(remaining)
            return None

    def gallery_frame(self, entry_id: int) -> Frame | None:
        with self._lock:
            for entry in self._gallery:
                if entry.id == entry_id:
                    return entry.frame
            return None

    def snapshot(self) -> dict[str, Any]:
        """Everything the page and the endpoints show, as plain JSON-able values."""
        now = time.monotonic()
        with self._lock:
            sources = {}
            for name, s in self._sources.items():
                lat = list(s.latencies)
                sources[name] = {
                    "frames": s.frames,
                    "ok": s.counts.get("OK", 0),
                    "ng": s.counts.get("NG", 0),
                    "counts": dict(s.counts),
                    "fps": s.fps(now),
                    "latency_p50_ms": percentile(lat, 50),
                    "latency_p99_ms": percentile(lat, 99),
                    "latency_sum_ms": s.latency_sum_ms,
                    "last_frame_age_s": now - s.last_seen,
                    "frame_index": s.frame_index,
                    "timestamp": s.timestamp,
                    "decision": s.decision,
                    "score": s.score,
                    "threshold": s.threshold,
                    "description": s.description,
                    "has_frame": s.frame is not None,
                }
            gallery = [{"id": e.id, "source": e.source, "frame_index": e.frame_index, "timestamp": e.timestamp,
                        "score": e.score, "description": e.description, "has_frame": e.frame is not None}
                       for e in reversed(self._gallery)]
            return {"threshold": self.threshold, "uptime_s": now - self.started, "sources": sources,
                    "gallery": gallery, "dropped": self.dropped}

    def retained_images(self) -> int:
        """How many frames (array or JPEG) the state holds: at most one per source plus the gallery."""
        with self._lock:
            frames = {id(s.frame): s.frame for s in self._sources.values() if s.frame is not None}
            frames.update({id(e.frame): e.frame for e in self._gallery if e.frame is not None})
            return len(frames)


def _checked_image(overlay: Any) -> np.ndarray:
    import numpy as np

    arr = np.asarray(overlay)
    if arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (1, 3))) or arr.size == 0:
        raise ValueError(f"overlay_rgb must be a uint8 [H, W, 3] RGB (or [H, W] gray) image, "
                         f"got dtype {arr.dtype} shape {arr.shape}")
    return arr.copy()  # the caller may reuse its buffer for the next frame
