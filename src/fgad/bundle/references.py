"""The few-shot references file (``references.npz``): its arrays, read from the headers, vs the manifest; the
fingerprint of the model that made its rows; the memory inside the graph (``fewshot.search: "graph"``).

Fingerprint: a references file written by this fgad carries ``fingerprint``, the sha256 of what decides what its
rows mean (the model's config, backbone, backbone fingerprint and checkpoint digest as the manifest's ``model``
records them, the memory layers and their widths, the grid and the preprocessing). A file whose fingerprint
differs from the bundle's is refused (another model's tokens compared with this one's give meaningless distances);
a file without one (written before fgad recorded it) loads with a warning, since nothing can be checked.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fgad.bundle.errors import REEXPORT, BundleError
from fgad.bundle.files import bundle_file
from fgad.bundle.spec import MANIFEST_FILE, REFERENCES_FINGERPRINT_KEY, Manifest, knn_output

__all__ = [
    "FINGERPRINT_MODEL_FIELDS",
    "check_graph_search",
    "check_references",
    "check_references_fingerprint",
    "manifest_references_fingerprint",
    "npz_array_shapes",
    "read_references_fingerprint",
    "reference_keys",
    "references_fingerprint",
]

logger = logging.getLogger(__name__)

#: the fields of the manifest's ``model`` that go into the fingerprint
FINGERPRINT_MODEL_FIELDS: tuple[str, ...] = ("config", "backbone", "backbone_fingerprint", "checkpoint_sha256")


def references_fingerprint(
    model: Mapping[str, Any],
    dims: Mapping[int, int | None],
    grid: int,
    input_size: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> str:
    """sha256 (hex) of the model fields (:data:`FINGERPRINT_MODEL_FIELDS`), the memory layers with their widths
    (``dims``, in order), the grid and the preprocessing: what a references file's rows depend on."""
    record = {
        "model": {key: model.get(key) for key in FINGERPRINT_MODEL_FIELDS},
        "layers": [[int(layer), None if dim is None else int(dim)] for layer, dim in dims.items()],
        "grid": int(grid),
        "input": {"size": int(input_size), "mean": [float(v) for v in mean], "std": [float(v) for v in std]},
    }
    text = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def manifest_references_fingerprint(manifest: Manifest) -> str:
    """The fingerprint references made by this bundle's graph carry."""
    dims = {layer: manifest.token_dim(layer) for layer in manifest.fewshot.layers}
    spec = manifest.input
    return references_fingerprint(manifest.model, dims, manifest.grid, spec.size, spec.mean, spec.std)


def read_references_fingerprint(path: str | os.PathLike[str]) -> str | None:
    """The ``fingerprint`` of a references file (None when it has none); only that array is read."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if REFERENCES_FINGERPRINT_KEY not in data.files:
                return None
            value = data[REFERENCES_FINGERPRINT_KEY]
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise BundleError(f"'{path}' is not a readable .npz file ({exc})", "fewshot.file") from exc
    if value.ndim != 0 or value.dtype.kind != "U":
        raise BundleError(f"'{path}': array '{REFERENCES_FINGERPRINT_KEY}' must be one string, got "
                          f"{value.dtype}{list(value.shape)}; write the file again with Detector.save_references",
                          "fewshot.file")
    return str(value)


def check_references_fingerprint(manifest: Manifest, path: str | os.PathLike[str]) -> None:
    """Refuse a references file made by another model or other layers; warn about one without a fingerprint."""
    found = read_references_fingerprint(path)
    if found is None:
        logger.warning(
            "references file '%s' has no fingerprint (written before fgad recorded one): it cannot be checked to "
            "come from this bundle's model and layers; re-export the bundle, or write the file again with "
            "Detector.save_references, to add one", path)
        return
    wanted = manifest_references_fingerprint(manifest)
    if found != wanted:
        config = manifest.model.get("config") or "?"
        raise BundleError(
            f"references file '{path}' was made by another model or other memory layers than this bundle's "
            f"(config {config!r}, fewshot.layers {list(manifest.fewshot.layers)}): fingerprint {found[:12]}... is "
            f"not this bundle's {wanted[:12]}...; use the references of this bundle, or make new ones from good "
            "images with fgad-run --refs DIR (Detector.add_references), or re-export with --refs DIR",
            "fewshot.file",
        )


def check_graph_search(manifest: Manifest, where: Path) -> None:
    """A bundle whose graph searches its memory declares ``knn_<layer>`` [?, N] for every memory layer."""
    if manifest.fewshot.search != "graph":
        return
    n = manifest.num_patches
    for layer in manifest.fewshot.layers:
        name = knn_output(layer)
        shape = manifest.outputs.get(name)
        if shape is None or len(shape) != 2 or shape[1] not in (None, n):
            raise BundleError(
                f"{where}: field 'fewshot.search' is 'graph', so 'outputs.{name}' must be [?, {n}] (the nearest "
                f"reference similarity of every patch of layer {layer}), got {shape}; {REEXPORT}",
                f"outputs.{name}",
            )


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
    check_references_fingerprint(manifest, path)
