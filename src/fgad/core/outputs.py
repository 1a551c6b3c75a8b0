"""Output paths: checked before any work starts, and JSON-lines files that never end in half a line.

Every command that writes files checks each output path with :func:`check_output_path` before it loads a
model or reads a frame, so a path it cannot write is refused at once (in one line, by the CLIs: see
``fgad.cli.common.check_outputs``) instead of after a long export or half-way through a video. Four kinds:

* ``"append"``: a file that is created or appended to (``fgad-run --jsonl``). It may exist (a regular file
  opened for appending without changing it, or a device/FIFO such as ``/dev/stdout``); it may not be a folder.
* ``"file"``: a file written atomically (:mod:`fgad.core.atomic`: a temporary file next to it, renamed onto
  it), so its *folder* must be writable; it may not be a folder.
* ``"dir"``: a folder that files are written into (``--save``, ``fgad-eval --out``). It may not be a file.
* ``"bundle"``: a folder built next to itself and renamed onto its path (the bundle writers,
  ``fgad.bundle.staging``): its *parent* must be writable; it may not be a file.

A path that does not exist yet must be creatable: its nearest existing ancestor is a folder in which a file
can be created (probed by creating and removing a hidden empty file, which is what root, a read-only mount or
an ACL really allow; permission bits alone would mislead) and whose file system has space left.

During a run, :class:`LineWriter` appends whole lines: each goes out with ``os.write`` (no user-space buffer,
so every line is on its way to the disk when ``write_line`` returns), and a line the file system takes only in
part (a full disk, a quota) is cut off again, so the file ends with the last complete line.
:func:`require_folder` and the writer's own check turn an output that vanished during the run into an
:class:`OutputVanishedError` instead of lines written into a deleted file or a folder silently re-created.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path
from types import TracebackType

__all__ = [
    "OUTPUT_KINDS",
    "LineWriter",
    "OutputPathError",
    "OutputVanishedError",
    "check_output_path",
    "require_folder",
]

#: the kinds of output path :func:`check_output_path` knows
OUTPUT_KINDS = ("append", "file", "dir", "bundle")


class OutputPathError(ValueError):
    """An output path that cannot be written; ``path`` is the path as given."""

    def __init__(self, message: str, path: str | os.PathLike[str]) -> None:
        super().__init__(message)
        self.path = Path(path)


class OutputVanishedError(FileNotFoundError):
    """An output file or folder that was removed (or replaced) while a run was writing to it."""

    def __init__(self, message: str, path: str | os.PathLike[str]) -> None:
        super().__init__(message)
        self.path = Path(path)


def _reason(err: OSError) -> str:
    return err.strerror or str(err)


def _nearest_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (a broken symbolic link counts as existing)."""
    current = path
    while not os.path.lexists(current) and current.parent != current:
        current = current.parent
    return current


