"""A live view on a free loopback port, and small HTTP helpers built on urllib / http.client."""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fgad.runtime.liveview import LiveView, ViewSettings


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(url: str, *, method: str = "GET", headers: dict[str, str] | None = None,
            data: bytes | None = None) -> Reply:
    req = urllib.request.Request(url, method=method, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(req, timeout=10) as res:
            return Reply(res.status, dict(res.headers), res.read())
    except urllib.error.HTTPError as err:
        return Reply(err.code, dict(err.headers), err.read())


def post_json(url: str, obj: Any, headers: dict[str, str] | None = None) -> Reply:
    return request(url, method="POST", data=json.dumps(obj).encode(),
                   headers={"Content-Type": "application/json", **(headers or {})})


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def frame(color: tuple[int, int, int], height: int = 48, width: int = 64) -> np.ndarray:
    img = np.zeros((height, width, 3), np.uint8)
    img[:] = color
    return img


def publish(view: LiveView, source: str, index: int, decision: str = "OK", *, score: float = 0.1,
            latency_ms: float = 5.0, overlay: np.ndarray | None = None, description: str | None = None) -> None:
    view.publish(source=source, frame_index=index, timestamp=1_700_000_000.0 + index, decision=decision,
                 score=score, latency_ms=latency_ms, threshold=0.5, overlay_rgb=overlay, description=description)


class MjpegReader:
    """Reads the parts of a ``multipart/x-mixed-replace`` response one by one."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        parts = urllib.parse.urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        self.conn.request("GET", parts.path + ("?" + parts.query if parts.query else ""), headers=headers or {})
        self.response = self.conn.getresponse()
        content_type = self.response.getheader("Content-Type", "")
        self.boundary = content_type.partition("boundary=")[2].encode()

    def next_jpeg(self) -> bytes:
        fp = self.response.fp
        line = fp.readline()
        while line.strip() in (b"", b"--" + self.boundary):
            line = fp.readline()
        headers = {}
        while line.strip():
            key, _, value = line.decode().partition(":")
            headers[key.strip().lower()] = value.strip()
            line = fp.readline()
        return fp.read(int(headers["content-length"]))

    def close(self) -> None:
        self.response.close()  # the response holds the socket open on its own
        self.conn.close()


@pytest.fixture
def view(tmp_path: Path) -> Iterator[LiveView]:
    v = LiveView(ViewSettings(port=0, settings_path=tmp_path / "liveview.json", gallery_size=4), threshold=0.5)
    v.start()
    yield v
    v.stop()
