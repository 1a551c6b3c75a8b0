"""fgad-run as a new user and a line operator meet it: extreme frame shapes with --save, bad camera indices,
and a run restarted into the same --save folder and JSONL file. Through the real command (CliRunner, and a
subprocess where a crash of the process itself is the failure)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fgad.cli.run import main
from fgad.core.io import read_image
from tests.helpers.fake_bundle import FakeBundle

REPO = Path(__file__).resolve().parents[2]


def _invoke(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def _subprocess_run(*args: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "fgad.cli.run", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=120, cwd=REPO)


# ------------------------------------------------------------------ 1. extreme aspect ratios with --save


@pytest.mark.parametrize(("shape", "content"), [((1, 10000), (1, 1024)), ((10000, 1), (256, 1))])
def test_an_extreme_frame_gives_a_bounded_letterboxed_panel(shared_bundle: FakeBundle, tmp_path: Path,
                                                            shape: tuple[int, int], content: tuple[int, int]) -> None:
    import cv2

    frame = tmp_path / "strip.png"
    cv2.imwrite(str(frame), np.full((*shape, 3), 200, dtype=np.uint8))
    out = tmp_path / "overlays"
    proc = _subprocess_run("--bundle", shared_bundle.path, "--images", frame, "--save", out)
    assert proc.returncode == 0, proc.stderr
    (png,) = out.glob("*.png")
    panel = read_image(png)
    assert panel.shape[0] < 300 and panel.shape[1] <= 3 * 4 * 256  # bounded, whatever the frame
    tile = panel[panel.shape[0] - 256:, : panel.shape[1] // 3]
    rows, cols = np.nonzero(tile.max(axis=2))
    assert (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == content  # undistorted, on black bars


# ------------------------------------------------------------------ 2. camera indices


@pytest.mark.parametrize("index", ["-1", "99999999999", "100"])
def test_a_camera_index_opencv_cannot_take_is_a_usage_error(shared_bundle: FakeBundle, index: str) -> None:
    proc = _subprocess_run("--bundle", shared_bundle.path, "--camera", index)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)  # not 139 (a segfault inside OpenCV)
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and index in errors[0] and "--camera" in errors[0]


def test_a_camera_that_cannot_be_opened_is_one_line_naming_it(shared_bundle: FakeBundle) -> None:
    index = next((i for i in range(7, 100) if not Path(f"/dev/video{i}").exists()), None)
    assert index is not None, "every /dev/video7..99 exists: no free index to test with"
    code, output = _invoke("--bundle", shared_bundle.path, "--camera", index)
    assert code == 1, output
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and f"camera {index} could not be opened" in errors[0]
    assert "v4l2-ctl --list-devices" in errors[0] and "/dev/video" in errors[0]


@pytest.mark.parametrize("index", [-1, 100, 2**40])
def test_camera_source_refuses_an_index_before_opencv_sees_it(index: int) -> None:
    from fgad.runtime.sources import CameraSource, SourceError

    with pytest.raises(SourceError, match=rf"camera index {index} is out of range 0\.\.99.*v4l2-ctl"):
        CameraSource(index)


def test_the_cli_range_is_the_runtime_range() -> None:
    from fgad.runtime.sources import MAX_CAMERA_INDEX

    (camera,) = [p for p in main.params if p.name == "camera"]
    assert camera.type.min == 0 and camera.type.max == MAX_CAMERA_INDEX


# ------------------------------------------------------------------ 3. a restarted run into the same outputs


def test_a_restarted_video_run_keeps_the_first_runs_panels(shared_bundle: FakeBundle, video_path: Path,
                                                           tmp_path: Path) -> None:
    save, jsonl = tmp_path / "overlays", tmp_path / "run.jsonl"
    args = ("--bundle", shared_bundle.path, "--video", video_path, "--max-frames", 3, "--save", save,
            "--jsonl", jsonl)
    code, output = _invoke(*args)
    assert code == 0, output
    first_panels = {p: p.read_bytes() for p in save.iterdir()}
    code, output = _invoke(*args, "--threshold", "0.0")  # another decision for every frame: other panels
    assert code == 0, output

    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(records) == 6 and len(list(save.glob("*.png"))) == 6  # nothing overwritten
    for path, data in first_panels.items():
        assert path.read_bytes() == data
    run_ids = [r["run_id"] for r in records]
    assert run_ids[0] == run_ids[2] != run_ids[3] == run_ids[5]
    for record in records:
        overlay = Path(record["overlay"])
        assert overlay.is_absolute() and overlay.is_file()
        assert overlay.name == f"{record['run_id']}_frame_{record['frame']:06d}.png"
    assert records[0]["frame"] == records[3]["frame"] == 0
    assert read_image(Path(records[0]["overlay"])).tobytes() != read_image(Path(records[3]["overlay"])).tobytes()
    assert f"run {run_ids[3]}" in output


def test_run_ids_are_unique_and_sort_by_time() -> None:
    from fgad.cli.run import new_run_id

    ids = [new_run_id() for _ in range(50)]
    assert len(set(ids)) == 50
    stamp, random_part = ids[0].split("-")
    assert len(stamp) == len("20261203T164700Z") and stamp.endswith("Z") and len(random_part) == 6


# ------------------------------------------------------------------ 7. the Python API as the docs show it


def test_detector_and_result_import_from_the_package_and_stay_lazy() -> None:
    code = ("import sys, fgad.runtime as rt\n"
            "heavy = [m for m in ('cv2', 'onnxruntime', 'torch', 'fgad.runtime.pipeline') if m in sys.modules]\n"
            "assert not heavy, heavy\n"
            "from fgad.runtime import Detector, Result, SourceError, open_source\n"
            "from fgad.runtime.pipeline import Detector as D\n"
            "assert Detector is D and 'torch' not in sys.modules\n"
            "assert set(rt.__all__) <= set(dir(rt))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    with pytest.raises(ImportError):
        exec("from fgad.runtime import Detektor", {})
