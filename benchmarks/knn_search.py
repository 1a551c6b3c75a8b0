"""Few-shot search latency per frame: numpy (BLAS default threads / one thread), FAISS and the graph's own search
(onnxruntime), at 1/4/8 shots, for the tiny, ViT-B and ViT-L token shapes, on an idle and on a busy CPU.

    python benchmarks/knn_search.py --out benchmarks/results/cpu/knn

Writes ``knn_search.json`` (rows + environment) and ``knn_search.md`` into ``--out``. See
``fgad.bench.knn_search`` for what each search is.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fgad.bench.knn_search import SHAPES, environment, rows_as_dicts, run_knn_benchmark, to_markdown
from fgad.core.atomic import atomic_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--shots", nargs="+", type=int, default=[1, 4, 8])
    parser.add_argument("--busy", type=int, default=2, help="competing CPU-bound processes in the busy case (0: none)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rows = run_knn_benchmark(args.shapes, args.shots, args.busy, args.repeats)
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"command": "python benchmarks/knn_search.py " + " ".join(
        [f"--shapes {' '.join(args.shapes)}", f"--shots {' '.join(map(str, args.shots))}", f"--busy {args.busy}",
         f"--repeats {args.repeats}", f"--out {args.out}"]), "environment": environment(), "rows": rows_as_dicts(rows)}
    with atomic_path(args.out / "knn_search.json") as tmp:
        tmp.write_text(json.dumps(record, indent=1) + "\n")
    table = to_markdown(rows)
    with atomic_path(args.out / "knn_search.md") as tmp:
        tmp.write_text(f"# Few-shot search latency\n\n`{record['command']}`\n\n{table}")
    print(table)


if __name__ == "__main__":
    main()
