"""Gathering one engine batch from the queues of all sources.

Round robin, one frame per source per turn, starting after the source that led the previous batch, until the
batch is full or the queues are empty: a busy source cannot starve a quiet one, and no frame waits for a batch
to fill (``fill_wait_s`` > 0 trades latency for fuller batches when the sources are slower than the engine).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from fgad.runtime.line.frames import FrameQueue, LineFrame

__all__ = ["BatchCollector", "engine_max_batch"]


def engine_max_batch(backend: object, default: int) -> int:
    """The largest batch the engine takes: a TensorRT engine's profile maximum, a fixed ONNX batch dimension,
    else ``default``."""
    limit = getattr(backend, "max_batch", None)
    if isinstance(limit, int) and limit > 0:
        return limit
    shapes = getattr(backend, "input_shapes", None)
    name = getattr(backend, "input_name", None)
    if isinstance(shapes, dict) and name in shapes and shapes[name] and isinstance(shapes[name][0], int):
        return max(1, int(shapes[name][0]))
    return default


class BatchCollector:
    """Takes up to ``max_batch`` frames from ``queues`` (see the module docstring)."""

    def __init__(self, queues: Sequence[FrameQueue], max_batch: int, wakeup: threading.Event,
                 fill_wait_s: float = 0.0) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.queues = list(queues)
        self.max_batch = max_batch
        self.fill_wait_s = fill_wait_s
        self.wakeup = wakeup  # the queues set it on every put
        self._start = 0

    def _take(self, batch: list[LineFrame]) -> None:
        n = len(self.queues)
        progress = True
        while len(batch) < self.max_batch and progress:
            progress = False
            for k in range(n):
                if len(batch) >= self.max_batch:
                    break
                item = self.queues[(self._start + k) % n].get_nowait()
                if item is not None:
                    batch.append(item)
                    progress = True
        self._start = (self._start + 1) % max(n, 1)

    def next_batch(self, timeout_s: float, stop: threading.Event) -> list[LineFrame]:
        """A batch, or [] when no frame arrived within ``timeout_s`` (or ``stop`` was set)."""
        deadline = time.perf_counter() + timeout_s
        batch: list[LineFrame] = []
        while not stop.is_set():
            self.wakeup.clear()  # before looking: a put after this sets it again, so no wake-up is lost
            self._take(batch)
            if batch:
                break
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return batch
            self.wakeup.wait(remaining)
        if batch and self.fill_wait_s > 0:
            fill_deadline = time.perf_counter() + self.fill_wait_s
            while len(batch) < self.max_batch and not stop.is_set():
                remaining = fill_deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self.wakeup.clear()
                self._take(batch)
                if len(batch) < self.max_batch:
                    self.wakeup.wait(remaining)
        return batch
