"""The MQTT sink: one JSON message per frame to ``<prefix>/<source>/result``, a retained status topic.

Needs ``paho-mqtt`` (``pip install fgad[mqtt]``). Delivery is at least once and in order per line:

* every result is first appended to the on-disk spool (:mod:`fgad.runtime.sinks.spool`), then published with
  QoS ``qos`` (default 1) by the spool's thread, one at a time, and taken off the spool only when the broker
  acknowledged it (PUBACK; with QoS 0, when it was handed to the socket);
* while the broker is down, results pile up in the spool (bounded by ``max_spool_bytes``; beyond it the line
  stops) and are published in order once the client has reconnected (paho's reconnect, 0.5 s to 10 s);
* a message can arrive twice (acknowledged just before a connection broke, or after a crash): subscribers
  deduplicate on its ``message_id``.

Payload: :meth:`fgad.runtime.line.results.LineResult.to_record` (decision ``OK``/``NG``/``n/a``, score,
threshold, best description, cell and box, latency, source, frame index, timestamps, message id).

Status: ``<prefix>/status``, retained, QoS 1: ``{"state": "online", "run_id", "sources": {name: state},
"frames", "ng", "pending", "at"}`` on connect, on every source change and every ``heartbeat_s``; the broker
publishes ``{"state": "offline"}`` (the will) when the connection is lost, and the sink does on close.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fgad.core.atomic import nan_to_none
from fgad.runtime.line.backoff import Backoff
from fgad.runtime.sinks.base import SinkError
from fgad.runtime.sinks.delivery import SpoolDrainer
from fgad.runtime.sinks.spool import Spool

if TYPE_CHECKING:
    from fgad.runtime.line.reader import SourceEvent
    from fgad.runtime.line.results import LineResult

__all__ = ["MqttSettings", "MqttSink", "parse_mqtt_url"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MqttSettings:
    """Where and how the MQTT sink publishes.

    ``password`` is best given through the environment (``FGAD_MQTT_PASSWORD``), never on a command line.
    """

    host: str = "127.0.0.1"
    port: int = 1883
    prefix: str = "fgad"
    qos: int = 1
    client_id: str | None = None  # default: fgad-<host name>-<random>
    username: str | None = None
    password: str | None = None
    tls: bool = False
    keepalive_s: int = 30
    heartbeat_s: float = 10.0
    spool_dir: Path | None = None  # default: a folder under the working directory, per broker and prefix
    max_spool_bytes: int = 256 * 2**20
    ack_timeout_s: float = 5.0
    close_timeout_s: float = 5.0  # how long close() keeps publishing what is spooled

    def __post_init__(self) -> None:
        if self.qos not in (0, 1, 2):
            raise ValueError(f"MQTT QoS must be 0, 1 or 2, got {self.qos}")
        if not 0 < self.port < 65536:
            raise ValueError(f"MQTT port must be 1..65535, got {self.port}")
        if not self.prefix or any(c in self.prefix for c in "+#") or self.prefix.startswith("/"):
            raise ValueError(f"MQTT topic prefix {self.prefix!r} must be non-empty, without '+', '#' or a leading /")
        if self.heartbeat_s <= 0:
            raise ValueError(f"heartbeat must be > 0 s, got {self.heartbeat_s}")


def parse_mqtt_url(url: str, **overrides: Any) -> MqttSettings:
    """``mqtt://[user@]host[:port][/prefix]`` (``mqtts://`` for TLS, port 8883) as settings."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError(f"MQTT sink {url!r}: expected mqtt://host[:port][/prefix]")
    if parts.password:
        raise ValueError(f"MQTT sink {url!r}: put no password in the URL; set FGAD_MQTT_PASSWORD")
    tls = parts.scheme == "mqtts"
    prefix = parts.path.strip("/") or "fgad"
    values: dict[str, Any] = {"host": parts.hostname, "port": parts.port or (8883 if tls else 1883), "prefix": prefix,
                              "tls": tls, "username": parts.username,
                              "password": os.environ.get("FGAD_MQTT_PASSWORD")}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return MqttSettings(**values)


