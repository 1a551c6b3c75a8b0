"""Shared CLI plumbing: logging set-up and turning known errors into one clear line."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # open_clip announces every random init at WARNING; it is expected here
    logging.getLogger("root").setLevel(logging.ERROR if not verbose else logging.DEBUG)


def friendly_errors(fn: F) -> F:
    """Report user errors (bad config, missing data or weights) as one line, not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from fgad.config import ConfigError

        user_errors: tuple[type[BaseException], ...] = (ConfigError, FileNotFoundError, KeyError, ValueError)
        try:
            from fgad.models.clip_loader import WeightsUnavailableError
            from fgad.train.checkpoint import CheckpointError

            user_errors += (WeightsUnavailableError, CheckpointError)
        except ImportError:  # the runtime-only install has no torch
            pass
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            raise click.Abort() from None
        except user_errors as err:
            message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
            raise click.ClickException(str(message)) from err

    return wrapper  # type: ignore[return-value]


def split_classes(values: tuple[str, ...]) -> list[str] | None:
    """--classes a,b --classes c -> [a, b, c]; nothing -> None (all classes)."""
    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    return names or None
