"""The MQTT sink against a real mosquitto on loopback: every frame's message arrives, in order, across a
broker restart (spooled while it is down); the retained status topic; the will."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fgad.runtime.line.reader import SourceEvent
from fgad.runtime.sinks import MqttSettings, MqttSink, SinkError, parse_mqtt_url
from tests.runtime.line.conftest import no_thread_leak  # noqa: F401 - the fixture
from tests.runtime.sinks.broker import MOSQUITTO, Broker
from tests.runtime.sinks.helpers import line_result

mqtt = pytest.importorskip("paho.mqtt.client", reason="paho-mqtt is not installed (pip install 'fgad[mqtt]')")
pytestmark = pytest.mark.skipif(MOSQUITTO is None, reason="no mosquitto broker here (apt-get install mosquitto)")


@pytest.fixture()
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path / "broker")
    b.start()
    yield b
    b.stop()


class Subscriber:
    """A persistent-session QoS 1 subscriber collecting every message of ``topic``."""

    def __init__(self, port: int, topics: list[str]) -> None:
        self.messages: list[tuple[str, dict[str, Any], bool]] = []
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fgad-test-subscriber",
                                  clean_session=False)
        self.client.reconnect_delay_set(1, 1)

        def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
            if not flags.session_present:  # a restored session keeps its subscriptions and queued messages
                for topic in topics:
                    client.subscribe(topic, qos=1)
            self.connected.set()

        def on_message(client: Any, userdata: Any, message: Any) -> None:
            with self.lock:
                self.messages.append((message.topic, json.loads(message.payload), bool(message.retain)))

        self.client.on_connect = on_connect
        self.client.on_message = on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.connected.wait(10)

    def results(self) -> list[dict[str, Any]]:
        with self.lock:
            return [payload for topic, payload, _ in self.messages if topic.endswith("/result")]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _wait(predicate, timeout: float = 20.0) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_every_frame_arrives_once_in_order_across_a_broker_restart(broker: Broker, tmp_path: Path,
                                                                   no_thread_leak: None) -> None:  # noqa: F811
    subscriber = Subscriber(broker.port, ["line1/+/result"])
    sink = MqttSink(MqttSettings(port=broker.port, prefix="line1", spool_dir=tmp_path / "spool", heartbeat_s=0.5,
                                 close_timeout_s=10))
    try:
        sink.open()
        assert _wait(lambda: sink.connected)
        for i in range(10):
            sink.write(line_result("cam0", i))
            sink.write(line_result("st2", i, score=0.9))
        assert _wait(lambda: len(subscriber.results()) == 20)

        broker.stop()
        assert _wait(lambda: not sink.connected, 10)
        for i in range(10, 25):  # published while the broker is down: spooled on disk
            sink.write(line_result("cam0", i))
            sink.write(line_result("st2", i, score=0.9))
        assert sink._spool is not None and sink._spool.pending_bytes > 0
        time.sleep(0.5)
        broker.start()
        arrived = _wait(lambda: len({r["message_id"] for r in subscriber.results()}) == 50, 30)
        expected = {f"run1:{s}:{i}" for s in ("cam0", "st2") for i in range(25)}
        missing = sorted(expected - {r["message_id"] for r in subscriber.results()})
        assert arrived, (f"missing {missing}; sink connected {sink.connected}, subscriber connected "
                         f"{subscriber.client.is_connected()}, spool {sink._spool.pending_bytes} bytes waiting, "
                         f"{sink.connects} connects")
    finally:
        sink.close()
        subscriber.close()
    results = subscriber.results()
    unique: dict[str, dict[str, Any]] = {}
    for r in results:
        unique.setdefault(r["message_id"], r)  # at least once: consumers deduplicate on message_id
    # a redelivery (by the sink after a lost PUBACK, or by the broker to the resumed subscriber) is a duplicate
    # of the same message_id, never a different frame
    assert len(unique) == 50
    assert all(r == unique[r["message_id"]] for r in results)
    for source in ("cam0", "st2"):
        order = [r["frame_index"] for r in unique.values() if r["source"] == source]
        assert order == list(range(25)), source
    first = next(iter(unique.values()))
    assert first["decision"] == "OK" and first["best_description"] == "scratch" and first["cell"] == "top right"
    assert {"score", "threshold", "latency_ms", "captured_at", "box"} <= set(first)
    assert next(r for r in unique.values() if r["source"] == "st2")["decision"] == "NG"


def test_status_is_retained_with_a_heartbeat_and_offline_at_close(broker: Broker, tmp_path: Path,
                                                                  no_thread_leak: None) -> None:  # noqa: F811
    sink = MqttSink(MqttSettings(port=broker.port, prefix="line2", spool_dir=tmp_path / "spool", heartbeat_s=0.2))
    sink.open()
    assert _wait(lambda: sink.connected)
    sink.source_event(SourceEvent("cam0", "opened", "camera 0"))
    sink.write(line_result("cam0", 0, score=0.9))
    time.sleep(0.6)
    late = Subscriber(broker.port, ["line2/status"])  # joins later: gets the retained status at once
    try:
        assert _wait(lambda: bool(late.messages))
        topic, status, retained = late.messages[0]
        assert retained and status["state"] == "online" and status["sources"] == {"cam0": "opened"}
        assert status["frames"] == 1 and status["ng"] == 1
        count = len(late.messages)
        assert _wait(lambda: len(late.messages) >= count + 2, 5)  # the heartbeat
        sink.close()
        assert _wait(lambda: late.messages[-1][1]["state"] == "offline", 5)
    finally:
        late.close()


def test_url_settings_and_errors() -> None:
    s = parse_mqtt_url("mqtt://plc@10.0.0.2:1884/plant/line3", qos=0)
    assert (s.host, s.port, s.prefix, s.username, s.qos, s.tls) == ("10.0.0.2", 1884, "plant/line3", "plc", 0, False)
    assert parse_mqtt_url("mqtts://broker").port == 8883
    with pytest.raises(ValueError, match="no password"):
        parse_mqtt_url("mqtt://u:pw@broker")
    with pytest.raises(ValueError, match="QoS"):
        MqttSettings(qos=3)
    with pytest.raises(SinkError, match="not open"):
        MqttSink(MqttSettings()).write(line_result("a", 0))


def test_a_line_publishes_every_frame_of_every_source(broker: Broker, tmp_path: Path, shared_bundle: Any,
                                                       good_dir: Path, no_thread_leak: None) -> None:  # noqa: F811
    from fgad.runtime.line import Line, LineSettings
    from fgad.runtime.pipeline import Detector

    subscriber = Subscriber(broker.port, ["line3/+/result"])
    try:
        sink = MqttSink(MqttSettings(port=broker.port, prefix="line3", spool_dir=tmp_path / "spool"))
        line = Line(Detector.from_bundle(shared_bundle.path), [f"a={good_dir}", f"b={good_dir}"], [sink],
                    LineSettings(max_batch=4))
        summary = line.run()  # close() publishes what is still spooled before it returns
        assert _wait(lambda: len({r["message_id"] for r in subscriber.results()}) == summary.frames == 8)
    finally:
        subscriber.close()
    topics = {topic for topic, _, _ in subscriber.messages}
    assert topics == {"line3/a/result", "line3/b/result"}
    for source in ("a", "b"):
        assert sorted(r["frame_index"] for r in subscriber.results() if r["source"] == source) == [0, 1, 2, 3]
