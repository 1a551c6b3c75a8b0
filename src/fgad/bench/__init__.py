"""fgad-bench: latency per stage across backends and precisions, analytic FLOPs and peak fractions, reports.

Modules: :mod:`~fgad.bench.flops` (FLOPs from config shapes), :mod:`~fgad.bench.device` (machine, versions,
assumed peaks), :mod:`~fgad.bench.stages` (stage timers), :mod:`~fgad.bench.harness` (the timing loop),
:mod:`~fgad.bench.runners` (torch / runtime configurations), :mod:`~fgad.bench.workload` (images),
:mod:`~fgad.bench.bundles` (export, int8, TensorRT), :mod:`~fgad.bench.benchmark` (one run) and
:mod:`~fgad.bench.report` (JSON, markdown, chart, README).
"""
