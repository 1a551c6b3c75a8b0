"""Hostile disks and inputs through the real commands ("trust nothing from disk").

Every case runs a real CLI (a subprocess ``python -m fgad.cli.<name>`` where nothing needs patching, else click's
runner in this process) and checks the exit status, that the error is one ``Error:`` line and no traceback, and
that no half-written file is left behind:

* output paths that cannot be written (a folder where a file goes, a file where a folder goes, a parent that is
  a file, a read-only folder, a non-empty folder that is not a bundle) are refused before any work, with exit
  status 2 and the whole output one line, by fgad-run, -export, -calibrate, -eval, -bench, -train, -captions;
* during a run: a full disk (really: --jsonl is a symbolic link to /dev/full; simulated: a write that takes half a
  line, then ENOSPC) and an output folder removed mid-run stop fgad-run with exit status 1 and a last line saying
  how many frames were written, with only whole JSON lines in the file; a full disk under fgad-calibrate and
  fgad-bench leaves no temporary file or folder;
* inputs: a corrupt image among --images is skipped with a warning, a bundle "folder" that is a file is one line.

The bundles are the hand-made torch-free ones of tests/helpers/fake_bundle.py.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from tests.helpers.fake_bundle import FakeBundle

REPO = Path(__file__).resolve().parents[2]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
HAS_DEV_FULL = sys.platform.startswith("linux") and os.path.exists("/dev/full")


# ------------------------------------------------------------------------------------------------ helpers


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    env.pop("DISPLAY", None)
    return env


def _cli(command: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run ``fgad-<command>`` as its own process (the module, so this tree's code runs)."""
    cmd = [sys.executable, "-m", f"fgad.cli.{command}", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=_env(), cwd=REPO)


def _one_line(proc: subprocess.CompletedProcess[str], code: int) -> str:
    """The whole output is one ``Error:`` line and the exit status is ``code``; returns the line."""
    text = proc.stdout + proc.stderr
    assert proc.returncode == code, text
    assert "Traceback" not in text, text
    lines = text.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), text
    return lines[0]


def _last_line_error(text: str) -> str:
    """Output of a run that started, then failed: no traceback, exactly one ``Error:`` line, and it is the last."""
    assert "Traceback" not in text, text
    lines = text.strip().splitlines()
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], text
    return errors[0]


def _invoke(main: object, *args: str | Path) -> Result:
    result = CliRunner().invoke(main, [str(a) for a in args])  # type: ignore[arg-type]
    # an unhandled exception is caught by the runner (it would be a traceback in a shell): not allowed here
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def _whole_json_lines(path: Path) -> list[dict[str, object]]:
    text = path.read_text(encoding="utf-8")
    assert text == "" or text.endswith("\n"), f"{path} ends in half a line: {text[-80:]!r}"
    return [json.loads(line) for line in text.splitlines()]


def _no_temporaries(*folders: Path) -> None:
    for folder in folders:
        if folder.is_dir():
            stray = [p.name for p in folder.iterdir() if p.name.startswith(".") and (".tmp" in p.name
                                                                                     or "write-check" in p.name)]
            assert not stray, f"left in {folder}: {stray}"


@pytest.fixture()
def frames(tmp_path: Path, dataset: Path) -> Path:
    """6 good-sized test images."""
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, p in enumerate(sorted((dataset / "tile" / "test").rglob("*.png"))[:6]):
        (folder / f"{i:02d}.png").write_bytes(p.read_bytes())
    return folder


@pytest.fixture()
def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text("not a folder\n")
    return path


# ------------------------------------------------------------------ output paths refused before any work


def test_run_refuses_bad_output_paths_before_loading_the_bundle(shared_bundle: FakeBundle, frames: Path,
                                                                 tmp_path: Path, a_file: Path) -> None:
    base = ("run", "--bundle", shared_bundle.path, "--images", frames)
    cases = [
        (("--jsonl", tmp_path), "is a folder; give the path of a file"),
        (("--jsonl", a_file / "run.jsonl"), "notes.txt is a file, not a folder"),
        (("--jsonl", a_file / "logs" / "run.jsonl"), "notes.txt is a file, not a folder"),
        (("--save", a_file), "exists and is not a folder"),
        (("--save", a_file / "overlays"), "notes.txt is a file, not a folder"),
        (("--jsonl", tmp_path / "ok.jsonl", "--save", a_file), "--save"),
    ]
    for extra, message in cases:
        line = _one_line(_cli(*base, *extra), 2)  # one line: not even the start-up line of the bundle
        assert message in line and line.startswith(f"Error: {extra[-2]} "), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames", "notes.txt"]  # nothing created, no probe left


@pytest.mark.skipif(IS_ROOT, reason="root bypasses permission bits (chmod cannot make a folder read-only for it); "
                                    "the /sys case below covers an unwritable folder as root")
