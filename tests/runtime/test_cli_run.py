"""fgad-run end to end: outputs, error lines, Ctrl-C, headless --show, and the torch-free guarantee."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fgad.cli.run import main
from fgad.core.io import read_image
from tests.helpers.fake_bundle import FakeBundle

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def images(tmp_path: Path, dataset: Path) -> Path:
    """5 test images plus one corrupt file."""
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, p in enumerate(sorted((dataset / "tile" / "test").rglob("*.png"))[:5]):
        (folder / f"{i:02d}_{p.parent.name}.png").write_bytes(p.read_bytes())
    (folder / "03b_corrupt.png").write_bytes(b"\x89PNG broken")
    return folder


def _invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_image_folder_writes_jsonl_and_overlays(shared_bundle: FakeBundle, images: Path, good_dir: Path,
                                                tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out, jsonl = tmp_path / "overlays", tmp_path / "logs" / "run.jsonl"
    code, output = _invoke("--bundle", str(shared_bundle.path), "--images", str(images), "--refs", str(good_dir),
                           "--threshold", "auto", "--save", str(out), "--jsonl", str(jsonl), "--log-every", "2")
    assert code == 0, output
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(lines) == 5
    first = lines[0]
    assert first["frame"].endswith("00_good.png") and isinstance(first["is_anomalous"], bool)
    assert {"score", "threshold", "best_description", "timings_ms", "overlay"} <= set(first)
    assert all(line["threshold"] == first["threshold"] for line in lines)
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 5 and Path(first["overlay"]) == pngs[0]
    panel = read_image(pngs[0])
    assert panel.shape[0] > 256 and panel.shape[1] == 3 * 256  # [input | overlay | heatmap] under a caption strip
    assert str(images / "03b_corrupt.png") in caplog.text  # the warning names the skipped file
    assert "4 frames, " in caplog.text and "FPS" in caplog.text  # --log-every 2
    assert "5 frames" in output and "1 skipped" in output and "FPS" in output
    assert "auto: max leave-one-out score of 4 reference images" in output

    # appending: a second run adds lines
    code, output = _invoke("--bundle", str(shared_bundle.path), "--images", str(images / "00_good.png"),
                           "--jsonl", str(jsonl))
    assert code == 0, output
    assert len(jsonl.read_text().splitlines()) == 6


def test_video_loop_with_max_frames(shared_bundle: FakeBundle, video_path: Path, tmp_path: Path) -> None:
    jsonl = tmp_path / "v.jsonl"
    code, output = _invoke("--bundle", str(shared_bundle.path), "--video", str(video_path), "--loop",
                           "--max-frames", "23", "--jsonl", str(jsonl), "--threshold", "0.5")
    assert code == 0, output
    frames = [json.loads(line)["frame"] for line in jsonl.read_text().splitlines()]
    assert frames == list(range(23))
    assert "23 frames" in output


def test_show_without_a_gui_warns_instead_of_crashing(shared_bundle: FakeBundle, images: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    import cv2

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    gui = [line for line in cv2.getBuildInformation().splitlines() if line.strip().startswith("GUI:")]
    code, output = _invoke("--bundle", str(shared_bundle.path), "--images", str(images), "--show")
    assert code == 0, output
    assert "--show ignored" in caplog.text
    if gui and "NONE" in gui[0].upper():
        assert "no GUI" in caplog.text


def test_bundle_for_another_engine_is_one_clear_line(bundle: FakeBundle, images: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr("importlib.util.find_spec",
                        lambda name, *a: None if name == "tensorrt" else real(name, *a))
    bundle.edit(engine__kind="tensorrt", engine__tensorrt_version="10.3.0", engine__compute_capability="8.7")
    code, output = _invoke("--bundle", str(bundle.path), "--images", str(images))
    assert code == 1
    assert "Traceback" not in output and output.count("Error:") == 1
    assert "'engine.kind'" in output and "install it from JetPack/NVIDIA" in output

    bundle.edit(format_version=7)
    code, output = _invoke("--bundle", str(bundle.path), "--images", str(images))
    assert code == 1 and "'format_version'" in output and "Traceback" not in output


def test_usage_and_source_errors(shared_bundle: FakeBundle, images: Path, tmp_path: Path) -> None:
    code, output = _invoke("--bundle", str(shared_bundle.path))
    assert code == 2 and "exactly one of --camera, --video or --images" in output
    code, output = _invoke("--bundle", str(shared_bundle.path), "--camera", "0", "--images", str(images))
    assert code == 2
    code, output = _invoke("--bundle", str(shared_bundle.path), "--camera", "0")
    assert code == 1 and "camera 0 could not be opened" in output
    code, output = _invoke("--bundle", str(shared_bundle.path), "--video", str(tmp_path / "none.mp4"))
    assert code == 1 and "does not exist" in output
    code, output = _invoke("--bundle", str(shared_bundle.path), "--images", str(images), "--threshold", "high")
    assert code == 2 and "'auto' or a number" in output
    code, output = _invoke("--bundle", str(tmp_path / "nothing"), "--images", str(images))
    assert code == 1 and "is not a folder" in output
    code, output = _invoke("--bundle", str(shared_bundle.path), "--images", str(images), "--threshold", "auto")
    assert code == 1 and "at least 2 reference images" in output and "--refs" in output


def test_ctrl_c_in_process_prints_a_summary(shared_bundle: FakeBundle, images: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from fgad.runtime.pipeline import Detector

    real_call = Detector.__call__
    calls = {"n": 0}

    def interrupted(self: Detector, image: np.ndarray):  # noqa: ANN202
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_call(self, image)

    monkeypatch.setattr(Detector, "__call__", interrupted)
    jsonl = tmp_path / "r.jsonl"
    code, output = _invoke("--bundle", str(shared_bundle.path), "--images", str(images), "--jsonl", str(jsonl))
    assert code == 0, output
    assert "stopped by Ctrl-C or SIGTERM: 2 frames" in output
    assert len(jsonl.read_text().splitlines()) == 2


def _python_without_torch(argv: list[str]) -> list[str]:
    """A python command running fgad-run with ``import torch`` made to fail."""
    prelude = (
        "import sys; sys.modules['torch'] = None; "
        f"sys.argv = ['fgad-run'] + {argv!r}; "
        "from fgad.cli.run import main; main()"
    )
    return [sys.executable, "-c", prelude]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    env.pop("DISPLAY", None)
    return env


def test_fgad_run_works_without_torch(shared_bundle: FakeBundle, images: Path, good_dir: Path,
                                      tmp_path: Path) -> None:
    out, jsonl = tmp_path / "overlays", tmp_path / "run.jsonl"
    cmd = _python_without_torch(["--bundle", str(shared_bundle.path), "--images", str(images), "--refs",
                                 str(good_dir), "--threshold", "auto", "--save", str(out), "--jsonl", str(jsonl)])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=_env())
    assert proc.returncode == 0, proc.stderr
    assert len(jsonl.read_text().splitlines()) == 5
    assert len(list(out.glob("*.png"))) == 5
    assert "5 frames" in proc.stderr


def test_runtime_modules_do_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import fgad.bundle, fgad.runtime.backends, fgad.runtime.backends.ort, fgad.runtime.backends.trt\n"
        "import fgad.runtime.knn, fgad.runtime.postprocess, fgad.runtime.pipeline, fgad.runtime.sources\n"
        "import fgad.runtime.overlay, fgad.cli.run\n"
        "from fgad.runtime.knn import PatchMemoryIndex\n"
        "PatchMemoryIndex(8)\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=_env())
    assert proc.returncode == 0, proc.stderr


def _ignore_sigint() -> None:
    """As a non-interactive shell does for background jobs: the child starts with SIGINT ignored."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT delivery differs on Windows")
