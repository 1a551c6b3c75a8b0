"""fgad-run: the torch-free detector on a camera, a video or a folder of images.

Per frame: score, decision, optional overlay PNG (--save) and JSON line (--jsonl); FPS in the window title
(--show, when OpenCV has a GUI and a display exists) and in the log every --log-every frames. Ctrl-C stops
cleanly with a summary line. The output paths are checked before the bundle is loaded; an output that fails
during the run (a full disk, a folder removed) stops it with one line counting what was written, and never
leaves half a JSON line. Needs only the bundle written by fgad-export (see docs/runtime.md).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from fgad.cli.common import check_outputs, friendly_errors, setup_logging
from fgad.cli.run_line import line_options, pop_line_settings
from fgad.cli.run_settings import DetectorSettings, OutputSettings, SourceSettings, run_settings

logger = logging.getLogger("fgad.run")

WINDOW = "fgad-run"


def _parse_threshold(ctx: click.Context, param: click.Parameter, value: str | None) -> float | str | None:
    if value is None:
        return None
    if value.strip().lower() == "auto":
        return "auto"
    try:
        return float(value)
    except ValueError:
        raise click.BadParameter(f"must be 'auto' or a number, got {value!r}") from None


def _display_problem() -> str | None:
    """Why no window can be shown, or None when cv2.imshow should work."""
    import cv2

    gui = [line for line in cv2.getBuildInformation().splitlines() if line.strip().startswith("GUI:")]
    if gui and gui[0].split(":", 1)[1].strip().upper() == "NONE":
        return "this OpenCV build has no GUI (opencv-python-headless); install opencv-python to use --show"
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "no display (DISPLAY is not set)"
    try:
        cv2.namedWindow(WINDOW, cv2.WINDOW_NORMAL)
    except cv2.error as exc:
        return f"OpenCV cannot open a window ({str(exc).strip().splitlines()[-1]})"
    return None


def new_run_id() -> str:
    """A run id, unique per invocation and sortable by start time: ``20261203T164700Z-3f9a1c`` (UTC + random)."""
    import secrets
    from datetime import datetime, timezone

    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def _overlay_name(run_id: str, index: int, frame_id: Any) -> str:
    """The panel file of one frame. The run id keeps a restarted run from overwriting the panels (and breaking the
    JSON lines) of the runs before it in the same --save folder."""
    if isinstance(frame_id, str):
        return f"{run_id}_{index:06d}_{Path(frame_id).stem}.png"
    return f"{run_id}_frame_{int(frame_id):06d}.png"


class _Fps:
    """Frames per second over a sliding window of recent frames."""

    def __init__(self, window: int = 30) -> None:
        self.window = window
        self.stamps: list[float] = []

    def tick(self) -> float:
        now = time.perf_counter()
        self.stamps.append(now)
        if len(self.stamps) > self.window:
            del self.stamps[0]
        if len(self.stamps) < 2:
            return 0.0
        return (len(self.stamps) - 1) / max(self.stamps[-1] - self.stamps[0], 1e-9)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--bundle", "bundle_dir", default=None, type=click.Path(path_type=Path),
              help="Bundle folder written by fgad-export.")
@click.option("--camera", type=click.IntRange(0, 99), default=None,
              help="Camera index N (/dev/videoN on Linux; list them with `v4l2-ctl --list-devices`).")
@click.option("--video", default=None, help="Video file or stream URL.")
@click.option("--images", default=None, help="Image folder, glob pattern or single image.")
@click.option("--loop/--no-loop", default=False, show_default=True, help="Restart the video at its end.")
@click.option("--refs", default=None,
              help="Folder/glob of good reference images (or a references .npz): the few-shot memory of FiLo++ and "
                   "the galleries of FineGrainedAD, and what --threshold auto is computed from; replaces the "
                   "bundle's references. An unreadable one stops the run before the first frame, naming it.")
@click.option("--threshold", default=None, callback=_parse_threshold,
              help="'auto' (leave-one-out over --refs images) or a number; default: the manifest's threshold.")
@click.option("--save", "save_dir", type=click.Path(path_type=Path), default=None,
              help="Write an overlay panel PNG per frame into this folder, named <run id>_<frame>.png: a rerun "
                   "into the same folder never overwrites an earlier run's panels.")
@click.option("--jsonl", "jsonl_path", type=click.Path(path_type=Path), default=None,
              help="Append one JSON line per frame to this file (with the run id and, with --save, the panel's "
                   "absolute path).")
@click.option("--show/--no-show", default=False, show_default=True, help="Show the overlay in a window.")
@click.option("--max-frames", type=click.IntRange(min=1), default=None, help="Stop after N frames.")
@click.option("--log-every", type=click.IntRange(min=1), default=100, show_default=True,
              help="Log FPS every N frames.")
@click.option("--backend", type=click.Choice(["auto", "onnxruntime", "tensorrt"]), default="auto", show_default=True,
              help="Engine: auto takes model.engine where TensorRT can run it here, else model.onnx with "
                   "onnxruntime (and says why).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Engine CPU threads.")
@click.option("--knn", type=click.Choice(["auto", "faiss", "numpy"]), default="auto", show_default=True,
              help="Few-shot search.")
@click.option("--strict", is_flag=True, help="Refuse a bundle holding files its manifest does not list (else: warn).")
@click.option("--trust", "trust", multiple=True, type=click.Path(path_type=Path),
              help="Ed25519 public key (PEM) the bundle must be signed with; repeat for several. Refuses unsigned "
                   "and otherwise signed bundles. Needs fgad[sign].")
@click.option("--triton", "triton_url", default=None,
              help="Score on a Triton server instead of a local bundle: host:port (HTTP) or grpc://host:port; "
                   "with --model (docs/fleet.md). Needs fgad[triton].")
@click.option("--model", "triton_model", default=None, help="The server's model, fgad_<class> (with --triton).")
@line_options
@click.option("-v", "--verbose", is_flag=True, help="Debug logging (also the libraries' INFO lines).")
@friendly_errors
def main(**options: Any) -> None:
    """Score every frame of --camera, --video or --images with a bundle (or a model on a Triton server); with
    --source, --sink or --serve, many sources batched into one engine, results to MQTT/webhooks, a live view
    (docs/line.md)."""
    line = pop_line_settings(options)
    if line.wanted:
        if options.get("triton_url") is not None or options.get("triton_model") is not None:
            raise click.UsageError("--triton/--model: not with --source, --sink or --serve (a line runs a local "
                                   "bundle; give --bundle DIR)")
        if options.get("bundle_dir") is None:
            raise click.UsageError("give --bundle DIR")
        _run_line(options, line)
        return
    remote = _remote_model(options.get("triton_url"), options.get("triton_model"), options)
    settings = run_settings(options)
    check_outputs(("--jsonl", settings.output.jsonl_path, "append"), ("--save", settings.output.save_dir, "dir"))
    setup_logging(settings.verbose)
    # the per-frame warnings and FPS lines of this command must be seen whatever the root level
    logging.getLogger("fgad").setLevel(logging.DEBUG if settings.verbose else logging.INFO)

    from fgad.bundle import BundleError
    from fgad.core.io import ImageReadError
    from fgad.runtime.sources import SourceError

    try:
        _run(settings.source, settings.detector, settings.output, remote)
    except (BundleError, SourceError, ImageReadError) as err:
        raise click.ClickException(str(err)) from err


def _remote_model(url: str | None, model: str | None, options: dict[str, Any]) -> tuple[str, str] | None:
    """(url, model) of --triton/--model, checked against --bundle and the options only a local bundle takes."""
    if url is None and model is None:
        if options.get("bundle_dir") is None:
            raise click.UsageError("give --bundle DIR (or --triton URL --model NAME)")
        return None
    if url is None or model is None:
        raise click.UsageError("--triton and --model go together")
    local = [name for name, given in (("--bundle", options.get("bundle_dir") is not None),
                                      ("--refs", options.get("refs") is not None),
                                      ("--threshold auto", options.get("threshold") == "auto"),
                                      ("--trust", bool(options.get("trust")))) if given]
    if local:
        raise click.UsageError(f"{', '.join(local)}: not with --triton (the server holds the bundle)")
    return url, model


def _run_line(options: dict[str, Any], line: Any) -> None:
    """The multi-source path (cli/run_line.py), with this command's logging and error reporting."""
    from fgad.bundle import BundleError
    from fgad.cli.run_line import run_line
    from fgad.runtime.sources import SourceError

    setup_logging(bool(options["verbose"]))
    logging.getLogger("fgad").setLevel(logging.DEBUG if options["verbose"] else logging.INFO)
    try:
        run_line(options, line)
    except (BundleError, SourceError) as err:
        raise click.ClickException(str(err)) from err


