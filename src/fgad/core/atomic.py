"""Atomic file writes: a target path either keeps its old content or gets the complete new one.

Every writer goes through :func:`atomic_path`, which hands out a temporary path in the *same
directory* as the target (so the final ``os.replace`` is a same-filesystem rename, which is atomic
on POSIX and Windows) and with the *same suffix* (so encoders such as ``cv2.imwrite`` that pick the
format from the extension still work).
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "nan_to_none",
]


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` only if the body succeeds.

    The body must create the file at the yielded path (e.g. ``cv2.imwrite(str(tmp), img)``).
    Parent directories are created. If the body raises, the temporary file (if any was written) is
    removed and the exception propagates; the target is left untouched. If the body finishes
    without creating the temporary file, a ``FileNotFoundError`` naming the target is raised.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Only a unique name is chosen here, no file is created: the body creates it, so it gets the usual
    # umask-derived permissions (mkstemp would give 0600) and "the body wrote nothing" is detectable.
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp{target.suffix}")
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"atomic write to {target} produced no file (expected {tmp})")
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, flushing it to disk before the rename.

    An ``OSError`` of the write (``ENOSPC``, ``EROFS``, ...) is raised again with ``path`` as its file name
    (same errno, so the same subclass); the temporary file is removed either way.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"atomic_write_bytes({path!s}): data must be bytes-like, got {type(data).__name__}")
    try:
        with atomic_path(path) as tmp, open(tmp, "xb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as err:
        # a full disk or a read-only folder: name the target, not the temporary file (or nothing, as write() does)
        if err.errno is not None and (err.filename is None
                                       or Path(err.filename).name.startswith(f".{Path(path).name}.")):
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (UTF-8 by default)."""
    if not isinstance(text, str):
        raise TypeError(f"atomic_write_text({path!s}): text must be str, got {type(text).__name__}")
    atomic_write_bytes(path, text.encode(encoding))


def nan_to_none(obj: Any) -> Any:
    """Return a copy of ``obj`` with every NaN float (also inside dicts/lists/tuples) replaced by None.

    NaN is not valid JSON; metrics use NaN for "undefined" (e.g. AUROC of a single-class set), and
    ``null`` is the portable way to say that. Numpy scalars and arrays are converted to Python types.
    Infinities are left alone (``json`` still writes them as ``Infinity``).
    """
    if isinstance(obj, Mapping):
        return {k: nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [nan_to_none(v) for v in obj]
    tolist = getattr(obj, "tolist", None)  # numpy scalars and arrays, without importing numpy
    if callable(tolist) and type(obj).__module__ == "numpy":
        return nan_to_none(tolist())
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


def atomic_write_json(path: str | os.PathLike[str], obj: Any, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON to ``path`` atomically.

    Key order is preserved (no sorting). NaN floats are written as ``null`` (see :func:`nan_to_none`),
    so the file is strict JSON that any parser accepts; reading it back yields ``None`` where the
    value was NaN.
    """
    text = json.dumps(nan_to_none(obj), indent=indent, sort_keys=False, ensure_ascii=False)
    atomic_write_text(path, text + "\n")
