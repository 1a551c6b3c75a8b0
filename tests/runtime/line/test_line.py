"""The Line: batching over sources, drop policy, reconnect with backoff, sinks, threshold, clean stops."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from fgad.runtime.line import Backoff, Line, LineError, LineResult, LineSettings, SourceSpec
from fgad.runtime.line.frames import FrameQueue, LineFrame
from fgad.runtime.pipeline import Detector
from fgad.runtime.sinks import SinkError
from fgad.runtime.sources import SourceError
from tests.helpers.fake_bundle import FakeBundle
from tests.runtime.line.conftest import DyingSource, ScriptedOpener

FAST = Backoff(0.01, 0.05)


class ListSink:
    """Keeps every result; raises SinkError on write number ``fail_at`` (1-based) when given."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.name = "list"
        self.results: list[LineResult] = []
        self.events: list[str] = []
        self.fail_at = fail_at
        self.opened = self.closed = False

    def open(self) -> None:
        self.opened = True

    def write(self, result: LineResult) -> None:
        if self.fail_at is not None and len(self.results) + 1 >= self.fail_at:
            raise SinkError("list sink: disk full")
        self.results.append(result)

    def source_event(self, event: object) -> None:
        self.events.append(f"{event.source}:{event.state}")  # type: ignore[attr-defined]

    def close(self) -> None:
        self.closed = True


@pytest.fixture()
def detector(shared_bundle: FakeBundle) -> Detector:
    return Detector.from_bundle(shared_bundle.path)


def _frame(i: int) -> LineFrame:
    img = np.zeros((2, 2, 3), np.uint8)
    return LineFrame("s", i, i, 0.0, 0.0, img, img)


def test_live_queue_keeps_the_newest_and_file_queue_waits() -> None:
    stop = threading.Event()
    live = FrameQueue(2, newest_wins=True)
    for i in range(5):
        assert live.put(_frame(i), stop)
    assert live.dropped == 3 and [live.get_nowait().index, live.get_nowait().index] == [3, 4]  # type: ignore[union-attr]

    files = FrameQueue(1, newest_wins=False)
    assert files.put(_frame(0), stop)
    done = []
    waiter = threading.Thread(target=lambda: done.append(files.put(_frame(1), stop)))
    waiter.start()
    time.sleep(0.1)
    assert not done  # full: the put waits, nothing is dropped
    assert files.get_nowait().index == 0  # type: ignore[union-attr]
    waiter.join(2)
    assert done == [True] and files.dropped == 0 and files.get_nowait().index == 1  # type: ignore[union-attr]


def test_frames_of_all_sources_are_batched_and_scored_as_one_by_one(
        detector: Detector, good_dir: Path, dataset: Path, no_thread_leak: None) -> None:
    test_dir = dataset / "tile" / "test" / "good"
    sink = ListSink()
    line = Line(detector, [f"a={good_dir}", f"b={test_dir}"], [sink], LineSettings(max_batch=4, fill_wait_ms=50))
    summary = line.run()
    assert sink.opened and sink.closed
    assert summary.stopped_by == "end" and summary.frames == len(sink.results) == 4 + 3
    assert max(r.batch_size for r in sink.results) > 1 and summary.batches < summary.frames
    for name, folder in (("a", good_dir), ("b", test_dir)):
        mine = [r for r in sink.results if r.source == name]
        assert [r.index for r in mine] == list(range(len(mine)))  # per-source order kept
        paths = sorted(folder.glob("*.png"))
        assert [Path(r.frame_id) for r in mine] == paths
        one_by_one = [detector(str(p)).score for p in paths]
        np.testing.assert_allclose([r.result.score for r in mine], one_by_one, rtol=1e-5, atol=1e-6)
    record = sink.results[0].to_record()
    assert record["message_id"] == f"{line.run_id}:{sink.results[0].source}:{sink.results[0].index}"
    assert record["decision"] in ("OK", "NG") and record["latency_ms"] >= 0
    assert record["captured_at"] <= record["scored_at"]
    assert "a:finished" in sink.events and "b:finished" in sink.events


def test_max_batch_is_capped_by_the_engine(detector: Detector, good_dir: Path) -> None:
    class Limited:
        max_batch = 2
        name = "fake"

    detector_limited = Detector(detector.manifest, detector.backend)
    assert Line(detector_limited, [f"a={good_dir}"]).max_batch == 8  # dynamic ONNX batch: the default
    detector_limited.backend = Limited()  # type: ignore[assignment]
    assert Line(detector_limited, [f"a={good_dir}"], settings=LineSettings(max_batch=6)).max_batch == 2