def _probe_folder(folder: Path, given: Path) -> None:
    """Raise OutputPathError unless a file can be created in ``folder`` and its file system has space left."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".fgad-write-check-", dir=folder)
    except OSError as err:
        raise OutputPathError(f"{given}: cannot write in {folder}: {_reason(err)}", given) from None
    os.close(fd)
    os.unlink(probe)
    _check_space(folder, given)


def _check_space(folder: Path, given: Path) -> None:
    statvfs = getattr(os, "statvfs", None)
    if statvfs is None:  # Windows
        return
    try:
        info = statvfs(folder)
    except OSError:
        return
    if info.f_bavail == 0 and info.f_blocks > 0:
        raise OutputPathError(f"{given}: no space left on the device of {folder} (0 bytes available)", given)


def _check_creatable(path: Path, given: Path) -> None:
    """``path`` does not exist: its nearest existing ancestor must be a folder we can write in."""
    ancestor = _nearest_existing(path)
    if os.path.islink(ancestor) and not os.path.exists(ancestor):
        raise OutputPathError(f"{given}: cannot create it: {ancestor} is a broken symbolic link", given)
    if not ancestor.is_dir():
        raise OutputPathError(f"{given}: cannot create it: {ancestor} is a file, not a folder", given)
    _probe_folder(ancestor, given)


def check_output_path(path: str | os.PathLike[str], kind: str) -> None:
    """Raise :class:`OutputPathError` (one sentence naming ``path`` and the reason) unless ``path`` can be
    written as ``kind`` (``"append"``, ``"file"``, ``"dir"`` or ``"bundle"``, see the module docstring). Creates
    nothing and changes nothing: missing folders are left for the writer to create."""
    if kind not in OUTPUT_KINDS:
        raise ValueError(f"check_output_path: kind must be one of {', '.join(OUTPUT_KINDS)}, got {kind!r}")
    given = Path(path)
    target = Path(os.path.abspath(given))
    exists = os.path.lexists(target)
    if exists and os.path.islink(target) and not os.path.exists(target):
        raise OutputPathError(f"{given} is a broken symbolic link", given)

    if kind in ("append", "file") and target.is_dir():
        raise OutputPathError(f"{given} is a folder; give the path of a file", given)
    if kind == "append":
        if not exists:
            _check_creatable(target, given)
        elif target.is_file():
            try:
                with open(target, "a", encoding="utf-8"):  # appending nothing changes nothing
                    pass
            except OSError as err:
                raise OutputPathError(f"{given}: cannot write it: {_reason(err)}", given) from None
            _check_space(target.parent, given)
        elif not os.access(target, os.W_OK):  # a device or FIFO (/dev/stdout): opened only when the run starts
            raise OutputPathError(f"{given}: cannot write it: permission denied", given)
        return

    if kind in ("dir", "bundle") and exists and not target.is_dir():
        raise OutputPathError(f"{given} exists and is not a folder", given)
    if kind == "dir":
        if exists:
            _probe_folder(target, given)
        else:
            _check_creatable(target, given)
        return
    # file, bundle: built next to the target (a temporary file or folder), then renamed onto it
    parent = target.parent
    if os.path.lexists(parent):
        if not parent.is_dir():
            raise OutputPathError(f"{given}: cannot create it: {parent} is a file, not a folder", given)
        _probe_folder(parent, given)
    else:
        _check_creatable(parent, given)


def require_folder(path: str | os.PathLike[str], what: str = "output folder") -> None:
    """Raise :class:`OutputVanishedError` when the folder ``path`` no longer exists (removed during a run)."""
    if not os.path.isdir(path):
        raise OutputVanishedError(f"{what} {path} was removed during the run", path)


class LineWriter:
    """Append whole lines to ``path`` (created with its folders if missing); a context manager.

    ``write_line`` writes one line (a newline is added when missing) with unbuffered ``os.write`` calls; if
    the file system refuses part of it (``ENOSPC``, ``EDQUOT``, ``EFBIG``, ...) or the write is interrupted,
    the file is truncated back to where the line began and the error propagates, so a reader never sees half a
    line. After each line the path is checked to still name the open file: a file deleted or replaced during
    the run raises :class:`OutputVanishedError` (that line is not counted). ``lines`` counts the lines written.
    One writer per file: truncation assumes nobody else appends meanwhile.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
        self._fd: int | None = os.open(self.path, flags, 0o666)
        info = os.fstat(self._fd)
        self._identity = (info.st_dev, info.st_ino)
        self._regular = stat.S_ISREG(info.st_mode)
        self.lines = 0

    def _write_some(self, data: memoryview) -> int:
        """One ``os.write`` call (a seam for tests that simulate a full disk)."""
        assert self._fd is not None
        return os.write(self._fd, data)

    def write_line(self, text: str) -> None:
        if self._fd is None:
            raise ValueError(f"write to closed LineWriter({self.path})")
        data = text.encode("utf-8")
        if not data.endswith(b"\n"):
            data += b"\n"
        start = os.fstat(self._fd).st_size if self._regular else None
        view = memoryview(data)
        try:
            while view:
                written = self._write_some(view)
                if written <= 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
                view = view[written:]
        except BaseException as err:
            if start is not None:
                try:
                    os.ftruncate(self._fd, start)
                except OSError:
                    pass
            if isinstance(err, OSError) and err.errno is not None and err.filename is None:
                raise OSError(err.errno, err.strerror, str(self.path)) from err
            raise
        self._check_still_there()
        self.lines += 1

    def _check_still_there(self) -> None:
        try:
            info = os.stat(self.path)
        except OSError:
            raise OutputVanishedError(f"{self.path} was removed during the run", self.path) from None
        if (info.st_dev, info.st_ino) != self._identity:
            raise OutputVanishedError(f"{self.path} was replaced by another file during the run", self.path)

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> LineWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
