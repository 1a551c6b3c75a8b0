"""Where ``cpp_ext/`` is, and its ctypes bindings (``cpp_ext/tools/deform_ctypes.py``, also used by the GPU
benchmark script), loaded from that path rather than imported from a package."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

CPP_EXT_DIR = Path(__file__).resolve().parents[2] / "cpp_ext"


def load_deform_ctypes() -> ModuleType:
    """Import ``cpp_ext/tools/deform_ctypes.py`` once (registered in ``sys.modules``)."""
    name = "fgad_cpp_ext_deform_ctypes"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, CPP_EXT_DIR / "tools" / "deform_ctypes.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
