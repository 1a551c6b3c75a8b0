"""What a result sink is: the line hands it every scored frame and every change of a source's state.

A sink's :meth:`Sink.write` runs on the line's engine thread between engine calls, so it must be quick: the
network sinks append to their on-disk spool and send from their own thread. A sink that can no longer take
results (its disk is full, its spool is over its bound) raises :class:`SinkError`; the line then stops cleanly
and reports it (a line whose results go nowhere must not keep running as if it were fine).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from fgad.runtime.line.reader import SourceEvent
    from fgad.runtime.line.results import LineResult

__all__ = ["Sink", "SinkError"]


class SinkError(Exception):
    """A sink that cannot take results any more; the message says which sink and why."""


@runtime_checkable
class Sink(Protocol):
    """The interface of a result sink (JSONL, MQTT, webhook, the live view)."""

    name: str

    def open(self) -> None:
        """Acquire files and connections; raise SinkError (or ValueError for bad settings) when it cannot."""

    def write(self, result: LineResult) -> None:
        """Take one scored frame; quick, never waits on the network; SinkError when it cannot."""

    def source_event(self, event: SourceEvent) -> None:
        """A source opened, failed, reconnected or finished (the MQTT status topic reports them)."""

    def close(self) -> None:
        """Flush what can be flushed within the sink's close timeout and release everything (idempotent)."""
