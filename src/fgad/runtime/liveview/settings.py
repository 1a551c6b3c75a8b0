"""The live view's configuration: where it listens, who may use it, where a threshold set in the page is kept.

Stdlib only, so that parsing ``--serve`` costs nothing; the server itself lives in :mod:`.server`.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from fgad.core.atomic import atomic_write_json

__all__ = [
    "ViewSettings",
    "is_loopback_host",
    "load_persisted_threshold",
    "parse_serve_address",
    "persist_threshold",
    "validate_threshold",
]

#: What a token may hold: it travels in a header, a URL query and a cookie, unescaped.
_TOKEN = re.compile(r"[A-Za-z0-9._~+/=-]{8,512}")
#: Key of the threshold in the settings file; other keys in that file are kept when it is rewritten.
THRESHOLD_KEY = "threshold"


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (``127.0.0.0/8``, ``::1``); a bind to anything else is public."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything: treat it as public


@dataclass(frozen=True)
class ViewSettings:
    """Where the live view listens and how it guards itself.

    A ``host`` that is not loopback needs a ``token``: the view shows production images and can change the
    decision threshold, so it is never open on a network without one. With a token set (on any host), every
    request must carry it (``Authorization: Bearer <token>`` or ``?token=<token>``).
    """

    host: str = "127.0.0.1"
    port: int = 8080  #: 0 picks a free port (the URL returned by ``LiveView.start`` names it)
    token: str | None = None
    settings_path: Path | None = None  #: JSON file a threshold changed in the page is persisted to (atomically)
    gallery_size: int = 12  #: how many of the last NG frames the gallery keeps
    max_stream_clients: int = 16  #: concurrent MJPEG streams; one more gets 503
    stale_after_s: float = 10.0  #: /health marks a source stale when its last frame is older than this
    jpeg_quality: int = 80
    max_width: int = 1280  #: overlays wider than this are scaled down before JPEG encoding

    def __post_init__(self) -> None:
        if not isinstance(self.host, str):
            raise ValueError(f"serve host must be a string, got {self.host!r}")
        if not isinstance(self.port, int) or isinstance(self.port, bool) or not 0 <= self.port <= 65535:
            raise ValueError(f"serve port must be an integer in 0..65535 (0 = a free port), got {self.port!r}")
        if self.token is not None and (not isinstance(self.token, str) or not _TOKEN.fullmatch(self.token)):
            raise ValueError("serve token must be at least 8 characters of A-Z a-z 0-9 . _ ~ + / = - "
                             "(e.g. `openssl rand -hex 16`)")
        if self.token is None and not is_loopback_host(self.host):
            raise ValueError(
                f"serving the live view on {self.host!r} (not loopback) needs a token: pass --serve-token "
                "(every request then has to carry it), or bind to 127.0.0.1")
        if self.settings_path is not None and not isinstance(self.settings_path, Path):
            object.__setattr__(self, "settings_path", Path(self.settings_path))
        for name, low, high in (("gallery_size", 1, 1000), ("max_stream_clients", 1, 1000),
                                ("jpeg_quality", 1, 100), ("max_width", 16, 16384)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise ValueError(f"ViewSettings.{name} must be an integer in {low}..{high}, got {value!r}")
        if not (isinstance(self.stale_after_s, int | float) and self.stale_after_s > 0):
            raise ValueError(f"ViewSettings.stale_after_s must be a positive number, got {self.stale_after_s!r}")


def parse_serve_address(text: str) -> tuple[str, int]:
    """Parse ``--serve``: ``127.0.0.1:8080``, ``[::1]:8080``, ``:8080`` (loopback), ``localhost:0`` (a free port)."""
    raw = text.strip() if isinstance(text, str) else ""
    hint = "expected HOST:PORT, e.g. 127.0.0.1:8080, [::1]:8080 or :8080"
    if not raw:
        raise ValueError(f"serve address is empty: {hint}")
    if raw.startswith("["):
        host, sep, rest = raw[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"serve address {text!r}: an IPv6 host needs brackets and a port, e.g. [::1]:8080")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"serve address {text!r}: {host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = raw.rpartition(":")
        if not sep:
            raise ValueError(f"serve address {text!r} has no port: {hint}")
        if ":" in host:
            raise ValueError(f"serve address {text!r}: write an IPv6 host in brackets, e.g. [::1]:8080")
        host = host or "127.0.0.1"
        if any(c.isspace() for c in host) or "/" in host:
            raise ValueError(f"serve address {text!r}: {host!r} is not a host name or address")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"serve address {text!r}: port {port_text!r} must be a number in 0..65535 ({hint})")
    return host, int(port_text)


def validate_threshold(value: object) -> float:
    """A threshold from the page: a finite JSON number (not a bool, not a string)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(float(value)):
        raise ValueError(f"threshold must be a finite number, got {value!r}")
    return float(value)


def _read_settings(path: Path) -> dict[str, object]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"live-view settings file {path} is not valid JSON ({err}); fix or delete it") from None
    if not isinstance(data, dict):
        raise ValueError(f"live-view settings file {path} must hold a JSON object; fix or delete it")
    return data


def load_persisted_threshold(path: Path) -> float | None:
    """The threshold a previous run's page set, or None when the file or its key is absent.

    A file that exists but is not a JSON object with a finite ``threshold`` raises ``ValueError`` naming it:
    a silently ignored setting would change decisions unnoticed.
    """
    data = _read_settings(Path(path))
    if THRESHOLD_KEY not in data:
        return None
    try:
        return validate_threshold(data[THRESHOLD_KEY])
    except ValueError as err:
        raise ValueError(f"live-view settings file {path}: {err}; fix or delete it") from None


def persist_threshold(path: Path, value: float) -> None:
    """Write ``value`` into the settings file atomically, keeping any other keys it holds."""
    data = _read_settings(Path(path))
    data[THRESHOLD_KEY] = validate_threshold(value)
    atomic_write_json(path, data)
