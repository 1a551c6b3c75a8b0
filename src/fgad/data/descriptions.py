"""Fine-grained anomaly description banks (the ``A_c`` of FiLo++ FusDes).

A *bank* is a JSON object mapping a class name to a list of short anomaly
phrases, e.g. ``{"bottle": ["a crack on the rim", "contamination inside"]}``.
Each phrase is later placed in the template ``"abnormal {cls} with {phrase}"``,
so it should read naturally after the word "with".

Built-in banks ship as package data in ``fgad/data/banks/*.json`` and are
searched in the order of :data:`BUILTIN_BANKS`. The order matters: ``tile``
exists both in MVTec-AD and in the synthetic demo set, and a plain lookup
resolves it to the MVTec bank. To get the synthetic ``tile`` phrases pass
``banks=["synthetic"]`` so that bank is searched first.

The ``mvtec``, ``visa`` and ``magnetic_tile`` banks describe what can go wrong with each kind of product in general,
written without the benchmarks' defect-type names (zero-shot prompts must not carry test knowledge;
``tests/data/test_bank_overlap.py`` bounds their token overlap with those names). The earlier
phrases, which paraphrased the defect folders, remain as the *oracle* banks :data:`ORACLE_BANKS`
(``mvtec_oracle``, ``visa_oracle``, ``magnetic_tile_oracle``) for ablations: loadable by name,
never searched by default.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Sequence
from functools import cache
from importlib import resources
from pathlib import Path

__all__ = [
    "BUILTIN_BANKS",
    "ORACLE_BANKS",
    "UnknownClassError",
    "anomaly_phrases",
    "display_name",
    "known_classes",
    "load_bank",
]

BUILTIN_BANKS: tuple[str, ...] = ("mvtec", "visa", "magnetic_tile", "synthetic")

#: Banks derived from the benchmarks' defect-folder names (test knowledge): only when asked for by name.
ORACLE_BANKS: tuple[str, ...] = ("mvtec_oracle", "visa_oracle", "magnetic_tile_oracle")

# Names whose dataset spelling does not become a good prompt word by simply
# turning underscores into spaces (e.g. "pcb1" should read as "pcb").
_DISPLAY_OVERRIDES: dict[str, str] = {
    "metal_nut": "metal nut",
    "pcb1": "pcb",
    "pcb2": "pcb",
    "pcb3": "pcb",
    "pcb4": "pcb",
    "macaroni1": "macaroni",
    "macaroni2": "macaroni",
    "pipe_fryum": "pipe fryum",
    "chewinggum": "chewing gum",
    "magnetic_tile": "magnetic tile",
}


class UnknownClassError(KeyError):
    """No description bank has phrases for the requested class.

    Subclasses :class:`KeyError` (callers can keep catching that) but prints
    its message verbatim instead of the quoted repr ``KeyError`` uses.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def display_name(class_name: str) -> str:
    """Return the human-readable name used inside prompts for ``class_name``.

    Dataset-specific spellings are mapped explicitly (``pcb3`` -> ``pcb``,
    ``chewinggum`` -> ``chewing gum``); any other name has its underscores
    replaced by spaces.
    """
    key = class_name.strip()
    if not key:
        raise ValueError("display_name() got an empty class name; pass a dataset class such as 'bottle'.")
    if key in _DISPLAY_OVERRIDES:
        return _DISPLAY_OVERRIDES[key]
    return " ".join(key.replace("_", " ").split())


def _validate_bank(raw: object, source: str) -> dict[str, list[str]]:
    """Check the structure of a decoded bank and return a cleaned copy.

    ``source`` names the file (or built-in bank) in every error message so the
    user knows which file to fix.
    """
    hint = 'expected a JSON object like {"bottle": ["a crack on the rim", "contamination inside"]}'
    if not isinstance(raw, dict):
        raise ValueError(f"Description bank {source}: top level is {type(raw).__name__}; {hint}.")
    if not raw:
        raise ValueError(f"Description bank {source} is empty; {hint}.")
    bank: dict[str, list[str]] = {}
    for key, phrases in raw.items():
        cls = key.strip() if isinstance(key, str) else ""
        if not cls:
            raise ValueError(f"Description bank {source}: class name {key!r} is empty; {hint}.")
        if cls in bank:
            raise ValueError(
                f"Description bank {source}: class {cls!r} appears more than once "
                "(after stripping whitespace); merge its phrases into one list."
            )
        if not isinstance(phrases, list):
            raise ValueError(
                f"Description bank {source}: class {cls!r} maps to {type(phrases).__name__}, "
                "expected a list of phrase strings."
            )
        if not phrases:
            raise ValueError(
                f"Description bank {source}: class {cls!r} has no phrases; add at least one "
                "anomaly phrase or remove the class."
            )
        cleaned: list[str] = []
        seen: set[str] = set()
        for i, phrase in enumerate(phrases):
            if not isinstance(phrase, str):
                raise ValueError(
                    f"Description bank {source}: class {cls!r} phrase #{i} is "
                    f"{type(phrase).__name__} ({phrase!r}); phrases must be strings."
                )
            text = " ".join(phrase.split())
            if not text:
                raise ValueError(
                    f"Description bank {source}: class {cls!r} phrase #{i} is empty; remove it."
                )
            if text.lower() in seen:
                raise ValueError(
                    f"Description bank {source}: class {cls!r} lists the phrase {text!r} twice; "
                    "remove the duplicate."
                )
            seen.add(text.lower())
            cleaned.append(text)
        bank[cls] = cleaned
    return bank


