"""The few-shot search benchmark's rows: every search measured, exact, and the busy-CPU case ends its processes."""

from __future__ import annotations

import multiprocessing

import pytest

from fgad.bench.knn_search import busy_cpu, run_knn_benchmark, to_markdown


def test_rows_cover_every_search_and_agree_with_the_exact_search() -> None:
    pytest.importorskip("onnx")
    rows = run_knn_benchmark(shapes=["tiny"], shots=[1, 2], busy_processes=0, repeats=3)
    searches = {r.search for r in rows}
    assert {"numpy", "numpy-blas-default", "ort-graph", "ort-graph-1t"} <= searches
    assert {(r.shots, r.cpu) for r in rows} == {(1, "idle"), (2, "idle")}
    assert all(r.median_ms > 0 and r.max_abs_diff < 1e-5 for r in rows)
    table = to_markdown(rows)
    assert "| tiny | 2 |" in table and "ort-graph" in table


def test_busy_cpu_starts_and_ends_its_processes() -> None:
    with busy_cpu(2):
        assert len(multiprocessing.active_children()) >= 2
    assert not [p for p in multiprocessing.active_children() if p.is_alive()]
