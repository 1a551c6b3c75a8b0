"""MFSC caption records (METHOD.md section 2.2): schema, validation, shipped records, defect phrases.

One record describes what a *normal* image of one product class looks like, at three levels:

* ``Level_1`` (image view): the foreground noun phrase and the background;
* ``Level_2`` (foreground view): 1 to 4 entities with their number and location, and one
  sentence on how they relate;
* ``Level_3`` (component view): per entity its direction, colour, texture, shape and a sentence;

plus a whole-image ``caption``. On disk a record is JSON in the layout of METHOD.md 2.2::

    {"class_name": "toothbrush", "dataset": "mvtec",
     "Level_1": [{"foreground": "toothbrush", "background": "pure black"}],
     "Level_2": [{"entity": [...], "number": [...], "location": [...], "relation": "..."}],
     "Level_3": [{"direction": [...], "color": [...], "texture": [...], "shape": [...],
                  "entity_caption": [...]}],
     "caption": "..."}

Every list of ``Level_2``/``Level_3`` has one value per entity, in the order of ``entity``.
Colours, textures, shapes, locations and numbers come from the global vocabularies in
``fgad/data/captions/vocabulary.json`` (:data:`COLORS`, :data:`TEXTURES`, :data:`SHAPES`,
:data:`LOCATIONS`, :data:`NUMBERS`); a colour, texture or shape field may join several words with
``" and "`` ("blue and white"). MLLP (METHOD.md 2.3) relies on the texts containing the words it
replaces, so validation also checks that the caption contains the foreground (case-sensitive),
that every entity sentence names its entity, and that the relation names at least one entity.

Besides the levels, a file may carry ``class_name``, ``dataset`` (the description bank the class
belongs to: ``mvtec``, ``visa``, ``magnetic_tile``, ``synthetic``), ``draft`` (true for a record
drafted by ``fgad-captions draft`` that nobody has reviewed yet) and comment keys starting with
``_``. Records ship as ``fgad/data/captions/*.json``; a class name that exists in two datasets
(``tile``: MVTec-AD and the synthetic set) resolves in the order of
:data:`fgad.data.descriptions.BUILTIN_BANKS` unless ``dataset`` is given, as with description banks.

This module is numpy- and torch-free.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from fgad.data.descriptions import (
    BUILTIN_BANKS,
    ORACLE_BANKS,
    UnknownClassError,
    anomaly_phrases,
    known_classes,
    load_bank,
)

__all__ = [
    "COLORS",
    "LOCATIONS",
    "MAX_DEFECT_PHRASES",
    "MAX_ENTITIES",
    "MIN_DEFECT_PHRASES",
    "NUMBERS",
    "SHAPES",
    "TEXTURES",
    "CaptionError",
    "CaptionRecord",
    "Entity",
    "available_captions",
    "caption_from_dict",
    "caption_to_dict",
    "defect_phrases",
    "load_caption",
    "read_caption_file",
    "split_values",
]

MAX_ENTITIES = 4
MIN_DEFECT_PHRASES = 2
MAX_DEFECT_PHRASES = 7
#: Joins several vocabulary words in one colour/texture/shape field.
JOINER = " and "
#: Appended (in this order) when a description bank has fewer than MIN_DEFECT_PHRASES phrases.
GENERIC_DEFECT_PHRASES: tuple[str, ...] = ("with a defect", "with damage")

_LEVELS = ("Level_1", "Level_2", "Level_3", "caption")
_METADATA = ("class_name", "dataset", "draft")
_LEVEL_FIELDS: dict[str, tuple[str, ...]] = {
    "Level_1": ("foreground", "background"),
    "Level_2": ("entity", "number", "location", "relation"),
    "Level_3": ("direction", "color", "texture", "shape", "entity_caption"),
}
# Per-entity list fields, in the order they are checked and written.
_PER_ENTITY: tuple[tuple[str, str], ...] = (
    ("Level_2", "number"),
    ("Level_2", "location"),
    ("Level_3", "direction"),
    ("Level_3", "color"),
    ("Level_3", "texture"),
    ("Level_3", "shape"),
    ("Level_3", "entity_caption"),
)
_VOCABULARY_FILE = "vocabulary.json"


class CaptionError(ValueError):
    """A caption record (or the vocabulary) is invalid or missing; the message names file and field."""


@dataclass(frozen=True)
class Entity:
    """One foreground entity of a class (a column of the ``Level_2``/``Level_3`` lists)."""

    name: str  # noun phrase, e.g. "bristle clusters"
    number: str  # one of NUMBERS: "one", "two", "many", ...
    location: str  # one of LOCATIONS, e.g. "center"
    direction: str  # free text such as "vertical"; "" if the entity has none
    color: str  # one or more COLORS joined with " and "
    texture: str  # one or more TEXTURES joined with " and "
    shape: str  # one or more SHAPES joined with " and "
    caption: str  # entity sentence; contains ``name`` (case-insensitive)


@dataclass(frozen=True)
class CaptionRecord:
    """The MFSC record of one class: what a normal image of it looks like."""

    class_name: str  # dataset class id, e.g. "toothbrush"
    foreground: str  # Level_1 foreground noun phrase, e.g. "toothbrush"
    background: str  # Level_1 background, e.g. "pure black"
    entities: tuple[Entity, ...]  # 1..MAX_ENTITIES
    relation: str  # Level_2 relation sentence; names at least one entity
    caption: str  # whole-image caption; contains ``foreground`` at least once

    @property
    def colors(self) -> tuple[str, ...]:
        """The class's colour words over all entities (split at " and ", deduplicated, order kept)."""
        return _unique_atoms(e.color for e in self.entities)

    @property
    def textures(self) -> tuple[str, ...]:
        """The class's texture words (split at " and ", deduplicated, order kept)."""
        return _unique_atoms(e.texture for e in self.entities)

    @property
    def shapes(self) -> tuple[str, ...]:
        """The class's shape words (split at " and ", deduplicated, order kept)."""
        return _unique_atoms(e.shape for e in self.entities)


