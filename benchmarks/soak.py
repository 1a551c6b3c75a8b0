"""Soak test of fgad-run: does its memory stay flat over thousands of frames?

    python benchmarks/soak.py --out benchmarks/results/cpu/soak
    python benchmarks/soak.py --bundle bundles/bottle --frames 20000 --out /tmp/soak   # any bundle

Runs the real ``fgad-run`` command (``python -m fgad.cli.run``, a child process) twice, once over ``--frames``
image files (``--images``) and once over a looping video (``--video --loop --max-frames``), with every output on:
one overlay PNG per frame (``--save``), one JSON line per frame (``--jsonl``), references from a folder and the
leave-one-out threshold (``--refs --threshold auto``), so the whole per-frame path runs: decode, preprocess,
engine, few-shot search, fusion, smoothing, overlay rendering and encoding, the atomic PNG write, the JSON line.

The child logs ``N frames, ... FPS`` every ``--every`` frames (``--log-every``); at each of those lines this script
reads the child's resident set size (``VmRSS``, and the peak ``VmHWM``) from ``/proc/<pid>/status``: no
instrumentation inside the command, no extra dependency. A least-squares line through the samples after the
warm-up (``--warmup`` frames, default the first quarter of the run, while allocator pools and caches fill: RSS
takes a one-time step of about 1 MiB within the first 500 frames) gives the slope in KiB per 1000 frames, with its
95 % interval.

Flat within noise (the criterion, stated in the results): the growth the fitted line predicts over the measured
window (slope x window) is at most max(3 x the standard deviation of the residuals, 256 KiB). 256 KiB is the
granularity at which glibc's malloc and onnxruntime's arena grow; 3 sigma is the scatter of RSS around its own
trend. A leak of one small allocation per frame (1 KiB x 2,000 frames = 2 MiB) fails it.

By default the bundle is the hand-made torch-free bundle of ``tests/helpers/fake_bundle.py`` (64 px, a real ONNX
graph with the bundle's outputs and shapes, but no CLIP model): everything of the runtime runs except a real
network, so a leak in the runtime, the outputs or OpenCV shows at a fraction of the time a model would take.
``--bundle DIR`` soaks any bundle instead (frames are then resized to its input size by the runtime).

Writes ``soak.json`` (every sample, the fits, the machine), ``soak.md`` (collected into benchmarks/results/README.md
by ``python -m fgad.bench.report --collect benchmarks/results``) and, with matplotlib, ``soak.png``.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # tests.helpers.fake_bundle; the fgad package itself comes from src/ (PYTHONPATH)
    sys.path.insert(0, str(REPO))

PROGRESS = re.compile(r"fgad\.run: (\d+) frames, ([0-9.]+) FPS")
#: flat within noise: predicted growth over the window <= max(RESIDUAL_SIGMAS x residual std, FLOOR_KIB)
RESIDUAL_SIGMAS = 3.0
FLOOR_KIB = 256.0


def proc_status_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of process ``pid`` in KiB, from /proc/<pid>/status (Linux)."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])  # "123456 kB"
    return out


def fit_line(frames: list[int], rss_kib: list[int]) -> dict[str, float]:
    """Least squares rss = a + b * frame: slope (KiB per 1000 frames), its 95 % interval, residual std."""
    x = np.asarray(frames, dtype=np.float64) / 1000.0
    y = np.asarray(rss_kib, dtype=np.float64)
    n = len(x)
    if n < 3:
        raise ValueError(f"need at least 3 samples after the warm-up to fit a line, got {n}")
    slope, intercept = np.polyfit(x, y, 1)
    residuals = y - (intercept + slope * x)
    dof = n - 2
    residual_std = float(math.sqrt(float(np.sum(residuals**2)) / dof))
    sxx = float(np.sum((x - x.mean()) ** 2))
    stderr = residual_std / math.sqrt(sxx) if sxx > 0 else float("inf")
    t95 = _t95(dof)
    window = float(x[-1] - x[0])  # in 1000s of frames
    growth = float(slope) * window
    limit = max(RESIDUAL_SIGMAS * residual_std, FLOOR_KIB)
    return {
        "samples": n,
        "first_frame": int(frames[0]),
        "last_frame": int(frames[-1]),
        "slope_kib_per_1000_frames": float(slope),
        "slope_ci95_kib_per_1000_frames": [float(slope - t95 * stderr), float(slope + t95 * stderr)],
        "intercept_kib": float(intercept),
        "residual_std_kib": residual_std,
        "fitted_growth_kib": growth,
        "flat_limit_kib": limit,
        "flat": bool(abs(growth) <= limit),
    }


def _t95(dof: int) -> float:
    """Two-sided 95 % quantile of Student's t (no scipy needed)."""
    table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
             12: 2.179, 15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}
    for key in sorted(table):
        if dof <= key:
            return table[key]
    return 1.960


