"""The few-shot references file (``references.npz``): its arrays, read from the headers, vs the manifest."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fgad.bundle.errors import REEXPORT, BundleError
from fgad.bundle.files import bundle_file
from fgad.bundle.spec import MANIFEST_FILE, Manifest

__all__ = ["check_references", "npz_array_shapes", "reference_keys"]


def npz_array_shapes(path: str | os.PathLike[str]) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shapes and dtypes of the arrays in an ``.npz`` file, read from the headers only (no data is loaded)."""
    shapes: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with zf.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
                    else:
                        shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
                shapes[info.filename[: -len(".npy")]] = (tuple(shape), np.dtype(dtype))
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        raise BundleError(f"'{path}' is not a readable .npz file ({exc})") from exc
    return shapes


def reference_keys(layers: Sequence[int], names: Sequence[str]) -> dict[int, str] | None:
    """Which array of a references file holds each memory layer.

    The canonical name is ``layer_<layer>`` with the layer number (``layer_6`` pairs with ``tokens_6``). A file
    whose arrays are numbered by position in ``fewshot.layers`` instead (``layer_0 .. layer_{n-1}``) is accepted
    when the canonical names are not all there. Returns None if neither naming is complete.
    """
    available = set(names)
    canonical = {layer: f"layer_{layer}" for layer in layers}
    if all(key in available for key in canonical.values()):
        return canonical
    positional = {layer: f"layer_{i}" for i, layer in enumerate(layers)}
    if all(key in available for key in positional.values()):
        return positional
    return None



def check_references(manifest: Manifest, root: Path) -> None:
    if not manifest.fewshot.file:
        return
    where = root / MANIFEST_FILE
    if not manifest.fewshot.layers:
        raise BundleError(
            f"{where}: field 'fewshot.file' is set but 'fewshot.layers' is empty; {REEXPORT}", "fewshot.layers"
        )
    path = bundle_file(root, manifest.fewshot.file, "fewshot.file")
    if not path.is_file():
        raise BundleError(
            f"{where}: field 'fewshot.file' names '{manifest.fewshot.file}', which does not exist; copy the whole "
            "bundle again or re-export it",
            "fewshot.file",
        )
    shapes = npz_array_shapes(path)
    keys = reference_keys(manifest.fewshot.layers, list(shapes))
    if keys is None:
        wanted = ", ".join(f"layer_{layer}" for layer in manifest.fewshot.layers)
        raise BundleError(
            f"{where}: field 'fewshot.file': {path.name} must hold arrays {wanted} (one per fewshot.layers entry), "
            f"found {sorted(shapes)}; {REEXPORT}",
            "fewshot.file",
        )
    n = manifest.num_patches
    for layer, key in keys.items():
        shape, dtype = shapes[key]
        width = manifest.token_dim(layer)
        if len(shape) != 2 or shape[1] != width or shape[0] % n != 0 or not np.issubdtype(dtype, np.floating):
            raise BundleError(
                f"{where}: field 'fewshot.file': {path.name}[{key}] is {dtype}{list(shape)}, expected float "
                f"[k*{n}, {width}] (rows of k reference images, width D of tokens_{layer}); {REEXPORT}",
                "fewshot.file",
            )
        k = shape[0] // n
        if manifest.fewshot.num_references and k != manifest.fewshot.num_references:
            raise BundleError(
                f"{where}: field 'fewshot.num_references' is {manifest.fewshot.num_references}, but {path.name}[{key}] "
                f"holds {k} images ({shape[0]} rows of {n}); {REEXPORT}",
                "fewshot.num_references",
            )

