"""``manifest.sig``: an Ed25519 signature of the bundle's manifest digest (docs/bundle.md, "Integrity").

Keys are PEM files: a PKCS#8 private key (``fgad-sign keygen KEY``, or ``openssl genpkey -algorithm ed25519
-out KEY``; an encrypted one is opened with the password in ``$FGAD_KEY_PASSWORD``) and its SubjectPublicKeyInfo
public key (``KEY.pub`` from ``fgad-sign keygen``, or ``openssl pkey -in KEY -pubout -out KEY.pub``). A key is
named by its id, the first 16 hex digits of the sha256 of its 32 raw public-key bytes.

What is signed is :data:`SIGNED_CONTEXT` followed by the 32 bytes of the manifest digest
(:func:`fgad.bundle.digest.manifest_digest`). The cryptography is the ``cryptography`` package's
(``pip install 'fgad[sign]'``), imported only when a key is loaded or a signature is checked.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fgad.bundle.digest import read_sidecar
from fgad.bundle.errors import BundleError
from fgad.bundle.spec import SIGNATURE_FILE
from fgad.core.atomic import atomic_write_json

__all__ = [
    "INSTALL_SIGNING",
    "PASSWORD_ENV",
    "SIGNATURE_FORMAT",
    "SIGNED_CONTEXT",
    "SigningError",
    "SigningKey",
    "TrustedKey",
    "generate_key_pair",
    "key_id",
    "load_signing_key",
    "load_trusted_key",
    "read_signature",
    "signed_message",
    "verify_signature",
    "write_signature",
]

SIGNATURE_FORMAT = "fgad-bundle-signature"
SIGNATURE_VERSION = 1
#: Prefix of every signed message: a signature made for something else never verifies as a bundle's.
SIGNED_CONTEXT = b"fgad-bundle-manifest-sha256-v1\x00"
INSTALL_SIGNING = "signing bundles and --trust need the 'cryptography' package: pip install 'fgad[sign]'"
#: Environment variable holding the password of an encrypted private key.
PASSWORD_ENV = "FGAD_KEY_PASSWORD"


class SigningError(ValueError):
    """A key that cannot be used (unreadable, not Ed25519, encrypted without password) or cryptography missing."""


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as exc:
        raise SigningError(f"{INSTALL_SIGNING} ({exc})") from exc
    return serialization, ed25519


def key_id(public_raw: bytes) -> str:
    """The id of a public key: the first 16 hex digits of the sha256 of its 32 raw bytes."""
    return hashlib.sha256(public_raw).hexdigest()[:16]


def signed_message(digest: str) -> bytes:
    """The bytes a bundle signature signs: :data:`SIGNED_CONTEXT` + the 32 digest bytes."""
    return SIGNED_CONTEXT + bytes.fromhex(digest)


def _raw_public(public: Any) -> bytes:
    serialization, _ = _crypto()
    raw: bytes = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw


@dataclass(frozen=True)
class TrustedKey:
    """An Ed25519 public key a bundle's signature may be made with (``fgad-run --trust``)."""

    public: Any  # cryptography's Ed25519PublicKey
    raw: bytes
    source: str

    @property
    def key_id(self) -> str:
        return key_id(self.raw)

    def verifies(self, signature: bytes, digest: str) -> bool:
        from cryptography.exceptions import InvalidSignature

        try:
            self.public.verify(signature, signed_message(digest))
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True)
class SigningKey:
    """An Ed25519 private key (``--sign KEY``)."""

    private: Any  # cryptography's Ed25519PrivateKey
    source: str

    def trusted(self) -> TrustedKey:
        """Its public half, as a trusted key."""
        public = self.private.public_key()
        return TrustedKey(public, _raw_public(public), f"{self.source} (public half)")

    @property
    def key_id(self) -> str:
        return self.trusted().key_id

    def sign(self, digest: str) -> dict[str, Any]:
        """The ``manifest.sig`` record of a manifest digest."""
        mine = self.trusted()
        return {
            "format": SIGNATURE_FORMAT,
            "version": SIGNATURE_VERSION,
            "algorithm": "ed25519",
            "manifest_sha256": digest,
            "key_id": mine.key_id,
            "public_key": base64.b64encode(mine.raw).decode("ascii"),
            "signature": base64.b64encode(self.private.sign(signed_message(digest))).decode("ascii"),
        }