@cache
def _load_builtin(name: str) -> dict[str, tuple[str, ...]]:
    # Read from the package directory fgad/data/banks (works for wheels and
    # editable installs alike); cached because banks are looked up per class.
    ref = resources.files("fgad.data").joinpath("banks", f"{name}.json")
    source = f"built-in bank {name!r} (fgad/data/banks/{name}.json)"
    try:
        text = ref.read_text(encoding="utf-8")
    except FileNotFoundError as exc:  # pragma: no cover - packaging error
        raise FileNotFoundError(
            f"{source} is missing from the installed package; reinstall fgad."
        ) from exc
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:  # pragma: no cover - packaging error
        raise ValueError(f"{source} is not valid JSON: {exc}") from exc
    return {cls: tuple(p) for cls, p in _validate_bank(raw, source).items()}


def load_bank(name_or_path: str | Path) -> dict[str, list[str]]:
    """Load a description bank by built-in name or from a JSON file.

    Args:
        name_or_path: one of :data:`BUILTIN_BANKS` (e.g. ``"mvtec"``) or
            :data:`ORACLE_BANKS`, or the path of a JSON file shaped
            ``{"class": ["phrase", ...]}``.

    Returns:
        A fresh ``{class: [phrase, ...]}`` dict; phrases have surrounding and
        repeated whitespace collapsed.

    Raises:
        FileNotFoundError: the argument is neither a built-in name nor an
            existing file.
        ValueError: the file is not valid JSON or not a valid bank; the
            message names the file and the offending class.
    """
    if isinstance(name_or_path, str) and name_or_path in BUILTIN_BANKS + ORACLE_BANKS:
        return {cls: list(p) for cls, p in _load_builtin(name_or_path).items()}
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"Description bank {str(name_or_path)!r} is neither a built-in bank "
            f"({', '.join(BUILTIN_BANKS + ORACLE_BANKS)}) nor an existing JSON file."
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"Description bank {path} is not valid JSON ({exc}); expected "
            '{"class_name": ["phrase", ...]}.'
        ) from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"Description bank {path} is not UTF-8 text; save it as UTF-8 JSON.") from exc
    return _validate_bank(raw, str(path))


def _search_order(banks: Sequence[str | Path] | None) -> list[str | Path]:
    """User banks first (in the given order), then any built-ins not listed."""
    if banks is None:
        user: list[str | Path] = []
    elif isinstance(banks, (str, Path)):
        user = [banks]  # a lone name/path, not a sequence of characters
    else:
        user = list(banks)
    listed = {b for b in user if isinstance(b, str)}
    return user + [b for b in BUILTIN_BANKS if b not in listed]


def known_classes(banks: Sequence[str | Path] | None = None) -> list[str]:
    """All class names reachable with this bank search order (sorted, unique)."""
    names: set[str] = set()
    for bank in _search_order(banks):
        names.update(load_bank(bank))
    return sorted(names)


def anomaly_phrases(class_name: str, banks: Sequence[str | Path] | None = None) -> list[str]:
    """Return the anomaly phrases ``A_c`` for ``class_name``.

    Banks are searched user-supplied first (built-in names or JSON paths, in
    the given order), then the remaining :data:`BUILTIN_BANKS`; the first bank
    containing the class wins. Within a bank an exact key match is preferred,
    otherwise a case-insensitive one is accepted.

    Raises:
        UnknownClassError (a ``KeyError``): no bank has the class; the message
            lists close matches and explains how to supply a bank.
    """
    key = class_name.strip()
    order = _search_order(banks)
    all_names: list[str] = []
    for bank_ref in order:
        bank = load_bank(bank_ref)
        if key in bank:
            return list(bank[key])
        folded = {cls.lower(): cls for cls in bank}
        if key.lower() in folded:
            return list(bank[folded[key.lower()]])
        all_names.extend(bank)
    unique = sorted(set(all_names))
    close = difflib.get_close_matches(key, unique, n=3, cutoff=0.6)
    close += [n for n in difflib.get_close_matches(key.lower(), unique, n=3, cutoff=0.6) if n not in close]
    suggestion = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    searched = ", ".join(str(b) for b in order)
    raise UnknownClassError(
        f"No anomaly description bank has class {class_name!r} (searched: {searched}).{suggestion} "
        'For a new product, write a JSON file like {"' + (key or "my_part")
        + '": ["a scratch on the surface", "a missing screw"]} and pass its path in `banks`.'
    )
