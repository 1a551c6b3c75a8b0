"""Where ``cpp_ext/`` is, and its Python tools (``cpp_ext/tools/*.py``: the ctypes bindings, also used by the GPU
benchmark script, and the golden-file modules), loaded from that path rather than imported from a package."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

CPP_EXT_DIR = Path(__file__).resolve().parents[2] / "cpp_ext"


def load_tool(stem: str) -> ModuleType:
    """Import ``cpp_ext/tools/<stem>.py`` once, as ``fgad_cpp_ext_<stem>`` in ``sys.modules`` (the name the
    tools use for each other, so a test and a tool share one module object)."""
    name = f"fgad_cpp_ext_{stem}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, CPP_EXT_DIR / "tools" / f"{stem}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_deform_ctypes() -> ModuleType:
    """Import ``cpp_ext/tools/deform_ctypes.py`` once (registered in ``sys.modules``)."""
    return load_tool("deform_ctypes")