@pytest.mark.parametrize("stop_signal", ["SIGINT", "SIGTERM"])
def test_a_stop_signal_ends_a_looping_video_cleanly(
    shared_bundle: FakeBundle, video_path: Path, tmp_path: Path, stop_signal: str
) -> None:
    jsonl = tmp_path / "live.jsonl"
    cmd = _python_without_torch(["--bundle", str(shared_bundle.path), "--video", str(video_path), "--loop",
                                 "--jsonl", str(jsonl)])
    # the child's output goes to files, not pipes: an undrained pipe could stall it before the signal
    err_path = tmp_path / "stderr.txt"
    with open(tmp_path / "stdout.txt", "w") as out_fh, open(err_path, "w") as err_fh:
        proc = subprocess.Popen(cmd, stdout=out_fh, stderr=err_fh, text=True, env=_env(), preexec_fn=_ignore_sigint)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if jsonl.exists() and len(jsonl.read_text().splitlines()) >= 20:
                    break
                if proc.poll() is not None:
                    break
                time.sleep(0.05)
            assert proc.poll() is None, err_path.read_text()
            proc.send_signal(getattr(signal, stop_signal))
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    stderr = err_path.read_text()
    assert proc.returncode == 0, stderr
    assert "stopped by Ctrl-C or SIGTERM" in stderr and "Traceback" not in stderr
    lines = jsonl.read_text().splitlines()
    assert len(lines) >= 20 and all(json.loads(line)["frame"] == i for i, line in enumerate(lines))


def test_refs_with_an_unreadable_image_are_refused_in_one_line(shared_bundle: FakeBundle, images: Path,
                                                               good_dir: Path, tmp_path: Path) -> None:
    refs = tmp_path / "refs"
    refs.mkdir()
    for path in sorted(good_dir.glob("*.png")):
        (refs / path.name).write_bytes(path.read_bytes())
    (refs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    code, output = _invoke("--bundle", str(shared_bundle.path), "--images", str(images), "--refs", str(refs),
                           "--threshold", "auto", "--jsonl", str(tmp_path / "run.jsonl"))
    assert code == 1, output
    assert "Traceback" not in output and not (tmp_path / "run.jsonl").exists()
    error = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and str(refs / "broken.png") in error[0]
    assert "reference images cannot be read" in error[0] and "refuses rather than skip" in error[0]


def test_a_one_pixel_high_frame_gets_a_working_overlay(shared_bundle: FakeBundle, tmp_path: Path) -> None:
    import cv2

    frame = tmp_path / "line.png"
    cv2.imwrite(str(frame), np.random.default_rng(0).integers(0, 256, (1, 5000, 3), dtype=np.uint8))
    out = tmp_path / "overlays"
    code, output = _invoke("--bundle", str(shared_bundle.path), "--images", str(frame), "--save", str(out))
    assert code == 0, output
    (png,) = out.glob("*.png")
    panel = read_image(png)
    assert panel.shape[1] == 3 * 4 * 256 and panel.shape[0] > 256  # 4:1 tiles, not 3 * 1.28 M pixels wide