def _run(src: SourceSettings, det: DetectorSettings, out: OutputSettings,
         remote: tuple[str, str] | None = None) -> None:
    """The frame loop: every frame of the source through the detector, into the outputs; a summary at the end."""
    from fgad.core.outputs import LineWriter
    from fgad.runtime.pipeline import Detector
    from fgad.runtime.sources import open_source

    if remote is not None:
        from fgad.triton.client import Client, TritonUnavailableError

        try:
            detector: Any = Client(remote[0], remote[1], threshold=det.threshold)
        except TritonUnavailableError as err:
            raise click.ClickException(str(err)) from err
    else:
        detector = Detector.from_bundle(det.bundle_dir, refs=det.refs, backend=det.backend, threshold=det.threshold,
                                        threads=det.threads, knn=det.knn, strict=det.strict, trust=det.trust or None)
    threshold_text = "none" if detector.threshold is None else f"{detector.threshold:.4f}"
    run_id = new_run_id()
    click.echo(
        f"run {run_id}: {'bundle ' + str(det.bundle_dir) if remote is None else 'remote'} "
        f"(class '{detector.class_name}', {detector.backend.name}, "
        f"{detector.size}px): {detector.num_references} reference images, threshold {threshold_text} "
        f"[{detector.threshold_rule}]",
        err=True,
    )
    show = out.show  # turned off below when no window can be shown
    if show:
        problem = _display_problem()
        if problem:
            logger.warning("--show ignored: %s", problem)
            show = False
    if out.save_dir is not None:
        out.save_dir.mkdir(parents=True, exist_ok=True)

    source = open_source(camera=src.camera, video=src.video, images=src.images, loop=src.loop)
    jsonl: LineWriter | None = None
    processed = anomalous = overlays = 0
    interrupted = False
    output_error: OSError | None = None
    fps = _Fps()
    started = time.perf_counter()
    try:
        with _stop_signals(), source:
            if out.jsonl_path is not None:
                jsonl = LineWriter(out.jsonl_path)  # closed in finally; whole lines, each written through
            for frame_id, frame in source:
                result = detector(frame)
                processed += 1
                anomalous += bool(result.is_anomalous)
                rate = fps.tick()
                try:
                    overlay_path = None
                    if out.save_dir is not None or show:
                        overlay_path = _render(frame, result, processed, frame_id, out.save_dir, show, rate,
                                               detector, run_id)
                        overlays += overlay_path is not None
                    if jsonl is not None:
                        record = {"run_id": run_id, "frame": frame_id, **result.to_dict()}
                        if overlay_path is not None:
                            record["overlay"] = str(overlay_path.absolute())
                        jsonl.write_line(_json_line(record))
                except OSError as err:  # a full disk, a folder removed: stop, say what was written
                    output_error = err
                    break
                decision = "n/a" if result.is_anomalous is None else ("ANOMALY" if result.is_anomalous else "ok")
                logger.debug("%s: score %.4f %s", frame_id, result.score, decision)
                if processed % out.log_every == 0:
                    logger.info("%d frames, %.1f FPS, last score %.4f (%s)", processed, rate, result.score, decision)
                if out.max_frames is not None and processed >= out.max_frames:
                    break
                if show and _quit_pressed():
                    break
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if jsonl is not None:
            jsonl.close()
        if show:
            _close_window()
    elapsed = time.perf_counter() - started
    summary = (
        f"{processed} frames, {anomalous} anomalous, {source.skipped} skipped, {elapsed:.1f}s "
        f"({processed / elapsed if elapsed > 0 else 0.0:.1f} FPS)"
    )
    if output_error is not None:  # one line: what failed, what was written, what was scored; exit status 1
        written = []
        if out.jsonl_path is not None:
            lines = jsonl.lines if jsonl is not None else 0
            written.append(f"{lines} JSON lines to {out.jsonl_path} (whole lines only)")
        if out.save_dir is not None:
            written.append(f"{overlays} overlays to {out.save_dir}")
        raise click.ClickException(
            f"stopped at frame {processed}: {_output_problem(output_error)}; written: {', '.join(written)}; "
            f"{processed} frames scored, {anomalous} anomalous, {source.skipped} skipped in {elapsed:.1f}s")
    outputs = [str(p) for p in (out.jsonl_path, out.save_dir) if p is not None]
    if outputs:
        summary += "; wrote " + ", ".join(outputs)
    if interrupted:
        summary = "stopped by Ctrl-C or SIGTERM: " + summary
    click.echo(summary, err=True)


