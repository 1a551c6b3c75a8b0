"""The runtime's integrity checks of a bundle's manifest, before any of its fields is trusted (docs/bundle.md).

:func:`check_integrity` runs first in :func:`fgad.runtime.backends.check_manifest`:

1. ``manifest.digest``: the digest of the canonical manifest must match (a changed field is named); a bundle
   without one (written before fgad had digests) is loaded with a warning that it is unprotected, and refused
   when a trusted key is required;
2. ``manifest.sig``: with trusted keys (``fgad-run --trust PUBKEY``) the bundle must be signed by one of them;
   without, a signature present must at least be one for this manifest (its cryptography is then not checked:
   a signature proves nothing without a key to trust);
3. files inside the folder that ``sha256`` does not list: a warning, or refused with ``strict``.

The files' own sha256 are :func:`fgad.bundle.files.check_files` (next in the runtime's order).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fgad.bundle.digest import changed_fields, manifest_digest, read_digest
from fgad.bundle.errors import BundleError
from fgad.bundle.files import unknown_files
from fgad.bundle.signing import TrustedKey, load_trusted_key, read_signature, verify_signature
from fgad.bundle.spec import DIGEST_FILE, MANIFEST_FILE, SIGNATURE_FILE, Manifest

__all__ = ["IntegrityReport", "TrustSpec", "check_integrity", "trusted_keys"]

logger = logging.getLogger("fgad.bundle")

#: What ``trust`` may be: key files (PEM public keys) or loaded keys.
TrustSpec = Sequence[str | os.PathLike[str] | TrustedKey]

_UNPROTECTED = ("it was written before fgad kept manifest digests (or the file was lost), so edits of its "
                "manifest (preprocessing, class name, descriptions, thresholds) go unnoticed")


@dataclass(frozen=True)
class IntegrityReport:
    """What :func:`check_integrity` found."""

    digest: str  # sha256 of the canonical manifest
    protected: bool  # manifest.digest present and matching
    signed_by: TrustedKey | None  # the trusted key that signed it (None: not checked or unsigned)
    signature_key_id: str | None  # key id a signature claims (checked or not)
    unknown: tuple[str, ...]  # files sha256 does not list


def trusted_keys(trust: TrustSpec | None) -> list[TrustedKey]:
    """``trust`` as loaded keys (paths are read as PEM public keys)."""
    return [t if isinstance(t, TrustedKey) else load_trusted_key(t) for t in (trust or ())]


def _check_digest(manifest: Manifest, root: Path, digest: str, required: bool) -> bool:
    record = read_digest(root)
    path = root / DIGEST_FILE
    if record is None:
        if required:
            raise BundleError(
                f"{path}: missing: {_UNPROTECTED}; a trusted key is required (--trust), so it is refused: get a "
                "signed bundle, or re-export and sign it (fgad-export --sign KEY, fgad-sign sign)",
                "manifest_sha256",
            )
        logger.warning("bundle %s has no %s: %s. Re-export it, or sign it with fgad-sign sign BUNDLE --key KEY",
                       root, DIGEST_FILE, _UNPROTECTED)
        return False
    if record["manifest_sha256"] != digest:
        changed = changed_fields(manifest.raw, record.get("fields") or {})
        named = ", ".join(f"'{c}'" for c in changed[:8]) + (" ..." if len(changed) > 8 else "")
        first = changed[0].split(" ")[0] if changed else "manifest_sha256"
        what = f"field(s) {named} differ" if changed else "its content differs"
        raise BundleError(
            f"{root / MANIFEST_FILE}: {what} from the manifest that was exported ({DIGEST_FILE} field "
            f"'manifest_sha256' is {record['manifest_sha256'][:12]}..., the manifest's digest is {digest[:12]}...): "
            "the manifest was edited or damaged after export; copy the bundle again or re-export it (a deliberate "
            "edit needs a new export, or fgad-sign sign by whoever vouches for it)",
            first,
        )
    return True


def check_integrity(
    manifest: Manifest,
    bundle_dir: str | os.PathLike[str],
    *,
    trust: TrustSpec | None = None,
    strict: bool = False,
) -> IntegrityReport:
    """The manifest digest, the signature (with ``trust``: required, by one of these keys) and files not listed
    in ``sha256`` (``strict``: refused; else one warning); raises :class:`BundleError` naming file and field."""
    root = Path(bundle_dir)
    keys = trusted_keys(trust)  # a bad key file fails before anything is read from the bundle
    digest = manifest_digest(manifest.raw)
    protected = _check_digest(manifest, root, digest, required=bool(keys))

    signature = read_signature(root)
    where = root / SIGNATURE_FILE
    signed_by = None
    claimed = None if signature is None else str(signature.get("key_id") or "")
    if keys:
        if signature is None:
            raise BundleError(
                f"{where}: missing: the bundle is not signed, and a trusted key is required (--trust "
                f"{', '.join(k.key_id for k in keys)}); sign it with fgad-sign sign BUNDLE --key KEY, or get the "
                "signed bundle from its publisher",
                "signature",
            )
        signed_by = verify_signature(signature, digest, keys, where)
        logger.info("bundle %s: signed by trusted key %s (%s)", root, signed_by.key_id, signed_by.source)
    elif signature is not None:
        if signature["manifest_sha256"] != digest:
            verify_signature(signature, digest, [], where)  # raises: made for another manifest
        logger.debug("bundle %s: signed by key %s, not verified (no --trust)", root, claimed)

    unknown = unknown_files(manifest, root)
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        message = (f"{root}: {len(unknown)} file(s) not listed in {MANIFEST_FILE} field 'sha256', so not part of "
                   f"the exported bundle: {shown}")
        if strict:
            raise BundleError(f"{message}; remove them (or re-export the bundle): --strict refuses unknown files",
                              "sha256")
        logger.warning("%s; they are not read, and not verified (--strict refuses them)", message)
    return IntegrityReport(digest, protected, signed_by, claimed, tuple(unknown))
