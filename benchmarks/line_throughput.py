"""Throughput and latency of the Line (fgad.runtime.line) for 1, 2, 4 sources, batched vs one by one.

    python benchmarks/line_throughput.py --bundle BUNDLE --label tiny \
        --out benchmarks/results/cpu/line/line_throughput_tiny.json

Each source is a folder of PNG frames (640x480, decoded on the source's thread like a file or camera), read in
a loop; the engine is saturated (file sources never drop: a frame waits for room in its queue), so frames/s is
the line's capacity and latency (read -> result, queueing included) what a frame sees at that load.
``batched`` lets one engine call take up to ``--max-batch`` frames over all sources; ``one-by-one`` is
``max_batch=1``. ``single-stream`` is the reference: ``Detector(frame)`` in a loop over the same frames (what
``fgad-run --images`` does per frame, without its outputs). Medians of ``--repeats`` runs, in one process.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def _frames(folder: Path, count: int) -> Path:
    import cv2

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        base = np.full((480, 640, 3), 120, np.uint8)
        base += rng.integers(0, 40, (480, 640, 3), dtype=np.uint8)
        cv2.imwrite(str(folder / f"{i:03d}.png"), base)
    return folder


def _single_stream(detector, folder: Path, frames: int) -> dict:  # noqa: ANN001
    from fgad.runtime.sources import ImageSource

    latencies = []
    started = time.perf_counter()
    done = 0
    while done < frames:
        for _, rgb in ImageSource(folder):
            t0 = time.perf_counter()
            detector(rgb)
            latencies.append(1000 * (time.perf_counter() - t0))
            done += 1
            if done >= frames:
                break
    elapsed = time.perf_counter() - started
    return {"fps": done / elapsed, "p50_ms": float(np.percentile(latencies, 50)),
            "p99_ms": float(np.percentile(latencies, 99)), "mean_batch": 1.0}


def _line(detector, folder: Path, sources: int, max_batch: int, frames: int) -> dict:  # noqa: ANN001
    from fgad.runtime.line import Line, LineSettings, SourceSpec

    specs = [SourceSpec(f"s{i}", "images", str(folder), loop=True) for i in range(sources)]
    line = Line(detector, specs, settings=LineSettings(max_batch=max_batch, queue_size=2, max_frames=frames))
    summary = line.run()
    return {"fps": summary.fps, "p50_ms": summary.latency_p50_ms, "p99_ms": summary.latency_p99_ms,
            "mean_batch": summary.mean_batch}


def _median(runs: list[dict]) -> dict:
    return {key: round(statistics.median(r[key] for r in runs), 3) for key in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--label", default="bundle")
    parser.add_argument("--frames", type=int, default=48, help="frames per run (over all sources)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--sources", default="1,2,4")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)
    logging.getLogger("fgad").setLevel(logging.ERROR)

    import onnxruntime

    from fgad.core.atomic import atomic_write_json
    from fgad.runtime.pipeline import Detector

    detector = Detector.from_bundle(args.bundle, threads=args.threads)
    folder = _frames(Path(tempfile.mkdtemp()) / "frames", 16)
    detector(np.zeros((480, 640, 3), np.uint8))  # warm-up
    results: dict[str, dict] = {"single-stream": _median([_single_stream(detector, folder, args.frames)
                                                          for _ in range(args.repeats)])}
    for n in (int(s) for s in args.sources.split(",")):
        for mode, batch in (("one-by-one", 1), ("batched", args.max_batch)):
            runs = [_line(detector, folder, n, batch, args.frames) for _ in range(args.repeats)]
            results[f"{n} sources, {mode}"] = _median(runs)
            print(f"{args.label}: {n} sources {mode}: {results[f'{n} sources, {mode}']}", flush=True)
    report = {
        "bundle": args.label,
        "model": detector.manifest.model.get("config"),
        "input_size": detector.size,
        "frames_per_run": args.frames,
        "repeats": args.repeats,
        "max_batch": args.max_batch,
        "frame_size": [480, 640],
        "results": results,
        "note": "medians of the repeats; file sources in a loop, engine saturated; latency = read -> result",
        "onnxruntime": onnxruntime.__version__,
        "threads": args.threads or os.cpu_count(),
        "cpus": os.cpu_count(),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "machine": platform.machine(),
    }
    print(json.dumps(results, indent=2))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.out, report)


if __name__ == "__main__":
    main()
