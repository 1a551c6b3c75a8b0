"""Tests for fgad.data.descriptions (anomaly description banks)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fgad.data.descriptions import (
    BUILTIN_BANKS,
    UnknownClassError,
    anomaly_phrases,
    display_name,
    known_classes,
    load_bank,
)

MVTEC = [
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
]
VISA = [
    "candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2",
    "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum",
]
EXPECTED = {
    "mvtec": MVTEC,
    "visa": VISA,
    "magnetic_tile": ["magnetic_tile"],
    "synthetic": ["tile", "disc", "mesh"],
}


def _write(tmp_path: Path, content: str, name: str = "bank.json") -> Path:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    return path


def test_builtin_order() -> None:
    assert BUILTIN_BANKS == ("mvtec", "visa", "magnetic_tile", "synthetic")


@pytest.mark.parametrize("bank", BUILTIN_BANKS)
def test_builtin_bank_has_exactly_expected_classes(bank: str) -> None:
    assert sorted(load_bank(bank)) == sorted(EXPECTED[bank])


@pytest.mark.parametrize("bank", BUILTIN_BANKS)
def test_builtin_phrases_are_well_formed(bank: str) -> None:
    for cls, phrases in load_bank(bank).items():
        assert 4 <= len(phrases) <= 10, (bank, cls, len(phrases))
        assert len({p.lower() for p in phrases}) == len(phrases), (bank, cls)
        for p in phrases:
            assert p == p.strip().lower(), (bank, cls, p)
            assert not p.endswith("."), (bank, cls, p)
            assert not p.startswith("with "), (bank, cls, p)  # template already says "with"


def test_builtin_json_files_are_already_clean() -> None:
    # Validation strips whitespace; the shipped files should not rely on that.
    root = Path(__file__).resolve().parents[2] / "src" / "fgad" / "data" / "banks"
    for bank in BUILTIN_BANKS:
        raw = json.loads((root / f"{bank}.json").read_text(encoding="utf-8"))
        assert raw == load_bank(bank)


def test_load_bank_returns_independent_copies() -> None:
    first = load_bank("mvtec")
    first["bottle"].append("mutated")
    first["new"] = ["x"]
    again = load_bank("mvtec")
    assert "mutated" not in again["bottle"]
    assert "new" not in again


@pytest.mark.parametrize(
    ("cls", "expected"),
    [
        ("metal_nut", "metal nut"),
        ("pcb1", "pcb"),
        ("pcb4", "pcb"),
        ("macaroni1", "macaroni"),
        ("macaroni2", "macaroni"),
        ("pipe_fryum", "pipe fryum"),
        ("chewinggum", "chewing gum"),
        ("magnetic_tile", "magnetic tile"),
        ("bottle", "bottle"),
        ("my_new_part", "my new part"),
    ],
)
def test_display_name(cls: str, expected: str) -> None:
    assert display_name(cls) == expected


def test_display_name_rejects_empty() -> None:
    with pytest.raises(ValueError, match="empty"):
        display_name("  ")


@pytest.mark.parametrize("cls", MVTEC + VISA + ["magnetic_tile", "disc", "mesh"])
def test_every_class_resolves(cls: str) -> None:
    phrases = anomaly_phrases(cls)
    assert 4 <= len(phrases) <= 10


def test_tile_resolves_by_bank_order() -> None:
    mvtec_tile = load_bank("mvtec")["tile"]
    synthetic_tile = load_bank("synthetic")["tile"]
    assert mvtec_tile != synthetic_tile
    assert anomaly_phrases("tile") == mvtec_tile
    assert anomaly_phrases("tile", banks=["synthetic"]) == synthetic_tile
    assert anomaly_phrases("tile", banks="synthetic") == synthetic_tile  # lone name, not chars


def test_synthetic_classes_mention_scratch_hole_stain() -> None:
    for cls in ("tile", "disc", "mesh"):
        joined = " ".join(load_bank("synthetic")[cls])
        for word in ("scratch", "hole", "stain"):
            assert word in joined, (cls, word)


def test_user_bank_takes_precedence(tmp_path: Path) -> None:
    bank = {"bottle": ["  a   bent  label ", "a wrong cap"], "widget": ["a dent"]}
    path = _write(tmp_path, json.dumps(bank))
    assert anomaly_phrases("bottle", banks=[path]) == ["a bent label", "a wrong cap"]
    assert anomaly_phrases("widget", banks=[str(path)]) == ["a dent"]
    # Classes not in the user bank fall through to the built-ins.
    assert anomaly_phrases("cable", banks=[path]) == load_bank("mvtec")["cable"]


def test_case_insensitive_lookup() -> None:
    assert anomaly_phrases("Bottle") == load_bank("mvtec")["bottle"]


def test_known_classes_contains_all() -> None:
    names = known_classes()
    for cls in MVTEC + VISA + ["magnetic_tile", "disc", "mesh"]:
        assert cls in names


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("{not json", "not valid JSON"),
        ('["bottle"]', "top level is list"),
        ("{}", "is empty"),
        ('{"bottle": "a crack"}', "'bottle' maps to str"),
        ('{"bottle": []}', "'bottle' has no phrases"),
        ('{"bottle": ["a crack", 3]}', "'bottle' phrase #1"),
        ('{"bottle": ["a crack", "   "]}', "'bottle' phrase #1 is empty"),
        ('{"bottle": ["a crack", "A  crack "]}', "'bottle' lists the phrase"),
        ('{" ": ["a crack"]}', "class name"),
        ('{"bottle": ["a"], " bottle ": ["b"]}', "more than once"),
    ],
)
def test_bad_user_bank_errors_name_file_and_class(tmp_path: Path, content: str, needle: str) -> None:
    path = _write(tmp_path, content, name="my_bad_bank.json")
    with pytest.raises(ValueError) as info:
        load_bank(path)
    message = str(info.value)
    assert "my_bad_bank.json" in message
    assert needle in message


def test_bad_user_bank_also_fails_through_anomaly_phrases(tmp_path: Path) -> None:
    path = _write(tmp_path, '{"bottle": []}', name="empty_list.json")
    with pytest.raises(ValueError, match="empty_list.json"):
        anomaly_phrases("bottle", banks=[path])


def test_missing_bank_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(FileNotFoundError, match="nope.json") as info:
        load_bank(missing)
    assert "mvtec" in str(info.value)  # lists the built-in names as alternatives


def test_unknown_class_suggests_close_match() -> None:
    with pytest.raises(KeyError) as info:
        anomaly_phrases("botle")
    assert isinstance(info.value, UnknownClassError)
    message = str(info.value)
    assert "'botle'" in message
    assert "Did you mean 'bottle'" in message
    assert "JSON" in message and "banks" in message
    assert not message.startswith('"')  # printed verbatim, not as a quoted repr


def test_unknown_class_without_close_match() -> None:
    with pytest.raises(KeyError) as info:
        anomaly_phrases("zzzzqqq")
    message = str(info.value)
    assert "Did you mean" not in message
    assert '{"zzzzqqq": [' in message