def make_inputs(work: Path, frames: int, video_frames: int, size: int, bundle: Path | None) -> dict[str, Path]:
    """The bundle (the fake one unless given), ``frames`` image files, a ``video_frames``-frame video and a
    folder of references, all under ``work``."""
    import cv2

    from fgad.core.io import read_image
    from fgad.data.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(work / "data", classes=("tile",), n_train_good=4, n_test_good=12,
                                  n_test_defect=4, image_size=size, seed=0)
    distinct = sorted((data / "tile" / "test").rglob("*.png"))
    images = work / "images"
    images.mkdir()
    for i in range(frames):  # distinct files (each decoded from disk), cycling through the synthetic test images
        shutil.copyfile(distinct[i % len(distinct)], images / f"{i:05d}.png")
    video = work / "parts.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (size, size))
    if not writer.isOpened():
        raise SystemExit("OpenCV cannot write an MJPG video here")
    for i in range(video_frames):
        writer.write(cv2.cvtColor(read_image(distinct[i % len(distinct)]), cv2.COLOR_RGB2BGR))
    writer.release()
    if bundle is None:
        from tests.helpers.fake_bundle import make_bundle

        bundle = make_bundle(work / "bundle", size=size, grid=8, dim=32, layers=(3, 6)).path
    return {"bundle": bundle, "images": images, "video": video, "refs": data / "tile" / "train" / "good"}


def soak_once(name: str, source_args: list[str], inputs: dict[str, Path], work: Path, every: int,
              timeout: float) -> dict[str, Any]:
    """One fgad-run child over a source; its RSS at every progress line."""
    out = work / f"out-{name}"
    jsonl = out / "run.jsonl"
    args = ["--bundle", str(inputs["bundle"]), *source_args, "--refs", str(inputs["refs"]), "--threshold", "auto",
            "--save", str(out / "overlays"), "--jsonl", str(jsonl), "--log-every", str(every)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    env.pop("DISPLAY", None)
    cmd = [sys.executable, "-m", "fgad.cli.run", *args]
    samples: list[dict[str, Any]] = []
    tail: list[str] = []
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stderr is not None
    for line in proc.stderr:  # drained as it comes: the child never blocks on a full pipe
        tail = (tail + [line.rstrip()])[-20:]
        match = PROGRESS.search(line)
        if match:
            try:
                status = proc_status_kib(proc.pid)
            except (FileNotFoundError, ProcessLookupError):
                break
            samples.append({"frame": int(match.group(1)), "rss_kib": status["VmRSS"], "hwm_kib": status["VmHWM"],
                            "fps": float(match.group(2)), "seconds": round(time.perf_counter() - started, 2)})
        if time.perf_counter() - started > timeout:
            proc.kill()
            raise SystemExit(f"{name}: fgad-run took longer than {timeout:.0f}s; last lines:\n" + "\n".join(tail))
    code = proc.wait()
    seconds = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"{name}: fgad-run exited with {code}:\n" + "\n".join(tail))
    lines = jsonl.read_text().splitlines()
    overlays = len(list((out / "overlays").glob("*.png")))
    shutil.rmtree(out)  # thousands of PNGs: measured, not kept
    return {"name": name, "command": "fgad-run " + " ".join(shlex.quote(a) for a in args), "samples": samples,
            "json_lines": len(lines), "overlays": overlays, "seconds": round(seconds, 1),
            "summary": next((t for t in reversed(tail) if " frames, " in t and "FPS" in t), "")}


