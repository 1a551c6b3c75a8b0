"""The files a manifest lists: each inside the bundle, present, and with the sha256 the manifest records; every file
the runtime reads listed there (also an ONNX graph's external data, read from the graph); files it does not list."""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from fgad.bundle.errors import REEXPORT, BundleError
from fgad.bundle.spec import INTEGRITY_FILES, MANIFEST_FILE, EngineSpec, Manifest
from fgad.core.onnx_external import external_data_locations

__all__ = ["bundle_file", "check_files", "file_sha256", "unknown_files"]

logger = logging.getLogger("fgad.bundle")


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def bundle_file(root: Path, name: str, field_name: str) -> Path:
    """Resolve a manifest file name inside the bundle; refuses absolute paths and ``..``."""
    rel = PurePosixPath(name.replace("\\", "/"))
    if not name or rel.is_absolute() or ".." in rel.parts or re.match(r"^[A-Za-z]:", name):
        raise BundleError(
            f"{root / MANIFEST_FILE}: field '{field_name}' names '{name}', which is not a file inside the bundle; "
            f"{REEXPORT}",
            field_name,
        )
    return root.joinpath(*rel.parts)


def _name(name: str) -> str:
    """A bundle file name as ``sha256`` lists it: relative, ``/``-separated, without ``./``."""
    return PurePosixPath(name.replace("\\", "/")).as_posix()


def _external_data_fields(raw: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(field, file) of the ``external_data`` lists of ``engine`` and ``engine.fallback``."""
    found = []
    value = raw.get("engine")
    engine: Mapping[str, Any] = value if isinstance(value, Mapping) else {}
    for prefix, block in (("engine", engine), ("engine.fallback", engine.get("fallback"))):
        files = block.get("external_data") if isinstance(block, Mapping) else None
        if isinstance(files, list):
            found += [(f"{prefix}.external_data[{i}]", str(f)) for i, f in enumerate(files)]
    return found


def _onnx_engines(manifest: Manifest) -> list[tuple[str, EngineSpec]]:
    engines = [("engine", manifest.engine)]
    if manifest.engine.fallback is not None:
        engines.append(("engine.fallback", manifest.engine.fallback))
    return [(prefix, e) for prefix, e in engines if e.kind == "onnx"]


def _check_graph_external_data(manifest: Manifest, root: Path, listed: set[str]) -> None:
    """Every external-data file an ONNX graph of the bundle names (read from the graph) is listed in ``sha256``."""
    where = root / MANIFEST_FILE
    for prefix, engine in _onnx_engines(manifest):
        graph = root / engine.file
        try:
            locations = {entry.location for entry in external_data_locations(graph)}
        except (OSError, ValueError) as exc:  # not ONNX at all: onnxruntime refuses it with its own message
            logger.debug("%s: external data not scanned (%s)", graph, exc)
            continue
        for location in sorted(locations):
            field_name = f"{prefix}.file"
            bundle_file(root, location, field_name)  # a location outside the bundle is refused
            if _name(location) not in listed:
                raise BundleError(
                    f"{where}: {engine.file} ({field_name}) keeps weights in '{location}', which field 'sha256' does "
                    f"not list, so that file cannot be verified; {REEXPORT}",
                    "sha256",
                )


def unknown_files(manifest: Manifest, root: Path) -> list[str]:
    """Files inside the bundle folder (recursively, hidden ones too) that ``sha256`` does not list, other than
    the manifest, its digest and its signature; sorted, ``/``-separated."""
    listed = {_name(n) for n in manifest.sha256} | set(INTEGRITY_FILES)
    found = []
    for path in root.rglob("*"):
        if path.is_file() or path.is_symlink():
            rel = path.relative_to(root).as_posix()
            if rel not in listed:
                found.append(rel)
    return sorted(found)


def check_files(manifest: Manifest, root: Path, verify_hashes: bool) -> None:
    """Every file the manifest names (engine, fallback, plugins, references, external data) is listed in
    ``sha256``; every listed file is inside the bundle, present and (``verify_hashes``) has its sha256; every
    external-data file of an ONNX graph is listed too. Raises BundleError naming the field."""
    where = root / MANIFEST_FILE
    needed = [("engine.file", manifest.engine.file)]
    if manifest.engine.fallback is not None:
        needed.append(("engine.fallback.file", manifest.engine.fallback.file))
    needed += [(f"engine.plugins[{i}].file", p.file) for i, p in enumerate(manifest.engine.plugins)]
    if manifest.fewshot.file:
        needed.append(("fewshot.file", manifest.fewshot.file))
    needed += _external_data_fields(manifest.raw)
    listed = {_name(n) for n in manifest.sha256}
    for field_name, name in needed:
        if name not in manifest.sha256 and _name(name) not in listed:
            raise BundleError(
                f"{where}: field 'sha256' has no entry for {field_name} '{name}', so the file cannot be verified; "
                f"{REEXPORT}",
                "sha256",
            )
    for name, expected in manifest.sha256.items():
        field_name = f"sha256.{name}"
        path = bundle_file(root, name, field_name)
        if not path.is_file():
            raise BundleError(
                f"{where}: field '{field_name}' lists '{name}', but {path} does not exist; copy the whole bundle "
                "folder again or re-export it",
                field_name,
            )
        if verify_hashes:
            actual = file_sha256(path)
            if actual != expected:
                raise BundleError(
                    f"{where}: field '{field_name}': {path} has sha256 {actual[:12]}..., the manifest says "
                    f"{expected[:12]}...; the file is corrupt or was changed after export: copy the bundle again "
                    "or re-export it",
                    field_name,
                )
    _check_graph_external_data(manifest, root, listed)
