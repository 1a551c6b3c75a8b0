"""fgad-run with several sources, result sinks or the live view: the :class:`fgad.runtime.line.Line` path.

``fgad-run`` hands over here when any of ``--source``, ``--sink`` or ``--serve`` is given (see docs/line.md);
``--camera``/``--video``/``--images`` then join as sources named ``cam<N>``, ``video`` and ``images``, and
``--jsonl`` as a JSONL sink. Without them fgad-run keeps its single-stream loop (cli/run.py), unchanged.
Ctrl-C and SIGTERM stop the line after the current batch: sinks flush, every thread is joined.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

logger = logging.getLogger("fgad.run")

F = TypeVar("F", bound=Callable[..., Any])

#: the parameter names of the options below; fgad-run pops them before its own settings
LINE_OPTIONS = ("sources", "sinks", "max_batch", "queue_size", "mqtt_qos", "mqtt_heartbeat", "spool_dir",
                "spool_max_mb", "serve", "serve_token", "serve_settings")


def line_options(fn: F) -> F:
    """The options of the line path, added to fgad-run's command."""
    options = [
        click.option("--source", "sources", multiple=True, metavar="NAME=SPEC",
                     help="A named source: camera index, rtsp:// URL, GStreamer pipeline, video file, image "
                          "folder or glob (repeat for several; docs/line.md)."),
        click.option("--sink", "sinks", multiple=True, metavar="URL",
                     help="Where results go besides --jsonl: mqtt://host[:port][/prefix], mqtts://..., "
                          "http(s)://... (webhook POST), jsonl:PATH (repeatable)."),
        click.option("--max-batch", type=click.IntRange(min=1), default=None,
                     help="Frames per engine call over all sources (default: the engine's limit, 8 for ONNX)."),
        click.option("--queue-size", type=click.IntRange(min=1), default=4, show_default=True,
                     help="Frames waiting per source (live sources drop the oldest beyond it, files wait)."),
        click.option("--mqtt-qos", type=click.IntRange(0, 2), default=1, show_default=True, help="MQTT QoS."),
        click.option("--mqtt-heartbeat", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
                     help="Seconds between retained status messages."),
        click.option("--spool", "spool_dir", type=click.Path(path_type=Path), default=Path("fgad-spool"),
                     show_default=True, help="Folder of the on-disk spools of the MQTT and webhook sinks."),
        click.option("--spool-max-mb", type=click.FloatRange(min=1), default=256.0, show_default=True,
                     help="Undelivered results a spool may hold before the line stops."),
        click.option("--serve", default=None, metavar="HOST:PORT",
                     help="Serve the live view (e.g. 127.0.0.1:8080); a non-loopback host needs --serve-token."),
        click.option("--serve-token", default=None, envvar="FGAD_SERVE_TOKEN",
                     help="Token every live view request must carry (env FGAD_SERVE_TOKEN)."),
        click.option("--serve-settings", type=click.Path(path_type=Path), default=Path("fgad-view-settings.json"),
                     show_default=True, help="Where a threshold changed in the live view is kept."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@dataclass(frozen=True)
class LineCliSettings:
    """The line options of one fgad-run invocation."""

    sources: tuple[str, ...] = ()
    sinks: tuple[str, ...] = ()
    max_batch: int | None = None
    queue_size: int = 4
    mqtt_qos: int = 1
    mqtt_heartbeat: float = 10.0
    spool_dir: Path = Path("fgad-spool")
    spool_max_mb: float = 256.0
    serve: str | None = None
    serve_token: str | None = None
    serve_settings: Path = Path("fgad-view-settings.json")

    @property
    def wanted(self) -> bool:
        """The line path is taken (any of --source, --sink, --serve)."""
        return bool(self.sources or self.sinks or self.serve)


def pop_line_settings(options: dict[str, Any]) -> LineCliSettings:
    """Take the line options out of fgad-run's keyword arguments (the rest go to its own settings)."""
    values = {name: options.pop(name) for name in LINE_OPTIONS}
    values["sources"], values["sinks"] = tuple(values["sources"]), tuple(values["sinks"])
    return LineCliSettings(**values)


def _specs(options: Mapping[str, Any], line: LineCliSettings) -> list[Any]:
    from fgad.runtime.line import SourceSpec, parse_sources

    loop = bool(options["loop"])
    specs = []
    if options["camera"] is not None:
        specs.append(SourceSpec(f"cam{options['camera']}", "camera", str(options["camera"])))
    if options["video"] is not None:
        kind = "stream" if "://" in options["video"] else "video"
        specs.append(SourceSpec("video", kind, options["video"], loop=loop))
    if options["images"] is not None:
        specs.append(SourceSpec("images", "images", options["images"], loop=loop))
    try:
        specs.extend(parse_sources(line.sources, loop=loop))
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must be unique, got {', '.join(names)}")
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if not specs:
        raise click.UsageError("give at least one --source NAME=SPEC (or --camera, --video, --images)")
    return specs


def _sinks(options: Mapping[str, Any], line: LineCliSettings) -> list[Any]:
    from fgad.runtime.sinks import JsonlSink, MqttSink, WebhookSettings, WebhookSink, parse_mqtt_url

    max_bytes = int(line.spool_max_mb * 2**20)
    sinks: list[Any] = []
    if options["jsonl_path"] is not None:
        sinks.append(JsonlSink(options["jsonl_path"]))
    for url in line.sinks:
        try:
            if url.startswith(("mqtt://", "mqtts://")):
                settings = parse_mqtt_url(url, qos=line.mqtt_qos, heartbeat_s=line.mqtt_heartbeat,
                                          max_spool_bytes=max_bytes)
                folder = line.spool_dir / f"mqtt-{settings.host}-{settings.port}-{settings.prefix.replace('/', '_')}"
                from dataclasses import replace

                sinks.append(MqttSink(replace(settings, spool_dir=folder)))
            elif url.startswith(("http://", "https://")):
                import os
                from urllib.parse import urlsplit

                folder = line.spool_dir / f"webhook-{urlsplit(url).netloc.replace(':', '-')}"
                sinks.append(WebhookSink(WebhookSettings(url, token=os.environ.get("FGAD_WEBHOOK_TOKEN"),
                                                         spool_dir=folder, max_spool_bytes=max_bytes)))
            elif url.startswith("jsonl:") or url.endswith(".jsonl"):
                sinks.append(JsonlSink(url.removeprefix("jsonl:")))
            else:
                raise ValueError(f"--sink {url!r}: expected mqtt://..., mqtts://..., http(s)://... or jsonl:PATH")
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
    return sinks


@contextlib.contextmanager
def _stop_on_signals(stop: Callable[[], None]) -> Iterator[None]:
    """The first Ctrl-C or SIGTERM stops the line cleanly (after its batch); a second Ctrl-C interrupts."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, frame: object) -> None:
        logger.warning("stopping (signal %d): finishing the current batch, flushing the sinks", signum)
        stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)


def run_line(options: Mapping[str, Any], line: LineCliSettings) -> None:
    """Run fgad-run's line path; ``options`` are fgad-run's other keyword arguments."""
    from fgad.cli.common import check_outputs
    from fgad.runtime.line import Line, LineError, LineSettings
    from fgad.runtime.pipeline import Detector
    from fgad.runtime.sinks import SinkError

    for flag, name in (("--save", "save_dir"), ("--show", "show")):
        if options[name]:
            raise click.UsageError(f"{flag} works with one --camera/--video/--images and no --source/--sink/--serve; "
                                   "use --serve for a live view of several sources")
    specs = _specs(options, line)
    check_outputs(("--jsonl", options["jsonl_path"], "append"))
    sinks = _sinks(options, line)
    view_settings = None
    threshold = options["threshold"]
    if line.serve is not None:
        view_settings, threshold = _prepare_view(line, threshold)
    detector = Detector.from_bundle(options["bundle_dir"], refs=options["refs"], backend=options["backend"],
                                    threshold=threshold, threads=options["threads"], knn=options["knn"],
                                    strict=options["strict"], trust=tuple(options["trust"]) or None)
    settings = LineSettings(max_batch=line.max_batch, queue_size=line.queue_size, max_frames=options["max_frames"])
    log_every = int(options["log_every"])
    counter = {"n": 0}

    def on_result(result: Any) -> None:
        counter["n"] += 1
        if counter["n"] % log_every == 0:
            logger.info("%d frames; last %s frame %d: score %.4f %s, %.1f ms", counter["n"], result.source,
                        result.index, result.result.score, result.decision, result.latency_ms)

    the_line = Line(detector, specs, sinks, settings, on_result=on_result)
    click.echo(f"bundle {options['bundle_dir']} (class '{detector.class_name}', {detector.backend.name}): "
               f"{len(specs)} sources ({', '.join(s.describe() for s in specs)}), batch up to {the_line.max_batch}, "
               f"sinks: {', '.join(s.name for s in sinks) or 'none'}", err=True)
    view = None
    if view_settings is not None:
        from fgad.runtime.liveview import LiveView
        from fgad.runtime.sinks import LiveViewSink

        # a threshold changed in the page is applied by the line between engine calls
        view = LiveView(view_settings, threshold=detector.threshold, on_threshold=the_line.set_threshold)
        try:
            url = view.start()
        except ValueError as exc:
            raise click.UsageError(f"--serve: {exc}") from None
        except OSError as exc:
            raise click.ClickException(f"--serve {line.serve}: cannot listen there ({exc.strerror or exc})") from exc
        the_line.sinks.append(LiveViewSink(view))
        click.echo(f"live view at {url}", err=True)
    try:
        with _stop_on_signals(the_line.stop):
            summary = the_line.run()
    except (LineError, SinkError) as err:  # a sink that failed while running, or could not be opened
        raise click.ClickException(str(err)) from err
    finally:
        if view is not None:
            view.stop()
    prefix = {"stop": "stopped: ", "max_frames": "", "end": ""}.get(summary.stopped_by, "")
    click.echo(prefix + summary.line(), err=True)


def _prepare_view(line: LineCliSettings, threshold: Any) -> tuple[Any, Any]:
    """The live view's settings and the threshold to use: --threshold, else the one the page last set."""
    from fgad.runtime.liveview import ViewSettings, load_persisted_threshold, parse_serve_address

    try:
        host, port = parse_serve_address(line.serve or "")
        view_settings = ViewSettings(host=host, port=port, token=line.serve_token, settings_path=line.serve_settings)
    except ValueError as exc:
        raise click.UsageError(f"--serve: {exc}") from None
    persisted = load_persisted_threshold(line.serve_settings)
    if threshold is None and persisted is not None:
        logger.warning("threshold %.4f from %s (set in the live view); delete that file to use the bundle's",
                       persisted, line.serve_settings)
        threshold = persisted
    return view_settings, threshold