def write_chart(runs: list[dict[str, Any]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7.5, 4.0), dpi=110)
    for run, colour in zip(runs, ("tab:blue", "tab:orange"), strict=False):
        frames = [s["frame"] for s in run["samples"]]
        rss = [s["rss_kib"] / 1024 for s in run["samples"]]
        ax.plot(frames, rss, "o-", color=colour, ms=3, lw=1, label=f"{run['name']} (VmRSS)")
        fit = run["fit"]
        xs = np.array([fit["first_frame"], fit["last_frame"]], dtype=np.float64)
        ys = (fit["intercept_kib"] + fit["slope_kib_per_1000_frames"] * xs / 1000) / 1024
        ax.plot(xs, ys, "--", color=colour, lw=1,
                label=f"fit: {_kib(fit['slope_kib_per_1000_frames'])} KiB / 1000 frames")
    ax.axvline(runs[0]["warmup"], color="grey", lw=0.8, ls=":")
    ax.set_xlabel("frame")
    ax.set_ylabel("resident set size (MiB)")
    ax.set_title("fgad-run soak: RSS every 100 frames")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    from fgad.core.atomic import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return True


def _kib(value: float) -> str:
    """Signed, one decimal, no negative zero."""
    return f"{round(value, 1) + 0.0:+.1f}"


