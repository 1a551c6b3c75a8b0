"""Writing a bundle folder (docs/bundle.md), shared by every bundle writer: the fp32 export
(:mod:`fgad.export.bundle`), FineGrainedAD's (:mod:`fgad.methods.finegrained.export`) and the int8 one
(:mod:`fgad.calibration.bundle`).

A writer checks its target with :func:`check_target`, builds the whole bundle inside :func:`staged_bundle`'s
temporary folder next to it, and the folder is renamed onto the target only when the body finished: a failed
write leaves no bundle behind, and an earlier bundle at the target stays as it was. Torch-free (the int8
writer runs without torch).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from fgad.core.atomic import atomic_path

__all__ = ["check_target", "parity_tolerance", "replace_dir", "staged_bundle", "utc_timestamp", "write_references_npz"]


def parity_tolerance(name: str, tolerances: Mapping[str, float], fallback: float | None = None) -> float:
    """The tolerance of output ``name`` in a parity check (the manifest's ``parity.tolerances``): its own entry,
    else ``tokens`` for the ``tokens_<layer>`` outputs, else ``default``, else ``fallback`` (None: ``default``
    must be there)."""
    if name in tolerances:
        return tolerances[name]
    if name.startswith("tokens_") and "tokens" in tolerances:
        return tolerances["tokens"]
    if fallback is None or "default" in tolerances:
        return tolerances["default"]
    return fallback


def check_target(out: Path, manifest_file: str = "manifest.json") -> None:
    """Refuse an ``out`` that a bundle may not replace: a file, or a non-empty folder without ``manifest_file``."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / manifest_file).is_file():
        raise FileExistsError(f"{out} is a non-empty directory that is not a bundle; choose another --out")


def replace_dir(tmp: Path, out: Path) -> None:
    """Rename the finished folder ``tmp`` onto ``out`` (an earlier bundle there is replaced, and restored on error)."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.{uuid.uuid4().hex}.old"
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def staged_bundle(out: Path) -> Iterator[Path]:
    """Yield a new empty folder next to ``out``; when the body returns it replaces ``out``, else it is removed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex}.tmp"
    tmp.mkdir()
    try:
        yield tmp
        replace_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_references_npz(path: Path, tokens: Mapping[int, np.ndarray], paths: Sequence[Path]) -> None:
    """``references.npz``: per layer the graph's ``tokens_<l>`` as unit float32 rows ``layer_<l>``, plus ``paths``."""
    arrays: dict[str, Any] = {}
    for layer, t in tokens.items():
        rows = t.reshape(-1, t.shape[-1]).astype(np.float32)
        rows /= np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)  # exact unit rows
        arrays[f"layer_{layer}"] = rows
    arrays["paths"] = np.array([str(p) for p in paths])
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def utc_timestamp() -> str:
    """Now, as the manifests record it (``2024-05-01T12:00:00Z``)."""
    return datetime.now(timezone.utc).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")
