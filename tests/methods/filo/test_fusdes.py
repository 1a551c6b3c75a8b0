"""Tests for fgad.methods.filo.fusdes (FusDes state / position prompt construction)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from fgad.core.cells import NUM_POSITIONS, POSITIONS, position_bands, position_index
from fgad.data.descriptions import load_bank
from fgad.methods.filo.fusdes import (
    GENERIC_ABNORMAL_TEMPLATES,
    NORMAL_STATE_TEMPLATES,
    PromptTexts,
    abnormal_states,
    build_prompt_texts,
    fixed_abnormal_prompts,
    fixed_normal_prompts,
    flatten_position_minor,
    learnable_abnormal_texts,
    learnable_normal_texts,
    normal_states,
)


def test_positions() -> None:
    assert NUM_POSITIONS == 9 == len(POSITIONS)
    assert POSITIONS == (
        "top left", "top", "top right",
        "left", "center", "right",
        "bottom left", "bottom", "bottom right",
    )
    assert len(NORMAL_STATE_TEMPLATES) == 7
    assert len(GENERIC_ABNORMAL_TEMPLATES) == 5


def test_bands_518_exact() -> None:
    assert position_bands(518) == [(0, 172), (173, 344), (345, 517)]


@pytest.mark.parametrize("size", [3, 4, 5, 6, 7, 8, 100, 224, 240, 241, 336, 448, 517, 518, 519, 1024])
def test_bands_partition_and_near_equal(size: int) -> None:
    bands = position_bands(size)
    assert len(bands) == 3
    assert bands[0][0] == 0
    assert bands[-1][1] == size - 1
    for (_, hi), (lo, _) in zip(bands, bands[1:], strict=False):
        assert lo == hi + 1  # no gap, no overlap
    widths = [hi - lo + 1 for lo, hi in bands]
    assert sum(widths) == size
    assert min(widths) >= 1
    assert max(widths) - min(widths) <= 1
    # Edges are the nearest integers to s/3 and 2s/3.
    assert abs(bands[1][0] - size / 3) <= 0.5
    assert abs(bands[2][0] - 2 * size / 3) <= 0.5


def test_bands_240_and_224() -> None:
    assert position_bands(240) == [(0, 79), (80, 159), (160, 239)]
    assert position_bands(224) == [(0, 74), (75, 148), (149, 223)]


@pytest.mark.parametrize("bad", [0, 2, -5])
def test_bands_reject_tiny_size(bad: int) -> None:
    with pytest.raises(ValueError, match=str(bad)):
        position_bands(bad)


def test_bands_reject_non_int() -> None:
    with pytest.raises(TypeError, match="518.0"):
        position_bands(518.0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("x", "y", "expected"),
    [
        (0, 0, 0),
        (517, 0, 2),
        (0, 517, 6),
        (517, 517, 8),
        (259, 259, 4),
        (172, 172, 0),
        (173, 172, 1),
        (172, 173, 3),
        (344, 344, 4),
        (345, 344, 5),
        (344, 345, 7),
        (345, 345, 8),
        (172.9, 0, 0),  # fractional coordinate stays in its pixel
        (259, 0, 1),
        (0, 259, 3),
        (517, 259, 5),
        (259, 517, 7),
        (-10, -0.5, 0),  # clamped
        (1e6, 1e6, 8),
        (600, 259, 5),
    ],
)
def test_position_index_518(x: float, y: float, expected: int) -> None:
    assert position_index(x, y, 518) == expected


@pytest.mark.parametrize(
    ("x", "y", "expected"),
    [
        (0, 0, 0),
        (239, 0, 2),
        (0, 239, 6),
        (239, 239, 8),
        (120, 120, 4),
        (79, 79, 0),
        (80, 79, 1),
        (159, 160, 7),
        (160, 159, 5),
        (240, 240, 8),  # x == size is clamped to the last pixel
        (-1, 120, 3),
    ],
)
def test_position_index_240(x: float, y: float, expected: int) -> None:
    assert position_index(x, y, 240) == expected


def test_position_index_matches_position_names() -> None:
    assert POSITIONS[position_index(0, 0, 518)] == "top left"
    assert POSITIONS[position_index(517, 0, 518)] == "top right"
    assert POSITIONS[position_index(259, 259, 518)] == "center"
    assert POSITIONS[position_index(259, 517, 518)] == "bottom"


def test_position_index_rejects_nan() -> None:
    with pytest.raises(ValueError, match="NaN"):
        position_index(float("nan"), 3, 518)


def test_states_exact_strings() -> None:
    assert normal_states("metal nut") == [
        "metal nut",
        "flawless metal nut",
        "perfect metal nut",
        "unblemished metal nut",
        "metal nut without flaw",
        "metal nut without defect",
        "metal nut without damage",
    ]
    assert abnormal_states("bottle", ["a crack on the rim", "contamination inside"]) == [
        "abnormal bottle with a crack on the rim",
        "abnormal bottle with contamination inside",
        "damaged bottle",
        "broken bottle",
        "bottle with flaw",
        "bottle with defect",
        "bottle with damage",
    ]


def test_abnormal_states_input_checks() -> None:
    with pytest.raises(TypeError, match="single string"):
        abnormal_states("bottle", "a crack")
    with pytest.raises(ValueError, match="#1"):
        abnormal_states("bottle", ["a crack", ""])
    with pytest.raises(ValueError, match="display name"):
        normal_states("")


def test_fixed_prompts_exact_strings() -> None:
    phrases = ["a crack on the rim", "contamination inside"]
    assert fixed_normal_prompts("bottle")[0] == "an industrial photo of bottle."
    assert fixed_normal_prompts("bottle")[6] == "an industrial photo of bottle without damage."
    fixed = fixed_abnormal_prompts("bottle", phrases)
    assert len(fixed) == 9 and all(len(row) == 7 for row in fixed)
    assert fixed[0][0] == "an industrial photo of abnormal bottle with a crack on the rim at top left."
    assert fixed[4][1] == "an industrial photo of abnormal bottle with contamination inside at center."
    assert fixed[8][6] == "an industrial photo of bottle with damage at bottom right."
    assert fixed[1][2] == "an industrial photo of damaged bottle at top."


def test_learnable_texts_exact_strings() -> None:
    phrases = ["a crack on the rim", "contamination inside"]
    assert learnable_normal_texts("bottle") == [
        "bottle.",
        "flawless bottle.",
        "perfect bottle.",
        "unblemished bottle.",
        "bottle without flaw.",
        "bottle without defect.",
        "bottle without damage.",
    ]
    learn = learnable_abnormal_texts("bottle", phrases)
    assert len(learn) == 9 and all(len(row) == 7 for row in learn)
    assert learn[0][0] == "abnormal bottle with a crack on the rim at top left."
    assert learn[5][3] == "broken bottle at right."
    assert learn[6][4] == "bottle with flaw at bottom left."


def test_flatten_position_minor() -> None:
    learn = learnable_abnormal_texts("bottle", ["a crack"])
    flat = flatten_position_minor(learn)
    assert len(flat) == 9 * 6
    assert flat[:9] == [f"abnormal bottle with a crack at {p}." for p in POSITIONS]
    assert flat[9] == "damaged bottle at top left."
    assert flat[-1] == "bottle with damage at bottom right."
    with pytest.raises(ValueError, match="9"):
        flatten_position_minor(learn[:8])


def test_build_prompt_texts_counts_and_strings() -> None:
    pt = build_prompt_texts("pcb3")
    phrases = load_bank("visa")["pcb3"]
    k = len(phrases) + 5
    assert isinstance(pt, PromptTexts)
    assert pt.class_name == "pcb3"
    assert pt.display == "pcb"
    assert list(pt.phrases) == phrases
    assert pt.num_abnormal_states == k
    assert len(pt.fixed_normal) == 7 and len(pt.learn_normal) == 7
    assert len(pt.fixed_abnormal) == 9 and len(pt.learn_abnormal) == 9
    assert all(len(row) == k for row in pt.fixed_abnormal)
    assert all(len(row) == k for row in pt.learn_abnormal)
    assert sum(len(row) for row in pt.fixed_abnormal) == 9 * k
    assert pt.fixed_normal[1] == "an industrial photo of flawless pcb."
    assert pt.fixed_abnormal[2][0] == f"an industrial photo of abnormal pcb with {phrases[0]} at top right."
    assert pt.learn_abnormal[7][k - 1] == "pcb with damage at bottom."
    # Fixed prompts are exactly the learnable tails with the hand-written prefix.
    for p in range(9):
        for j in range(k):
            assert pt.fixed_abnormal[p][j] == "an industrial photo of " + pt.learn_abnormal[p][j]
    with pytest.raises(dataclasses.FrozenInstanceError):
        pt.display = "other"  # type: ignore[misc]


@pytest.mark.parametrize("cls", ["bottle", "metal_nut", "chewinggum", "magnetic_tile", "mesh"])
def test_build_prompt_texts_k_equals_phrases_plus_five(cls: str) -> None:
    pt = build_prompt_texts(cls)
    assert pt.num_abnormal_states == len(pt.phrases) + 5
    assert 9 <= pt.num_abnormal_states <= 15


def test_build_prompt_texts_with_user_bank(tmp_path: Path) -> None:
    path = tmp_path / "parts.json"
    path.write_text(json.dumps({"gear_wheel": ["a broken tooth", "rust", "a bent rim", "a burr"]}))
    pt = build_prompt_texts("gear_wheel", banks=[path])
    assert pt.display == "gear wheel"
    assert pt.num_abnormal_states == 9
    assert pt.learn_abnormal[4][1] == "abnormal gear wheel with rust at center."


def test_build_prompt_texts_unknown_class() -> None:
    with pytest.raises(KeyError, match="capsule"):
        build_prompt_texts("capsul")
