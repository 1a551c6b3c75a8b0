"""An on-disk FIFO of messages waiting for delivery: what keeps results while a broker or server is down.

Layout (one folder per sink): ``spool.jsonl``, one message per line, appended with ``os.write`` (every message
is in the file before :meth:`Spool.append` returns: a crash of the process loses none that were appended; a
power cut can lose what the kernel had not written to the disk yet, a few seconds at most, as no ``fsync`` is
paid per frame), and ``spool.offset``,
the byte offset of the first message not yet delivered, written atomically (temporary file, rename) at most
every ``commit_interval_s`` and on close. After a crash the messages delivered since the last offset commit are
delivered again; consumers deduplicate on the payload's ``message_id`` (at-least-once, in order).

Bounded: when the messages waiting reach ``max_bytes``, :meth:`Spool.append` raises :class:`SpoolFullError`
(a :class:`~fgad.runtime.sinks.base.SinkError`: the line stops, saying so) instead of filling the disk. The file
is cut back when everything is delivered, and rewritten without its delivered head once that head passes
``compact_bytes``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from fgad.core.atomic import atomic_write_text
from fgad.runtime.sinks.base import SinkError

__all__ = ["Spool", "SpoolFullError"]

logger = logging.getLogger(__name__)

DATA = "spool.jsonl"
OFFSET = "spool.offset"


class SpoolFullError(SinkError):
    """The spool holds ``max_bytes`` of undelivered messages: the outage lasted longer than it was sized for."""


class Spool:
    """A FIFO of byte lines (no newline inside) in ``folder``; thread-safe (one appender, one deliverer)."""

    def __init__(self, folder: str | os.PathLike[str], *, max_bytes: int = 256 * 2**20,
                 commit_interval_s: float = 0.5, compact_bytes: int = 8 * 2**20) -> None:
        if max_bytes < 1024:
            raise ValueError(f"spool max_bytes must be at least 1024, got {max_bytes}")
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self.commit_interval_s = commit_interval_s
        self.compact_bytes = compact_bytes
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.has_data = threading.Condition(self._lock)
        self._fd = os.open(self.folder / DATA, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        self._size = os.fstat(self._fd).st_size
        self._offset = self._read_offset()
        self._committed = self._offset
        self._last_commit = time.monotonic()
        self._cut_torn_tail()
        if self.pending_bytes:
            logger.info("spool %s: %d bytes of messages from an earlier run wait for delivery", self.folder,
                        self.pending_bytes)

    def _read_offset(self) -> int:
        try:
            text = (self.folder / OFFSET).read_text().strip()
            value = int(text)
        except FileNotFoundError:
            return 0
        except ValueError:
            logger.warning("spool %s: unreadable offset file; delivering every message in it again", self.folder)
            return 0
        return value if 0 <= value <= self._size else 0  # beyond the end: the file was cut after a commit

    def _cut_torn_tail(self) -> None:
        """Drop a last line without its newline (a crash in the middle of an append)."""
        if self._size == 0:
            return
        back = min(self._size, 1 << 20)
        tail = os.pread(self._fd, back, self._size - back)
        if tail.endswith(b"\n"):
            return
        cut = tail.rfind(b"\n")
        new_size = self._size - back + cut + 1 if cut >= 0 else self._size - back
        os.ftruncate(self._fd, new_size)
        logger.warning("spool %s: dropped a torn last line (%d bytes)", self.folder, self._size - new_size)
        self._size = new_size
        self._offset = min(self._offset, new_size)

    @property
    def pending_bytes(self) -> int:
        return self._size - self._offset

    def append(self, line: bytes) -> None:
        """Add one message at the end; SpoolFullError when the spool is at its bound."""
        if b"\n" in line:
            raise ValueError("a spooled message may not contain a newline")
        data = line + b"\n"
        with self._lock:
            if self._fd < 0:
                raise SinkError(f"spool {self.folder} is closed")
            if self._size - self._offset + len(data) > self.max_bytes:
                raise SpoolFullError(
                    f"spool {self.folder} holds {self._size - self._offset} bytes of undelivered messages, its "
                    f"bound ({self.max_bytes}); the receiver has been unreachable too long (raise the bound with "
                    "--spool-max-mb, or fix the connection)")
            written = 0
            try:
                while written < len(data):
                    written += os.write(self._fd, data[written:])
            except OSError as exc:
                os.ftruncate(self._fd, self._size)  # never leave half a message
                raise SinkError(f"spool {self.folder}: cannot write ({exc.strerror or exc})") from exc
            self._size += len(data)
            self.has_data.notify_all()

    def peek(self, max_items: int = 64, max_bytes: int = 4 * 2**20) -> list[tuple[int, bytes]]:
        """Up to ``max_items`` waiting messages from the oldest, each with the offset just past it."""
        with self._lock:
            if self._fd < 0 or self._offset >= self._size:
                return []
            start = self._offset
            data = os.pread(self._fd, min(max_bytes, self._size - start), start)
        items: list[tuple[int, bytes]] = []
        pos = 0
        while len(items) < max_items:
            end = data.find(b"\n", pos)
            if end < 0:
                break
            items.append((start + end + 1, data[pos:end]))
            pos = end + 1
        if not items and data:  # one message longer than max_bytes
            return self.peek(max_items, max_bytes * 2)
        return items

    def ack(self, end_offset: int) -> None:
        """Every message before ``end_offset`` (a value from :meth:`peek`) is delivered."""
        with self._lock:
            if end_offset <= self._offset:
                return
            self._offset = min(end_offset, self._size)
            if self._offset == self._size:
                os.ftruncate(self._fd, 0)  # all delivered: start the file again
                self._size = self._offset = 0
                self._commit()
            elif self._offset >= self.compact_bytes:
                self._compact()
            elif time.monotonic() - self._last_commit >= self.commit_interval_s:
                self._commit()

    def _commit(self) -> None:
        if self._offset != self._committed:
            atomic_write_text(self.folder / OFFSET, f"{self._offset}\n")
            self._committed = self._offset
        self._last_commit = time.monotonic()

    def _compact(self) -> None:
        """Rewrite the file without its delivered head (under the lock)."""
        rest = os.pread(self._fd, self._size - self._offset, self._offset)
        tmp = self.folder / (DATA + ".tmp")
        tmp.write_bytes(rest)
        # offset 0 first: a crash before the rename then delivers the old head again (duplicates, never a loss)
        atomic_write_text(self.folder / OFFSET, "0\n")
        os.replace(tmp, self.folder / DATA)
        os.close(self._fd)
        self._fd = os.open(self.folder / DATA, os.O_RDWR | os.O_APPEND)
        self._size, self._offset, self._committed = len(rest), 0, 0
        self._last_commit = time.monotonic()

    def close(self) -> None:
        """Commit the offset and close the file (idempotent); what was not delivered stays for the next run."""
        with self._lock:
            if self._fd < 0:
                return
            self._commit()
            os.close(self._fd)
            self._fd = -1
            self.has_data.notify_all()
