"""The JSONL sink: one JSON line per frame, appended whole (``fgad.core.outputs.LineWriter``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from fgad.core.atomic import nan_to_none
from fgad.runtime.sinks.base import SinkError

if TYPE_CHECKING:
    from fgad.core.outputs import LineWriter
    from fgad.runtime.line.reader import SourceEvent
    from fgad.runtime.line.results import LineResult

__all__ = ["JsonlSink"]


class JsonlSink:
    """Appends :meth:`LineResult.to_record` of every frame to ``path`` (a full disk stops the line)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.name = f"jsonl {self.path}"
        self._writer: LineWriter | None = None

    @property
    def lines(self) -> int:
        return self._writer.lines if self._writer is not None else 0

    def open(self) -> None:
        from fgad.core.outputs import LineWriter

        try:
            self._writer = LineWriter(self.path)
        except OSError as exc:
            raise SinkError(f"{self.name}: cannot open it ({exc.strerror or exc})") from exc

    def write(self, result: LineResult) -> None:
        if self._writer is None:
            raise SinkError(f"{self.name} is not open")
        line = json.dumps(nan_to_none(result.to_record()), ensure_ascii=False) + "\n"
        try:
            self._writer.write_line(line)
        except OSError as exc:
            raise SinkError(f"{self.name}: cannot write ({exc.strerror or exc}); "
                            f"{self._writer.lines} whole lines written") from exc

    def source_event(self, event: SourceEvent) -> None:
        pass

    def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
