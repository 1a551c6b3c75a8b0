"""The error every manifest check raises, and the advice most of its messages end with."""

from __future__ import annotations

__all__ = ["REEXPORT", "BundleError"]

#: The usual remedy, appended to messages about a field the exporter wrote wrong or left out.
REEXPORT = "re-export the bundle with fgad-export"


class BundleError(Exception):
    """A bundle the runtime cannot honour. ``field`` is the manifest field at fault (``None`` if none)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field