@contextlib.contextmanager
def _stop_signals() -> Iterator[None]:
    """Ctrl-C and SIGTERM stop the loop cleanly (KeyboardInterrupt), whatever the parent set.

    A process started with SIGINT ignored (a background job of a non-interactive shell, some
    supervisors) inherits that, and Python then installs no KeyboardInterrupt handler at all.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def _output_problem(err: OSError) -> str:
    """What went wrong with an output, in words (no errno codes, no temporary file names)."""
    from fgad.core.outputs import OutputVanishedError

    if isinstance(err, OutputVanishedError) or not err.strerror:
        return str(err)
    return f"cannot write {err.filename}: {err.strerror}" if err.filename else f"cannot write: {err.strerror}"


def _json_line(record: dict[str, Any]) -> str:
    import json

    from fgad.core.atomic import nan_to_none

    return json.dumps(nan_to_none(record), ensure_ascii=False) + "\n"


def _render(
    frame: Any, result: Any, index: int, frame_id: Any, save_dir: Path | None, show: bool, rate: float, detector: Any,
    run_id: str,
) -> Path | None:
    from fgad.core.outputs import require_folder
    from fgad.runtime.overlay import display_overlay, render_panel, save_image_rgb

    label = "n/a" if result.is_anomalous is None else ("ANOMALY" if result.is_anomalous else "ok")
    if result.is_anomalous:
        label += f": {result.best_description}"
    path = None
    if save_dir is not None:
        path = save_dir / _overlay_name(run_id, index, frame_id)
        require_folder(save_dir, "--save folder")  # removed during the run: stop, do not re-create it
        save_image_rgb(path, render_panel(frame, result.anomaly_map, score=result.score, label=label))
    if show:
        import cv2

        overlay = display_overlay(frame, result.anomaly_map)
        cv2.imshow(WINDOW, cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
        cv2.setWindowTitle(WINDOW, f"fgad-run {detector.class_name}: {rate:.1f} FPS, score {result.score:.3f} {label}")
    return path


def _quit_pressed() -> bool:
    import cv2

    return cv2.waitKey(1) & 0xFF in (ord("q"), 27)


def _close_window() -> None:
    import cv2

    try:
        cv2.destroyWindow(WINDOW)
    except cv2.error:
        pass


if __name__ == "__main__":
    main()
