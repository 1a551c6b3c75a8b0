"""The live view's HTTP server: the page, an MJPEG stream per source, the NG gallery, the threshold control,
``/health`` and ``/metrics``. Stdlib :mod:`http.server` only, one thread per connection.

Routes (every one needs the token when the view has one):

``GET /``, ``/app.js``, ``/style.css``   the page (three packaged files; no other path is served from disk)
``GET /api/state``                       counters, threshold and gallery as JSON (the page polls it)
``GET /stream?source=NAME``              ``multipart/x-mixed-replace`` MJPEG of the source's newest overlay
``GET /frame?source=NAME``               the newest overlay as one JPEG
``GET /ng?id=N``                         one gallery frame as JPEG
``POST /api/threshold``                  ``{"threshold": 0.42}``: validate, persist, hand to the runtime
``GET /health``                          JSON: ok, uptime, per-source last frame age
``GET /metrics``                         Prometheus text format
"""

from __future__ import annotations

import hmac
import http.cookies
import http.server
import json
import logging
import math
import select
import socket
import threading
from collections.abc import Callable
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from fgad.core.atomic import atomic_write_bytes

from .encoder import jpeg_encoder
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import render_metrics
from .settings import ViewSettings, is_loopback_host, persist_threshold, validate_threshold
from .state import ViewState

if TYPE_CHECKING:
    import numpy as np

__all__ = ["LiveView"]

log = logging.getLogger(__name__)

BOUNDARY = "fgadframe"
#: Cookie set once a request carried the right ``?token=``: the page's own files and images then need no token.
COOKIE = "fgad_token"
#: The packaged page: URL path -> (file name, content type). Nothing else is ever read from disk.
STATIC_FILES: dict[str, tuple[str, str]] = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
MAX_BODY_BYTES = 1024
#: Seconds a socket read or write may stall before the connection is dropped (a dead or stuck client).
SOCKET_TIMEOUT_S = 10.0
SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
    ("Content-Security-Policy", "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'"),
)


def _read_static(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


def _host_of(header: str | None) -> str:
    """The host part of a Host header (``127.0.0.1:8080``, ``[::1]:8080``, ``localhost``)."""
    value = (header or "").strip()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    return value.rpartition(":")[0] if value.count(":") == 1 else value


class LiveView:
    """Serves the live view in a daemon thread; the runtime feeds it with :meth:`publish`.

    ``on_threshold`` is called from a server thread when the operator changes the threshold in the page, after
    the value was validated and persisted to ``settings.settings_path``; the caller applies it between engine
    calls. An exception it raises is answered with an error to the page (``ValueError``: 400).
    """

    def __init__(self, settings: ViewSettings, *, threshold: float | None,
                 on_threshold: Callable[[float], None] | None = None) -> None:
        if not isinstance(settings, ViewSettings):
            raise TypeError(f"settings must be a ViewSettings, got {type(settings).__name__}")
        self.settings = settings
        self._on_threshold = on_threshold
        encode = jpeg_encoder(settings.jpeg_quality, settings.max_width)
        self._encodes = 0
        self._count_lock = threading.Lock()

        def counted_encode(image: np.ndarray) -> bytes:
            data = encode(image)
            with self._count_lock:
                self._encodes += 1
            return data

        self.state = ViewState(threshold=None if threshold is None else validate_threshold(threshold),
                               gallery_size=settings.gallery_size, encode=counted_encode)
        self._clients = 0
        self._threshold_lock = threading.Lock()  # one threshold change (persist + hand-over) at a time
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopped = False
        self.url: str | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> str:
        """Bind and serve in a daemon thread; return the URL (without the token)."""
        if self._stopped:
            raise ValueError("a stopped live view cannot be started again; create a new LiveView")
        if self._server is not None:
            raise ValueError("the live view is already started")
        host, port = self.settings.host, self.settings.port
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_class = type("LiveViewHTTPServer", (http.server.ThreadingHTTPServer,),
                            {"address_family": family, "daemon_threads": True, "block_on_close": False})
        try:
            server = server_class((host, port), _make_handler(self))
        except OSError as err:
            raise OSError(err.errno, f"cannot serve the live view on {host}:{port}: {err.strerror or err} "
                                     "(is the port in use? pick another one, or port 0 for a free one)") from err
        self._server = server
        bound_port = server.server_address[1]
        shown = f"[{host}]" if family == socket.AF_INET6 else host
        self.url = f"http://{shown}:{bound_port}/"
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="fgad-liveview", daemon=True)
        self._thread.start()
        log.info("live view on %s", self.url)
        return self.url

    def stop(self) -> None:
        """Stop serving and join the server thread; safe to call more than once (or without start)."""
        if self._stopped:
            return
        self._stopped = True
        self.state.close()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> LiveView:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ the runtime's side

    def publish(self, *, source: str, frame_index: int, timestamp: float, decision: str, score: float,
                latency_ms: float, threshold: float | None, overlay_rgb: np.ndarray | None,
                description: str | None = None) -> None:
        """Record one result; thread-safe, returns at once (no encoding, no I/O: clients pull what they need)."""
        self.state.publish(source=source, frame_index=frame_index, timestamp=timestamp, decision=decision,
                           score=score, latency_ms=latency_ms, threshold=threshold, overlay_rgb=overlay_rgb,
                           description=description)

    def set_threshold(self, value: float) -> None:
        """Tell the page the runtime now applies ``value`` (not persisted: the runtime's own setting)."""
        self.state.set_threshold(validate_threshold(value))

    @property
    def threshold(self) -> float | None:
        return self.state.threshold

    @property
    def jpeg_encodes(self) -> int:
        """JPEG encodings so far (each frame is encoded at most once, and only when a client asked for it)."""
        with self._count_lock:
            return self._encodes

    @property
    def stream_clients(self) -> int:
        with self._count_lock:
            return self._clients

    # ------------------------------------------------------------------ used by the handler

    def _acquire_stream(self) -> bool:
        with self._count_lock:
            if self._clients >= self.settings.max_stream_clients:
                return False
            self._clients += 1
            return True

    def _release_stream(self) -> None:
        with self._count_lock:
            self._clients -= 1

    def _change_threshold(self, value: float) -> dict[str, Any]:
        with self._threshold_lock:
            path = self.settings.settings_path
            persisted = path is not None
            previous = path.read_bytes() if path is not None and path.exists() else None
            if path is not None:
                persist_threshold(path, value)
            try:
                if self._on_threshold is not None:
                    self._on_threshold(value)
            except BaseException:
                # the runtime refused the value: the file must not start the next run with it
                if path is not None:
                    if previous is None:
                        path.unlink(missing_ok=True)
                    else:
                        atomic_write_bytes(path, previous)
                raise
            self.state.set_threshold(value)
            return {"threshold": value, "persisted": persisted}

    def _health(self) -> dict[str, Any]:
        snap = self.state.snapshot()
        stale_after = self.settings.stale_after_s
        sources = {name: {"last_frame_age_s": s["last_frame_age_s"], "frames": s["frames"],
                          "stale": s["last_frame_age_s"] > stale_after}
                   for name, s in snap["sources"].items()}
        return {"ok": not self.state.closed, "uptime_s": snap["uptime_s"], "threshold": snap["threshold"],
                "stale_after_s": stale_after, "sources": sources}


