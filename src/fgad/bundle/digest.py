"""``manifest.digest``: the sha256 of the canonical manifest, kept beside ``manifest.json`` (docs/bundle.md).

The manifest lists the sha256 of every other file of the bundle, so one digest over the manifest covers the
whole bundle: the files through their listed hashes, the manifest's own fields (preprocessing, class name,
descriptions, thresholds) directly. The digest is taken over the *canonical* bytes of the parsed manifest,
:func:`canonical_json`, so re-indenting, re-ordering keys or re-escaping the file keeps it valid and any change
of a value breaks it.

The digest file also holds short per-field digests (``fields``, every object member down to three levels):
they are not part of the check, only there to name the field that changed when the digest no longer matches.

Writers call :func:`fgad.bundle.staging.write_manifest`; the runtime's check is
:func:`fgad.bundle.integrity.check_integrity`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fgad.bundle.errors import BundleError
from fgad.bundle.spec import DIGEST_FILE, MANIFEST_FILE
from fgad.core.atomic import atomic_write_json

__all__ = [
    "CANONICAL",
    "DIGEST_FORMAT",
    "DIGEST_VERSION",
    "canonical_json",
    "changed_fields",
    "digest_record",
    "field_digests",
    "manifest_digest",
    "read_digest",
    "write_digest",
]

DIGEST_FORMAT = "fgad-bundle-digest"
DIGEST_VERSION = 1
#: How the canonical bytes are made, as the digest file records it.
CANONICAL = "json.dumps(manifest, sort_keys=True, separators=(',', ':'), ensure_ascii=False), UTF-8"
#: Object members down to this depth get a locator digest in ``fields`` (``engine.fallback.file`` is depth 3).
FIELD_DEPTH = 3
_LOCATOR_HEX = 16  # locator digests are for naming a field, not for the check: 64 bits are plenty


def canonical_json(value: Any) -> bytes:
    """The canonical bytes of a parsed JSON value: sorted keys, no whitespace, UTF-8, Python's float repr."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def manifest_digest(data: Mapping[str, Any]) -> str:
    """Hex sha256 of the canonical bytes of a parsed manifest."""
    return hashlib.sha256(canonical_json(data)).hexdigest()


def field_digests(data: Mapping[str, Any], depth: int = FIELD_DEPTH) -> dict[str, str]:
    """Dotted field name -> short digest of its canonical value, for every object member down to ``depth``."""
    out: dict[str, str] = {}

    def walk(node: Mapping[str, Any], prefix: str, level: int) -> None:
        for key, value in node.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            out[name] = hashlib.sha256(canonical_json(value)).hexdigest()[:_LOCATOR_HEX]
            if isinstance(value, Mapping) and level < depth:
                walk(value, name, level + 1)

    walk(data, "", 1)
    return out


def changed_fields(data: Mapping[str, Any], recorded: Mapping[str, Any]) -> list[str]:
    """The most specific fields of ``data`` whose locator digest differs from ``recorded`` (added and removed
    fields included, marked so), in manifest order."""
    now = field_digests(data)
    names = [n for n in now if recorded.get(n) != now[n]]
    names += [n for n in recorded if n not in now]
    specific = [n for n in names if not any(other.startswith(n + ".") for other in names)]
    return [f"{n} (added)" if n not in recorded else f"{n} (removed)" if n not in now else n for n in specific]


def digest_record(data: Mapping[str, Any]) -> dict[str, Any]:
    """The content of ``manifest.digest`` for the parsed manifest ``data``."""
    return {
        "format": DIGEST_FORMAT,
        "version": DIGEST_VERSION,
        "algorithm": "sha256",
        "canonical": CANONICAL,
        "manifest_sha256": manifest_digest(data),
        "fields": field_digests(data),
    }


def write_digest(folder: Path, data: Mapping[str, Any] | None = None) -> str:
    """Write ``manifest.digest`` for the parsed manifest ``data`` (default: ``folder/manifest.json`` as it is on
    disk) into ``folder``; returns the digest."""
    if data is None:
        data = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
    record = digest_record(data)
    atomic_write_json(folder / DIGEST_FILE, record)
    return str(record["manifest_sha256"])


def read_sidecar(path: Path, fmt: str, advice: str, unreadable_field: str) -> dict[str, Any]:
    """A JSON record beside the manifest (digest, signature) whose ``format`` is ``fmt``; a BundleError naming
    ``unreadable_field`` when it is not JSON, ``format`` when it is another record."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: not readable JSON ({exc}); {advice}", unreadable_field) from exc
    if not isinstance(record, dict) or record.get("format") != fmt:
        raise BundleError(f"{path}: field 'format' must be {fmt!r}; {advice}", "format")
    return record


def read_digest(folder: Path) -> dict[str, Any] | None:
    """The parsed ``manifest.digest`` of ``folder`` (``None`` when there is none); BundleError when unreadable."""
    path = folder / DIGEST_FILE
    if not path.exists():
        return None
    advice = ("the digest file is damaged: copy the bundle again, or re-export it (fgad-export, fgad-calibrate; "
              "fgad-sign sign rewrites it for a bundle whose files are intact)")
    record = read_sidecar(path, DIGEST_FORMAT, advice, "manifest_sha256")
    if record.get("version") != DIGEST_VERSION or record.get("algorithm") != "sha256":
        raise BundleError(
            f"{path}: field 'version' is {record.get('version')!r} (algorithm {record.get('algorithm')!r}), but this "
            f"fgad reads version {DIGEST_VERSION} (sha256); upgrade fgad or re-export the bundle",
            "version",
        )
    digest = record.get("manifest_sha256")
    if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise BundleError(f"{path}: field 'manifest_sha256' must be a 64-digit lowercase hex sha256; {advice}",
                          "manifest_sha256")
    if not isinstance(record.get("fields", {}), dict):
        record["fields"] = {}
    return record
