"""No shipped description bank borrows the benchmarks' defect-type names (zero-shot means no test knowledge).

For every class of MVTec-AD, VisA and magnetic tile, the *overlap* is the share of the class's defect-name
words (``benchmark_defect_types.json``: folder names, or VisA's annotation labels) that also occur in the
bank's phrases for that class, after both sides go through :func:`lemma`. Words that name no defect are left
out: :data:`STOP_WORDS` (articles, prepositions, size and sameness modifiers, "combined", "other") and the
words of the class name itself ("candle", "fryum", "gum"...).

:func:`lemma` is a small rule-based lemmatiser: lower case; the irregular forms in :data:`IRREGULAR`
(teeth → tooth, colour → color, ...); then the first rule that applies of ``-ies → -y``, ``-(s|x|z|ch|sh)es``
→ drop ``es``, ``-ing`` / ``-ed`` → drop (and undouble a final double consonant), ``-s`` (not ``-ss``) → drop;
finally a trailing ``e`` is dropped, so "squeeze", "squeezed" and "squeezes" all become "squeez".

Bounds: at most :data:`MAX_CLASS_OVERLAP` per class and :data:`MAX_MEAN_OVERLAP` over a dataset's classes.
A generic description of a product shares a common word with its defect list now and then ("crack",
"thread"); paraphrasing the list shares most of them: the oracle banks, kept for ablations, are measured too
and must lie above the bound, so the measure can tell the two apart.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fgad.data.descriptions import BUILTIN_BANKS, ORACLE_BANKS, display_name, load_bank

DEFECT_TYPES = json.loads((Path(__file__).parent / "benchmark_defect_types.json").read_text(encoding="utf-8"))
DATASETS = ("mvtec", "visa", "magnetic_tile")

MAX_CLASS_OVERLAP = 0.34  # at most a third of a class's defect-name words
MAX_MEAN_OVERLAP = 0.10
MIN_ORACLE_MEAN_OVERLAP = 0.5  # the folder-derived banks: the measure must see them

STOP_WORDS = frozenset(
    "a an the of on in at to with and or out down around inside into from by".split()
    + "small large big different similar same other combined object".split()
)
IRREGULAR = {"teeth": "tooth", "colour": "color", "colours": "color", "broke": "break", "particals": "particle"}


def lemma(word: str) -> str:
    """The rule-based lemma of one lower- or mixed-case word (module docstring)."""
    w = word.lower()
    if w in IRREGULAR:
        return IRREGULAR[w]
    if len(w) > 4 and w.endswith("ies"):
        w = w[:-3] + "y"
    elif len(w) > 4 and re.search(r"(s|x|z|ch|sh)es$", w):
        w = w[:-2]
    elif len(w) > 5 and w.endswith("ing"):
        w = w[:-3]
        w = w[:-1] if len(w) > 2 and w[-1] == w[-2] and w[-1] not in "ls" else w
    elif len(w) > 4 and w.endswith("ed"):
        w = w[:-2]
        w = w[:-1] if len(w) > 2 and w[-1] == w[-2] and w[-1] not in "ls" else w
    elif len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
        w = w[:-1]
    return w[:-1] if len(w) > 3 and w.endswith("e") else w


def lemmas(texts: list[str], drop: frozenset[str] = frozenset()) -> set[str]:
    words = (w for t in texts for w in re.split(r"[^a-zA-Z]+", t) if w)
    return {lemma(w) for w in words if w.lower() not in STOP_WORDS} - drop


def class_overlap(class_name: str, phrases: list[str], defect_names: list[str]) -> tuple[float, set[str]]:
    """(share of the class's defect-name lemmas found in the phrases, the shared lemmas)."""
    own = lemmas([class_name, display_name(class_name)])
    defect = lemmas(defect_names, own)
    shared = defect & lemmas(phrases)
    return (len(shared) / len(defect) if defect else 0.0), shared


def overlap_report(bank: dict[str, list[str]], dataset: str) -> dict[str, tuple[float, set[str]]]:
    return {cls: class_overlap(cls, bank[cls], names) for cls, names in DEFECT_TYPES[dataset].items()}


def _format(report: dict[str, tuple[float, set[str]]]) -> str:
    return "\n".join(f"  {cls:12s} {share:.2f} {sorted(shared)}" for cls, (share, shared) in report.items())


def test_the_lemmatiser() -> None:
    assert {lemma(w) for w in ("squeeze", "squeezed", "squeezes")} == {"squeez"}
    assert lemma("scratches") == lemma("scratch") == "scratch"
    assert lemma("cracked") == lemma("cracks") == "crack"
    assert lemma("teeth") == "tooth" and lemma("colour") == "color"
    assert lemma("holes") == lemma("hole") and lemma("burnt") == "burnt" and lemma("glass") == "glass"
    assert lemma("missing") == "miss" and lemma("cutting") == "cut"


@pytest.mark.parametrize("dataset", DATASETS)
def test_default_banks_do_not_borrow_the_defect_names(dataset: str) -> None:
    assert dataset in BUILTIN_BANKS
    bank = load_bank(dataset)
    assert set(DEFECT_TYPES[dataset]) <= set(bank), "every benchmark class needs phrases"
    report = overlap_report(bank, dataset)
    mean = sum(share for share, _ in report.values()) / len(report)
    worst = max(share for share, _ in report.values())
    assert worst <= MAX_CLASS_OVERLAP and mean <= MAX_MEAN_OVERLAP, (
        f"bank {dataset!r}: overlap with the defect names per class (bound {MAX_CLASS_OVERLAP} per class, "
        f"{MAX_MEAN_OVERLAP} mean; mean {mean:.3f}):\n{_format(report)}"
    )


@pytest.mark.parametrize("dataset", DATASETS)
def test_the_oracle_banks_are_folder_derived_and_never_the_default(dataset: str) -> None:
    oracle = f"{dataset}_oracle"
    assert oracle in ORACLE_BANKS and oracle not in BUILTIN_BANKS
    report = overlap_report(load_bank(oracle), dataset)
    mean = sum(share for share, _ in report.values()) / len(report)
    assert mean >= MIN_ORACLE_MEAN_OVERLAP, f"oracle bank {oracle!r}: mean {mean:.3f}\n{_format(report)}"