class MqttSink:
    """Publishes every result and a retained status (see the module docstring)."""

    def __init__(self, settings: MqttSettings | str) -> None:
        self.settings = parse_mqtt_url(settings) if isinstance(settings, str) else settings
        s = self.settings
        self.name = f"mqtt {s.host}:{s.port}/{s.prefix}"
        self.status_topic = f"{s.prefix}/status"
        self._client: Any = None
        self._spool: Spool | None = None
        self._drainer: SpoolDrainer | None = None
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._lock = threading.Lock()
        self._sources: dict[str, str] = {}
        self._frames = self._ng = 0
        self._run_id: str | None = None
        self.connects = 0

    def topic(self, source: str) -> str:
        return f"{self.settings.prefix}/{source}/result"

    # ------------------------------------------------------------------ life cycle

    def open(self) -> None:
        try:
            import paho.mqtt.client as mqtt
        except ImportError as exc:
            raise SinkError("the MQTT sink needs paho-mqtt: pip install 'fgad[mqtt]'") from exc
        s = self.settings
        spool_dir = s.spool_dir or Path("fgad-spool") / f"mqtt-{s.host}-{s.port}-{s.prefix.replace('/', '_')}"
        try:
            self._spool = Spool(spool_dir, max_bytes=s.max_spool_bytes)
        except OSError as exc:
            raise SinkError(f"{self.name}: cannot use spool folder {spool_dir} ({exc.strerror or exc})") from exc
        client_id = s.client_id or f"fgad-{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
        if s.username:
            client.username_pw_set(s.username, s.password)
        if s.tls:
            client.tls_set()
        client.will_set(self.status_topic, json.dumps({"state": "offline", "reason": "connection lost"}),
                        qos=1, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=10)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        self._client = client
        try:
            client.connect_async(s.host, s.port, keepalive=s.keepalive_s)
        except (OSError, ValueError) as exc:
            raise SinkError(f"{self.name}: {exc}") from exc
        client.loop_start()  # connects and reconnects in paho's thread; results wait in the spool meanwhile
        self._drainer = SpoolDrainer(self.name, self._spool, self._deliver, Backoff(0.2, 2.0))
        self._drainer.start()
        self._heartbeat = threading.Thread(target=self._beat, name="fgad-mqtt-heartbeat", daemon=True)
        self._heartbeat.start()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if getattr(reason, "is_failure", False):
            logger.warning("%s: broker refused the connection: %s", self.name, reason)
            return
        self.connects += 1
        if self.connects > 1:
            logger.info("%s: reconnected", self.name)
        self._connected.set()
        self._publish_status()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if self._connected.is_set() and not self._stop.is_set():
            pending = self._spool.pending_bytes if self._spool else 0
            logger.warning("%s: connection lost (%s); results are spooled (%d bytes waiting)", self.name, reason,
                           pending)
        self._connected.clear()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def _deliver(self, message: bytes) -> bool:
        if not self._connected.wait(0.5):
            return False
        envelope = json.loads(message)
        info = self._client.publish(envelope["topic"], envelope["payload"], qos=self.settings.qos)
        try:
            info.wait_for_publish(self.settings.ack_timeout_s)
        except (RuntimeError, ValueError):
            return False
        return bool(info.is_published())

    def _status(self, state: str) -> str:
        with self._lock:
            status = {"state": state, "run_id": self._run_id, "sources": dict(self._sources),
                      "frames": self._frames, "ng": self._ng,
                      "pending_bytes": self._spool.pending_bytes if self._spool else 0, "at": round(time.time(), 3)}
        return json.dumps(status)

    def _publish_status(self, state: str = "online") -> Any:
        if self._client is None or not self._connected.is_set():
            return None
        return self._client.publish(self.status_topic, self._status(state), qos=1, retain=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_s):
            self._publish_status()

    # ------------------------------------------------------------------ the sink

    def write(self, result: LineResult) -> None:
        if self._spool is None:
            raise SinkError(f"{self.name} is not open")
        record = nan_to_none(result.to_record())
        envelope = {"topic": self.topic(result.source), "payload": json.dumps(record, ensure_ascii=False)}
        self._spool.append(json.dumps(envelope, ensure_ascii=False).encode())
        with self._lock:
            self._run_id = result.run_id
            self._frames += 1
            self._ng += result.decision == "NG"

    def source_event(self, event: SourceEvent) -> None:
        with self._lock:
            self._sources[event.source] = event.state
        self._publish_status()

    def close(self) -> None:
        """Publish what is spooled (up to ``close_timeout_s``), then ``offline``; the rest waits on disk."""
        if self._client is None:
            return
        if self._drainer is not None:
            if not self._drainer.drain(self.settings.close_timeout_s):
                logger.warning("%s: %d bytes of results not yet published stay in the spool %s for the next run",
                               self.name, self._spool.pending_bytes if self._spool else 0,
                               self._spool.folder if self._spool else "")
            self._drainer.stop()
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(5.0)
        info = self._publish_status("offline")
        if info is not None:
            try:
                info.wait_for_publish(2.0)
            except (RuntimeError, ValueError):
                pass
        self._client.disconnect()
        self._client.loop_stop()
        self._client = None
        if self._spool is not None:
            self._spool.close()