def split_values(field: str) -> tuple[str, ...]:
    """``"blue and white"`` -> ``("blue", "white")`` (vocabulary words contain no " and ")."""
    return tuple(part.strip() for part in field.split(JOINER) if part.strip())


def _unique_atoms(fields: Iterable[str]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for field in fields:
        for atom in split_values(field):
            seen.setdefault(atom, None)
    return tuple(seen)


# --------------------------------------------------------------------------- vocabulary


def _captions_dir() -> Any:
    return resources.files("fgad.data").joinpath("captions")


def _load_vocabulary() -> dict[str, tuple[str, ...]]:
    source = f"fgad/data/captions/{_VOCABULARY_FILE}"
    try:
        raw = json.loads(_captions_dir().joinpath(_VOCABULARY_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:  # pragma: no cover - packaging error
        raise CaptionError(f"{source} is missing from the installed package; reinstall fgad.") from exc
    except json.JSONDecodeError as exc:  # pragma: no cover - packaging error
        raise CaptionError(f"{source} is not valid JSON: {exc}") from exc
    vocab: dict[str, tuple[str, ...]] = {}
    for key in ("colors", "textures", "shapes", "locations", "numbers"):
        words = raw.get(key) if isinstance(raw, dict) else None
        if not isinstance(words, list) or not words or not all(isinstance(w, str) and w.strip() for w in words):
            raise CaptionError(f"{source}: field {key!r} must be a non-empty list of words.")
        cleaned = tuple(" ".join(w.lower().split()) for w in words)
        if len(set(cleaned)) != len(cleaned):
            raise CaptionError(f"{source}: field {key!r} lists a word twice; remove the duplicate.")
        if any(JOINER.strip() in w.split() for w in cleaned if key != "locations"):
            raise CaptionError(f"{source}: field {key!r} has a word containing 'and', which joins words.")
        vocab[key] = cleaned
    return vocab


_VOCAB = _load_vocabulary()
COLORS: tuple[str, ...] = _VOCAB["colors"]
TEXTURES: tuple[str, ...] = _VOCAB["textures"]
SHAPES: tuple[str, ...] = _VOCAB["shapes"]
LOCATIONS: tuple[str, ...] = _VOCAB["locations"]
NUMBERS: tuple[str, ...] = _VOCAB["numbers"]

_VOCAB_OF_FIELD: dict[str, tuple[str, tuple[str, ...]]] = {
    "number": ("number", NUMBERS),
    "location": ("location", LOCATIONS),
    "color": ("colour", COLORS),
    "texture": ("texture", TEXTURES),
    "shape": ("shape", SHAPES),
}


# --------------------------------------------------------------------------- validation


def _fail(source: str, where: str, message: str) -> CaptionError:
    return CaptionError(f"{source}: {where}: {message}")


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.6)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def _text(value: Any, source: str, where: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise _fail(source, where, f"expected a string, got {type(value).__name__} ({value!r}).")
    text = " ".join(value.split())
    if not text and not allow_empty:
        raise _fail(source, where, "is empty; write a short phrase.")
    return text


def _check_unknown(obj: Mapping[str, Any], allowed: tuple[str, ...], source: str, where: str) -> None:
    for key in obj:
        if not isinstance(key, str) or (key not in allowed and not key.startswith("_")):
            raise _fail(
                source, where,
                f"unknown field {key!r}.{_suggest(str(key), allowed)} Allowed fields: {', '.join(allowed)} "
                "(and comments whose name starts with '_').",
            )


def _level(data: Mapping[str, Any], name: str, source: str) -> Mapping[str, Any]:
    """A level is a list holding one object (METHOD.md layout); a bare object is accepted too."""
    value = data[name]
    if isinstance(value, list):
        if len(value) != 1:
            raise _fail(source, name, f"expected a list holding exactly one object, got {len(value)} items.")
        value = value[0]
    if not isinstance(value, dict):
        raise _fail(source, name, f"expected an object like {{{', '.join(_LEVEL_FIELDS[name])}}}, "
                                  f"got {type(value).__name__}.")
    _check_unknown(value, _LEVEL_FIELDS[name], source, name)
    missing = [k for k in _LEVEL_FIELDS[name] if k not in value]
    if missing:
        raise _fail(source, f"{name}.{missing[0]}", f"missing; {name} needs {', '.join(_LEVEL_FIELDS[name])}.")
    return value


def _vocab_field(value: str, field: str, source: str, where: str) -> str:
    label, vocab = _VOCAB_OF_FIELD[field]
    joinable = field in ("color", "texture", "shape")
    atoms = split_values(value.lower()) if joinable else (value.lower(),)
    if not atoms:
        raise _fail(source, where, f"is empty; choose a {label} from the vocabulary.")
    for atom in atoms:
        if atom not in vocab:
            how = f" (several may be joined with {JOINER.strip()!r})" if joinable else ""
            raise _fail(
                source, where,
                f"{atom!r} is not in the {label} vocabulary.{_suggest(atom, vocab)} "
                f"Use one of: {', '.join(vocab)}{how}.",
            )
    return JOINER.join(atoms)


def _entity_label(names: list[str], index: int) -> str:
    return f" (entity {names[index]!r})" if index < len(names) else ""


def caption_from_dict(data: dict[str, Any], source: str) -> CaptionRecord:
    """Validate a decoded record in the METHOD.md 2.2 layout and build a :class:`CaptionRecord`.

    ``source`` (a file name or a description such as ``"LLM output"``) starts every error
    message, followed by the field, e.g. ``bottle.json: Level_3.color[1] (entity 'rim'): ...``.

    Raises:
        CaptionError: a level or field is missing or unknown, a per-entity list has the wrong
            length, a word is not in the vocabulary, or a sentence lacks the word it must contain.
    """
    if not isinstance(data, dict):
        raise CaptionError(
            f"{source}: top level is {type(data).__name__}; expected a JSON object with "
            f"{', '.join(_LEVELS)} and class_name."
        )
    if not any(key in data for key in _LEVELS):
        found = ", ".join(repr(k) for k in list(data)[:6]) or "none"
        raise CaptionError(
            f"{source}: not a caption record (fields found: {found}); a record has {', '.join(_LEVELS)} "
            "in the METHOD.md 2.2 layout."
        )
    _check_unknown(data, (*_LEVELS, *_METADATA), source, "top level")
    for key in _LEVELS:
        if key not in data:
            raise _fail(source, key, f"missing; a record needs {', '.join(_LEVELS)} (METHOD.md 2.2 layout).")
    if "class_name" not in data:
        raise _fail(source, "class_name", 'missing; add the dataset class id, e.g. "class_name": "bottle".')
    class_name = _text(data["class_name"], source, "class_name")
    if not isinstance(data.get("draft", False), bool):
        raise _fail(source, "draft", f"expected true or false, got {data['draft']!r}.")
    if "dataset" in data:
        _text(data["dataset"], source, "dataset")

    level1 = _level(data, "Level_1", source)
    level2 = _level(data, "Level_2", source)
    level3 = _level(data, "Level_3", source)
    foreground = _text(level1["foreground"], source, "Level_1.foreground")
    background = _text(level1["background"], source, "Level_1.background")

    raw_names = level2["entity"]
    if not isinstance(raw_names, list):
        raise _fail(source, "Level_2.entity", f"expected a list of entity names, got {type(raw_names).__name__}.")
    if not 1 <= len(raw_names) <= MAX_ENTITIES:
        raise _fail(source, "Level_2.entity",
                    f"has {len(raw_names)} entities; a record describes 1 to {MAX_ENTITIES} entities.")
    names = [_text(n, source, f"Level_2.entity[{i}]") for i, n in enumerate(raw_names)]
    lowered = [n.lower() for n in names]
    for i, name in enumerate(lowered):
        if name in lowered[:i]:
            raise _fail(source, f"Level_2.entity[{i}]", f"{names[i]!r} is listed twice; merge the two entities.")

    columns: dict[str, list[str]] = {}
    for level_name, field in _PER_ENTITY:
        level = level2 if level_name == "Level_2" else level3
        where = f"{level_name}.{field}"
        values = level[field]
        if not isinstance(values, list):
            raise _fail(source, where, f"expected a list with one value per entity, got {type(values).__name__}.")
        if len(values) != len(names):
            raise _fail(
                source, where,
                f"has {len(values)} value(s) but Level_2.entity lists {len(names)} "
                f"({', '.join(repr(n) for n in names)}); give exactly one value per entity, in the same order.",
            )
        column: list[str] = []
        for i, value in enumerate(values):
            at = f"{where}[{i}]{_entity_label(names, i)}"
            text = _text(value, source, at, allow_empty=field == "direction")
            if field in _VOCAB_OF_FIELD:
                text = _vocab_field(text, field, source, at)
            column.append(text)
        columns[field] = column

    entities: list[Entity] = []
    for i, name in enumerate(names):
        sentence = columns["entity_caption"][i]
        if name.lower() not in sentence.lower():
            raise _fail(
                source, f"Level_3.entity_caption[{i}]{_entity_label(names, i)}",
                f"does not mention the entity name {name!r}; MLLP corrupts the sentence by replacing that "
                "name, so write it in the sentence.",
            )
        entities.append(Entity(name=name, number=columns["number"][i], location=columns["location"][i],
                               direction=columns["direction"][i], color=columns["color"][i],
                               texture=columns["texture"][i], shape=columns["shape"][i], caption=sentence))

    relation = _text(level2["relation"], source, "Level_2.relation")
    if not any(name in relation for name in names):
        raise _fail(
            source, "Level_2.relation",
            f"names none of the entities ({', '.join(repr(n) for n in names)}) exactly (case-sensitive); "
            "the relation sentence must say how they are arranged.",
        )
    caption = _text(data["caption"], source, "caption")
    if foreground not in caption:
        raise _fail(
            source, "caption",
            f"does not contain the foreground {foreground!r} (case-sensitive); name the product in the caption.",
        )
    return CaptionRecord(class_name=class_name, foreground=foreground, background=background,
                         entities=tuple(entities), relation=relation, caption=caption)


def caption_to_dict(record: CaptionRecord) -> dict[str, Any]:
    """The JSON layout of ``record`` (METHOD.md 2.2); ``caption_from_dict`` reads it back unchanged."""
    ents = record.entities
    return {
        "class_name": record.class_name,
        "Level_1": [{"foreground": record.foreground, "background": record.background}],
        "Level_2": [{
            "entity": [e.name for e in ents],
            "number": [e.number for e in ents],
            "location": [e.location for e in ents],
            "relation": record.relation,
        }],
        "Level_3": [{
            "direction": [e.direction for e in ents],
            "color": [e.color for e in ents],
            "texture": [e.texture for e in ents],
            "shape": [e.shape for e in ents],
            "entity_caption": [e.caption for e in ents],
        }],
        "caption": record.caption,
    }


# --------------------------------------------------------------------------- files


def _decode(text: str, source: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CaptionError(f"{source}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}).") from exc


def read_caption_file(path: str | Path, class_name: str | None = None) -> CaptionRecord:
    """Read and validate a caption record file.

    ``class_name`` fills in a file without ``class_name`` (default: the file's stem) and must
    match the file's own ``class_name`` when both are given.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        CaptionError: the file is not UTF-8 JSON or not a valid record (message names file and field).
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(
            f"Caption file {str(path)!r} does not exist; draft one with "
            "`fgad-captions draft IMAGE --class-name NAME --out FILE`."
        )
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CaptionError(f"{file}: not UTF-8 text; save it as UTF-8 JSON.") from exc
    data = _decode(text, str(file))
    if isinstance(data, dict):
        own = data.get("class_name")
        if class_name is not None and isinstance(own, str) and own.strip() and own.strip() != class_name.strip():
            raise CaptionError(
                f"{file}: class_name: the file describes {own.strip()!r} but class {class_name.strip()!r} was "
                "requested; pass the matching class name or fix the file."
            )
        if own is None:
            data = {"class_name": (class_name or file.stem).strip(), **data}
    return caption_from_dict(data, str(file))


@cache
def _shipped_index() -> dict[tuple[str, str], str]:
    """``(dataset, class_name) -> file name`` for every shipped record."""
    index: dict[tuple[str, str], str] = {}
    for ref in sorted(_captions_dir().iterdir(), key=lambda r: r.name):
        if not ref.name.endswith(".json") or ref.name == _VOCABULARY_FILE:
            continue
        source = f"fgad/data/captions/{ref.name}"
        data = _decode(ref.read_text(encoding="utf-8"), source)
        if not isinstance(data, dict) or not isinstance(data.get("class_name"), str) \
                or not isinstance(data.get("dataset"), str):
            raise CaptionError(f"{source}: a shipped record needs string fields class_name and dataset.")
        key = (data["dataset"], data["class_name"])
        if key in index:
            raise CaptionError(f"{source}: {key} is also described by {index[key]}; keep one record.")
        index[key] = ref.name
    return index


@cache
def _load_shipped(file_name: str) -> CaptionRecord:
    source = f"fgad/data/captions/{file_name}"
    return caption_from_dict(_decode(_captions_dir().joinpath(file_name).read_text(encoding="utf-8"), source),
                             source)


def _dataset_order(index: Mapping[tuple[str, str], str]) -> list[str]:
    extra = sorted({ds for ds, _ in index} - set(BUILTIN_BANKS))
    return [*BUILTIN_BANKS, *extra]


def available_captions(dataset: str | None = None) -> list[str]:
    """Class names with a shipped record (sorted, unique), optionally of one dataset only."""
    return sorted({cls for ds, cls in _shipped_index() if dataset is None or ds == dataset})


def load_caption(class_name: str, path: str | Path | None = None, *, dataset: str | None = None) -> CaptionRecord:
    """The caption record of ``class_name``: from ``path`` if given, else the shipped one.

    Shipped records are searched in the dataset order of
    :data:`fgad.data.descriptions.BUILTIN_BANKS` (so ``tile`` is MVTec-AD's); pass
    ``dataset="synthetic"`` for the synthetic ``tile``.

    Raises:
        CaptionError: no shipped record for the class (the message lists close names and how to
            draft one), or the record is invalid.
        FileNotFoundError: ``path`` does not exist.
    """
    if not isinstance(class_name, str) or not class_name.strip():
        raise CaptionError(f"load_caption() needs a class name such as 'bottle', got {class_name!r}.")
    if path is not None:
        return read_caption_file(path, class_name)
    key = class_name.strip()
    index = _shipped_index()
    order = [dataset] if dataset is not None else _dataset_order(index)
    for ds in order:
        for wanted in (key, key.lower()):
            if (ds, wanted) in index:
                return _load_shipped(index[(ds, wanted)])
    names = available_captions(dataset)
    where = f" in dataset {dataset!r}" if dataset is not None else ""
    datasets = sorted({ds for ds, _ in index})
    hint = f" Datasets with records: {', '.join(datasets)}." if dataset is not None and dataset not in datasets else ""
    raise CaptionError(
        f"No shipped caption record for class {class_name!r}{where}.{_suggest(key, names)}{hint} Shipped: "
        f"{', '.join(names)}. For a new product draft one with `fgad-captions draft IMAGE --class-name {key} "
        f"--out {key}.json`, review it, and pass its path."
    )


# --------------------------------------------------------------------------- defect phrases


def _with(phrase: str) -> str:
    text = " ".join(phrase.split())
    return text if text.lower().startswith("with ") else f"with {text}"


def defect_phrases(class_name: str, dataset: str | None = None) -> tuple[str, ...]:
    """The defect phrases ``Δ_c`` of a class: 2 to 7 phrases, each starting with ``"with "``.

    Derived from the FusDes description banks (``fgad/data/banks``), not from the benchmark's
    defect folder names (METHOD.md F13 calls those test knowledge): the bank phrases ``A_c`` are
    taken in bank order, ``"with "`` is put in front of each (``"a crack on the rim"`` ->
    ``"with a crack on the rim"``), duplicates are dropped and the first
    :data:`MAX_DEFECT_PHRASES` are kept. A bank with a single phrase is padded with
    :data:`GENERIC_DEFECT_PHRASES`. Since every phrase already starts with "with", a handle text
    is ``f"{noun} {phrase}"`` ("bottle with a crack on the rim").

    Args:
        class_name: dataset class id, e.g. ``"bottle"``.
        dataset: a built-in bank name (``mvtec``, ``visa``, ``magnetic_tile``, ``synthetic``, or an
            oracle bank ``mvtec_oracle``... for ablations): only that bank is searched; or the path of
            a bank JSON ``{"class": ["phrase", ...]}``,
            searched before the built-in banks; ``None``: the built-in banks in their usual order.

    Raises:
        CaptionError: no bank has the class; the message says how to add phrases.
    """
    key = class_name.strip() if isinstance(class_name, str) else ""
    if not key:
        raise CaptionError(f"defect_phrases() needs a class name such as 'bottle', got {class_name!r}.")
    named = BUILTIN_BANKS + ORACLE_BANKS
    banks: list[str] = [dataset] if dataset is not None and dataset in named else [
        *([dataset] if dataset is not None else []), *BUILTIN_BANKS]
    phrases: list[str] | None = None
    try:
        if dataset is not None and dataset in named:
            bank = load_bank(dataset)  # only this bank: "tile" of "synthetic" is not MVTec's tile
            folded = {c.lower(): c for c in bank}
            if key.lower() in folded:
                phrases = bank[key] if key in bank else bank[folded[key.lower()]]
        else:
            phrases = anomaly_phrases(key, None if dataset is None else [dataset])
    except UnknownClassError:
        phrases = None
    if phrases is None:
        names = sorted(load_bank(banks[0])) if len(banks) == 1 else known_classes(banks)
        raise CaptionError(
            f"No description bank has defect phrases for class {key!r} (searched: {', '.join(banks)})."
            f"{_suggest(key, names)} Add an entry to a description bank JSON file "
            f'({{"{key}": ["a scratch on the surface", "a missing screw"]}}) and pass its path as the dataset '
            "(fgad-captions: --dataset FILE; fgad-train: --bank FILE)."
        )
    out: list[str] = []
    for phrase in phrases:
        text = _with(phrase)
        if text.lower() not in {p.lower() for p in out}:
            out.append(text)
    out = out[:MAX_DEFECT_PHRASES]
    for generic in GENERIC_DEFECT_PHRASES:
        if len(out) >= MIN_DEFECT_PHRASES:
            break
        if generic not in out:
            out.append(generic)
    return tuple(out)
