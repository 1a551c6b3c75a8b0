"""What travels from a source's reader thread to the engine, and the bounded queue it travels in."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["FrameQueue", "LineFrame"]


@dataclass(frozen=True)
class LineFrame:
    """One frame read and prepared by its source's thread.

    ``index`` counts the frames this source delivered in this line (0, 1, ...; it goes on across reconnects,
    so ``(source, index)`` is unique); ``frame_id`` is what the source calls it (a file path, a frame number).
    ``captured_at`` is wall-clock time (``time.time()``), ``captured_perf`` the same moment on the monotonic clock
    (latencies are measured on it). ``model_input`` is the frame resized to the model's input size (the expensive
    part of preprocessing, done on the source's thread); ``rgb`` the frame as read, for overlays.
    """

    source: str
    index: int
    frame_id: Any
    captured_at: float
    captured_perf: float
    rgb: np.ndarray
    model_input: np.ndarray


class FrameQueue:
    """A bounded FIFO with the drop policy of its source.

    ``newest_wins`` (live sources): a put into a full queue drops the oldest frame (counted in ``dropped``), so
    the detector always sees what the camera shows now. Otherwise (files): a put waits for room, nothing is
    dropped. :meth:`close` wakes every waiter; ``wakeup`` is set on every put and close.
    """

    def __init__(self, maxsize: int, newest_wins: bool, wakeup: threading.Event | None = None) -> None:
        if maxsize < 1:
            raise ValueError(f"queue size must be at least 1, got {maxsize}")
        self.maxsize = maxsize
        self.newest_wins = newest_wins
        self.dropped = 0
        self._items: deque[LineFrame] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._wakeup = wakeup  # set on every put (and on close): the engine waits on it, shared by all queues

    def put(self, item: LineFrame, stop: threading.Event) -> bool:
        """Queue ``item``; False when the queue was closed or ``stop`` was set before there was room."""
        with self._cond:
            if self.newest_wins:
                if self._closed:
                    return False
                if len(self._items) >= self.maxsize:
                    self._items.popleft()
                    self.dropped += 1
            else:
                while len(self._items) >= self.maxsize and not self._closed and not stop.is_set():
                    self._cond.wait(0.05)
                if self._closed or stop.is_set():
                    return False
            self._items.append(item)
            self._cond.notify_all()
        if self._wakeup is not None:
            self._wakeup.set()
        return True

    def get_nowait(self) -> LineFrame | None:
        with self._cond:
            if not self._items:
                return None
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._wakeup is not None:
            self._wakeup.set()
