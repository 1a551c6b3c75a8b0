"""The live view's endpoints over real HTTP on a free loopback port."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import tracemalloc
import urllib.parse
from pathlib import Path

import cv2
import numpy as np
import pytest

from fgad.runtime.liveview import LiveView, ViewSettings, load_persisted_threshold
from fgad.runtime.liveview.state import MAX_SOURCES

from .conftest import MjpegReader, frame, post_json, publish, request, wait_until

RED = (220, 20, 20)
BLUE = (20, 20, 220)


def decode(jpeg: bytes) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None, "not a JPEG"
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def mean_color(jpeg: bytes) -> np.ndarray:
    return decode(jpeg).reshape(-1, 3).mean(axis=0)


def test_page_and_static_files(view: LiveView) -> None:
    page = request(view.url)
    assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
    assert b'src="app.js"' in page.body and b'href="style.css"' in page.body
    assert request(view.url + "app.js").headers["Content-Type"].startswith("text/javascript")
    assert b".card" in request(view.url + "style.css").body
    assert page.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("path", ["../server.py", "static/app.js", "%2e%2e/settings.py", "..%2f__init__.py",
                                  "static/../server.py", "app.js/../../server.py", "//etc/passwd", "nope"])
def test_nothing_else_is_served_from_disk(view: LiveView, path: str) -> None:
    # raw socket: urllib would normalise some of these paths before sending them
    host, port = urllib.parse.urlsplit(view.url).hostname, urllib.parse.urlsplit(view.url).port
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(f"GET /{path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 404"), reply[:200]
    assert b"import" not in reply


def test_state_counters_and_health(view: LiveView) -> None:
    for i in range(5):
        publish(view, "cam0", i, "NG" if i in (1, 3) else "OK", latency_ms=float(i + 1), overlay=frame(RED))
    publish(view, "st2", 0, "OK", score=0.2, overlay=None, description="fine")
    state = request(view.url + "api/state").json()
    cam = state["sources"]["cam0"]
    assert (cam["ok"], cam["ng"], cam["frames"], cam["frame_index"]) == (3, 2, 5, 4)
    assert (cam["latency_p50_ms"], cam["latency_p99_ms"]) == (3.0, 5.0)
    assert state["sources"]["st2"]["description"] == "fine" and not state["sources"]["st2"]["has_frame"]
    assert [g["frame_index"] for g in state["gallery"]] == [3, 1]  # newest first
    assert state["threshold"] == 0.5
    health = request(view.url + "health").json()
    assert health["ok"] is True and health["uptime_s"] >= 0
    assert set(health["sources"]) == {"cam0", "st2"}
    assert 0 <= health["sources"]["cam0"]["last_frame_age_s"] < 60 and not health["sources"]["cam0"]["stale"]


def test_nan_score_is_valid_json(view: LiveView) -> None:
    publish(view, "cam0", 0, score=float("nan"))
    reply = request(view.url + "api/state")
    assert b"NaN" not in reply.body and reply.json()["sources"]["cam0"]["score"] is None


def _parse_metrics(text: str) -> tuple[dict[str, tuple[str, str]], dict[tuple[str, frozenset], float]]:
    families: dict[str, tuple[str, str]] = {}
    samples: dict[tuple[str, frozenset], float] = {}
    help_seen: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# HELP "):
            help_seen.add(line.split()[2])
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            assert name in help_seen, f"TYPE before HELP for {name}"
            assert kind in {"counter", "gauge", "summary", "histogram", "untyped"}
            families[name] = (kind, name)
        else:
            m = re.fullmatch(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)', line)
            assert m, f"bad sample line {line!r}"
            name, labels = m.group(1), m.group(3) or ""
            family = next((f for f in families if name in (f, f + "_sum", f + "_count")), None)
            assert family is not None, f"sample {name} before its # TYPE"
            pairs = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels))
            samples[(name, pairs)] = float(m.group(4))
    return families, samples


def test_metrics_are_prometheus_text(view: LiveView) -> None:
    for i in range(4):
        publish(view, "cam0", i, "NG" if i == 0 else "OK", score=0.25 * i, latency_ms=10.0)
    publish(view, 'odd"name\\', 0, "OK")
    reply = request(view.url + "metrics")
    assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    families, samples = _parse_metrics(reply.body.decode())
    assert families["fgad_frames_total"][0] == "counter" and families["fgad_latency_ms"][0] == "summary"
    assert families["fgad_last_frame_age_seconds"][0] == "gauge"
    cam = ("source", "cam0")
    assert samples[("fgad_frames_total", frozenset({cam, ("decision", "OK")}))] == 3
    assert samples[("fgad_frames_total", frozenset({cam, ("decision", "NG")}))] == 1
    assert samples[("fgad_latency_ms_count", frozenset({cam}))] == 4
    assert samples[("fgad_latency_ms_sum", frozenset({cam}))] == 40
    assert samples[("fgad_latency_ms", frozenset({cam, ("quantile", "0.99")}))] == 10
    assert samples[("fgad_last_score", frozenset({cam}))] == 0.75
    assert samples[("fgad_threshold", frozenset())] == 0.5
    assert ("fgad_frames_total", frozenset({("source", 'odd\\"name\\\\'), ("decision", "OK")})) in samples


def test_frame_and_gallery_jpegs(view: LiveView) -> None:
    assert request(view.url + "frame?source=cam0").status == 404
    publish(view, "cam0", 0, "NG", overlay=frame(RED))
    publish(view, "cam0", 1, "OK", overlay=frame(BLUE))
    newest = request(view.url + "frame?source=cam0")
    assert newest.headers["Content-Type"] == "image/jpeg"
    assert mean_color(newest.body)[2] > 150 > mean_color(newest.body)[0]  # blue: the newest frame
    ng_id = request(view.url + "api/state").json()["gallery"][0]["id"]
    assert mean_color(request(view.url + f"ng?id={ng_id}").body)[0] > 150  # red: the NG frame
    assert request(view.url + "ng?id=999999").status == 404
    assert request(view.url + "ng?id=x").status == 404


def test_wide_overlays_are_scaled_down(tmp_path: Path) -> None:
    with LiveView(ViewSettings(port=0, max_width=100), threshold=None) as v:
        publish(v, "cam0", 0, overlay=frame(RED, height=100, width=400))
        assert decode(request(v.url + "frame?source=cam0").body).shape == (25, 100, 3)


def test_mjpeg_stream_sends_each_new_frame_encoded_once(view: LiveView) -> None:
    for i in range(50):
        publish(view, "cam0", i, overlay=frame(RED))
    assert view.jpeg_encodes == 0  # nobody watches: nothing is encoded
    readers = [MjpegReader(view.url + "stream?source=cam0") for _ in range(2)]
    try:
        assert readers[0].response.getheader("Content-Type") == "multipart/x-mixed-replace; boundary=fgadframe"
        first = [r.next_jpeg() for r in readers]
        assert first[0] == first[1] and mean_color(first[0])[0] > 150
        assert view.jpeg_encodes == 1  # two clients, one frame, one encoding
        assert view.stream_clients == 2
        publish(view, "cam0", 50, overlay=frame(BLUE))
        second = [_next_new_jpeg(r, first[0]) for r in readers]
        assert second[0] == second[1] and mean_color(second[0])[2] > 150
        assert view.jpeg_encodes == 2
    finally:
        for r in readers:
            r.close()
    assert wait_until(lambda: view.stream_clients == 0)


def _next_new_jpeg(reader: MjpegReader, previous: bytes) -> bytes:
    """The next part that is not ``previous`` again (an idle stream repeats its last frame once)."""
    for _ in range(3):
        data = reader.next_jpeg()
        if data != previous:
            return data
    raise AssertionError("the stream repeated its old frame instead of sending the new one")


def test_an_idle_stream_repeats_its_last_frame_once(view: LiveView) -> None:
    publish(view, "cam0", 0, overlay=frame(RED))
    reader = MjpegReader(view.url + "stream?source=cam0")
    try:
        first = reader.next_jpeg()
        assert reader.next_jpeg() == first  # sent again after the idle wait: the browser then shows it
        publish(view, "cam0", 1, overlay=frame(BLUE))
        assert mean_color(reader.next_jpeg())[2] > 150  # and not a third time: the next part is the new frame
        assert view.jpeg_encodes == 2
    finally:
        reader.close()


def test_stream_client_limit(tmp_path: Path) -> None:
    with LiveView(ViewSettings(port=0, max_stream_clients=1), threshold=None) as v:
        reader = MjpegReader(v.url + "stream?source=cam0")
        try:
            assert wait_until(lambda: v.stream_clients == 1)
            assert request(v.url + "stream?source=cam0").status == 503
        finally:
            reader.close()
        assert request(v.url + "stream").status == 400


def test_threshold_change_is_validated_persisted_and_handed_over(tmp_path: Path) -> None:
    settings_path = tmp_path / "liveview.json"
    received: list[float] = []
    with LiveView(ViewSettings(port=0, settings_path=settings_path), threshold=0.5,
                  on_threshold=received.append) as v:
        url = v.url + "api/threshold"
        for bad in ({"threshold": "high"}, {"threshold": None}, {"threshold": True}, {"other": 1}, [0.3]):
            reply = post_json(url, bad)
            assert reply.status == 400, bad
        assert request(url, method="POST", data=b"{nope", headers={"Content-Type": "application/json"}).status == 400
        assert request(url, method="POST", data=b'{"threshold": Infinity}',
                       headers={"Content-Type": "application/json"}).status == 400
        assert request(url, method="POST", data=b'{"threshold": 0.3}',
                       headers={"Content-Type": "text/plain"}).status == 415
        assert post_json(url, {"threshold": 0.3}, {"Origin": "http://evil.example"}).status == 403
        assert request(url, method="POST", data=b"x" * 2000, headers={"Content-Type": "application/json"}).status == 413
        assert received == [] and not settings_path.exists()
        reply = post_json(url, {"threshold": 0.3}, {"Origin": v.url.rstrip("/")})
        assert reply.status == 200 and reply.json() == {"threshold": 0.3, "persisted": True}
        assert received == [0.3]
        assert load_persisted_threshold(settings_path) == 0.3
        assert request(v.url + "api/state").json()["threshold"] == 0.3
        v.set_threshold(0.7)  # the runtime's own change reaches the page, and is not persisted
        assert request(v.url + "api/state").json()["threshold"] == 0.7
        assert load_persisted_threshold(settings_path) == 0.3
        assert post_json(v.url + "api/other", {"threshold": 1}).status == 404


def test_a_failing_threshold_callback_is_reported(tmp_path: Path) -> None:
    def refuse(value: float) -> None:
        raise ValueError(f"threshold {value} is outside the calibrated range")

    path = tmp_path / "liveview.json"
    with LiveView(ViewSettings(port=0, settings_path=path), threshold=0.5, on_threshold=refuse) as v:
        reply = post_json(v.url + "api/threshold", {"threshold": 9.0})
        assert reply.status == 400 and "calibrated range" in reply.json()["error"]
        assert request(v.url + "api/state").json()["threshold"] == 0.5
        assert not path.exists()  # the refused value is not left for the next run
        path.write_text('{"threshold": 0.4, "note": "kept"}')
        assert post_json(v.url + "api/threshold", {"threshold": 9.0}).status == 400
        assert json.loads(path.read_text()) == {"threshold": 0.4, "note": "kept"}


def test_a_refused_post_closes_the_connection(view: LiveView) -> None:
    # a body left unread after a refusal must not be read as a second request on the same connection
    host, port = urllib.parse.urlsplit(view.url).hostname, urllib.parse.urlsplit(view.url).port
    smuggled = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(b"POST /api/threshold HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(smuggled) + smuggled)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 415") and reply.count(b"HTTP/1.1 ") == 1


def test_head_of_a_stream_ends(view: LiveView) -> None:
    reply = request(view.url + "stream?source=cam0", method="HEAD")
    assert reply.status == 200 and reply.headers["Content-Type"].startswith("multipart/x-mixed-replace")


def test_without_persisting(tmp_path: Path) -> None:
    with LiveView(ViewSettings(port=0), threshold=None) as v:
        assert post_json(v.url + "api/threshold", {"threshold": 2}).json() == {"threshold": 2.0, "persisted": False}


TOKEN = "0123456789abcdef"


def test_token_guards_every_request() -> None:
    with LiveView(ViewSettings(host="0.0.0.0", port=0, token=TOKEN), threshold=0.5) as v:
        port = urllib.parse.urlsplit(v.url).port
        base = f"http://127.0.0.1:{port}/"
        for path in ("", "app.js", "api/state", "health", "metrics", "stream?source=a", "frame?source=a"):
            reply = request(base + path)
            assert reply.status == 401, path
            assert reply.headers["WWW-Authenticate"].startswith("Bearer")
            assert request(base + path + ("&" if "?" in path else "?") + "token=wrong-token-000").status == 401
            assert request(base + path, headers={"Authorization": "Bearer wrong"}).status == 401
        assert post_json(base + "api/threshold", {"threshold": 0.1}).status == 401
        assert "Set-Cookie" not in request(base + "?token=wrong-token-000").headers
        assert "Set-Cookie" not in request(base, headers={"Authorization": f"Bearer {TOKEN}"}).headers
        page = request(base + f"?token={TOKEN}")
        assert page.status == 200
        cookie = page.headers["Set-Cookie"]
        assert cookie.startswith(f"fgad_token={TOKEN};") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert request(base + "app.js", headers={"Cookie": f"fgad_token={TOKEN}"}).status == 200
        assert request(base + "app.js", headers={"Cookie": "fgad_token=wrong-token-000"}).status == 401
        assert request(base + "app.js", headers={"Cookie": "garbage;;=\x00"}).status == 401
        assert request(base + f"health?token={TOKEN}").json()["ok"] is True
        assert request(base + "api/state", headers={"Authorization": f"Bearer {TOKEN}"}).status == 200
        assert post_json(base + "api/threshold", {"threshold": 0.1},
                         {"Authorization": f"Bearer {TOKEN}"}).status == 200
        assert v.threshold == 0.1


def test_loopback_view_refuses_a_foreign_host_header(view: LiveView) -> None:
    assert request(view.url + "health", headers={"Host": "attacker.example:8080"}).status == 403
    assert request(view.url + "health", headers={"Host": "localhost:8080"}).status == 200


def test_public_bind_without_token_is_refused() -> None:
    with pytest.raises(ValueError, match="--serve-token"):
        LiveView(ViewSettings(host="0.0.0.0", port=0), threshold=None)


def test_port_in_use_is_a_clear_oserror() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        view = LiveView(ViewSettings(port=port), threshold=None)
        with pytest.raises(OSError, match=f"cannot serve the live view on 127.0.0.1:{port}"):
            view.start()


def test_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("this machine has no IPv6")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("::1 cannot be bound here")
    with LiveView(ViewSettings(host="::1", port=0), threshold=None) as v:
        assert v.url.startswith("http://[::1]:")
        assert request(v.url + "health").json()["ok"] is True


def test_stop_is_idempotent_and_ends_streams(tmp_path: Path) -> None:
    v = LiveView(ViewSettings(port=0), threshold=None)
    v.stop()  # before start: nothing to do
    v = LiveView(ViewSettings(port=0), threshold=None)
    v.start()
    reader = MjpegReader(v.url + "stream?source=cam0")
    assert wait_until(lambda: v.stream_clients == 1)
    v.stop()
    v.stop()
    assert wait_until(lambda: v.stream_clients == 0)
    reader.close()
    with pytest.raises(ValueError, match="cannot be started again"):
        v.start()


def test_memory_is_bounded_over_many_publishes(tmp_path: Path) -> None:
    with LiveView(ViewSettings(port=0, gallery_size=5), threshold=None) as v:
        image = np.random.default_rng(0).integers(0, 255, (120, 160, 3), np.uint8)  # 57.6 kB
        for i in range(20):  # warm-up, so that lazily created objects are not counted below
            publish(v, f"s{i % 3}", i, "NG", overlay=image)
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            for i in range(3000):
                publish(v, f"s{i % 3}", i, "NG" if i % 2 else "OK", overlay=image, latency_ms=float(i))
            grown = tracemalloc.get_traced_memory()[0] - base
        finally:
            tracemalloc.stop()
        assert v.state.retained_images() <= 3 + 5
        # 3 newest + 5 gallery frames, plus the fixed-size latency/arrival windows; 3000 frames would be 170 MB
        assert grown < 8 * image.nbytes + 2_000_000, grown
        for i in range(MAX_SOURCES + 10):
            publish(v, f"extra{i}", 0)
        snap = v.state.snapshot()
        assert len(snap["sources"]) == MAX_SOURCES and snap["dropped"] > 0


def test_a_stalled_client_blocks_neither_publish_nor_other_clients(view: LiveView) -> None:
    big = np.random.default_rng(1).integers(0, 255, (720, 1280, 3), np.uint8)  # ~1 MB JPEGs: fill the buffers
    host, port = urllib.parse.urlsplit(view.url).hostname, urllib.parse.urlsplit(view.url).port
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect((host, port))
    stalled.sendall(b"GET /stream?source=cam0 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # and never read
    dead = socket.create_connection((host, port))
    dead.sendall(b"GET /stream?source=cam0 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert wait_until(lambda: view.stream_clients == 2)
    dead.close()
    done = threading.Event()

    def publisher() -> None:
        for i in range(40):
            noisy = big.copy()
            noisy[0, 0] = i
            publish(view, "cam0", i, overlay=noisy)
        done.set()

    threading.Thread(target=publisher, daemon=True).start()
    assert done.wait(60), "publish blocked behind a client that does not read"
    reader = MjpegReader(view.url + "stream?source=cam0")
    try:
        assert decode(reader.next_jpeg()).shape == (720, 1280, 3)  # another client is still served
        assert request(view.url + "health").status == 200
    finally:
        reader.close()
        stalled.close()
    assert wait_until(lambda: view.stream_clients == 0, timeout=20)


def test_publish_rejects_bad_input(view: LiveView) -> None:
    with pytest.raises(ValueError, match="source"):
        publish(view, "", 0)
    with pytest.raises(ValueError, match="uint8"):
        publish(view, "cam0", 0, overlay=np.zeros((4, 4, 3), np.float32))
    image = frame(RED)
    publish(view, "cam0", 0, overlay=image)
    image[:] = BLUE  # the caller reuses its buffer: the view kept its own copy
    assert mean_color(request(view.url + "frame?source=cam0").body)[0] > 150


def test_import_is_cheap_and_starts_nothing() -> None:
    code = ("import sys, threading; import fgad.runtime.liveview as lv; "
            "print(json.dumps({'cv2': 'cv2' in sys.modules, 'numpy': 'numpy' in sys.modules, "
            "'threads': threading.active_count(), 'torch': 'torch' in sys.modules}))")
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert json.loads(out.stdout) == {"cv2": False, "numpy": False, "threads": 1, "torch": False}


def test_demo_runs(tmp_path: Path) -> None:
    from fgad.runtime.liveview.demo import run_demo, synthetic_result

    ok, ng = synthetic_result(0, 0, 0.5), synthetic_result(0, 4, 0.5)
    assert ok.decision == "OK" and ng.decision == "NG" and ng.overlay.shape == (240, 320, 3)
    with LiveView(ViewSettings(port=0), threshold=0.5) as v:
        frames = run_demo(v, fps=200, seconds=0.3)
        state = request(v.url + "api/state").json()
    assert set(state["sources"]) == {"cam0", "st2"} and state["sources"]["cam0"]["frames"] == frames > 0


def test_bench_runs() -> None:
    from fgad.runtime.liveview.bench import SIZES, run_bench

    rows = run_bench(calls=3)
    assert [r["overlay"] for r in rows] == [f"{w}x{h}" for h, w in SIZES]
    assert all(r[k] > 0 for r in rows for k in ("unwatched_us", "watched_us", "no_overlay_us"))


def test_concurrent_publishers_and_readers_count_every_frame(view: LiveView) -> None:
    reader = MjpegReader(view.url + "stream?source=s0")  # opened before the source exists: it waits for it
    errors: list[BaseException] = []

    def publisher(k: int) -> None:
        try:
            for i in range(300):
                publish(view, f"s{k}", i, "NG" if i % 10 == 0 else "OK", overlay=frame(RED) if i % 7 == 0 else None)
        except BaseException as err:  # reported below: an assertion in a thread would only be printed
            errors.append(err)

    def poller() -> None:
        statuses = [request(view.url + path).status for _ in range(30) for path in ("api/state", "metrics")]
        if set(statuses) != {200}:
            errors.append(AssertionError(f"state/metrics answered {sorted(set(statuses))}"))

    threads = [threading.Thread(target=publisher, args=(k,)) for k in range(4)] + [threading.Thread(target=poller)]
    for t in threads:
        t.start()
    try:
        assert mean_color(reader.next_jpeg())[0] > 150
    finally:
        reader.close()
    for t in threads:
        t.join(60)
    assert not errors
    state = request(view.url + "api/state").json()
    for k in range(4):
        s = state["sources"][f"s{k}"]
        assert (s["frames"], s["ok"], s["ng"], s["frame_index"]) == (300, 270, 30, 299)
    assert len(state["gallery"]) == 4  # the fixture's gallery size
