"""The live view: a small web page served by ``fgad-run --serve`` with each source's overlay stream, the last NG
frames, counters, the threshold control, ``/health`` and ``/metrics``.

Stdlib :mod:`http.server` only (no web framework, no front-end build). Importing this package starts nothing and
loads neither OpenCV nor numpy; a run without ``--serve`` does not import it at all. See docs/liveview.md.
"""

from __future__ import annotations

from .server import LiveView
from .settings import ViewSettings, load_persisted_threshold, parse_serve_address

__all__ = ["LiveView", "ViewSettings", "load_persisted_threshold", "parse_serve_address"]
