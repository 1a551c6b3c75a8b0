"""fgad-run --source/--sink/--serve: the line path end to end (JSONL, webhook, a stand-in live view), SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from fgad.cli.run import main
from tests.helpers.fake_bundle import FakeBundle
from tests.runtime.sinks.test_webhook import Receiver

REPO = Path(__file__).resolve().parents[3]


def _invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_two_sources_to_jsonl_and_a_webhook(shared_bundle: FakeBundle, good_dir: Path, dataset: Path,
                                            tmp_path: Path) -> None:
    receiver = Receiver()
    try:
        out = tmp_path / "results.jsonl"
        code, output = _invoke("--bundle", str(shared_bundle.path), "--source", f"a={good_dir}",
                               "--images", str(dataset / "tile" / "test" / "good"), "--jsonl", str(out),
                               "--sink", f"http://127.0.0.1:{receiver.port}/in", "--spool", str(tmp_path / "spool"))
    finally:
        receiver.close()
    assert code == 0, output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted((r["source"], r["frame_index"]) for r in records) == (
        [("a", i) for i in range(4)] + [("images", i) for i in range(3)])
    assert sorted(b["message_id"] for b in receiver.bodies) == sorted(r["message_id"] for r in records)
    assert "7 frames" in output and "batch up to 8" in output


@pytest.mark.parametrize(("args", "message"), [
    (["--source", "a/b=0"], "MQTT topics"),
    (["--source", "a=0", "--save", "x"], "--save works with one"),
    (["--source", "a=0", "--sink", "ftp://x"], "expected mqtt://"),
])
def test_usage_errors(shared_bundle: FakeBundle, args: list[str], message: str) -> None:
    code, output = _invoke("--bundle", str(shared_bundle.path), *args)
    assert code == 2 and message in output, output


@dataclass(frozen=True)
class FakeViewSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = None
    settings_path: Path | None = None


class FakeLiveView:
    """Stands in for fgad.runtime.liveview.LiveView (same interface) until both are merged."""

    instances: list[FakeLiveView] = []

    def __init__(self, settings: FakeViewSettings, *, threshold: float | None, on_threshold: Any = None) -> None:
        self.settings, self.threshold, self.on_threshold = settings, threshold, on_threshold
        self.published: list[dict[str, Any]] = []
        self.started = self.stopped = False
        FakeLiveView.instances.append(self)

    def start(self) -> str:
        self.started = True
        return f"http://{self.settings.host}:{self.settings.port}/"

    def publish(self, **fields: Any) -> None:
        self.published.append(fields)
        if len(self.published) == 2 and self.on_threshold is not None:
            self.on_threshold(0.0)  # the operator moves the threshold in the page

    def set_threshold(self, value: float) -> None:
        self.threshold = value

    def stop(self) -> None:
        self.stopped = True


def test_serve_hands_every_result_to_the_live_view_and_its_threshold_back(
        shared_bundle: FakeBundle, good_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("fgad.runtime.liveview")
    fake.LiveView = FakeLiveView  # type: ignore[attr-defined]
    fake.ViewSettings = FakeViewSettings  # type: ignore[attr-defined]
    fake.parse_serve_address = lambda text: (text.rsplit(":", 1)[0], int(text.rsplit(":", 1)[1]))  # type: ignore[attr-defined]
    fake.load_persisted_threshold = lambda path: 0.95 if path.exists() else None  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fgad.runtime.liveview", fake)
    settings = tmp_path / "view.json"
    settings.write_text("{}")
    FakeLiveView.instances.clear()
    code, output = _invoke("--bundle", str(shared_bundle.path), "--source", f"a={good_dir}", "--max-batch", "1",
                           "--serve", "127.0.0.1:0", "--serve-settings", str(settings))
    assert code == 0, output
    view = FakeLiveView.instances[0]
    assert view.started and view.stopped and view.threshold == 0.95  # the page's last threshold was used
    assert [p["frame_index"] for p in view.published] == [0, 1, 2, 3]
    assert all(p["source"] == "a" and p["overlay_rgb"] is not None for p in view.published[:1])
    assert [p["threshold"] for p in view.published] == [0.95, 0.95, 0.0, 0.0]  # applied between engine calls
    assert "live view at http://127.0.0.1:0/" in output


@pytest.mark.slow
def test_sigterm_stops_a_live_line_cleanly(shared_bundle: FakeBundle, tmp_path: Path, video_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + str(REPO)}
    process = subprocess.Popen([sys.executable, "-m", "fgad.cli.run", "--bundle", str(shared_bundle.path),
                                "--source", "st=rtsp://127.0.0.1:9/none", "--video", str(video_path), "--loop",
                                "--jsonl", str(out)], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not out.exists() or out.stat().st_size == 0):
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "stopped: " in err and "source st failed" in err
    assert all(json.loads(line)["source"] == "video" for line in out.read_text().splitlines())
