"""Shared CLI plumbing: logging set-up and turning known errors into one clear line."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
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


def friendly_errors(fn: F) -> F:
    """Report user errors (bad config, missing data or weights) as one line, not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            raise click.Abort() from None
        except Exception as err:
            if not isinstance(err, _user_errors()):
                raise
            message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
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