def markdown(result: dict[str, Any], chart: str | None) -> str:
    dev = result["machine"]
    cpu = dev["cpu"]
    libs = ", ".join(f"{k} {v}" for k, v in dev["libraries"].items() if v and k in (
        "numpy", "onnxruntime", "opencv-python-headless", "opencv-python", "faiss-cpu"))
    commit = result["commit"]
    sha = (commit["commit"] or "unknown")[:10] + (" (uncommitted changes)" if commit["dirty"] else "")
    lines = [
        f"# Soak: fgad-run over {result['frames']} frames, images and video ({result['bundle_kind']})",
        "",
        f"    {result['command']}",
        "",
        f"{result['created']}, commit {sha}. {cpu['model']} ({cpu['cores']} cores available"
        f"{', shared with other jobs' if result.get('shared_machine') else ''}), {dev['os']} {dev['machine']}, "
        f"Python {dev['python']}, {libs}.",
        "",
        f"Bundle: {result['bundle_note']}. Every output on: overlay PNG and JSON line per frame, references "
        f"and the leave-one-out threshold. VmRSS of the fgad-run process read from /proc/<pid>/status at each "
        f"`--log-every {result['every']}` line; the line is fitted after the first {result['warmup']} frames "
        f"(warm-up); warm-up growth is from the first sample to the first fitted one.",
        "",
        "| source | frames | s (whole run) | FPS (last 30 frames) | RSS at first sample (MiB) | RSS at end (MiB) | "
        "peak (VmHWM, MiB) | "
        "warm-up growth (KiB) | growth after warm-up (KiB) | "
        "slope (KiB / 1000 frames) | 95 % interval | residual std (KiB) | fitted growth (KiB) | flat? |",
        "|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---|",
    ]
    for run in result["runs"]:
        s, fit = run["samples"], run["fit"]
        lo, hi = fit["slope_ci95_kib_per_1000_frames"]
        first_fitted = next(x for x in s if x["frame"] == fit["first_frame"])["rss_kib"]
        lines.append(
            f"| {run['name']} | {run['json_lines']} | {run['seconds']:.0f} | {s[-1]['fps']:.0f} | "
            f"{s[0]['rss_kib'] / 1024:.1f} | {s[-1]['rss_kib'] / 1024:.1f} | {s[-1]['hwm_kib'] / 1024:.1f} | "
            f"{first_fitted - s[0]['rss_kib']:+d} | {s[-1]['rss_kib'] - first_fitted:+d} | "
            f"{_kib(fit['slope_kib_per_1000_frames'])} | [{_kib(lo)}, {_kib(hi)}] | {fit['residual_std_kib']:.1f} | "
            f"{_kib(fit['fitted_growth_kib'])} | {'yes' if fit['flat'] else '**no**'} |")
    lines += [
        "",
        f"Flat within noise means: the growth the fitted line predicts over the fitted window is at most "
        f"max({RESIDUAL_SIGMAS:g} x residual std, {FLOOR_KIB:g} KiB) (allocator granularity). A day at 25 FPS is "
        "2.16 million frames; at the upper end of the slope's 95 % interval that would be "
        + ", ".join(f"{_kib(max(run['fit']['slope_ci95_kib_per_1000_frames'][1], 0.0) * 2160 / 1024)} MiB a day "
                    f"({run['name']})" for run in result["runs"]) + ".",
    ]
    if chart:
        lines += ["", f"![RSS over frames]({chart})"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=2000, help="frames per source (default 2000)")
    parser.add_argument("--every", type=int, default=100, help="RSS sample interval in frames (default 100)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="frames left out of the fit (default: the first quarter of --frames)")
    parser.add_argument("--video-frames", type=int, default=250,
                        help="length of the looping video (default 250: it restarts 8 times in 2000 frames)")
    parser.add_argument("--size", type=int, default=64, help="side of the frames and of the fake bundle (64)")
    parser.add_argument("--bundle", type=Path, default=None, help="soak this bundle instead of the fake one")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per source before giving up")
    parser.add_argument("--shared-machine", action="store_true", help="note that other jobs shared the CPUs")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite soak.md and soak.png from the soak.json in --out, without running")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.report_only:
        import json

        from fgad.core.atomic import atomic_write_text

        saved = json.loads((args.out / "soak.json").read_text())
        chart = "soak.png" if write_chart(saved["runs"], args.out / "soak.png") else None
        atomic_write_text(args.out / "soak.md", markdown(saved, chart))
        print((args.out / "soak.md").read_text())
        return
    if args.warmup is None:
        args.warmup = args.frames // 4
    if not Path("/proc/self/status").is_file():
        raise SystemExit("soak.py reads VmRSS from /proc/<pid>/status: Linux only")
    if args.frames < args.warmup + 3 * args.every:
        raise SystemExit("--frames must leave at least 3 samples after --warmup")

    from fgad.bench.device import device_record, git_commit
    from fgad.cli.common import check_outputs
    from fgad.core.atomic import atomic_write_json, atomic_write_text

    try:
        check_outputs(("--out", args.out, "dir"))
    except Exception as err:  # click.ClickException: one line
        raise SystemExit(f"Error: {err}") from None
    with tempfile.TemporaryDirectory(prefix="fgad-soak-") as tmp:
        work = Path(tmp)
        inputs = make_inputs(work, args.frames, args.video_frames, args.size, args.bundle)
        runs = [
            soak_once("images", ["--images", str(inputs["images"])], inputs, work, args.every, args.timeout),
            soak_once("video", ["--video", str(inputs["video"]), "--loop", "--max-frames", str(args.frames)],
                      inputs, work, args.every, args.timeout),
        ]
    for run in runs:
        kept = [s for s in run["samples"] if s["frame"] > args.warmup]
        run["fit"] = fit_line([s["frame"] for s in kept], [s["rss_kib"] for s in kept])
        run["warmup"] = args.warmup
        # the temporary folder's name means nothing once it is gone
        run["command"] = run["command"].replace(str(work), "$WORK")
    fake = args.bundle is None
    result = {
        "schema": "fgad-soak/1",
        "created": datetime.now(timezone.utc).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": "python benchmarks/soak.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "commit": git_commit(REPO),
        "machine": device_record("cpu"),
        "shared_machine": args.shared_machine,
        "frames": args.frames,
        "every": args.every,
        "warmup": args.warmup,
        "video_frames": args.video_frames,
        "bundle_kind": "fake bundle" if fake else "given bundle",
        "bundle_note": (f"the hand-made torch-free bundle of tests/helpers/fake_bundle.py, {args.size} px, grid 8, "
                        "2 token layers of 32 dims (a real ONNX graph with the bundle's outputs, not a CLIP model); "
                        f"frames are {args.size} px synthetic 'tile' images, the video a {args.video_frames}-frame "
                        "MJPG of them played with --loop")
                       if fake else f"{args.bundle}",
        "flat_criterion": f"|slope x window| <= max({RESIDUAL_SIGMAS:g} x residual std, {FLOOR_KIB:g} KiB)",
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    chart = "soak.png" if write_chart(runs, args.out / "soak.png") else None
    atomic_write_json(args.out / "soak.json", result)
    atomic_write_text(args.out / "soak.md", markdown(result, chart))
    print((args.out / "soak.md").read_text())


if __name__ == "__main__":
    main()
