"""Few-shot search latency per frame: the runtime's numpy and FAISS searches against the graph's own search.

One frame's search over every memory layer (batch 1, as a camera delivers frames), at 1/4/8 shots, for the
token shapes of the models (:data:`SHAPES`), on an idle CPU and on a CPU kept busy by competing processes
(:func:`busy_cpu`): the case where BLAS's one-thread-per-core default collapses (``fgad.runtime.knn``). Searches:

* ``numpy-blas-default``: the numpy search with BLAS's own thread count (what the runtime did before it chose);
* ``numpy``: the numpy search on :data:`fgad.runtime.knn.SEARCH_THREADS` BLAS threads (the runtime's default);
* ``faiss-cpu``: ``IndexFlatIP`` (exact), FAISS's OpenMP threads;
* ``ort-graph`` / ``ort-graph-1t``: the nodes ``fgad-export --knn graph`` adds (:func:`fgad.export.knn_graph.
  search_model`) in onnxruntime on the CPU, default intra-op threads / one.

Random unit rows: the latency of an exact search does not depend on the values. The medians of one run are
comparable with each other, not across machines.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["SHAPES", "KnnRow", "KnnShape", "busy_cpu", "run_knn_benchmark", "to_markdown"]


@dataclass(frozen=True)
class KnnShape:
    name: str
    num_patches: int  # N per image
    dim: int  # D
    layers: int  # memory layers


#: tiny-test (the demo's model), ViT-B/16 at 224 (vitb16-224) and ViT-L/14 at 336 px (4 memory layers each)
SHAPES: dict[str, KnnShape] = {
    "tiny": KnnShape("tiny", 49, 64, 2),
    "vitb16-224": KnnShape("vitb16-224", 196, 768, 4),
    "vitl14-336": KnnShape("vitl14-336", 576, 1024, 4),
}
SEARCHES: tuple[str, ...] = ("numpy-blas-default", "numpy", "faiss-cpu", "ort-graph", "ort-graph-1t")


@dataclass(frozen=True)
class KnnRow:
    shape: str
    shots: int
    search: str
    cpu: str  # "idle" or "busy (<n> competing processes)"
    median_ms: float
    p90_ms: float
    repeats: int
    max_abs_diff: float  # against the float64 exact search on the same frame


def _spin() -> None:  # pragma: no cover - runs in the competing processes
    while True:
        pass


@contextlib.contextmanager
def busy_cpu(processes: int) -> Iterator[None]:
    """``processes`` CPU-bound processes competing for the cores while the block runs (each ended by its own pid)."""
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_spin, daemon=True) for _ in range(processes)]
    for worker in workers:
        worker.start()
    try:
        time.sleep(0.5)  # let them reach the scheduler
        yield
    finally:
        for worker in workers:
            worker.terminate()
            worker.join(timeout=5)


def _searches(banks: dict[int, np.ndarray], shape: KnnShape) -> dict[str, Callable[[dict[int, np.ndarray]], Any]]:
    from fgad.runtime.knn import FewShotMemory, faiss_available

    out: dict[str, Callable[[dict[int, np.ndarray]], Any]] = {}
    for name, threads in (("numpy-blas-default", None), ("numpy", 1)):
        memory = FewShotMemory.from_features(banks, use_faiss=False, threads=threads)
        out[name] = memory.min_distance
    if faiss_available():
        faiss_memory = FewShotMemory.from_features(banks, use_faiss=True, use_gpu=False)
        out["faiss-cpu"] = faiss_memory.min_distance
    try:
        import onnxruntime as ort

        from fgad.export.knn_graph import search_model
        from fgad.runtime.knn import distance_from_similarities
    except ImportError:
        return out
    model = search_model(banks, shape.num_patches).SerializeToString()
    for name, threads in (("ort-graph", 0), ("ort-graph-1t", 1)):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

        def run(tokens: dict[int, np.ndarray], session: Any = session) -> np.ndarray:
            sims = session.run(None, {f"tokens_{layer}": t for layer, t in tokens.items()})
            return distance_from_similarities(sims)

        out[name] = run
    return out


def _exact(tokens: dict[int, np.ndarray], banks: dict[int, np.ndarray]) -> np.ndarray:
    total = 0.0
    for layer, t in tokens.items():
        q = t.reshape(-1, t.shape[-1]).astype(np.float64)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        total = total + (1.0 - (q @ banks[layer].astype(np.float64).T).max(axis=1))
    return (total / len(tokens)).reshape(1, -1)


def _time(fn: Callable[[], Any], repeats: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1000.0 * (time.perf_counter() - start))
    return times


def run_knn_benchmark(
    shapes: Sequence[str] = tuple(SHAPES),
    shots: Sequence[int] = (1, 4, 8),
    busy_processes: int = 2,
    repeats: int = 20,
    seed: int = 0,
    searches: Sequence[str] = SEARCHES,
) -> list[KnnRow]:
    """Every (shape, shots, search) on an idle CPU, then with ``busy_processes`` competing (0: idle only)."""
    from fgad.runtime.knn import normalize_rows

    rng = np.random.default_rng(seed)
    cases = []
    for shape_name in shapes:
        shape = SHAPES[shape_name]
        for k in shots:
            banks = {layer: normalize_rows(rng.normal(size=(k * shape.num_patches, shape.dim)))
                     for layer in range(shape.layers)}
            tokens = {layer: rng.normal(size=(1, shape.num_patches, shape.dim)).astype(np.float32)
                      for layer in range(shape.layers)}
            reps = max(3, repeats // max(1, (k * shape.num_patches ** 2 * shape.dim) // (1 << 27)))
            cases.append((shape, k, banks, tokens, _searches(banks, shape), _exact(tokens, banks), reps))
    rows: list[KnnRow] = []
    conditions = [("idle", 0)] + ([(f"busy ({busy_processes} competing processes)", busy_processes)]
                                  if busy_processes else [])
    for cpu, processes in conditions:
        with busy_cpu(processes) if processes else contextlib.nullcontext():
            for shape, k, _banks, tokens, fns, exact, reps in cases:
                for name in searches:
                    if name not in fns:
                        continue
                    fn = fns[name]
                    diff = float(np.abs(np.asarray(fn(tokens), dtype=np.float64).reshape(1, -1) - exact).max())
                    times = _time(lambda fn=fn, tokens=tokens: fn(tokens), reps)
                    rows.append(KnnRow(shape.name, k, name, cpu, round(statistics.median(times), 3),
                                       round(float(np.percentile(times, 90)), 3), reps, diff))
    return rows


def environment() -> dict[str, Any]:
    """What the figures depend on: CPU count, BLAS, library versions."""
    info: dict[str, Any] = {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
                            "numpy": np.__version__}
    with contextlib.suppress(OSError, AttributeError):
        info["load_average_1_5_15_min"] = [round(v, 2) for v in os.getloadavg()]  # others' load on a shared machine
    with contextlib.suppress(ImportError):
        from threadpoolctl import threadpool_info

        info["blas"] = [{k: lib.get(k) for k in ("internal_api", "num_threads", "version")}
                        for lib in threadpool_info() if lib.get("user_api") == "blas"]
    for module in ("faiss", "onnxruntime"):
        with contextlib.suppress(ImportError):
            info[module] = __import__(module).__version__
    return info


def to_markdown(rows: Sequence[KnnRow]) -> str:
    """One table per CPU condition: shape x shots rows, one median column per search."""
    lines: list[str] = []
    for cpu in dict.fromkeys(r.cpu for r in rows):
        subset = [r for r in rows if r.cpu == cpu]
        names = list(dict.fromkeys(r.search for r in subset))
        lines += [f"### CPU {cpu}: median ms per frame (all memory layers)", "",
                  "| shape | shots | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
        for key in dict.fromkeys((r.shape, r.shots) for r in subset):
            cells = {r.search: r.median_ms for r in subset if (r.shape, r.shots) == key}
            lines.append(f"| {key[0]} | {key[1]} | " + " | ".join(f"{cells[n]:.3f}" if n in cells else "-"
                                                                   for n in names) + " |")
        lines.append("")
    return "\n".join(lines)


def rows_as_dicts(rows: Sequence[KnnRow]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]
