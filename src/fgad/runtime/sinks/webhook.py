"""The webhook sink: every result POSTed as JSON to a URL (an MES endpoint, a Node-RED flow).

Same delivery as MQTT (:mod:`fgad.runtime.sinks.mqtt`): spooled on disk first, POSTed one at a time in order by
the spool's thread, taken off the spool on a 2xx answer. A connection error, a timeout, 408, 429 or a 5xx is
retried (backoff 0.5 s to 10 s, the message stays first in line); any other 4xx means the receiver refuses
this message for good: it is logged with the answer and dropped (``rejected`` counts them), so one bad message
cannot block the line. Headers: ``Content-Type: application/json``, ``X-Fgad-Message-Id`` (deduplicate on it),
and ``Authorization: Bearer <token>`` when a token is given (``FGAD_WEBHOOK_TOKEN``).
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fgad.core.atomic import nan_to_none
from fgad.runtime.line.backoff import Backoff
from fgad.runtime.sinks.base import SinkError
from fgad.runtime.sinks.delivery import SpoolDrainer
from fgad.runtime.sinks.spool import Spool

if TYPE_CHECKING:
    from fgad.runtime.line.reader import SourceEvent
    from fgad.runtime.line.results import LineResult

__all__ = ["WebhookSettings", "WebhookSink"]

logger = logging.getLogger(__name__)

_RETRY_STATUS = (408, 425, 429)


@dataclass(frozen=True)
class WebhookSettings:
    url: str
    timeout_s: float = 5.0
    token: str | None = None
    spool_dir: Path | None = None  # default: a folder under the working directory, per host
    max_spool_bytes: int = 256 * 2**20
    backoff: Backoff = Backoff(0.5, 10.0)
    close_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"webhook URL {self.url!r} must start with http:// or https://")
        if self.timeout_s <= 0:
            raise ValueError(f"webhook timeout must be > 0 s, got {self.timeout_s}")


class WebhookSink:
    """POSTs every result (see the module docstring)."""

    def __init__(self, settings: WebhookSettings | str) -> None:
        if isinstance(settings, str):
            settings = WebhookSettings(settings, token=os.environ.get("FGAD_WEBHOOK_TOKEN"))
        self.settings = settings
        self.name = f"webhook {settings.url}"
        self.rejected = 0
        self._spool: Spool | None = None
        self._drainer: SpoolDrainer | None = None

    def open(self) -> None:
        from urllib.parse import urlsplit

        host = urlsplit(self.settings.url).netloc.replace(":", "-") or "webhook"
        folder = self.settings.spool_dir or Path("fgad-spool") / f"webhook-{host}"
        try:
            self._spool = Spool(folder, max_bytes=self.settings.max_spool_bytes)
        except OSError as exc:
            raise SinkError(f"{self.name}: cannot use spool folder {folder} ({exc.strerror or exc})") from exc
        self._drainer = SpoolDrainer(self.name, self._spool, self._deliver, self.settings.backoff)
        self._drainer.start()

    def _deliver(self, message: bytes) -> bool:
        message_id = json.loads(message).get("message_id", "")
        headers = {"Content-Type": "application/json", "X-Fgad-Message-Id": str(message_id)}
        if self.settings.token:
            headers["Authorization"] = f"Bearer {self.settings.token}"
        request = urllib.request.Request(self.settings.url, data=message, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.settings.timeout_s) as answer:
                answer.read()
            return True
        except urllib.error.HTTPError as exc:
            if exc.code in _RETRY_STATUS or exc.code >= 500:
                logger.warning("%s: answered %d; retrying", self.name, exc.code)
                return False
            self.rejected += 1
            logger.error("%s: refused message %s with %d %s; dropped (the receiver must accept this payload)",
                         self.name, message_id, exc.code, exc.reason)
            return True
        except (urllib.error.URLError, OSError) as exc:  # refused, unreachable, timed out
            logger.warning("%s: %s; retrying", self.name, getattr(exc, "reason", exc))
            return False

    def write(self, result: LineResult) -> None:
        if self._spool is None:
            raise SinkError(f"{self.name} is not open")
        record = nan_to_none(result.to_record())
        self._spool.append(json.dumps(record, ensure_ascii=False).encode())

    def source_event(self, event: SourceEvent) -> None:
        pass

    def close(self) -> None:
        if self._drainer is not None:
            if not self._drainer.drain(self.settings.close_timeout_s) and self._spool is not None:
                logger.warning("%s: %d bytes of results not yet delivered stay in the spool %s for the next run",
                               self.name, self._spool.pending_bytes, self._spool.folder)
            self._drainer.stop()
            self._drainer = None
        if self._spool is not None:
            self._spool.close()
            self._spool = None
