"""fgad.core.outputs: output paths refused before any work, whole JSON lines on a full disk, vanished outputs."""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

import pytest

from fgad.core.outputs import (
    LineWriter,
    OutputPathError,
    OutputVanishedError,
    check_output_path,
    require_folder,
)

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _no_probe_left(folder: Path) -> None:
    assert not [p for p in folder.iterdir() if p.name.startswith(".fgad-write-check-")]


@pytest.mark.parametrize("kind", ["append", "file", "dir", "bundle"])
def test_writable_paths_pass_and_nothing_is_created(tmp_path: Path, kind: str) -> None:
    check_output_path(tmp_path / "new" / "deeper" / "out", kind)  # missing folders: creatable
    check_output_path(tmp_path / "out", kind)
    assert sorted(tmp_path.iterdir()) == []


def test_an_existing_file_is_appended_to_unchanged(tmp_path: Path) -> None:
    target = tmp_path / "run.jsonl"
    target.write_text('{"frame": 0}\n')
    before = target.stat()
    check_output_path(target, "append")
    check_output_path(target, "file")
    assert target.read_text() == '{"frame": 0}\n' and target.stat().st_mtime_ns == before.st_mtime_ns
    _no_probe_left(tmp_path)


@pytest.mark.parametrize(
    ("kind", "make", "message"),
    [
        ("append", "dir", "is a folder; give the path of a file"),
        ("file", "dir", "is a folder; give the path of a file"),
        ("dir", "file", "exists and is not a folder"),
        ("bundle", "file", "exists and is not a folder"),
    ],
)
def test_a_path_of_the_wrong_type_is_refused(tmp_path: Path, kind: str, make: str, message: str) -> None:
    target = tmp_path / "out"
    target.mkdir() if make == "dir" else target.write_text("x")
    with pytest.raises(OutputPathError, match=message):
        check_output_path(target, kind)


@pytest.mark.parametrize("kind", ["append", "file", "dir", "bundle"])
def test_a_parent_that_is_a_file_is_refused(tmp_path: Path, kind: str) -> None:
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(OutputPathError, match=r"notes.txt is a file, not a folder"):
        check_output_path(tmp_path / "notes.txt" / "sub" / "out", kind)


def test_a_broken_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / "link.jsonl").symlink_to(tmp_path / "missing" / "x.jsonl")
    with pytest.raises(OutputPathError, match="broken symbolic link"):
        check_output_path(tmp_path / "link.jsonl", "append")


@pytest.mark.skipif(IS_ROOT, reason="root bypasses permission bits; test_a_system_folder_is_refused_even_as_root "
                                    "covers an unwritable folder then")
@pytest.mark.parametrize("kind", ["append", "file", "dir", "bundle"])
def test_a_read_only_folder_is_refused(tmp_path: Path, kind: str) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(OutputPathError, match="cannot write in .*ro"):
            check_output_path(ro / "out" if kind != "dir" else ro, kind)
    finally:
        ro.chmod(0o755)


@pytest.mark.skipif(not sys.platform.startswith("linux") or not os.path.isdir("/sys"), reason="Linux sysfs only")
def test_a_system_folder_is_refused_even_as_root() -> None:
    # sysfs refuses new files to everyone, root included: a real unwritable folder that permission bits cannot fake
    with pytest.raises(OutputPathError, match="cannot write in /sys"):
        check_output_path("/sys/fgad-test.jsonl", "append")


def test_a_full_file_system_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.statvfs

    class Full:
        def __init__(self, info: os.statvfs_result) -> None:
            self.f_blocks, self.f_bavail = info.f_blocks, 0

    monkeypatch.setattr(os, "statvfs", lambda p: Full(real(p)))
    with pytest.raises(OutputPathError, match="no space left"):
        check_output_path(tmp_path / "out", "dir")
    _no_probe_left(tmp_path)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_a_device_passes_the_check() -> None:
    check_output_path("/dev/full", "append")  # writable; that it is full shows only when written to


def test_line_writer_writes_whole_lines_and_appends(tmp_path: Path) -> None:
    target = tmp_path / "a" / "run.jsonl"
    with LineWriter(target) as w:
        w.write_line('{"frame": 0}')
        w.write_line('{"frame": 1}\n')
        assert w.lines == 2
    with LineWriter(target) as w:
        w.write_line('{"frame": "ü"}')
    assert target.read_text(encoding="utf-8").splitlines() == ['{"frame": 0}', '{"frame": 1}', '{"frame": "ü"}']


def test_a_line_the_disk_takes_only_in_part_is_cut_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "run.jsonl"
    calls = {"n": 0}
    real = LineWriter._write_some

    def filling_up(self: LineWriter, data: memoryview) -> int:
        calls["n"] += 1
        if calls["n"] == 3:  # the third line: half of it fits, then the disk is full
            return real(self, data[: len(data) // 2])
        if calls["n"] == 4:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, data)

    monkeypatch.setattr(LineWriter, "_write_some", filling_up)
    w = LineWriter(target)
    w.write_line('{"frame": 0}')
    w.write_line('{"frame": 1}')
    with pytest.raises(OSError) as info:
        w.write_line('{"frame": 2, "padding": "' + "x" * 100 + '"}')
    w.close()
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert target.read_text() == '{"frame": 0}\n{"frame": 1}\n' and w.lines == 2


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_a_real_full_device_raises_enospc(tmp_path: Path) -> None:
    link = tmp_path / "full.jsonl"
    link.symlink_to("/dev/full")
    with LineWriter(link) as w, pytest.raises(OSError) as info:
        w.write_line("{}")
    assert info.value.errno == errno.ENOSPC and w.lines == 0


def test_a_removed_or_replaced_file_is_noticed(tmp_path: Path) -> None:
    target = tmp_path / "out" / "run.jsonl"
    with LineWriter(target) as w:
        w.write_line("{}")
        target.unlink()
        with pytest.raises(OutputVanishedError, match="was removed during the run"):
            w.write_line("{}")
        assert w.lines == 1
    with LineWriter(target) as w:
        w.write_line("{}")
        target.unlink()
        target.write_text("someone else's\n")
        with pytest.raises(OutputVanishedError, match="was replaced"):
            w.write_line("{}")


def test_require_folder(tmp_path: Path) -> None:
    require_folder(tmp_path)
    with pytest.raises(OutputVanishedError, match="--save folder .* was removed"):
        require_folder(tmp_path / "gone", "--save folder")
