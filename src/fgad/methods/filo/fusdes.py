"""FusDes text construction for FiLo++: fine-grained states x positions.

For a class with display name ``X`` and anomaly phrases ``A_c``:

* normal states (7): ``X``, ``flawless X``, ``perfect X``, ``unblemished X``,
  ``X without flaw``, ``X without defect``, ``X without damage``;
* abnormal states (``K_c = |A_c| + 5``): ``abnormal X with {a}`` for each
  phrase ``a`` in bank order, then ``damaged X``, ``broken X``,
  ``X with flaw``, ``X with defect``, ``X with damage``;
* positions (9): the cells of a 3x3 grid over the image, row-major.

Two prompt families are produced:

* fixed (hand-written): ``"an industrial photo of {normal state}."`` and
  ``"an industrial photo of {abnormal state} at {position}."``;
* learnable tails (the model prepends learnable context tokens):
  ``"{normal state}."`` and ``"{abnormal state} at {position}."``.

Abnormal prompt sets are returned as nested lists ``texts[p][k]`` (position
``p`` in ``0..8``, abnormal state ``k`` in ``0..K_c-1``) so they can be indexed
by the grid cell a patch falls in. The flat *position-minor* order used when
all abnormal texts are encoded in one batch (for each state, every position)
is ``[texts[p][k] for k in range(K_c) for p in range(9)]``; see
:func:`flatten_position_minor`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fgad.core.cells import NUM_POSITIONS, POSITIONS
from fgad.data.descriptions import anomaly_phrases, display_name

__all__ = [
    "GENERIC_ABNORMAL_TEMPLATES",
    "NORMAL_STATE_TEMPLATES",
    "PromptTexts",
    "abnormal_states",
    "build_prompt_texts",
    "fixed_abnormal_prompts",
    "fixed_normal_prompts",
    "flatten_position_minor",
    "learnable_abnormal_texts",
    "learnable_normal_texts",
    "normal_states",
]

NORMAL_STATE_TEMPLATES: tuple[str, ...] = (
    "{}",
    "flawless {}",
    "perfect {}",
    "unblemished {}",
    "{} without flaw",
    "{} without defect",
    "{} without damage",
)
GENERIC_ABNORMAL_TEMPLATES: tuple[str, ...] = (
    "damaged {}",
    "broken {}",
    "{} with flaw",
    "{} with defect",
    "{} with damage",
)
# Template for a fine-grained state; filled with (display name, phrase).
DESCRIBED_ABNORMAL_TEMPLATE = "abnormal {} with {}"

FIXED_NORMAL_TEMPLATE = "an industrial photo of {state}."
FIXED_ABNORMAL_TEMPLATE = "an industrial photo of {state} at {position}."
LEARNABLE_NORMAL_TEMPLATE = "{state}."
LEARNABLE_ABNORMAL_TEMPLATE = "{state} at {position}."

def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"Class display name must be a non-empty string, got {name!r}.")
    return name.strip()


def normal_states(name: str) -> list[str]:
    """The 7 normal state phrases for display name ``name`` (not a raw class id)."""
    name = _check_name(name)
    return [t.format(name) for t in NORMAL_STATE_TEMPLATES]


def abnormal_states(name: str, phrases: Sequence[str]) -> list[str]:
    """The ``len(phrases) + 5`` abnormal state phrases for display name ``name``.

    Fine-grained states come first in phrase order, then the 5 generic ones.
    """
    name = _check_name(name)
    if isinstance(phrases, str):
        raise TypeError(
            f"abnormal_states() expects a sequence of phrases, got the single string {phrases!r}; "
            "wrap it in a list."
        )
    described: list[str] = []
    for i, phrase in enumerate(phrases):
        if not isinstance(phrase, str) or not phrase.strip():
            raise ValueError(f"Anomaly phrase #{i} for {name!r} must be a non-empty string, got {phrase!r}.")
        described.append(DESCRIBED_ABNORMAL_TEMPLATE.format(name, phrase.strip()))
    return described + [t.format(name) for t in GENERIC_ABNORMAL_TEMPLATES]


def fixed_normal_prompts(name: str) -> list[str]:
    """7 hand-written normal prompts ``"an industrial photo of {state}."``."""
    return [FIXED_NORMAL_TEMPLATE.format(state=s) for s in normal_states(name)]


def fixed_abnormal_prompts(name: str, phrases: Sequence[str]) -> list[list[str]]:
    """Hand-written abnormal prompts, shape ``[9 positions][K_c states]``."""
    states = abnormal_states(name, phrases)
    return [[FIXED_ABNORMAL_TEMPLATE.format(state=s, position=p) for s in states] for p in POSITIONS]


def learnable_normal_texts(name: str) -> list[str]:
    """7 text tails ``"{state}."`` behind which learnable context is prepended."""
    return [LEARNABLE_NORMAL_TEMPLATE.format(state=s) for s in normal_states(name)]


def learnable_abnormal_texts(name: str, phrases: Sequence[str]) -> list[list[str]]:
    """Learnable-prompt text tails, shape ``[9 positions][K_c states]``.

    ``texts[p][k] == f"{abnormal_states[k]} at {POSITIONS[p]}."``. The flat
    position-minor order is ``[texts[p][k] for k in range(K_c) for p in range(9)]``
    (see :func:`flatten_position_minor`).
    """
    states = abnormal_states(name, phrases)
    return [[LEARNABLE_ABNORMAL_TEMPLATE.format(state=s, position=p) for s in states] for p in POSITIONS]


def flatten_position_minor(texts: Sequence[Sequence[str]]) -> list[str]:
    """Flatten ``texts[p][k]`` into position-minor order (each state, then all 9 positions)."""
    if len(texts) != NUM_POSITIONS:
        raise ValueError(f"Expected {NUM_POSITIONS} position rows, got {len(texts)}.")
    k_states = len(texts[0])
    if any(len(row) != k_states for row in texts):
        raise ValueError("Position rows have different numbers of abnormal states; rebuild the prompt set.")
    return [texts[p][k] for k in range(k_states) for p in range(NUM_POSITIONS)]


@dataclass(frozen=True)
class PromptTexts:
    """All FusDes texts for one class.

    Sequences are tuples so the object is truly immutable; index them like
    lists (``fixed_abnormal[p][k]``) or wrap in ``list()`` where a list is required.
    """

    class_name: str
    display: str
    phrases: tuple[str, ...]
    fixed_normal: tuple[str, ...]
    fixed_abnormal: tuple[tuple[str, ...], ...]
    learn_normal: tuple[str, ...]
    learn_abnormal: tuple[tuple[str, ...], ...]

    @property
    def num_abnormal_states(self) -> int:
        """``K_c = |A_c| + 5``."""
        return len(self.phrases) + len(GENERIC_ABNORMAL_TEMPLATES)

    @property
    def num_normal_states(self) -> int:
        return len(self.fixed_normal)


def build_prompt_texts(class_name: str, banks: Sequence[str | Path] | None = None) -> PromptTexts:
    """Resolve ``class_name``'s phrases from the banks and build every prompt text.

    ``banks`` is passed to :func:`fgad.data.descriptions.anomaly_phrases`
    (user banks first, then built-ins); an unknown class raises its
    ``KeyError`` with close-match suggestions.
    """
    phrases = anomaly_phrases(class_name, banks)
    display = display_name(class_name)
    return PromptTexts(
        class_name=class_name.strip(),
        display=display,
        phrases=tuple(phrases),
        fixed_normal=tuple(fixed_normal_prompts(display)),
        fixed_abnormal=tuple(tuple(row) for row in fixed_abnormal_prompts(display, phrases)),
        learn_normal=tuple(learnable_normal_texts(display)),
        learn_abnormal=tuple(tuple(row) for row in learnable_abnormal_texts(display, phrases)),
    )
