"""The training venv's torch and torchvision are one build: a user's own script can ``import open_clip``.

fgad works around a CUDA torchvision beside a CPU torch (``fgad.backbone.compat``), a user's script does not: the
venv must hold a matching pair (see the Makefile's TORCH_INDEX and constraints.txt). Run in a fresh interpreter
with a clean environment, so that nothing of fgad or of this test session is loaded first.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

CHECK = """
import torch
try:
    import torchvision
    import open_clip
except Exception as err:
    import importlib.metadata as md
    raise SystemExit(f"{type(err).__name__}: {err} (torch {torch.__version__}, "
                     f"torchvision {md.version('torchvision')}: not one build)")
print(torch.__version__, torchvision.__version__, open_clip.__version__)
"""


@pytest.mark.skipif(importlib.util.find_spec("open_clip") is None,
                    reason="open_clip is not installed (the torch-free runtime venv): no training stack to check")
def test_open_clip_imports_in_a_clean_interpreter() -> None:
    proc = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}, cwd="/")
    assert proc.returncode == 0, (proc.stderr.strip().splitlines() or ["no output"])[-1]
    assert len(proc.stdout.split()) == 3, proc.stdout  # the three versions
