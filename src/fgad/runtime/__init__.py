"""The torch-free edge runtime: backends, few-shot search, fusion, post-processing, Detector, sources, overlays.

``from fgad.runtime import Detector, Result, Line, open_source`` works; the names are loaded on first use, so
``import fgad.runtime`` itself stays cheap (no ONNX Runtime, no OpenCV until a detector or a source is made).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fgad.runtime.line import Line, LineSettings, SourceSpec
    from fgad.runtime.pipeline import Detector, Result
    from fgad.runtime.sources import SourceError, open_source

#: public name -> the module that defines it
_LAZY = {
    "Detector": "fgad.runtime.pipeline",
    "Result": "fgad.runtime.pipeline",
    "open_source": "fgad.runtime.sources",
    "SourceError": "fgad.runtime.sources",
    "Line": "fgad.runtime.line",
    "LineSettings": "fgad.runtime.line",
    "SourceSpec": "fgad.runtime.line",
}

__all__ = ["Detector", "Line", "LineSettings", "Result", "SourceError", "SourceSpec", "open_source"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fgad.runtime' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
