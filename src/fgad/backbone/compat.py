"""Import open_clip and transformers robustly on CPU-only PyTorch builds.

The PyPI torchvision wheel is a CUDA build. Paired with a CPU build of torch its C++ ops fail
to load, and torchvision's fake-tensor registrations for ``nms``/``qnms`` then raise
``RuntimeError: operator torchvision::nms does not exist`` at import time, which also breaks
``import open_clip`` and every transformers model module that imports torchvision (Grounding
DINO among them: transformers reports it as "Could not import module
'GroundingDinoForObjectDetection'"). We define just the missing schemas, with CPU kernels that
raise a clear error if they are ever called, and only when that exact error occurs.

Only ``nms`` and ``qnms`` are registered unconditionally by torchvision; its other meta
registrations (``roi_align``, ``deform_conv2d``, ...) are skipped when its C++ ops did not load,
so they need no schema here. Neither open_clip's models nor Grounding DINO (whose multiscale
deformable attention has a pure-PyTorch path) call any of these ops.
"""

from __future__ import annotations

import sys
from types import ModuleType

_MISSING_OP_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_library_keepalive: list[object] = []


class TorchvisionOpUnavailable(RuntimeError):
    """A torchvision C++ op was called, but this torchvision build's kernels cannot load."""


def _unavailable(name: str):  # noqa: ANN202 - a kernel of any signature
    def kernel(*args: object, **kwargs: object) -> None:
        raise TorchvisionOpUnavailable(
            f"torchvision::{name} was called, but torchvision's C++ ops cannot load here (a CUDA build of "
            "torchvision next to a CPU build of torch); fgad registered only its schema so that imports work. "
            "Install the torchvision build matching torch (pip install -c constraints.txt torchvision) to use it."
        )

    return kernel


def _define_missing_torchvision_schemas() -> None:
    import torch

    lib = torch.library.Library("torchvision", "FRAGMENT")
    for name, schema in _MISSING_OP_SCHEMAS.items():
        try:
            getattr(torch.ops.torchvision, name)
        except (AttributeError, RuntimeError):
            lib.define(schema)
            lib.impl(name, _unavailable(name), "CPU")
    _library_keepalive.append(lib)  # a Library deregisters its ops when collected


def _is_missing_op_error(err: BaseException) -> bool:
    return "torchvision::" in str(err) and "does not exist" in str(err)


def ensure_torchvision_importable() -> None:
    """Make ``import torchvision`` work (a no-op where it already does, or where it is not installed)."""
    try:
        import torchvision  # noqa: F401
    except ModuleNotFoundError:
        return
    except RuntimeError as err:
        if not _is_missing_op_error(err):
            raise
        for mod in [m for m in sys.modules if m.startswith("torchvision")]:
            del sys.modules[mod]
        _define_missing_torchvision_schemas()
        import torchvision  # noqa: F401


def import_open_clip() -> ModuleType:
    """Return the ``open_clip`` module, applying the CPU-torch workaround only if needed."""
    try:
        import open_clip
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            "open_clip is not installed: install the training extra, pip install 'fgad[train]'"
        ) from err
    except RuntimeError as err:
        if not _is_missing_op_error(err):
            raise
        for mod in [m for m in sys.modules if m.startswith(("torchvision", "open_clip"))]:
            del sys.modules[mod]
        _define_missing_torchvision_schemas()
        import open_clip
    return open_clip


def import_grounding_dino() -> ModuleType:
    """transformers' Grounding DINO modelling module, with the CPU-torch workaround applied first if needed.

    Raises ``ModuleNotFoundError`` naming the ``detect`` extra when transformers is not installed.
    """
    try:
        import transformers  # noqa: F401
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            "the grounding-dino box prior needs Hugging Face transformers: pip install 'fgad[detect]'"
        ) from err
    ensure_torchvision_importable()
    from transformers.models.grounding_dino import modeling_grounding_dino

    return modeling_grounding_dino
