"""The torch-free edge runtime: backends, few-shot search, fusion, post-processing, Detector, sources, overlays."""

from typing import Any

#: names importable from ``fgad.runtime``, each loaded on first use (``fgad.runtime`` itself stays light)
_LAZY = {
    "Line": "fgad.runtime.line",
    "LineSettings": "fgad.runtime.line",
    "SourceSpec": "fgad.runtime.line",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fgad.runtime' has no attribute {name!r}")
