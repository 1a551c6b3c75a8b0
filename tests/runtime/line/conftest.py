"""Fixtures of the line tests: fake frame sources that die on cue, and a thread-leak check."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from fgad.runtime.line import SourceSpec
from fgad.runtime.sources import FrameSource, SourceError


class DyingSource(FrameSource):
    """``frames`` frames of a flat colour, then a SourceError (``die``) or a plain end; ``delay_s`` per frame."""

    def __init__(self, frames: int, die: bool, delay_s: float = 0.0, value: int = 100) -> None:
        super().__init__()
        self.n, self.die, self.delay_s, self.value = frames, die, delay_s, value
        self.description = "fake camera"

    def _generate(self) -> Iterator[tuple[int, np.ndarray]]:
        for i in range(self.n):
            if self.delay_s:
                time.sleep(self.delay_s)
            yield i, np.full((40, 48, 3), self.value, dtype=np.uint8)
        if self.die:
            raise SourceError("fake camera unplugged")


class ScriptedOpener:
    """Opens source ``i`` of a script per call: a FrameSource factory, or an exception to raise."""

    def __init__(self, script: list[object]) -> None:
        self.script = list(script)
        self.calls = 0

    def __call__(self, spec: SourceSpec) -> FrameSource:
        step = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        if isinstance(step, BaseException):
            raise step
        assert callable(step)
        return step()


@pytest.fixture()
def no_thread_leak() -> Iterator[None]:
    """Fails the test when it leaves a thread behind that was not there before (after a short grace)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        extra = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not extra:
            return
        time.sleep(0.02)
    pytest.fail(f"threads left running: {[t.name for t in extra]}")
