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


def _overlay_name(index: int, frame_id: Any) -> str:
    if isinstance(frame_id, str):
        return f"{index:06d}_{Path(frame_id).stem}.png"
    return f"frame_{int(frame_id):06d}.png"


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
@click.option("--bundle", "bundle_dir", required=True, type=click.Path(path_type=Path),
              help="Bundle folder written by fgad-export.")
@click.option("--camera", type=int, default=None, help="Camera index (cv2.VideoCapture).")
@click.option("--video", default=None, help="Video file or stream URL.")
@click.option("--images", default=None, help="Image folder, glob pattern or single image.")
@click.option("--loop/--no-loop", default=False, show_default=True, help="Restart the video at its end.")
@click.option("--refs", default=None,
              help="Folder/glob of good reference images (or a references .npz); replaces the bundle's references.")
@click.option("--threshold", default=None, callback=_parse_threshold,
              help="'auto' (leave-one-out over --refs images) or a number; default: the manifest's threshold.")
@click.option("--save", "save_dir", type=click.Path(path_type=Path), default=None,
              help="Write an overlay panel PNG per frame into this folder.")
@click.option("--jsonl", "jsonl_path", type=click.Path(path_type=Path), default=None,
              help="Append one JSON line per frame to this file.")
@click.option("--show/--no-show", default=False, show_default=True, help="Show the overlay in a window.")
@click.option("--max-frames", type=click.IntRange(min=1), default=None, help="Stop after N frames.")
@click.option("--log-every", type=click.IntRange(min=1), default=100, show_default=True,
              help="Log FPS every N frames.")
@click.option("--backend", type=click.Choice(["auto", "onnxruntime", "tensorrt"]), default="auto", show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Engine CPU threads.")
@click.option("--knn", type=click.Choice(["auto", "faiss", "numpy"]), default="auto", show_default=True,
              help="Few-shot search.")
@click.option("--strict", is_flag=True, help="Refuse a bundle holding files its manifest does not list (else: warn).")
@click.option("--trust", "trust", multiple=True, type=click.Path(path_type=Path),
              help="Ed25519 public key (PEM) the bundle must be signed with; repeat for several. Refuses unsigned "
                   "and otherwise signed bundles. Needs fgad[sign].")
@line_options
@click.option("-v", "--verbose", is_flag=True)
@friendly_errors
def main(**options: Any) -> None:
    """Score every frame of --camera, --video or --images with a bundle; with --source, --sink or --serve, many
    sources batched into one engine, results to MQTT/webhooks, a live view (docs/line.md)."""
    line = pop_line_settings(options)
    if line.wanted:
        _run_line(options, line)
        return
    settings = run_settings(options)
    check_outputs(("--jsonl", settings.output.jsonl_path, "append"), ("--save", settings.output.save_dir, "dir"))
    setup_logging(settings.verbose)
    # the per-frame warnings and FPS lines of this command must be seen whatever the root level
    logging.getLogger("fgad").setLevel(logging.DEBUG if settings.verbose else logging.INFO)

    from fgad.bundle import BundleError
    from fgad.core.io import ImageReadError
    from fgad.runtime.sources import SourceError

    try:
        _run(settings.source, settings.detector, settings.output)
    except (BundleError, SourceError, ImageReadError) as err:
        raise click.ClickException(str(err)) from err


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


def _run(src: SourceSettings, det: DetectorSettings, out: OutputSettings) -> None:
    """The frame loop: every frame of the source through the detector, into the outputs; a summary at the end."""
    from fgad.core.outputs import LineWriter
    from fgad.runtime.pipeline import Detector
    from fgad.runtime.sources import open_source

    detector = Detector.from_bundle(det.bundle_dir, refs=det.refs, backend=det.backend, threshold=det.threshold,
                                    threads=det.threads, knn=det.knn, strict=det.strict, trust=det.trust or None)
    threshold_text = "none" if detector.threshold is None else f"{detector.threshold:.4f}"
    click.echo(
        f"bundle {det.bundle_dir} (class '{detector.class_name}', {detector.backend.name}, "
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
                                               detector)
                        overlays += overlay_path is not None
                    if jsonl is not None:
                        record = {"frame": frame_id, **result.to_dict()}
                        if overlay_path is not None:
                            record["overlay"] = str(overlay_path)
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
    frame: Any, result: Any, index: int, frame_id: Any, save_dir: Path | None, show: bool, rate: float, detector: Any
) -> Path | None:
    from fgad.core.outputs import require_folder
    from fgad.runtime.overlay import heatmap_overlay, render_panel, save_image_rgb

    label = "n/a" if result.is_anomalous is None else ("ANOMALY" if result.is_anomalous else "ok")
    if result.is_anomalous:
        label += f": {result.best_description}"
    path = None
    if save_dir is not None:
        path = save_dir / _overlay_name(index, frame_id)
        require_folder(save_dir, "--save folder")  # removed during the run: stop, do not re-create it
        save_image_rgb(path, render_panel(frame, result.anomaly_map, score=result.score, label=label))
    if show:
        import cv2

        overlay = heatmap_overlay(frame, result.anomaly_map)
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
