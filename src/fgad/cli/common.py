"""Shared CLI plumbing: logging set-up, the output-path check every command runs before it starts, and turning
known errors into one clear line."""

from __future__ import annotations

import errno
import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


class _DropExpectedNotices(logging.Filter):
    """open_clip logs its loading steps on the root logger: keep its warnings, drop its INFO
    chatter and the random-initialisation notice (expected with --pretrained none)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "open_clip" in record.pathname and record.levelno < logging.WARNING:
            return False
        return not str(record.msg).startswith("No pretrained weights loaded")


#: Third-party loggers that are chatty at INFO: shown with -v only.
NOISY_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx", "torch.export", "torch._export", "torch._dynamo",
                 "torch._inductor")


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # The ONNX exporter's passes log every step (initializer deduplication alone: hundreds of lines)
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)
    if not verbose:
        logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # CPU-feature probing notices
        for handler in logging.getLogger().handlers:
            handler.addFilter(_DropExpectedNotices())


class OutputPathUsageError(click.ClickException):
    """An output path the command cannot write: exit status 2 (a usage problem), shown as one ``Error:`` line
    (no usage block: the options were well-formed, the path is what is wrong)."""

    exit_code = 2


#: (option, path or None, kind) with kind one of fgad.core.outputs.OUTPUT_KINDS
Output = tuple[str, str | os.PathLike[str] | None, str]


def check_outputs(*outputs: Output) -> None:
    """Check every output path of a command before it starts working (fgad.core.outputs.check_output_path);
    the first one that cannot be written raises :class:`OutputPathUsageError` naming its option. A ``"bundle"``
    must also be a folder a bundle may replace (absent, empty, or an earlier bundle)."""
    from fgad.core.outputs import OutputPathError, check_output_path

    for option, path, kind in outputs:
        if path is None:
            continue
        try:
            check_output_path(path, kind)
            if kind == "bundle":
                from fgad.bundle.staging import check_target

                check_target(Path(path))
        except (OutputPathError, FileExistsError) as err:
            raise OutputPathUsageError(f"{option} {err}") from None


#: errnos that mean the disk or the file system refused (full, read-only, no permission, a path that is not
#: what it should be), not a bug: reported as one line
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM,
                         errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.ENOENT, errno.ENAMETOOLONG, errno.EIO})


def _is_disk_error(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in DISK_ERRNOS


def friendly_errors(fn: F) -> F:
    """Report user errors (bad config, missing data or weights) and refusals of the disk (full, read-only, a
    folder that vanished) as one line, not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            raise click.Abort() from None
        except Exception as err:
            if not (isinstance(err, _user_errors()) or _is_disk_error(err)):
                raise
            message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
            if isinstance(err, OSError) and err.errno is not None and err.strerror:
                message = f"{err.filename}: {err.strerror}" if err.filename else err.strerror
            raise click.ClickException(str(message)) from err

    return wrapper  # type: ignore[return-value]


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean bad input, not a bug. Torch-side ones only if their module is loaded,
    so the torch-free runtime never imports torch just to catch an error."""
    import sys

    from fgad.config import ConfigError

    errors: list[type[BaseException]] = [ConfigError, FileNotFoundError, KeyError, ValueError]
    for module, name in (
        ("fgad.backbone.clip_loader", "WeightsUnavailableError"),
        ("fgad.backbone.checkpoint", "CheckpointError"),
        ("fgad.bundle", "BundleError"),
    ):
        if module in sys.modules:
            errors.append(getattr(sys.modules[module], name))
    return tuple(errors)


def split_classes(values: tuple[str, ...]) -> list[str] | None:
    """--classes a,b --classes c -> [a, b, c]; nothing -> None (all classes)."""
    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    return names or None
