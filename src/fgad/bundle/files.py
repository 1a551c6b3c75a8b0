"""The files a manifest lists: each inside the bundle, present, and with the sha256 the manifest records."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path, PurePosixPath

from fgad.bundle.errors import REEXPORT, BundleError
from fgad.bundle.spec import MANIFEST_FILE, Manifest

__all__ = ["bundle_file", "check_files", "file_sha256"]


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


def check_files(manifest: Manifest, root: Path, verify_hashes: bool) -> None:
    where = root / MANIFEST_FILE
    needed = [("engine.file", manifest.engine.file)]
    if manifest.engine.fallback is not None:
        needed.append(("engine.fallback.file", manifest.engine.fallback.file))
    needed += [(f"engine.plugins[{i}].file", p.file) for i, p in enumerate(manifest.engine.plugins)]
    if manifest.fewshot.file:
        needed.append(("fewshot.file", manifest.fewshot.file))
    for field_name, name in needed:
        if name not in manifest.sha256:
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

