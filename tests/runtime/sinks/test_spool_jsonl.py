"""The on-disk spool (order, ack, restart, bound, torn tail, compaction) and the JSONL sink."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fgad.runtime.sinks import JsonlSink, SinkError, Spool, SpoolFullError
from tests.runtime.sinks.helpers import line_result


def _drain(spool: Spool) -> list[bytes]:
    out = []
    while items := spool.peek(3):
        for end, message in items:
            out.append(message)
            spool.ack(end)
    return out


def test_messages_come_out_in_order_and_survive_a_restart(tmp_path: Path) -> None:
    spool = Spool(tmp_path, commit_interval_s=0.0)
    for i in range(10):
        spool.append(b"m%d" % i)
    first = spool.peek(4)
    assert [m for _, m in first] == [b"m0", b"m1", b"m2", b"m3"]
    spool.ack(first[1][0])  # m0, m1 delivered
    spool.close()
    again = Spool(tmp_path)  # a new run: m2.. still wait, in order
    assert _drain(again) == [b"m%d" % i for i in range(2, 10)]
    assert again.pending_bytes == 0 and (tmp_path / "spool.jsonl").stat().st_size == 0  # cut back when empty
    again.close()


def test_a_crash_between_commits_delivers_again_never_loses(tmp_path: Path) -> None:
    spool = Spool(tmp_path, commit_interval_s=3600)  # offsets not committed in time: as after a crash
    for i in range(5):
        spool.append(b"m%d" % i)
    items = spool.peek(2)
    spool.ack(items[-1][0])
    # no close(): the process died; the next run starts from the last committed offset
    assert _drain(Spool(tmp_path)) == [b"m%d" % i for i in range(5)]


def test_the_bound_refuses_more_and_a_torn_line_is_dropped(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1024)
    spool.append(b"x" * 1000)
    with pytest.raises(SpoolFullError, match="undelivered"):
        spool.append(b"y" * 100)
    spool.close()
    with open(tmp_path / "spool.jsonl", "ab") as fh:
        fh.write(b'{"half a mess')
    assert _drain(Spool(tmp_path, max_bytes=4096)) == [b"x" * 1000]


def test_compaction_keeps_what_waits(tmp_path: Path) -> None:
    spool = Spool(tmp_path, compact_bytes=50)
    for i in range(40):
        spool.append(b"message-%02d" % i)
    got = []
    for _ in range(10):
        end, message = spool.peek(1)[0]
        got.append(message)
        spool.ack(end)
    assert (tmp_path / "spool.jsonl").stat().st_size < 40 * 11  # the delivered head was cut off
    spool.close()
    assert got + _drain(Spool(tmp_path)) == [b"message-%02d" % i for i in range(40)]


def test_jsonl_sink_writes_one_record_per_frame_and_a_full_disk_is_a_sink_error(tmp_path: Path) -> None:
    sink = JsonlSink(tmp_path / "out.jsonl")
    sink.open()
    for i in range(3):
        sink.write(line_result("cam0", i, score=0.7))
    sink.close()
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["frame_index"] for r in records] == [0, 1, 2]
    assert records[0]["decision"] == "NG" and records[0]["source"] == "cam0" and records[0]["box"] == [10, 4, 14, 8]
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full to make a disk full")
    full = JsonlSink("/dev/full")
    full.open()
    with pytest.raises(SinkError, match="cannot write"):
        full.write(line_result("cam0", 0))
    full.close()
