"""One thread per source: open it, read and prepare frames into its bounded queue, reopen it when it dies.

Life of a source (each step is reported as a :class:`SourceEvent`):

* ``opened``: frames flow;
* ``failed``: it could not be opened, or it raised while delivering (camera unplugged, RTSP dropped);
* ``ended``: it stopped delivering without an error (a stream that closed, a file at its end);
* ``reconnecting``: a live source (or a looping file) is reopened after ``Backoff.delay(attempt)`` seconds;
  the attempt count goes back to 0 once it delivers frames again;
* ``finished``: a file source read to its end (not live, not looping), or the reader was stopped.

A failing source never stops the others; the reader gives up only when it is stopped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fgad.runtime.line.backoff import Backoff
from fgad.runtime.line.frames import FrameQueue, LineFrame
from fgad.runtime.line.specs import SourceSpec
from fgad.runtime.sources import FrameSource

__all__ = ["SourceEvent", "SourceReader"]

logger = logging.getLogger(__name__)

Opener = Callable[[SourceSpec], FrameSource]
Prepare = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class SourceEvent:
    """A change in a source's state: ``state`` is opened, failed, ended, reconnecting or finished."""

    source: str
    state: str
    detail: str = ""
    at: float = 0.0  # time.time()


class SourceReader:
    """Reads ``spec`` on its own daemon thread into :attr:`queue`; :meth:`stop` ends it (joined by :meth:`join`)."""

    def __init__(
        self,
        spec: SourceSpec,
        *,
        opener: Opener,
        prepare: Prepare,
        queue_size: int,
        backoff: Backoff,
        on_event: Callable[[SourceEvent], None],
    ) -> None:
        self.spec = spec
        self.queue = FrameQueue(queue_size, newest_wins=spec.is_live)
        self.frames = 0
        self.reconnects = 0
        self.failures = 0
        self.state = "starting"
        self._opener = opener
        self._prepare = prepare
        self._backoff = backoff
        self._on_event = on_event
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"fgad-source-{spec.name}", daemon=True)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def finished(self) -> bool:
        """The reader thread has ended (read to the end, or stopped)."""
        return not self._thread.is_alive() and self.state == "finished"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.queue.close()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread; True when it has ended."""
        if self._thread.ident is not None:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def _emit(self, state: str, detail: str = "") -> None:
        self.state = state
        self._on_event(SourceEvent(self.spec.name, state, detail, time.time()))

    def _run(self) -> None:
        attempt = 0
        try:
            while not self._stop.is_set():
                delivered, problem = self._read_once()
                if self._stop.is_set():
                    break
                if delivered:
                    attempt = 0
                if problem is not None:
                    self.failures += 1
                    self._emit("failed", problem)
                else:
                    self._emit("ended", f"{delivered} frames")
                if not (self.spec.is_live or self.spec.loop) or (problem is None and delivered == 0
                                                                and not self.spec.is_live):
                    break  # a file at its end (or a looping file with nothing in it): done
                delay = self._backoff.delay(attempt) if (self.spec.is_live or problem is not None) else 0.0
                attempt += 1
                self.reconnects += 1
                self._emit("reconnecting", f"attempt {attempt} in {delay:.1f}s")
                if self._stop.wait(delay):
                    break
        except Exception as exc:  # a bug in preparing frames must be seen, not kill the thread silently
            logger.exception("source %s: reader crashed", self.spec.name)
            self._emit("failed", f"reader crashed: {exc}")
        finally:
            self.queue.close()
            self._emit("finished")

    def _read_once(self) -> tuple[int, str | None]:
        """Open the source and read it until it ends; (frames delivered, why it failed or None)."""
        from fgad.core.io import ImageReadError
        from fgad.runtime.sources import SourceError

        delivered = 0
        try:
            source = self._opener(self.spec)
        except (SourceError, ImageReadError, OSError, ValueError) as exc:
            return 0, str(exc)
        self._emit("opened", getattr(source, "description", self.spec.target))
        try:
            with source:
                for frame_id, rgb in source:
                    if self._stop.is_set():
                        break
                    captured_at, captured_perf = time.time(), time.perf_counter()
                    item = LineFrame(self.spec.name, self.frames, frame_id, captured_at, captured_perf, rgb,
                                     self._prepare(rgb))
                    if not self.queue.put(item, self._stop):
                        break
                    self.frames += 1
                    delivered += 1
        except (SourceError, ImageReadError, OSError) as exc:
            return delivered, str(exc)
        return delivered, None
