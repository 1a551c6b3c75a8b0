"""Bounded load test of an fgad model on a real Triton server: throughput, latency percentiles, lost requests.

    python benchmarks/triton_load.py --out benchmarks/results/cpu/triton
    python benchmarks/triton_load.py --bundle bundles/bottle --clients 8 --requests 200 --out /tmp/load

Writes a model repository with ``fgad-triton`` (python form: the whole pipeline inside Triton) for one bundle,
starts nvidia-pytriton's tritonserver on 127.0.0.1 (``fgad.triton.local_server``; ``make test-triton`` installs
it), then ``--clients`` threads each send ``--requests`` requests of one image, over HTTP and then over gRPC,
each client with its own connection, every request with a timeout. A request counts as served only if its
response holds every output with the right shape and its score equals the local runtime's
(``fgad.runtime.pipeline.Detector``) for the same image to 1e-5; ``lost`` = sent - served.

Latency is per request, as the client sees it (serialization, network stack, queueing in the dynamic batcher,
execution); throughput = served / wall time of the phase. Triton's own statistics (``/v2/models/.../stats``)
give the number of executions, hence the mean batch the dynamic batcher formed (for an ensemble, in its post step).

By default the bundle is the hand-made bundle of ``tests/helpers/fake_bundle.py`` (64 px; a real ONNX graph with
the bundle's outputs, no CLIP network): the figures then measure the serving path (Triton, the python backend,
fgad's pipeline around the engine), not a model. ``--bundle DIR`` loads any bundle.

Writes ``triton_load.json`` (every setting, the machine, per-protocol figures) and ``triton_load.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.helpers.fake_bundle


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("fgad", "numpy", "onnxruntime", "tritonclient", "nvidia-pytriton"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "-"
    return out


def _commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=10", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "-"


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def run_phase(url: str, model: str, clients: int, requests: int, images: list[np.ndarray],
              expected: list[float], timeout_s: float) -> dict[str, Any]:
    """``clients`` threads x ``requests`` requests; latencies, served and lost requests."""
    from fgad.triton.client import Client

    latencies: list[list[float]] = [[] for _ in range(clients)]
    served = [0] * clients
    errors: list[str] = []
    barrier = threading.Barrier(clients + 1)

    def worker(k: int) -> None:
        client = Client(url, model, timeout_s=timeout_s)
        batches = [client.preprocess([img]) for img in images]
        barrier.wait()
        for i in range(requests):
            j = (k + i) % len(images)
            t0 = time.perf_counter()
            try:
                outs = client.infer_tensors(batches[j])
            except Exception as exc:  # noqa: BLE001 - counted as lost
                errors.append(f"{type(exc).__name__}: {exc}"[:200])
                continue
            latencies[k].append(1000.0 * (time.perf_counter() - t0))
            score = float(outs["score"].reshape(-1)[0])
            if outs["anomaly_map"].shape[0] == 1 and abs(score - expected[j]) < 1e-5:
                served[k] += 1
            else:
                errors.append(f"request {k}/{i}: wrong result {score} vs {expected[j]}")
        client.close()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    flat = np.array([x for lat in latencies for x in lat])
    sent = clients * requests
    return {
        "clients": clients, "requests_per_client": requests, "sent": sent, "served": int(sum(served)),
        "lost": sent - int(sum(served)), "errors": errors[:10], "wall_s": round(wall, 3),
        "throughput_rps": round(sum(served) / wall, 2),
        "latency_ms": {"p50": round(float(np.percentile(flat, 50)), 3), "p90": round(float(np.percentile(flat, 90)), 3),
                       "p99": round(float(np.percentile(flat, 99)), 3), "mean": round(float(flat.mean()), 3),
                       "max": round(float(flat.max()), 3)} if flat.size else {},
    }


def server_stats(http_url: str, model: str) -> dict[str, int]:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(http_url, network_timeout=30)
    stats = client.get_inference_statistics(model)["model_stats"]
    client.close()
    return {"inference_count": int(sum(s["inference_count"] for s in stats)),
            "execution_count": int(sum(s["execution_count"] for s in stats))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=None, help="a bundle (default: the hand-made 64 px one)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=200, help="requests per client")
    parser.add_argument("--instances", type=int, default=1, help="model instances (instance_group count)")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--queue-delay-us", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads per instance")
    parser.add_argument("--protocols", default="http,grpc")
    parser.add_argument("--forms", default="python,ensemble",
                        help="repository forms to measure, each on its own server: python, ensemble (the encoder "
                             "as a python-backend onnxruntime stand-in: nvidia-pytriton's server has no onnxruntime "
                             "backend)")
    parser.add_argument("--timeout-s", type=float, default=60.0, help="per-request timeout")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    from fgad.runtime.pipeline import Detector
    from fgad.triton.local_server import LocalServer
    from fgad.triton.model_config import ServeSettings, model_name
    from fgad.triton.repository import write_repository

    rng = np.random.default_rng(0)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="fgad-triton-load-") as work_dir:
        work = Path(work_dir)
        if args.bundle is None:
            from tests.helpers.fake_bundle import make_bundle

            refs = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(4)]
            bundle_path, bundle_label = make_bundle(work / "bundle", size=64, grid=8, references=refs).path, \
                "hand-made 64 px bundle (tests/helpers/fake_bundle.py), 4 references"
        else:
            bundle_path, bundle_label = args.bundle, str(args.bundle)
        detector = Detector.from_bundle(bundle_path, threads=args.threads)
        images = [rng.integers(0, 256, (96, 128, 3), dtype=np.uint8) for _ in range(16)]
        expected = [detector(img).score for img in images]
        settings = ServeSettings(instances=args.instances, max_batch=args.max_batch,
                                 queue_delay_us=args.queue_delay_us, threads=args.threads)
        model = model_name(detector.class_name)
        phases: dict[str, Any] = {}
        for form in [f.strip() for f in args.forms.split(",") if f.strip()]:
            repo = work / f"repo-{form}"
            write_repository(repo, [bundle_path], settings=settings, form=form, encoder="python")
            # an ensemble does not batch itself: its post step shows the batches the dynamic batcher formed
            batched = model if form == "python" else model_name(detector.class_name, "post")
            with LocalServer(repo, start_timeout_s=180, log_path=work / f"server-{form}.log") as server:
                for protocol in [p.strip() for p in args.protocols.split(",") if p.strip()]:
                    url = server.http_url if protocol == "http" else server.grpc_url
                    before = server_stats(server.http_url, batched)
                    phase = run_phase(url, model, args.clients, args.requests, images, expected, args.timeout_s)
                    after = server_stats(server.http_url, batched)
                    executions = after["execution_count"] - before["execution_count"]
                    inferences = after["inference_count"] - before["inference_count"]
                    phase["server"] = {"inferences": inferences, "executions": executions,
                                       "mean_batch": round(inferences / executions, 2) if executions else None}
                    phase["form"], phase["protocol"] = form, protocol
                    phases[f"{form}/{protocol}"] = phase
                    print(f"{form} {protocol}: {phase['served']}/{phase['sent']} served, "
                          f"{phase['throughput_rps']} req/s, p50 {phase['latency_ms'].get('p50')} ms, "
                          f"p99 {phase['latency_ms'].get('p99')} ms, mean batch {phase['server']['mean_batch']}",
                          flush=True)
    record = {
        "command": "python benchmarks/triton_load.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "commit": _commit(), "cpu": _cpu(),
        "versions": _versions(), "bundle": bundle_label,
        "load_average_1min": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
        "input_size": detector.size,
        "settings": {"instances": args.instances, "max_batch": args.max_batch, "queue_delay_us": args.queue_delay_us,
                     "onnxruntime_threads": args.threads, "timeout_s": args.timeout_s},
        "phases": phases,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    from fgad.core.atomic import atomic_write_json, atomic_write_text

    atomic_write_json(args.out / "triton_load.json", record)
    atomic_write_text(args.out / "triton_load.md", render(record))
    return 0 if all(p["lost"] == 0 for p in phases.values()) else 1


def render(record: dict[str, Any]) -> str:
    s = record["settings"]
    lines = [
        "## Triton load test, cpu", "",
        f"    {record['command']}", "",
        f"{record['created']}, commit {record['commit']}. {record['cpu']}; tritonserver 2.51 from nvidia-pytriton "
        f"{record['versions'].get('nvidia-pytriton')}, tritonclient {record['versions'].get('tritonclient')}, "
        f"onnxruntime {record['versions'].get('onnxruntime')}, numpy {record['versions'].get('numpy')}.", "",
        f"Bundle: {record['bundle']}, {record['input_size']} px. Server on 127.0.0.1: {s['instances']} instance(s), "
        f"max batch {s['max_batch']}, queue delay {s['queue_delay_us']} µs, {s['onnxruntime_threads']} onnxruntime "
        f"thread(s); clients and server share the machine (1-minute load average "
        f"{record['load_average_1min']['before']} before, {record['load_average_1min']['after']} after: other jobs "
        "shared it too). A request is served when its score equals the local "
        "runtime's for the same image to 1e-5. Forms: python = the whole pipeline in one python-backend model; "
        "ensemble = encoder model (python-backend onnxruntime stand-in) -> python post step, Triton's ensemble "
        "scheduler between them.", "",
        "| form | protocol | clients x requests | served | lost | req/s | p50 ms | p90 ms | p99 ms | max ms | "
        "mean batch |",
        "|:---|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in record["phases"].values():
        lat = p["latency_ms"]
        lines.append(f"| {p['form']} | {p['protocol']} | {p['clients']} x {p['requests_per_client']} | "
                     f"{p['served']} | {p['lost']} | "
                     f"{p['throughput_rps']} | {lat.get('p50')} | {lat.get('p90')} | {lat.get('p99')} | "
                     f"{lat.get('max')} | {p['server']['mean_batch']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
