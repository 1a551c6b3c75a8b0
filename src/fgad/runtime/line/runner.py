"""The :class:`Line`: many sources, one detector, batched engine calls, results to sinks.

::

    from fgad.runtime import Detector, Line
    from fgad.runtime.sinks import JsonlSink, MqttSink

    detector = Detector.from_bundle("bundle/")
    with Line(detector, ["cam0=0", "st2=rtsp://10.0.0.5/s1"], sinks=[MqttSink("127.0.0.1")]) as line:
        summary = line.run()        # until every file source has ended, stop() or Ctrl-C

Threads: one reader per source (open, decode, resize to the model's input; :mod:`fgad.runtime.line.reader`);
the engine runs on the thread that calls :meth:`Line.run`. Each engine call takes up to ``max_batch`` frames
from all queues (:mod:`fgad.runtime.line.batching`), and each result goes to every sink in frame order per
source. :meth:`Line.stop` (any thread, a signal handler) ends the run after the current batch; a sink raising
:class:`~fgad.runtime.sinks.base.SinkError` stops the line too, and :meth:`Line.run` raises :class:`LineError`
after every thread has been joined.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from fgad.core.transforms import resize_image
from fgad.runtime.line.backoff import Backoff
from fgad.runtime.line.batching import BatchCollector, engine_max_batch
from fgad.runtime.line.opening import open_spec
from fgad.runtime.line.reader import Opener, SourceEvent, SourceReader
from fgad.runtime.line.results import LineResult
from fgad.runtime.line.specs import SourceSpec, parse_source
from fgad.runtime.sinks.base import Sink, SinkError

if TYPE_CHECKING:
    from fgad.runtime.pipeline import Detector

__all__ = ["Line", "LineError", "LineSettings", "LineSummary", "SourceSummary"]

logger = logging.getLogger(__name__)

#: engine batch when the engine states no limit (a dynamic ONNX batch); Detector.batch's default too
DEFAULT_MAX_BATCH = 8


class LineError(Exception):
    """The line stopped because a sink failed; the message names the sink and the reason."""


@dataclass(frozen=True)
class LineSettings:
    """How a line batches, queues and reconnects.

    Args:
        max_batch: frames per engine call, at most the engine's limit (None: that limit, or 8 when the engine
            states none). 1 scores frame by frame.
        queue_size: frames waiting per source; a live source drops its oldest beyond it, a file source waits.
        fill_wait_ms: how long a batch may wait to fill once it has one frame (0: never wait).
        backoff: reconnect delays of a dying source.
        max_frames: stop after this many frames in all (None: no limit).
        join_timeout_s: how long stopping waits for each reader thread.
    """

    max_batch: int | None = None
    queue_size: int = 4
    fill_wait_ms: float = 0.0
    backoff: Backoff = field(default_factory=Backoff)
    max_frames: int | None = None
    join_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if self.max_batch is not None and self.max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {self.max_batch}")
        if self.queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, got {self.queue_size}")
        if self.fill_wait_ms < 0:
            raise ValueError(f"fill_wait_ms must be >= 0, got {self.fill_wait_ms}")


@dataclass(frozen=True)
class SourceSummary:
    name: str
    frames: int
    scored: int
    anomalous: int
    dropped: int
    reconnects: int
    failures: int
    state: str


@dataclass(frozen=True)
class LineSummary:
    """What a run did: per source and in all; latencies in ms from read to result."""

    sources: tuple[SourceSummary, ...]
    frames: int
    anomalous: int
    batches: int
    elapsed_s: float
    latency_p50_ms: float
    latency_p99_ms: float
    stopped_by: str  # "end" (all file sources ended), "max_frames", "stop", "sink"

    @property
    def fps(self) -> float:
        return self.frames / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def mean_batch(self) -> float:
        return self.frames / self.batches if self.batches else 0.0

    def line(self) -> str:
        """One line for the log."""
        per = ", ".join(f"{s.name} {s.scored} ({s.anomalous} NG, {s.dropped} dropped, {s.reconnects} reconnects)"
                        for s in self.sources)
        return (f"{self.frames} frames, {self.anomalous} NG in {self.elapsed_s:.1f}s ({self.fps:.1f} FPS, "
                f"batch {self.mean_batch:.1f}, latency p50 {self.latency_p50_ms:.1f} ms p99 "
                f"{self.latency_p99_ms:.1f} ms): {per}")


class _Latencies:
    """The last ``keep`` latencies (a bounded ring; the percentiles of a long run are those of its recent past)."""

    def __init__(self, keep: int = 100_000) -> None:
        self.values = np.zeros(keep, dtype=np.float64)
        self.count = 0

    def add(self, value: float) -> None:
        self.values[self.count % self.values.size] = value
        self.count += 1

    def percentile(self, q: float) -> float:
        n = min(self.count, self.values.size)
        return float(np.percentile(self.values[:n], q)) if n else math.nan


class Line:
    """Sources, batching and sinks around one :class:`~fgad.runtime.pipeline.Detector` (see the module docstring).

    Args:
        detector: the detector (its threshold may be changed while the line runs: :meth:`set_threshold`).
        sources: :class:`SourceSpec` or ``"NAME=SPEC"`` strings; names must be unique.
        sinks: where results go, in this order; opened by :meth:`run` (or ``with``), closed at its end.
        settings: batching, queues, reconnects.
        opener: how a spec becomes a frame source (tests pass fakes; default :func:`open_spec`).
        on_result: called on the engine thread with every result after the sinks (an embedding application's hook).
    """

    def __init__(
        self,
        detector: Detector,
        sources: Sequence[SourceSpec | str],
        sinks: Sequence[Sink] = (),
        settings: LineSettings | None = None,
        *,
        opener: Opener = open_spec,
        on_result: Callable[[LineResult], None] | None = None,
    ) -> None:
        specs = [parse_source(s) if isinstance(s, str) else s for s in sources]
        if not specs:
            raise ValueError("a line needs at least one source")
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must be unique, got {', '.join(names)}")
        self.detector = detector
        self.specs = specs
        self.sinks = list(sinks)
        self.settings = settings or LineSettings()
        self.run_id = uuid.uuid4().hex[:12]
        limit = engine_max_batch(detector.backend, DEFAULT_MAX_BATCH)
        wanted = self.settings.max_batch or limit
        if wanted > limit:
            logger.warning("max batch %d is more than the engine takes; using %d", wanted, limit)
        self.max_batch = min(wanted, limit)
        self._opener = opener
        self._on_result = on_result
        self._stop = threading.Event()
        self._wakeup = threading.Event()
        self._events: queue.SimpleQueue[SourceEvent] = queue.SimpleQueue()
        self._pending_threshold: float | None = None
        self._threshold_lock = threading.Lock()
        self._readers: list[SourceReader] = []
        self._running = False
        self._sinks_open: list[Sink] = []
        self.events: list[SourceEvent] = []  # every event of the run, in order (bounded below)

    # ------------------------------------------------------------------ control (any thread)

    def stop(self) -> None:
        """End the run after the current batch (thread-safe; a signal handler may call it)."""
        self._stop.set()
        self._wakeup.set()

    def set_threshold(self, value: float) -> None:
        """A new decision threshold, applied before the next engine call (thread-safe)."""
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"threshold must be finite, got {value!r}")
        with self._threshold_lock:
            self._pending_threshold = value

    @property
    def threshold(self) -> float | None:
        with self._threshold_lock:
            pending = self._pending_threshold
        return pending if pending is not None else self.detector.threshold

    # ------------------------------------------------------------------ the run

    def __enter__(self) -> Line:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _prepare(self, rgb: np.ndarray) -> np.ndarray:
        return resize_image(rgb, self.detector.size)

    def _on_event(self, event: SourceEvent) -> None:
        self._events.put(event)
        self._wakeup.set()

    def _open_sinks(self) -> None:
        for sink in self.sinks:
            try:
                sink.open()
            except Exception:
                self._close_sinks()
                raise
            self._sinks_open.append(sink)

    def _close_sinks(self) -> None:
        while self._sinks_open:
            sink = self._sinks_open.pop()
            try:
                sink.close()
            except Exception as exc:  # one sink failing to close must not keep the others open
                logger.warning("closing %s: %s", getattr(sink, "name", sink), exc)

    def _drain_events(self) -> None:
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return
            if len(self.events) < 10_000:
                self.events.append(event)
            level = logging.WARNING if event.state in ("failed", "reconnecting") else logging.INFO
            logger.log(level, "source %s %s%s", event.source, event.state, f": {event.detail}" if event.detail else "")
            for sink in self._sinks_open:
                sink.source_event(event)

    def _apply_threshold(self) -> None:
        with self._threshold_lock:
            value, self._pending_threshold = self._pending_threshold, None
        if value is not None:
            self.detector.set_threshold(value)
            logger.info("threshold set to %.4f", value)

    def run(self) -> LineSummary:
        """Start the sources, score until the end, stop everything; the summary of the run.

        Ends when every source has finished (file sources at their end; live sources never finish by
        themselves), after ``max_frames``, on :meth:`stop`, on ``KeyboardInterrupt`` (re-raised after the
        cleanup), or when a sink fails (:class:`LineError`, after the cleanup).
        """
        if self._running:
            raise RuntimeError("this line is already running")
        self._running = True
        self._stop.clear()
        self._open_sinks()
        self._readers = [
            SourceReader(spec, opener=self._opener, prepare=self._prepare, queue_size=self.settings.queue_size,
                         backoff=self.settings.backoff, on_event=self._on_event)
            for spec in self.specs
        ]
        by_name = {r.name: r for r in self._readers}
        scored = {r.name: 0 for r in self._readers}
        anomalous = {r.name: 0 for r in self._readers}
        collector = BatchCollector([r.queue for r in self._readers], self.max_batch, self._wakeup,
                                   fill_wait_s=self.settings.fill_wait_ms / 1000.0)
        latencies = _Latencies()
        frames = batches = 0
        stopped_by = "stop"
        failure: SinkError | None = None
        started = time.perf_counter()
        try:
            for reader in self._readers:
                reader.start()
            while not self._stop.is_set():
                self._drain_events()
                batch = collector.next_batch(0.2, self._stop)
                if not batch:
                    if all(r.finished for r in self._readers) and not any(len(r.queue) for r in self._readers):
                        self._drain_events()
                        stopped_by = "end"
                        break
                    continue
                if self.settings.max_frames is not None:
                    batch = batch[: self.settings.max_frames - frames]
                self._apply_threshold()
                results = self.detector.batch([f.model_input for f in batch], batch_size=len(batch))
                done_at, done_perf = time.time(), time.perf_counter()
                batches += 1
                for frame, result in zip(batch, results, strict=True):
                    latency = 1000.0 * (done_perf - frame.captured_perf)
                    item = LineResult(self.run_id, frame.source, frame.index, frame.frame_id, frame.captured_at,
                                      done_at, latency, len(batch), result, frame.rgb)
                    for sink in self._sinks_open:
                        sink.write(item)
                    if self._on_result is not None:
                        self._on_result(item)
                    latencies.add(latency)
                    frames += 1
                    scored[frame.source] += 1
                    anomalous[frame.source] += bool(result.is_anomalous)
                if self.settings.max_frames is not None and frames >= self.settings.max_frames:
                    stopped_by = "max_frames"
                    break
        except SinkError as exc:
            failure = exc
            stopped_by = "sink"
        finally:
            self._shutdown()
            self._drain_events()
            self._close_sinks()
            self._running = False
        elapsed = time.perf_counter() - started
        summary = LineSummary(
            sources=tuple(SourceSummary(name, by_name[name].frames, scored[name], anomalous[name],
                                        by_name[name].queue.dropped, by_name[name].reconnects,
                                        by_name[name].failures, by_name[name].state) for name in by_name),
            frames=frames, anomalous=sum(anomalous.values()), batches=batches, elapsed_s=elapsed,
            latency_p50_ms=latencies.percentile(50), latency_p99_ms=latencies.percentile(99), stopped_by=stopped_by,
        )
        self.summary = summary
        if failure is not None:
            raise LineError(f"stopped: {failure}; {summary.line()}") from failure
        return summary

    def _shutdown(self) -> None:
        self._stop.set()
        for reader in self._readers:
            reader.stop()
        for reader in self._readers:
            if not reader.join(self.settings.join_timeout_s):
                logger.warning("source %s: its reader did not stop within %.0fs (a blocking read); it is left "
                               "as a daemon thread", reader.name, self.settings.join_timeout_s)
