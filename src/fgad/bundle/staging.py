"""Writing a bundle folder (docs/bundle.md), shared by every bundle writer: the fp32 export
(:mod:`fgad.export.bundle`), FineGrainedAD's (:mod:`fgad.methods.finegrained.export`) and the int8 one
(:mod:`fgad.calibration.bundle`).

A writer checks its target with :func:`check_target`, builds the whole bundle inside :func:`staged_bundle`'s
temporary folder next to it, and the folder is renamed onto the target only when the body finished: a failed
write leaves no bundle behind, and an earlier bundle at the target stays as it was. The manifest is written last,
by :func:`write_manifest`, with its digest (and signature); the TensorRT engine writer
(:mod:`fgad.export.engine_bundle`), which rewrites a bundle's manifest in place, calls it too. Torch-free (the
int8 writer runs without torch).
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from fgad.bundle.digest import write_digest
from fgad.bundle.errors import BundleError
from fgad.bundle.signing import SigningKey, load_signing_key, read_signature, write_signature
from fgad.bundle.spec import MANIFEST_FILE, SIGNATURE_FILE
from fgad.core.atomic import atomic_path, atomic_write_json

__all__ = [
    "SigningKeySpec",
    "check_target",
    "parity_tolerance",
    "replace_dir",
    "sign_bundle",
    "signing_key",
    "staged_bundle",
    "utc_timestamp",
    "write_manifest",
    "write_references_npz",
]

log = logging.getLogger(__name__)

#: What a writer's ``signing_key`` may be: a loaded key, a PEM private-key file, or None (unsigned).
SigningKeySpec = SigningKey | str | os.PathLike[str] | None


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


def write_references_npz(path: Path, tokens: Mapping[int, np.ndarray], paths: Sequence[Path],
                         fingerprint: str | None = None) -> None:
    """``references.npz``: per layer the graph's ``tokens_<l>`` as unit float32 rows ``layer_<l>``, plus ``paths``
    and the ``fingerprint`` of the model that made them (:func:`fgad.bundle.references.references_fingerprint`)."""
    arrays: dict[str, Any] = {}
    if fingerprint is not None:
        arrays["fingerprint"] = np.asarray(fingerprint, dtype=np.str_)
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


def signing_key(key: SigningKeySpec) -> SigningKey | None:
    """``key`` loaded (a writer calls this before its long work, so a bad key fails first)."""
    if key is None or isinstance(key, SigningKey):
        return key
    return load_signing_key(key)


def write_manifest(folder: Path, data: Mapping[str, Any], key: SigningKeySpec = None) -> str:
    """Write ``manifest.json`` into ``folder``, then ``manifest.digest`` over it as written, then, with ``key``,
    ``manifest.sig``; returns the manifest digest. Every bundle writer writes its manifest through here.

    A ``manifest.sig`` already in ``folder`` (a bundle rewritten in place) is removed first: it signs the old
    manifest. Without ``key`` that leaves the bundle unsigned, which is logged.
    """
    signer = signing_key(key)
    old = folder / SIGNATURE_FILE
    if old.exists():
        try:
            previous = (read_signature(folder) or {}).get("key_id")
        except BundleError:  # a damaged old signature is replaced all the same
            previous = None
        old.unlink()
        if signer is None:
            log.warning("%s was signed (key %s); its new manifest is not: sign it again with --sign KEY or "
                        "fgad-sign sign %s --key KEY", folder, previous or "?", folder)
    atomic_write_json(folder / MANIFEST_FILE, data)
    digest = write_digest(folder)
    if signer is not None:
        write_signature(folder, signer, digest)
        log.info("bundle %s signed with key %s", folder, signer.key_id)
    return digest


def sign_bundle(bundle_dir: str | os.PathLike[str], key: SigningKeySpec) -> str:
    """Sign an existing bundle in place (``fgad-sign sign``): ``manifest.digest`` and ``manifest.sig`` for its
    manifest as it is, which is left untouched; returns the digest.

    Refused (BundleError) unless the bundle is intact: its digest, when it has one, matches; no file it does not
    list; every listed file with its sha256; contents consistent with the manifest. A bundle without a digest
    (written before fgad kept them) gets one: whoever signs it vouches for its manifest.
    """
    from fgad.bundle.checks import check_contents
    from fgad.bundle.files import check_files
    from fgad.bundle.integrity import check_integrity
    from fgad.bundle.parse import load_manifest

    signer = signing_key(key)
    if signer is None:
        raise ValueError("sign_bundle needs a key")
    root = Path(bundle_dir)
    manifest = load_manifest(root)
    check_integrity(manifest, root, strict=True)
    check_files(manifest, root, verify_hashes=True)
    check_contents(manifest, root)
    digest = write_digest(root, manifest.raw)
    write_signature(root, signer, digest)
    log.info("bundle %s signed with key %s", root, signer.key_id)
    return digest
