"""The webhook sink against a real HTTP server on loopback: order, retries through errors and an outage."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from fgad.runtime.line import Backoff
from fgad.runtime.sinks import WebhookSettings, WebhookSink
from tests.runtime.line.conftest import no_thread_leak  # noqa: F401 - the fixture
from tests.runtime.sinks.helpers import line_result


class Receiver:
    """An HTTP server that records POSTed JSON; ``answers`` is a list of status codes to give first."""

    def __init__(self, port: int = 0) -> None:
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        self.answers: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                code = receiver.answers.pop(0) if receiver.answers else 200
                if code == 200:
                    receiver.bodies.append(json.loads(body))
                    receiver.headers.append(dict(self.headers))
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def _wait(predicate, timeout: float = 10.0) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_every_result_is_posted_once_in_order_through_errors_and_an_outage(
        receiver: Receiver, tmp_path: Path, no_thread_leak: None) -> None:  # noqa: F811
    url = f"http://127.0.0.1:{receiver.port}/results"
    receiver.answers = [503, 429]  # the first message is retried through both, then accepted
    sink = WebhookSink(WebhookSettings(url, token="s3cret", spool_dir=tmp_path / "spool",
                                       backoff=Backoff(0.02, 0.1), timeout_s=2.0))
    sink.open()
    for i in range(5):
        sink.write(line_result("st1", i))
    assert _wait(lambda: len(receiver.bodies) == 5)
    port = receiver.port
    receiver.close()  # the MES is down: results wait in the spool
    for i in range(5, 12):
        sink.write(line_result("st1", i))
    time.sleep(0.3)
    back = Receiver(port)
    try:
        assert _wait(lambda: len(back.bodies) == 7)
        sink.close()
    finally:
        back.close()
    ids = [b["frame_index"] for b in receiver.bodies + back.bodies]
    assert ids == list(range(12))
    assert receiver.headers[0]["Authorization"] == "Bearer s3cret"
    assert receiver.headers[0]["X-Fgad-Message-Id"] == "run1:st1:0"


def test_a_refused_message_is_dropped_not_blocking_the_rest(receiver: Receiver, tmp_path: Path) -> None:
    receiver.answers = [400]
    sink = WebhookSink(WebhookSettings(f"http://127.0.0.1:{receiver.port}/", spool_dir=tmp_path / "spool",
                                       backoff=Backoff(0.02, 0.1)))
    sink.open()
    for i in range(3):
        sink.write(line_result("st1", i))
    assert _wait(lambda: len(receiver.bodies) == 2)
    sink.close()
    assert [b["frame_index"] for b in receiver.bodies] == [1, 2] and sink.rejected == 1
