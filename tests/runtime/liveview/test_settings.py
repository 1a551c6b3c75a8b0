"""--serve parsing, the token rule and the persisted threshold."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fgad.runtime.liveview import ViewSettings, load_persisted_threshold, parse_serve_address
from fgad.runtime.liveview.settings import is_loopback_host, persist_threshold


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:8080", ("127.0.0.1", 8080)),
    ("[::1]:8080", ("::1", 8080)),
    (":8080", ("127.0.0.1", 8080)),
    ("localhost:0", ("localhost", 0)),
    ("0.0.0.0:9000", ("0.0.0.0", 9000)),
    (" 10.1.2.3:65535 ", ("10.1.2.3", 65535)),
])
def test_parse_serve_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_serve_address(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty"),
    ("8080", "no port"),
    ("127.0.0.1:", "port ''"),
    ("127.0.0.1:http", "port 'http'"),
    ("127.0.0.1:70000", "0..65535"),
    ("::1:8080", "brackets"),
    ("[::1]8080", "brackets"),
    ("[nothost]:8080", "not an IPv6"),
    ("a b:80", "not a host"),
])
def test_parse_serve_address_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_serve_address(text)


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.3.4.5", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("192.168.1.10", False), ("", False), ("example.org", False),
])
def test_is_loopback_host(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def test_a_public_bind_needs_a_token() -> None:
    with pytest.raises(ValueError, match="needs a token"):
        ViewSettings(host="0.0.0.0")
    assert ViewSettings(host="0.0.0.0", token="s3cret-token").token == "s3cret-token"
    for bad in ("short", "has space in it", "semi;colon-token", "ünïcödé-token"):
        with pytest.raises(ValueError, match="at least 8"):
            ViewSettings(host="0.0.0.0", token=bad)


@pytest.mark.parametrize("field", [{"port": -1}, {"port": 65536}, {"port": True}, {"gallery_size": 0},
                                   {"jpeg_quality": 101}, {"stale_after_s": 0}])
def test_settings_reject_bad_values(field: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ViewSettings(**field)  # type: ignore[arg-type]


def test_threshold_round_trip_keeps_other_keys(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "liveview.json"
    assert load_persisted_threshold(path) is None
    persist_threshold(path, 0.25)
    assert load_persisted_threshold(path) == 0.25
    path.write_text(json.dumps({"threshold": 0.25, "note": "kept"}))
    persist_threshold(path, 0.75)
    assert json.loads(path.read_text()) == {"threshold": 0.75, "note": "kept"}
    assert [p.name for p in path.parent.iterdir()] == ["liveview.json"]  # no temporary file left behind


def test_settings_file_without_threshold_is_none(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text("{}")
    assert load_persisted_threshold(path) is None


@pytest.mark.parametrize("text", ["not json", "[1, 2]", '{"threshold": "high"}', '{"threshold": NaN}',
                                  '{"threshold": true}'])
def test_a_broken_settings_file_is_named(tmp_path: Path, text: str) -> None:
    path = tmp_path / "s.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=str(path)):
        load_persisted_threshold(path)