def test_run_refuses_a_read_only_folder(shared_bundle: FakeBundle, frames: Path, tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        for option, path in (("--jsonl", ro / "run.jsonl"), ("--save", ro), ("--save", ro / "overlays")):
            line = _one_line(_cli("run", "--bundle", shared_bundle.path, "--images", frames, option, path), 2)
            assert "cannot write in" in line and "Permission denied" in line
    finally:
        ro.chmod(0o755)
    assert list(ro.iterdir()) == []


@pytest.mark.skipif(not sys.platform.startswith("linux") or not os.path.isdir("/sys"), reason="Linux sysfs only")
def test_run_refuses_a_folder_nobody_may_write_in(shared_bundle: FakeBundle, frames: Path) -> None:
    # sysfs refuses new files to everyone, root included: an unwritable folder that works whoever runs the tests
    line = _one_line(_cli("run", "--bundle", shared_bundle.path, "--images", frames, "--jsonl",
                          "/sys/fgad-hostile.jsonl"), 2)
    assert "cannot write in /sys" in line


def test_the_other_commands_refuse_bad_outputs_before_working(shared_bundle: FakeBundle, good_dir: Path,
                                                              tmp_path: Path, a_file: Path) -> None:
    not_a_bundle = tmp_path / "photos"
    not_a_bundle.mkdir()
    (not_a_bundle / "holiday.jpg").write_bytes(b"x")
    missing = tmp_path / "no-checkpoint"
    cases = [
        # export and eval would load a checkpoint with torch: the path is refused first (the checkpoint is missing)
        (("export", "--checkpoint", missing, "--class-name", "tile", "--out", a_file), "exists and is not a folder"),
        (("export", "--checkpoint", missing, "--class-name", "tile", "--out", a_file / "b"), "is a file, not a"),
        (("export", "--checkpoint", missing, "--class-name", "tile", "--out", not_a_bundle), "not a bundle"),
        (("export", "--checkpoint", missing, "--class-name", "tile", "--out", tmp_path / "b", "--timing-cache",
          tmp_path), "is a folder"),
        (("calibrate", "--bundle", shared_bundle.path, "--calib-dir", good_dir, "--out", a_file), "not a folder"),
        (("calibrate", "--bundle", shared_bundle.path, "--calib-dir", good_dir, "--out",
          not_a_bundle / "holiday.jpg" / "int8"), "is a file, not a folder"),
        (("eval", "--checkpoint", missing, "--data", tmp_path, "--out", a_file), "exists and is not a folder"),
        (("bench", "--bundle", shared_bundle.path, "--backends", "ort", "--out", a_file / "r"), "is a file, not a"),
        (("train", "--data", tmp_path, "--out", a_file), "exists and is not a folder"),
        (("captions", "draft", a_file, "--class-name", "tile", "--out", tmp_path), "is a folder"),
    ]
    for args, message in cases:
        line = _one_line(_cli(*args), 2)
        assert message in line and "--" in line.split()[1], line
    assert (not_a_bundle / "holiday.jpg").read_bytes() == b"x" and not (tmp_path / "b").exists()
    _no_temporaries(tmp_path)


@pytest.mark.skipif(not sys.platform.startswith("linux") or not os.path.isdir("/sys"), reason="Linux sysfs only")
def test_export_refuses_an_unwritable_bundle_location(tmp_path: Path) -> None:
    line = _one_line(_cli("export", "--checkpoint", tmp_path, "--class-name", "tile", "--out", "/sys/fgad-bundle"), 2)
    assert "--out /sys/fgad-bundle: cannot write in /sys" in line


# ------------------------------------------------------------------------ failures during a run (fgad-run)


@pytest.mark.skipif(not HAS_DEV_FULL, reason="needs /dev/full (Linux)")
def test_a_really_full_disk_stops_the_run_with_a_count(shared_bundle: FakeBundle, frames: Path,
                                                       tmp_path: Path) -> None:
    link = tmp_path / "full.jsonl"
    link.symlink_to("/dev/full")  # every write to it fails with ENOSPC, like a full disk
    proc = _cli("run", "--bundle", shared_bundle.path, "--images", frames, "--jsonl", link)
    assert proc.returncode == 1, proc.stderr
    line = _last_line_error(proc.stdout + proc.stderr)
    assert "stopped at frame 1: cannot write" in line and "No space left on device" in line
    assert f"written: 0 JSON lines to {link}" in line and "1 frames scored" in line
    assert link.is_symlink() and os.readlink(link) == "/dev/full"


def test_a_disk_filling_up_mid_line_leaves_only_whole_lines(shared_bundle: FakeBundle, frames: Path,
                                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fgad.cli.run import main
    from fgad.core.outputs import LineWriter

    jsonl = tmp_path / "out" / "run.jsonl"
    jsonl.parent.mkdir()
    jsonl.write_text('{"frame": "from an earlier run"}\n')
    real = LineWriter._write_some
    calls = {"n": 0}

    def filling_up(self: LineWriter, data: memoryview) -> int:
        calls["n"] += 1
        if calls["n"] == 4:  # the 4th line: part of it fits...
            return real(self, data[:17])
        if calls["n"] == 5:  # ...then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, data)

    monkeypatch.setattr(LineWriter, "_write_some", filling_up)
    result = _invoke(main, "--bundle", shared_bundle.path, "--images", frames, "--jsonl", jsonl)
    assert result.exit_code == 1
    line = _last_line_error(result.output)
    assert "stopped at frame 4" in line and "No space left on device" in line
    assert f"written: 3 JSON lines to {jsonl} (whole lines only)" in line
    lines = _whole_json_lines(jsonl)
    assert len(lines) == 4 and lines[0]["frame"] == "from an earlier run"
    assert [Path(str(r["frame"])).name for r in lines[1:]] == ["00.png", "01.png", "02.png"]


def test_a_disk_full_for_overlays_leaves_no_partial_png(shared_bundle: FakeBundle, frames: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from fgad.cli.run import main

    real_fsync = os.fsync
    calls = {"n": 0}

    def fsync(fd: int) -> None:  # the overlays are written atomically; the third one does not fit
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    save, jsonl = tmp_path / "overlays", tmp_path / "run.jsonl"
    result = _invoke(main, "--bundle", shared_bundle.path, "--images", frames, "--save", save, "--jsonl", jsonl)
    assert result.exit_code == 1
    line = _last_line_error(result.output)
    assert "stopped at frame 3: cannot write" in line and "000003_02.png: No space left on device" in line
    assert "written: 2 JSON lines" in line and f"2 overlays to {save}" in line
    names = sorted(p.name for p in save.iterdir())  # <run id>_<frame>.png, no temporary file
    assert [n.split("_", 1)[1] for n in names] == ["000001_00.png", "000002_01.png"]
    assert len({n.split("_", 1)[0] for n in names}) == 1
    assert len(_whole_json_lines(jsonl)) == 2


@pytest.mark.parametrize("removed", ["jsonl folder", "save folder"])
def test_an_output_folder_removed_mid_run_stops_it(shared_bundle: FakeBundle, frames: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch, removed: str) -> None:
    from fgad.cli.run import main
    from fgad.runtime.pipeline import Detector

    logs, save = tmp_path / "logs", tmp_path / "overlays"
    victim = logs if removed == "jsonl folder" else save
    real_call = Detector.__call__
    calls = {"n": 0}

    def scoring(self: Detector, image: object):  # noqa: ANN202
        calls["n"] += 1
        if calls["n"] == 3:
            shutil.rmtree(victim)  # someone cleans up while the run writes there
        return real_call(self, image)

    monkeypatch.setattr(Detector, "__call__", scoring)
    result = _invoke(main, "--bundle", shared_bundle.path, "--images", frames, "--jsonl", logs / "run.jsonl",
                     "--save", save)
    assert result.exit_code == 1
    line = _last_line_error(result.output)
    assert "stopped at frame 3:" in line and "was removed during the run" in line
    assert not victim.exists()  # not silently re-created
    if removed == "save folder":
        assert "--save folder" in line and "written: 2 JSON lines" in line and "2 overlays" in line
        assert len(_whole_json_lines(logs / "run.jsonl")) == 2
    else:
        assert "3 overlays" in line and len(list(save.glob("*.png"))) == 3


# ----------------------------------------------------- failures during fgad-calibrate and fgad-bench


def test_a_full_disk_during_calibrate_leaves_no_half_bundle(shared_bundle: FakeBundle, good_dir: Path,
                                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fgad.cli.calibrate import main

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    out = tmp_path / "int8"
    result = _invoke(main, "--bundle", shared_bundle.path, "--calib-dir", good_dir, "--out", out)
    assert result.exit_code == 1
    line = _last_line_error(result.output)
    assert "No space left on device" in line
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == []  # the staging folder is gone


def test_a_full_disk_during_bench_leaves_no_partial_result(shared_bundle: FakeBundle, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from fgad.cli.bench import main

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    out = tmp_path / "bench"
    result = _invoke(main, "--bundle", shared_bundle.path, "--backends", "ort", "--frames", "2", "--warmup", "0",
                     "--shots", "0", "--no-chart", "--no-progress", "--out", out)
    assert result.exit_code == 1
    line = _last_line_error(result.output)
    assert f"{out / 'bench.json'}: No space left on device" in line
    assert list(out.iterdir()) == []


# ----------------------------------------------------------------------------------------------- inputs


def test_a_corrupt_image_among_the_inputs_is_skipped(shared_bundle: FakeBundle, frames: Path,
                                                     tmp_path: Path) -> None:
    (frames / "03b_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    jsonl = tmp_path / "run.jsonl"
    proc = _cli("run", "--bundle", shared_bundle.path, "--images", frames, "--jsonl", jsonl)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert str(frames / "03b_corrupt.png") in proc.stderr and "6 frames" in proc.stderr
    assert "1 skipped" in proc.stderr
    assert len(_whole_json_lines(jsonl)) == 6


def test_a_bundle_that_is_a_file_is_one_line(frames: Path, a_file: Path, tmp_path: Path) -> None:
    jsonl = tmp_path / "run.jsonl"
    line = _one_line(_cli("run", "--bundle", a_file, "--images", frames, "--jsonl", jsonl), 1)
    assert "is not a folder" in line
    assert not jsonl.exists()
