"""Tests for fgad.core.atomic: all-or-nothing writes, no stray temp files, NaN -> null JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from fgad.core.atomic import (
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    nan_to_none,
)


def _strict_json_load(path: Path) -> object:
    def reject(constant: str) -> None:
        raise AssertionError(f"non-standard JSON constant {constant!r} in {path}")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=reject)


def test_write_text_creates_parents_and_replaces_existing(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "out.txt"
    atomic_write_text(target, "first")
    assert target.read_text(encoding="utf-8") == "first"
    atomic_write_text(target, "second ü")
    assert target.read_text(encoding="utf-8") == "second ü"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.txt"]


def test_write_bytes_roundtrip(tmp_path: Path) -> None:
    data = bytes(range(256)) * 3
    atomic_write_bytes(tmp_path / "blob.bin", data)
    assert (tmp_path / "blob.bin").read_bytes() == data


def test_temp_path_is_sibling_with_same_suffix(tmp_path: Path) -> None:
    target = tmp_path / "image.png"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent
        assert tmp.suffix == ".png"
        assert tmp != target
        tmp.write_bytes(b"x")
        assert not target.exists()  # nothing visible until the body succeeds
    assert target.read_bytes() == b"x"
    assert not tmp.exists()


@pytest.mark.parametrize("exc_type", [RuntimeError, KeyboardInterrupt])
def test_target_untouched_and_no_temp_left_when_body_raises(tmp_path: Path, exc_type: type) -> None:
    target = tmp_path / "report.json"
    target.write_text("old", encoding="utf-8")
    with pytest.raises(exc_type), atomic_path(target) as tmp:
        tmp.write_text("half-writ", encoding="utf-8")
        raise exc_type("boom")
    assert target.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_body_raising_before_creating_anything_leaves_no_target(tmp_path: Path) -> None:
    target = tmp_path / "new.txt"
    with pytest.raises(ValueError, match="encoder"), atomic_path(target):
        raise ValueError("encoder failed")
    assert list(tmp_path.iterdir()) == []


def test_body_that_writes_nothing_is_an_error(tmp_path: Path) -> None:
    target = tmp_path / "out.png"
    target.write_bytes(b"old")
    with pytest.raises(FileNotFoundError, match="out.png"), atomic_path(target):
        pass
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_failed_json_serialisation_leaves_target_untouched(tmp_path: Path) -> None:
    target = tmp_path / "m.json"
    atomic_write_json(target, {"ok": 1})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"bad": object()})
    assert _strict_json_load(target) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_write_bytes_rejects_str(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="bytes-like"):
        atomic_write_bytes(tmp_path / "x.bin", "text")  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_json_nan_becomes_null_recursively(tmp_path: Path) -> None:
    obj = {
        "b_auroc": float("nan"),
        "a_list": [1.0, float("nan"), {"deep": np.float32("nan")}],
        "tuple": (np.float64(0.25), float("nan")),
        "array": np.array([0.5, np.nan]),
        "inf": float("inf"),
        "text": "nan",
        "none": None,
    }
    target = tmp_path / "metrics.json"
    atomic_write_json(target, obj)
    text = target.read_text(encoding="utf-8")
    assert "NaN" not in text
    loaded = json.loads(text)
    assert list(loaded) == list(obj)  # key order kept, not sorted
    assert loaded["b_auroc"] is None
    assert loaded["a_list"] == [1.0, None, {"deep": None}]
    assert loaded["tuple"] == [0.25, None]
    assert loaded["array"] == [0.5, None]
    assert math.isinf(loaded["inf"])
    assert loaded["text"] == "nan"
    assert loaded["none"] is None


def test_json_indent_and_trailing_newline(tmp_path: Path) -> None:
    target = tmp_path / "x.json"
    atomic_write_json(target, {"k": [1, 2]}, indent=4)
    text = target.read_text(encoding="utf-8")
    assert text.endswith("\n")
    assert '\n    "k"' in text
    atomic_write_json(target, {"k": 1}, indent=None)
    assert target.read_text(encoding="utf-8") == '{"k": 1}\n'


def test_nan_to_none_does_not_mutate_input() -> None:
    src = {"x": [float("nan")]}
    out = nan_to_none(src)
    assert out == {"x": [None]}
    assert math.isnan(src["x"][0])
