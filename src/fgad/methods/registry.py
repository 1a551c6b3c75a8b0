"""The methods fgad knows, by name: the one place that names them.

Built-in methods are listed by the module holding their torch-free spec (a :class:`~fgad.methods.base.Method`
named ``METHOD``), imported on first use, so this module imports nothing of fgad at load time and every
layer that resolves a method may import it. Another package adds a method with :func:`register_method`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from fgad.methods.base import Method

__all__ = ["DEFAULT_METHOD", "get_method", "load_any_checkpoint", "method_names", "method_of_checkpoint",
           "register_method"]

#: name -> module with its spec (``METHOD``)
_BUILTIN: dict[str, str] = {
    "filo": "fgad.methods.filo.spec",
    "finegrained": "fgad.methods.finegrained.spec",
}
#: the method of a config or checkpoint that names none
DEFAULT_METHOD = "filo"
_LOADED: dict[str, Method] = {}


def register_method(method: Method) -> None:
    """Add (or replace) a method; its spec's ``name`` is the config's ``model.method``."""
    _LOADED[method.name] = method


def method_names() -> list[str]:
    return sorted(set(_BUILTIN) | set(_LOADED))


def get_method(name: str) -> Method:
    """The method called ``name``; ValueError listing the known ones otherwise."""
    if name not in _LOADED:
        if name not in _BUILTIN:
            raise ValueError(f"unknown method {name!r}: use one of {method_names()}")
        method = importlib.import_module(_BUILTIN[name]).METHOD
        if method.name != name:
            raise RuntimeError(f"{_BUILTIN[name]} defines method {method.name!r}, registered as {name!r}")
        _LOADED[name] = method
    return _LOADED[name]


def config_sections() -> dict[str, type]:
    """Every method's own config section: key under ``model:`` -> its frozen dataclass."""
    sections = {}
    for name in method_names():
        section = get_method(name).config_section
        if section is not None:
            sections[section[0]] = section[1]
    return sections


def method_of_checkpoint(ckpt_dir: str | Path) -> Method:
    """The method whose marker file the checkpoint holds, else :data:`DEFAULT_METHOD`."""
    for name in method_names():
        method = get_method(name)
        if method.checkpoint_marker and (Path(ckpt_dir) / method.checkpoint_marker).is_file():
            return method
    return get_method(DEFAULT_METHOD)


def load_any_checkpoint(
    ckpt_dir: str | Path,
    pretrained: str | None = None,
    combine_with: str | Path | None = None,
    combine: bool = True,
) -> tuple[Any, Any, dict[str, Any]]:
    """Any method's checkpoint, by :func:`method_of_checkpoint`: (model, Config, meta).

    ``combine_with`` / ``combine``: FineGrainedAD's combined mode (evaluation), see that method's
    ``load_checkpoint``; other methods refuse ``combine_with``.
    """
    method = method_of_checkpoint(ckpt_dir)
    return method.load_checkpoint(ckpt_dir, pretrained=pretrained, combine_with=combine_with, combine=combine)
