"""The thread that empties a :class:`~fgad.runtime.sinks.spool.Spool` in order through a network sink.

:meth:`Deliverer.deliver` of the sink gets one message at a time, oldest first, and answers ``True``
(delivered, or refused for good and logged: next message) or ``False`` (not now: the same message is tried
again after the reconnect delay). A message is taken off the spool only after ``True``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from fgad.runtime.line.backoff import Backoff
from fgad.runtime.sinks.spool import Spool

__all__ = ["SpoolDrainer"]

logger = logging.getLogger(__name__)


class SpoolDrainer:
    """Runs ``deliver`` over the spool on a daemon thread until :meth:`stop`."""

    def __init__(self, name: str, spool: Spool, deliver: Callable[[bytes], bool], backoff: Backoff) -> None:
        self.name = name
        self.spool = spool
        self._deliver = deliver
        self._backoff = backoff
        self._stop = threading.Event()
        self.delivered = 0
        self.retries = 0
        self._thread = threading.Thread(target=self._run, name=f"fgad-sink-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            items = self.spool.peek()
            if not items:
                with self.spool.has_data:
                    if not self.spool.pending_bytes and not self._stop.is_set():
                        self.spool.has_data.wait(0.2)
                continue
            for end, message in items:
                if self._stop.is_set():
                    return
                try:
                    ok = self._deliver(message)
                except Exception as exc:  # a bug or an unexpected client error: keep the message, retry
                    logger.warning("%s: delivery failed (%s); retrying", self.name, exc)
                    ok = False
                if not ok:
                    self.retries += 1
                    delay = self._backoff.delay(attempt)
                    attempt += 1
                    self._stop.wait(delay)
                    break
                attempt = 0
                self.spool.ack(end)
                self.delivered += 1

    def drain(self, timeout_s: float) -> bool:
        """Wait until the spool is empty or ``timeout_s`` passed; True when empty."""
        import time

        deadline = time.monotonic() + timeout_s
        while self.spool.pending_bytes and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.02)
        return not self.spool.pending_bytes

    def stop(self) -> None:
        self._stop.set()
        with self.spool.has_data:
            self.spool.has_data.notify_all()
        if self._thread.ident is not None:
            self._thread.join(10.0)
