"""TensorRT's presence for tests: whether it is really here, and hiding it where it is. Torch-free (the runtime's
tests use it in a venv without torch)."""

from __future__ import annotations

import importlib.util
import sys

import pytest

#: TensorRT and cuda-python are both importable (a CUDA machine with TensorRT; never on CI).
HAVE_TRT = importlib.util.find_spec("tensorrt") is not None and importlib.util.find_spec("cuda") is not None


def hide_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``tensorrt`` (and its submodules) unfindable and unimported for the rest of the test."""
    real = importlib.util.find_spec
    monkeypatch.setattr("importlib.util.find_spec",
                        lambda name, *a: None if name.split(".")[0] == "tensorrt" else real(name, *a))
    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