def _read_pem(path: str | os.PathLike[str], what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SigningError(f"{what} {path} cannot be read ({exc.strerror or exc})") from exc


def load_signing_key(path: str | os.PathLike[str]) -> SigningKey:
    """The Ed25519 private key in the PEM file ``path``; SigningError names the file and what is wrong."""
    serialization, ed25519 = _crypto()
    data = _read_pem(path, "signing key")
    password = os.environ.get(PASSWORD_ENV)
    try:
        key = serialization.load_pem_private_key(data, password=password.encode() if password else None)
    except TypeError as exc:  # encrypted without a password, or a password for an unencrypted key
        raise SigningError(f"signing key {path}: {exc}; set ${PASSWORD_ENV} to its password (or give an "
                           "unencrypted key)") from exc
    except (ValueError, binascii.Error) as exc:
        raise SigningError(f"signing key {path} is not a readable PEM private key ({exc}); make one with "
                           "fgad-sign keygen KEY or openssl genpkey -algorithm ed25519 -out KEY") from exc
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise SigningError(f"signing key {path} is a {type(key).__name__}, not an Ed25519 key; make one with "
                           "fgad-sign keygen KEY or openssl genpkey -algorithm ed25519 -out KEY")
    return SigningKey(key, str(path))


def load_trusted_key(path: str | os.PathLike[str]) -> TrustedKey:
    """The Ed25519 public key in the PEM file ``path`` (``--trust``)."""
    serialization, ed25519 = _crypto()
    data = _read_pem(path, "trusted key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, binascii.Error) as exc:
        hint = " (that is a private key: give its public half, KEY.pub)" if b"PRIVATE KEY" in data else ""
        raise SigningError(f"trusted key {path} is not a readable PEM public key{hint} ({exc})") from exc
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise SigningError(f"trusted key {path} is a {type(key).__name__}, not an Ed25519 public key")
    return TrustedKey(key, _raw_public(key), str(path))


def generate_key_pair(private_path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """A new Ed25519 key pair: the private key at ``private_path`` (PEM, mode 0600, unencrypted unless
    ``$FGAD_KEY_PASSWORD`` is set) and the public key at ``<private_path>.pub``; refuses to overwrite either."""
    serialization, ed25519 = _crypto()
    private_file = Path(private_path)
    public_file = private_file.with_name(private_file.name + ".pub")
    for path in (private_file, public_file):
        if path.exists():
            raise FileExistsError(f"{path} exists; choose another name (a key is never overwritten)")
    key = ed25519.Ed25519PrivateKey.generate()
    password = os.environ.get(PASSWORD_ENV)
    encryption = (serialization.BestAvailableEncryption(password.encode()) if password
                  else serialization.NoEncryption())
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    private_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private_pem)
    public_file.write_bytes(public_pem)
    return private_file, public_file


def write_signature(folder: Path, key: SigningKey, digest: str) -> dict[str, Any]:
    """Sign ``digest`` with ``key`` into ``folder/manifest.sig``; returns the record."""
    record = key.sign(digest)
    atomic_write_json(folder / SIGNATURE_FILE, record)
    return record


_SIG_ADVICE = "get the bundle again from whoever signed it, or re-sign it (fgad-sign sign)"


def read_signature(folder: Path) -> dict[str, Any] | None:
    """The parsed ``manifest.sig`` of ``folder`` (``None`` when the bundle is unsigned); BundleError when it is
    not a signature record (names the field)."""
    path = folder / SIGNATURE_FILE
    if not path.exists():
        return None
    record = read_sidecar(path, SIGNATURE_FORMAT, _SIG_ADVICE, "signature")
    if record.get("version") != SIGNATURE_VERSION or record.get("algorithm") != "ed25519":
        raise BundleError(
            f"{path}: field 'algorithm' is {record.get('algorithm')!r} (version {record.get('version')!r}), but this "
            f"fgad verifies version {SIGNATURE_VERSION} ed25519 signatures; upgrade fgad or re-sign the bundle",
            "algorithm",
        )
    for name, size in (("signature", 64), ("public_key", 32)):
        try:
            value = base64.b64decode(str(record.get(name, "")), validate=True)
        except (binascii.Error, ValueError):
            value = b""
        if len(value) != size:
            raise BundleError(f"{path}: field '{name}' must be {size} base64-encoded bytes; {_SIG_ADVICE}", name)
        record[f"_{name}_bytes"] = value
    if not isinstance(record.get("manifest_sha256"), str):
        raise BundleError(f"{path}: field 'manifest_sha256' is missing; {_SIG_ADVICE}", "manifest_sha256")
    return record


def verify_signature(record: dict[str, Any], digest: str, trusted: list[TrustedKey], where: Path) -> TrustedKey:
    """The trusted key that made the signature ``record`` of ``digest``; BundleError naming the field otherwise.

    ``record`` is :func:`read_signature`'s; ``where`` the signature file, for the messages.
    """
    if record["manifest_sha256"] != digest:
        raise BundleError(
            f"{where}: field 'manifest_sha256' is {str(record['manifest_sha256'])[:12]}..., but the manifest's digest "
            f"is {digest[:12]}...: the signature was made for another manifest (manifest.json was changed after it "
            f"was signed); {_SIG_ADVICE}",
            "manifest_sha256",
        )
    signature: bytes = record["_signature_bytes"]
    for key in trusted:
        if key.verifies(signature, digest):
            return key
    names = ", ".join(f"{k.key_id} ({k.source})" for k in trusted)
    claimed = str(record.get("key_id") or key_id(record["_public_key_bytes"]))
    if any(k.key_id == claimed or k.raw == record["_public_key_bytes"] for k in trusted):
        problem = f"does not verify with the trusted key {claimed}: the signature or the manifest was changed"
    else:
        problem = f"was made with key {claimed}, which is not trusted (--trust {names})"
    raise BundleError(f"{where}: field 'signature' {problem}; {_SIG_ADVICE}", "signature")
