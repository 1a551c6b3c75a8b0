"""fgad.bundle.staging: the target check, the staged write that replaces a bundle only when it finished, and
references.npz. Torch-free and fast (plain files in tmp_path)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from fgad.bundle import staging as bundle_io
from fgad.bundle.staging import check_target, staged_bundle, utc_timestamp, write_references_npz


def _contents(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in folder.iterdir()}


def test_check_target_accepts_new_empty_and_bundle_folders(tmp_path: Path) -> None:
    check_target(tmp_path / "new")
    (tmp_path / "empty").mkdir()
    check_target(tmp_path / "empty")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "manifest.json").write_text("{}")
    (tmp_path / "old" / "model.onnx").write_text("x")
    check_target(tmp_path / "old")


def test_check_target_refuses_files_and_foreign_folders(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is not a directory"):
        check_target(tmp_path / "file")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.png").write_text("x")
    with pytest.raises(FileExistsError, match="not a bundle; choose another --out"):
        check_target(tmp_path / "photos")
    (tmp_path / "photos" / "meta.json").write_text("{}")  # another marker name makes it a bundle
    check_target(tmp_path / "photos", manifest_file="meta.json")


def test_staged_bundle_replaces_the_target_only_when_the_body_finishes(tmp_path: Path) -> None:
    out = tmp_path / "deep" / "bundle"
    with staged_bundle(out) as tmp:
        assert tmp.parent == out.parent and tmp.is_dir() and not out.exists()
        (tmp / "manifest.json").write_text("first")
    assert _contents(out) == {"manifest.json": "first"}

    with pytest.raises(RuntimeError, match="boom"), staged_bundle(out) as tmp:
        (tmp / "manifest.json").write_text("second")
        raise RuntimeError("boom")
    assert _contents(out) == {"manifest.json": "first"}  # the earlier bundle is untouched

    with staged_bundle(out) as tmp:
        (tmp / "other.txt").write_text("third")
    assert _contents(out) == {"other.txt": "third"}  # replaced as a whole, not merged
    assert [p.name for p in out.parent.iterdir()] == ["bundle"]  # no staging or old folders left


def test_a_failed_rename_restores_the_earlier_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "manifest.json").write_text("earlier")
    real = os.replace
    calls: list[tuple[str, str]] = []

    def failing_second_rename(src: os.PathLike[str], dst: os.PathLike[str]) -> None:
        calls.append((Path(src).name, Path(dst).name))
        if len(calls) == 2:  # 1: earlier bundle aside, 2: staged folder onto the target
            raise OSError("disk full")
        real(src, dst)

    monkeypatch.setattr(bundle_io.os, "replace", failing_second_rename)
    with pytest.raises(OSError, match="disk full"), staged_bundle(out) as tmp:
        (tmp / "manifest.json").write_text("new")
    monkeypatch.undo()
    assert _contents(out) == {"manifest.json": "earlier"}
    assert len(calls) == 3 and calls[2][1] == "bundle"  # the third rename put the earlier bundle back
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_write_references_npz_unit_rows_and_paths(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    tokens = {3: rng.normal(size=(2, 5, 4)), 1: np.zeros((2, 5, 4))}  # float64 in, a zero row must stay finite
    write_references_npz(tmp_path / "references.npz", tokens, [Path("a.png"), Path("b/c.png")])
    with np.load(tmp_path / "references.npz") as data:
        assert sorted(data.files) == ["layer_1", "layer_3", "paths"]
        rows = data["layer_3"]
        assert rows.shape == (10, 4) and rows.dtype == np.float32
        flat = tokens[3].reshape(10, 4)
        for i in range(10):  # each row: that token over its own length
            assert np.allclose(rows[i], flat[i] / np.sqrt((flat[i] ** 2).sum()), atol=1e-6)
        assert np.array_equal(data["layer_1"], np.zeros((10, 4), np.float32))
        assert data["paths"].tolist() == ["a.png", "b/c.png"]


def test_utc_timestamp_format() -> None:
    stamp = utc_timestamp()
    assert len(stamp) == 20 and stamp[4] == stamp[7] == "-" and stamp[10] == "T" and stamp.endswith("Z")
