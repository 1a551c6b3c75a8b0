"""Many sources on one device: per-source reader threads, batched engine calls, results to sinks (docs/line.md)."""

from fgad.runtime.line.backoff import Backoff
from fgad.runtime.line.opening import GStreamerSource, gstreamer_available, open_spec
from fgad.runtime.line.reader import SourceEvent
from fgad.runtime.line.results import LineResult
from fgad.runtime.line.runner import Line, LineError, LineSettings, LineSummary, SourceSummary
from fgad.runtime.line.specs import SourceSpec, parse_source, parse_sources

__all__ = [
    "Backoff",
    "GStreamerSource",
    "Line",
    "LineError",
    "LineResult",
    "LineSettings",
    "LineSummary",
    "SourceEvent",
    "SourceSpec",
    "SourceSummary",
    "gstreamer_available",
    "open_spec",
    "parse_source",
    "parse_sources",
]