def _make_handler(view: LiveView) -> type[http.server.BaseHTTPRequestHandler]:
    token = view.settings.token.encode() if view.settings.token else None

    class Handler(http.server.BaseHTTPRequestHandler):
        server_version = "fgad-liveview"
        sys_version = ""
        protocol_version = "HTTP/1.1"
        timeout = SOCKET_TIMEOUT_S

        # -------------------------------------------------------------- plumbing

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
            log.debug("%s %s", self.address_string(), (format % args).split("?", 1)[0])

        def _send(self, status: int, body: bytes, content_type: str, extra: tuple[tuple[str, str], ...] = ()) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            for key, value in SECURITY_HEADERS + extra:
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, obj: Any) -> None:
            self._send(status, json.dumps(_finite_or_none(obj), allow_nan=False).encode(),
                       "application/json; charset=utf-8")

        def _error(self, status: int, message: str, extra: tuple[tuple[str, str], ...] = ()) -> None:
            # a refused request's body may be unread: never parse it as the next request on this connection
            self.close_connection = True
            extra = extra + (("Connection", "close"),)
            self._send(status, json.dumps({"error": message}).encode(), "application/json; charset=utf-8", extra)

        def _authorized(self, query: dict[str, list[str]]) -> bool:
            if token is None:
                # No token means loopback only: refuse a foreign Host header (a DNS-rebinding page in the
                # operator's browser would send its own name).
                return is_loopback_host(_host_of(self.headers.get("Host")))
            offered, from_query = "", False
            auth = self.headers.get("Authorization", "")
            if auth.startswith("Bearer "):
                offered = auth[len("Bearer "):].strip()
            elif "token" in query:
                offered, from_query = query["token"][0], True
            else:
                cookie = http.cookies.SimpleCookie()
                try:
                    cookie.load(self.headers.get("Cookie", ""))
                except http.cookies.CookieError:
                    return False
                if COOKIE in cookie:
                    offered = cookie[COOKIE].value
            ok = hmac.compare_digest(offered.encode("utf-8", "replace"), token)
            # the page's own style sheet and script are fetched without the query: a cookie carries it there
            self._set_cookie = ok and from_query
            return ok

        def end_headers(self) -> None:
            if getattr(self, "_set_cookie", False) and token is not None:
                self.send_header("Set-Cookie", f"{COOKIE}={token.decode()}; Path=/; HttpOnly; SameSite=Strict")
                self._set_cookie = False
            super().end_headers()

        def _route(self) -> tuple[str, dict[str, list[str]]] | None:
            self._set_cookie = False
            parts = urlsplit(self.path)
            query = parse_qs(parts.query, keep_blank_values=True, max_num_fields=8)
            if not self._authorized(query):
                if token is None:
                    self._error(403, "this live view answers only requests to a loopback host name")
                else:
                    self._error(401, "missing or wrong token (send 'Authorization: Bearer <token>' or ?token=)",
                                (("WWW-Authenticate", 'Bearer realm="fgad-liveview"'),))
                return None
            return parts.path, query

        # -------------------------------------------------------------- GET

        def do_HEAD(self) -> None:  # noqa: N802 - the stdlib's name
            self.do_GET()

        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            try:
                routed = self._route()
            except ValueError:
                self._error(400, "malformed query")
                return
            if routed is None:
                return
            path, query = routed
            if path in STATIC_FILES:
                name, content_type = STATIC_FILES[path]
                self._send(200, _read_static(name), content_type)
            elif path == "/api/state":
                self._json(200, view.state.snapshot())
            elif path == "/health":
                self._json(200, view._health())
            elif path == "/metrics":
                body = render_metrics(view.state.snapshot(), view.stream_clients, view.jpeg_encodes)
                self._send(200, body.encode(), METRICS_CONTENT_TYPE)
            elif path == "/frame":
                frame = view.state.newest_frame(query.get("source", [""])[0])
                if frame is None:
                    self._error(404, "no frame for that source yet")
                else:
                    self._send(200, frame.jpeg(), "image/jpeg")
            elif path == "/ng":
                entry = query.get("id", [""])[0]
                frame = view.state.gallery_frame(int(entry)) if entry.isdigit() else None
                if frame is None:
                    self._error(404, "no such gallery frame (it may have left the gallery)")
                else:
                    self._send(200, frame.jpeg(), "image/jpeg")
            elif path == "/stream":
                self._stream(query.get("source", [""])[0])
            else:
                self._error(404, f"no such page: {path[:100]}")

        def _stream(self, source: str) -> None:
            if not source:
                self._error(400, "stream needs ?source=NAME")
                return
            if not view._acquire_stream():
                self._error(503, f"too many streams open (limit {view.settings.max_stream_clients})")
                return
            try:
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                self.send_header("Cache-Control", "no-store")
                self.send_header("Connection", "close")
                for key, value in SECURITY_HEADERS[1:]:  # nosniff would make Chromium refuse the multipart image
                    self.send_header(key, value)
                self.end_headers()
                self.close_connection = True
                if self.command == "HEAD":
                    return
                self.wfile.write(f"--{BOUNDARY}\r\n".encode())
                seq, data, repeated = -1, b"", True
                while not view.state.closed:
                    frame = view.state.wait_for_frame(source, seq, timeout=0.5)
                    if frame is None:
                        if _peer_closed(self.connection):
                            break
                        if repeated:
                            continue
                        # Chromium shows a part only once the next one begins: when no new frame follows
                        # within the wait, the last one is sent again (once), so a quiet source is still seen.
                        repeated = True
                    else:
                        seq, data, repeated = frame.seq, frame.jpeg(), False
                    self.wfile.write(b"Content-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(data)
                                     + data + f"\r\n--{BOUNDARY}\r\n".encode())
                    self.wfile.flush()
            except (ConnectionError, TimeoutError, OSError):
                pass  # the client went away or stalled: its thread ends, nobody else notices
            finally:
                view._release_stream()

        # -------------------------------------------------------------- POST

        def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
            try:
                routed = self._route()
            except ValueError:
                self._error(400, "malformed query")
                return
            if routed is None:
                return
            path, _ = routed
            if path != "/api/threshold":
                self._error(404, f"no such endpoint: {path[:100]}")
                return
            # A JSON content type makes a cross-site form post impossible (browsers preflight it, and no
            # CORS header is ever sent); an Origin, when the browser sends one, must be this server.
            if self.headers.get("Content-Type", "").split(";")[0].strip().lower() != "application/json":
                self._error(415, "send the threshold as JSON: Content-Type: application/json")
                return
            origin = self.headers.get("Origin")
            if origin is not None and origin != f"http://{self.headers.get('Host', '')}":
                self._error(403, "cross-origin request refused")
                return
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError:
                self._error(411, "Content-Length required")
                return
            if not 0 < length <= MAX_BODY_BYTES:
                self._error(413, f"body must be 1..{MAX_BODY_BYTES} bytes")
                return
            try:
                body = json.loads(self.rfile.read(length))
                if not isinstance(body, dict) or "threshold" not in body:
                    raise ValueError('expected {"threshold": <number>}')
                value = validate_threshold(body["threshold"])
            except ValueError as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
                self._error(400, str(err))
                return
            try:
                result = view._change_threshold(value)
            except ValueError as err:
                self._error(400, str(err))
                return
            except Exception as err:  # the runtime's callback or the disk failed: tell the page, keep serving
                log.exception("threshold change to %s failed", value)
                self._error(500, f"threshold change failed: {err}")
                return
            self._json(200, result)

    return Handler


def _peer_closed(sock: socket.socket) -> bool:
    """True when the client has closed its side (a readable socket with nothing to read): an idle stream
    notices a closed browser tab without waiting for the next frame."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


def _finite_or_none(obj: Any) -> Any:
    """NaN and infinities become null: the page's JSON.parse accepts nothing else."""
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite_or_none(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
