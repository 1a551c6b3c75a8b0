"""Result sinks of a line: JSONL, MQTT (``fgad[mqtt]``), webhook, the live view; see :mod:`.base`."""

from fgad.runtime.sinks.base import Sink, SinkError
from fgad.runtime.sinks.jsonl import JsonlSink
from fgad.runtime.sinks.liveview import LiveViewSink
from fgad.runtime.sinks.mqtt import MqttSettings, MqttSink, parse_mqtt_url
from fgad.runtime.sinks.spool import Spool, SpoolFullError
from fgad.runtime.sinks.webhook import WebhookSettings, WebhookSink

__all__ = [
    "JsonlSink",
    "LiveViewSink",
    "MqttSettings",
    "MqttSink",
    "Sink",
    "SinkError",
    "Spool",
    "SpoolFullError",
    "WebhookSettings",
    "WebhookSink",
    "parse_mqtt_url",
]