def test_file_sources_lose_no_frame_behind_a_slow_engine(detector: Detector, dataset: Path) -> None:
    folder = dataset / "tile" / "test"
    expected = len(list(folder.rglob("*.png")))
    spec = SourceSpec("t", "images", str(folder / "*" / "*.png"))
    seen: list[int] = []
    line = Line(detector, [spec], settings=LineSettings(queue_size=1, max_batch=1),
                on_result=lambda r: (seen.append(r.index), time.sleep(0.01)))
    summary = line.run()
    assert seen == list(range(expected)) and summary.sources[0].dropped == 0


def test_a_live_source_drops_the_oldest_frames_when_the_engine_is_slow(detector: Detector,
                                                                       no_thread_leak: None) -> None:
    opener = ScriptedOpener([lambda: DyingSource(5000, die=False, delay_s=0.001), SourceError("gone")])
    spec = SourceSpec("cam", "camera", "0")
    seen: list[int] = []
    line = Line(detector, [spec], settings=LineSettings(queue_size=2, max_batch=1, backoff=Backoff(5.0, 5.0),
                                                        max_frames=20),
                opener=opener, on_result=lambda r: (seen.append(r.index), time.sleep(0.02)))
    summary = line.run()
    assert summary.frames == 20 and summary.sources[0].dropped > 0
    assert seen == sorted(seen) and len(set(seen)) == 20 and seen[-1] > 19  # newer frames won


def test_a_dying_source_is_reconnected_with_backoff_and_the_others_go_on(
        detector: Detector, good_dir: Path, no_thread_leak: None) -> None:
    opener_script = [SourceError("camera not found"), lambda: DyingSource(3, die=True),
                     lambda: DyingSource(4, die=False), lambda: DyingSource(1000, die=False, delay_s=0.01)]
    opener = ScriptedOpener(opener_script)
    from fgad.runtime.line import open_spec

    def open_any(spec: SourceSpec):  # noqa: ANN202 - a FrameSource
        return opener(spec) if spec.name == "cam" else open_spec(spec)

    sink = ListSink()
    line = Line(detector, [SourceSpec("cam", "camera", "0"), f"files={good_dir}"], [sink],
                LineSettings(backoff=FAST, max_frames=3 + 4 + 5 + 4, queue_size=100), opener=open_any)
    summary = line.run()
    cam = [r.index for r in sink.results if r.source == "cam"]
    assert cam == list(range(len(cam))) and len(cam) >= 3 + 4 + 5  # the index runs on across reconnects
    assert len([r for r in sink.results if r.source == "files"]) == 4
    cam_summary = next(s for s in summary.sources if s.name == "cam")
    assert cam_summary.reconnects >= 3 and cam_summary.failures == 2
    states = [e.state for e in line.events if e.source == "cam"]
    assert states[:6] == ["failed", "reconnecting", "opened", "failed", "reconnecting", "opened"]
    assert "ended" in states


def test_a_video_file_that_ends_is_reopened_when_live(detector: Detector, video_path: Path,
                                                      no_thread_leak: None) -> None:
    spec = SourceSpec("loop", "video", str(video_path), live=True)
    line = Line(detector, [spec], settings=LineSettings(backoff=FAST, max_frames=25, queue_size=30))
    summary = line.run()
    assert summary.frames == 25 and summary.sources[0].reconnects >= 2
    assert [e.state for e in line.events].count("ended") >= 2


def test_a_dead_sink_stops_the_line_cleanly(detector: Detector, no_thread_leak: None) -> None:
    opener = ScriptedOpener([lambda: DyingSource(10_000, die=False, delay_s=0.001)])
    sink = ListSink(fail_at=5)
    line = Line(detector, [SourceSpec("cam", "camera", "0")], [sink], LineSettings(max_batch=1), opener=opener)
    with pytest.raises(LineError, match="disk full"):
        line.run()
    assert len(sink.results) == 4 and sink.closed and line.summary.stopped_by == "sink"


def test_stop_from_another_thread_and_a_threshold_change_between_engine_calls(
        detector: Detector, no_thread_leak: None) -> None:
    opener = ScriptedOpener([lambda: DyingSource(100_000, die=False, delay_s=0.002)])
    results: list[LineResult] = []
    line = Line(detector, [SourceSpec("cam", "camera", "0")], settings=LineSettings(max_batch=1), opener=opener,
                on_result=results.append)

    def operator() -> None:
        while len(results) < 5:
            time.sleep(0.005)
        line.set_threshold(0.0)  # everything is NG from the next engine call on
        while not any(r.result.threshold == 0.0 for r in results):
            time.sleep(0.005)
        line.stop()

    helper = threading.Thread(target=operator)
    helper.start()
    summary = line.run()
    helper.join(5)
    assert summary.stopped_by == "stop"
    thresholds = [r.result.threshold for r in results]
    first = thresholds.index(0.0)
    assert first >= 5 and all(t == 0.9 for t in thresholds[:first]) and all(t == 0.0 for t in thresholds[first:])
    assert all(r.decision == "NG" for r in results[first:])
    with pytest.raises(ValueError, match="finite"):
        line.set_threshold(float("nan"))
