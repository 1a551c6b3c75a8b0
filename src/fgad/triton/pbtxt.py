"""Writing Triton's ``config.pbtxt`` (protobuf text format of ``inference.ModelConfig``) from plain values.

A config is a dict: a scalar value becomes ``key: value``, a dict ``key { ... }``, a list of dicts one
``key { ... }`` entry per item (repeated messages and maps alike), a list of scalars ``key: [a, b]``. Strings
are quoted and escaped; enum values (``TYPE_FP32``, ``KIND_CPU``) are :class:`Enum` so they stay bare. Nothing
else is accepted, so a value read from a bundle can never break out of its field.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["Enum", "dumps"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Enum(str):
    """An enum constant of the ModelConfig proto (written bare, e.g. ``TYPE_FP32``)."""

    def __new__(cls, value: str) -> Enum:
        if not _NAME.match(value):
            raise ValueError(f"not an enum constant: {value!r}")
        return super().__new__(cls, value)


def _quote(text: str) -> str:
    out = []
    for ch in text:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\{ord(ch):03o}")
        else:
            out.append(ch)
    return '"' + "".join(out).encode("utf-8").decode("utf-8") + '"'


def _scalar(value: Any, where: str) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"config field {where}: {value} is not finite")
        return repr(value)
    if isinstance(value, str):
        return _quote(value)
    raise TypeError(f"config field {where}: {type(value).__name__} cannot be written to config.pbtxt")


def _emit(config: Mapping[str, Any], indent: int, lines: list[str], prefix: str) -> None:
    pad = "  " * indent
    for key, value in config.items():
        if not _NAME.match(key):
            raise ValueError(f"config field name {key!r} is not a proto field name")
        where = f"{prefix}{key}"
        if value is None:
            continue
        if isinstance(value, Mapping):
            lines.append(f"{pad}{key} {{")
            _emit(value, indent + 1, lines, where + ".")
            lines.append(f"{pad}}}")
        elif isinstance(value, Sequence) and not isinstance(value, str):
            if all(isinstance(item, Mapping) for item in value) and value:
                for item in value:
                    lines.append(f"{pad}{key} {{")
                    _emit(item, indent + 1, lines, where + ".")
                    lines.append(f"{pad}}}")
            else:
                lines.append(f"{pad}{key}: [{', '.join(_scalar(v, where) for v in value)}]")
        else:
            lines.append(f"{pad}{key}: {_scalar(value, where)}")


def dumps(config: Mapping[str, Any]) -> str:
    """The text of a ``config.pbtxt`` for ``config`` (see the module docstring)."""
    lines: list[str] = []
    _emit(config, 0, lines, "")
    return "\n".join(lines) + "\n"
