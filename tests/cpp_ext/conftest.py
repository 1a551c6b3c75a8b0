"""Fixtures for the native deformable-convolution code in ``cpp_ext/``.

The ctypes bindings live beside the sources (``cpp_ext/tools/deform_ctypes.py``, also used by the
GPU benchmark script), so they are loaded from that path rather than imported from a package.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

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


@pytest.fixture(scope="session")
def deform_ctypes() -> ModuleType:
    return load_deform_ctypes()


@pytest.fixture(scope="session")
def cpu_lib(deform_ctypes: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The CPU build of the kernels' math, compiled once per session into a temporary folder."""
    compiler = deform_ctypes.find_cxx()
    if compiler is None:
        pytest.skip("no C++ compiler (g++/c++ or $CXX) on this machine: the CPU build cannot be compiled")
    path = deform_ctypes.build_cpu_library(tmp_path_factory.mktemp("cpp_ext_cpu"), compiler)
    return deform_ctypes.DeformLibrary(path)
