"""The few-shot search as one matmul and a max in torch (what ``fgad-export --knn graph`` computes in ONNX),
timed on the GPU in fp32 and fp16 against the runtime's numpy search (and FAISS where installed).

Per memory layer: L2-normalised query tokens ``[B, N, D] @ memory[M, D]^T -> [B, N, M]``, max over ``M``
(``M = shots * N``). Shapes are those of ViT-B/16@224 and ViT-L/14@336/518 with the shipped configs'
memory layers; 1, 4 and 8 shots, batch 1. Queries are memory rows plus noise, so the maxima are near 0.9,
as for real good images, rather than near 0.

    python -m fgad.bench.gpucheck.knn --json knn.json              # CUDA
    python -m fgad.bench.gpucheck.knn --json knn.json --device cpu --tiny   # the CPU dry run
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np

__all__ = ["BOUNDS", "SHAPES", "TINY_SHAPES", "KnnShape", "run", "torch_max_similarity"]


@dataclass(frozen=True)
class KnnShape:
    name: str
    tokens: int  # N, patches per image
    dim: int  # D, the encoder width
    layers: int  # memory layers


SHAPES = (KnnShape("vitb16-224", 196, 768, 4), KnnShape("vitl14-336", 576, 1024, 4),
          KnnShape("vitl14-518", 1369, 1024, 4))
TINY_SHAPES = (KnnShape("tiny", 16, 64, 2),)
SHOTS = (1, 4, 8)
#: largest accepted |torch - numpy fp32| of a similarity in [-1, 1]: fp32 differs only in summation order;
#: fp16/bf16 round both operands (2^-11 / 2^-8 relative) before an fp32-accumulated dot product
BOUNDS = {"fp32": 1e-5, "fp16": 5e-3, "bf16": 4e-2}


def torch_max_similarity(tokens: Any, memory: Any) -> Any:
    """``max_m <normalize(t), memory[m]>``: ``[B, N, D] x [M, D] -> [B, N]`` (memory already normalised)."""
    import torch.nn.functional as F

    q = F.normalize(tokens, dim=-1)
    return (q @ memory.transpose(0, 1)).amax(dim=-1)


def _time(fn: Callable[[], Any], repeats: int, sync: Callable[[], None] | None) -> float:
    fn()
    if sync:
        sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def _data(shape: KnnShape, shots: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    from fgad.runtime.knn import normalize_rows

    rng = np.random.default_rng(seed)
    memories, queries = [], []
    for _ in range(shape.layers):
        mem = normalize_rows(rng.standard_normal((shots * shape.tokens, shape.dim), dtype=np.float32))
        pick = rng.integers(0, mem.shape[0], shape.tokens)
        noise = rng.standard_normal((shape.tokens, shape.dim), dtype=np.float32) * (0.5 / shape.dim ** 0.5)
        memories.append(mem)
        queries.append((mem[pick] + noise)[None])
    return memories, queries


def run(shapes: Sequence[KnnShape], device: str, dtypes: Sequence[str], repeats: int = 20,
        shots: Sequence[int] = SHOTS, cpu_repeats: int = 3, seed: int = 0) -> dict[str, Any]:
    """Rows of error against numpy and median ms, per shape, shot count and implementation."""
    import torch

    from fgad.runtime.knn import PatchMemoryIndex, faiss_available, max_similarity_numpy, normalize_rows

    sync = torch.cuda.synchronize if device == "cuda" else None
    rows: list[dict[str, Any]] = []
    for shape in shapes:
        for k in shots:
            memories, queries = _data(shape, k, seed)
            flops = 2 * shape.layers * shape.tokens * k * shape.tokens * shape.dim
            reference = [max_similarity_numpy(normalize_rows(q[0]), m) for q, m in zip(queries, memories, strict=True)]
            base = f"{shape.name} {k}-shot (N={shape.tokens}, M={k * shape.tokens}, D={shape.dim}, x{shape.layers})"
            ms = _time(lambda q=queries, m=memories: [max_similarity_numpy(normalize_rows(a[0]), b)
                                                      for a, b in zip(q, m, strict=True)],
                       cpu_repeats, None)
            rows.append({"label": f"{base} numpy", "impl": "numpy", "dtype": "fp32", "ms": ms, "error": 0.0,
                         "bound": None, "tflops": flops / (ms / 1000) / 1e12})
            if faiss_available():
                indexes = [PatchMemoryIndex.from_features(m, use_faiss=True, use_gpu=False) for m in memories]
                err = max(float(np.abs(ix.max_similarity(q) - r[None]).max())
                          for ix, q, r in zip(indexes, queries, reference, strict=True))
                ms = _time(lambda q=queries, ix=indexes: [i.max_similarity(a) for a, i in zip(q, ix, strict=True)],
                           cpu_repeats, None)
                rows.append({"label": f"{base} faiss-cpu", "impl": "faiss-cpu", "dtype": "fp32", "ms": ms,
                             "error": err, "bound": BOUNDS["fp32"], "tflops": flops / (ms / 1000) / 1e12})
            for dtype in dtypes:
                tdtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
                mem_t = [torch.from_numpy(m).to(device=device, dtype=tdtype) for m in memories]
                q_t = [torch.from_numpy(q).to(device=device, dtype=tdtype) for q in queries]
                with torch.no_grad():
                    got = [torch_max_similarity(q, m).float().cpu().numpy()[0] for q, m in zip(q_t, mem_t, strict=True)]
                    err = max(float(np.abs(g - r).max()) for g, r in zip(got, reference, strict=True))
                    finite = all(bool(np.isfinite(g).all()) for g in got)
                    ms = _time(lambda q=q_t, m=mem_t: [torch_max_similarity(a, b)
                                                       for a, b in zip(q, m, strict=True)], repeats, sync)
                rows.append({"label": f"{base} torch {device}", "impl": f"torch-{device}", "dtype": dtype, "ms": ms,
                             "error": err if finite else float("inf"), "bound": BOUNDS[dtype],
                             "tflops": flops / (ms / 1000) / 1e12})
    return {"device": device, "device_name": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
            "math": "max over M of normalize(tokens[B,N,D]) @ memory[M,D]^T, per layer; batch 1",
            "reference": "fgad.runtime.knn.max_similarity_numpy (fp32)", "rows": rows}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--json", "json_path", required=True, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--device", type=click.Choice(["cuda", "cpu"]), default="cuda", show_default=True)
@click.option("--tiny", is_flag=True, help="Tiny shapes (the CPU dry run).")
@click.option("--repeats", type=click.IntRange(min=1), default=20, show_default=True)
def main(json_path: Path, device: str, tiny: bool, repeats: int) -> None:
    """Time the torch few-shot search against numpy/FAISS; exit 1 when an error is over its bound."""
    from fgad.bench.gpucheck.results import correctness_failures
    from fgad.core.atomic import atomic_write_json

    dtypes = ("fp32", "fp16") if device == "cuda" else ("fp32", "bf16")
    result = run(TINY_SHAPES if tiny else SHAPES, device, dtypes, repeats=repeats)
    atomic_write_json(json_path, result)
    for row in result["rows"]:
        click.echo(f"{row['label']:<70} {row['dtype']:<5} {row['ms']:9.3f} ms  err {row['error']:.2e}")
    failures = correctness_failures({"knn": result})
    if failures:
        raise click.ClickException("; ".join(failures))


if __name__ == "__main__":
    main()
