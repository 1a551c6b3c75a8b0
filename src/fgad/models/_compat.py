"""Import open_clip robustly on CPU-only PyTorch builds.

The PyPI torchvision wheel is a CUDA build. Paired with a CPU build of torch its C++ ops fail
to load, and torchvision's fake-tensor registrations for ``nms``/``qnms`` then raise
``RuntimeError: operator torchvision::nms does not exist`` at import time, which also breaks
``import open_clip``. We define just the missing schemas (no kernels: calling them still fails
loudly) and only when that exact error occurs.
"""

from __future__ import annotations

import sys
from types import ModuleType

_MISSING_OP_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_library_keepalive: list[object] = []


def _define_missing_torchvision_schemas() -> None:
    import torch

    lib = torch.library.Library("torchvision", "FRAGMENT")
    for name, schema in _MISSING_OP_SCHEMAS.items():
        try:
            getattr(torch.ops.torchvision, name)
        except (AttributeError, RuntimeError):
            lib.define(schema)
    _library_keepalive.append(lib)  # a Library deregisters its ops when collected


def import_open_clip() -> ModuleType:
    """Return the ``open_clip`` module, applying the CPU-torch workaround only if needed."""
    try:
        import open_clip
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            "open_clip is not installed: install the training extra, pip install 'fgad[train]'"
        ) from err
    except RuntimeError as err:
        if "torchvision::" not in str(err) or "does not exist" not in str(err):
            raise
        for mod in [m for m in sys.modules if m.startswith(("torchvision", "open_clip"))]:
            del sys.modules[mod]
        _define_missing_torchvision_schemas()
        import open_clip
    return open_clip
