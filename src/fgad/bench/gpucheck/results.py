"""What a check leaves behind: at most :data:`MAX_OUT_FILES` files in ``$OUT``, a summary, a pass/fail verdict.

The verdict rule (:func:`correctness_failures`): the check fails when a step failed or ran out of time,
when a measured difference is over its bound (kernels, few-shot search), when the GPU tests did not all
pass on a GPU (a skip there means something was not checked), or when a ``fgad-bench`` eager row failed.
fp16 findings (distance from fp32, layers that overflow) are data, not failures.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fgad.core.atomic import atomic_write_json

__all__ = ["MAX_OUT_FILES", "SUMMARY_FILE", "copy_results", "correctness_failures", "junit_counts",
           "summary_table"]

#: what comes back from a device call's $OUT
MAX_OUT_FILES = 8
SUMMARY_FILE = "summary.json"
LOG_FILE = "gpu_check.log"


def junit_counts(path: Path) -> dict[str, int]:
    """tests / failures / errors / skipped of a pytest ``--junitxml`` report (defusedxml-free: attributes only)."""
    import xml.etree.ElementTree as ET  # noqa: S405 - our own pytest's report, written in this run

    root = ET.parse(path).getroot()  # noqa: S314
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    keys = ("tests", "failures", "errors", "skipped")
    return {k: sum(int(s.get(k, 0)) for s in suites) for k in keys}


def _over_bound(rows: Sequence[Mapping[str, Any]], what: str) -> list[str]:
    return [f"{what}: {r.get('label') or r.get('id')}: {r['error']:.3g} > bound {r['bound']:.3g}"
            for r in rows if r.get("error") is not None and r.get("bound") is not None and r["error"] > r["bound"]]


def correctness_failures(summary: Mapping[str, Any]) -> list[str]:
    """Every reason the check fails (empty: it passed); see the module docstring for the rule."""
    out: list[str] = []
    for step in summary.get("steps", []):
        if step["status"] in ("failed", "timeout"):
            out.append(f"step {step['name']}: {step['status']} ({step.get('reason')})")
    tests = summary.get("gpu_tests")
    if tests and not summary.get("dry"):
        if tests["failures"] or tests["errors"]:
            out.append(f"GPU tests: {tests['failures']} failed, {tests['errors']} errors")
        if tests["skipped"]:
            out.append(f"GPU tests: {tests['skipped']} skipped on a GPU machine (nothing may go unchecked there)")
        if not tests["tests"]:
            out.append("GPU tests: none collected")
    out += _over_bound((summary.get("kernels") or {}).get("rows", []), "kernel")
    out += _over_bound((summary.get("knn") or {}).get("rows", []), "few-shot search")
    for name, bench in (summary.get("bench") or {}).items():
        for row in bench.get("rows", []):
            if row["status"] == "failed" and row["variant"] == "eager":
                out.append(f"bench {name}: {row['id']} failed: {row['reason']}")
    return out


def _fmt(value: Any, spec: str = ".3g") -> str:
    if value is None:
        width = "".join(c for c in spec.split(".")[0] if c.isdigit())
        return "–".rjust(int(width) if width else 1)
    return format(value, spec)


def summary_table(summary: Mapping[str, Any]) -> str:
    """The plain-text table printed at the end of a check: steps, then the key numbers of each result."""
    lines = [f"{'step':<22} {'status':<8} {'s':>7}  note", "-" * 78]
    for step in summary.get("steps", []):
        lines.append(f"{step['name']:<22} {step['status']:<8} {step['seconds']:>7.1f}  {step.get('reason') or ''}")
    tests = summary.get("gpu_tests")
    if tests:
        lines.append(f"GPU tests: {tests['tests']} run, {tests['failures']} failed, {tests['errors']} errors, "
                     f"{tests['skipped']} skipped")
    kernels = (summary.get("kernels") or {}).get("rows", [])
    if kernels:
        lines += ["", f"{'kernel op':<44} {'dtype':<5} {'ms':>9} {'err':>9} {'bound':>9}"]
        for r in kernels:
            lines.append(f"{r['label']:<44} {r['dtype']:<5} {_fmt(r.get('ms'), '9.3f')} {_fmt(r.get('error'), '9.2e')}"
                         f" {_fmt(r.get('bound'), '9.1e')}")
    knn = (summary.get("knn") or {}).get("rows", [])
    if knn:
        lines += ["", f"{'few-shot search':<44} {'dtype':<5} {'ms':>9} {'err':>9} {'TFLOP/s':>9}"]
        for r in knn:
            lines.append(f"{r['label']:<44} {r['dtype']:<5} {_fmt(r.get('ms'), '9.3f')} {_fmt(r.get('error'), '9.2e')}"
                         f" {_fmt(r.get('tflops'), '9.2f')}")
    fp16 = (summary.get("fp16") or {}).get("configs", [])
    for cfg in fp16:
        lines.append("")
        for name, d in cfg.get("distances", {}).items():
            lines.append(f"{cfg['config']} {name} vs fp32: map max|d| {_fmt(d.get('map_max_abs'))}, score max|d| "
                         f"{_fmt(d.get('score_max_abs'))}, non-finite {d.get('non_finite')}")
        over = ", ".join(cfg.get("overflow_fp16", [])) or "none"
        lines.append(f"{cfg['config']}: layers over fp16's range in fp32: {over}")
    for name, bench in (summary.get("bench") or {}).items():
        lines += ["", f"fgad-bench {name}", f"  {'row':<34} {'median ms':>10} {'engine ms':>10} {'% peak':>8}"]
        for row in bench.get("rows", []):
            if row["status"] != "ok":
                lines.append(f"  {row['id']:<34} {row['status']}: {str(row.get('reason'))[:60]}")
                continue
            frac = (row.get("peak_fraction") or {}).get("engine")
            engine = row.get("stages_ms", {}).get("engine", {}).get("median")
            lines.append(f"  {row['id']:<34} {row['latency_ms']['median']:>10.2f} {_fmt(engine, '10.2f')} "
                         f"{'–' if frac is None else format(100 * frac, '7.2f') + '%'}")
    skipped = summary.get("skipped_parts") or []
    if skipped:
        lines += ["", "Not done in this run:"] + [f"  - {s}" for s in skipped]
    failures = summary.get("failures") or []
    lines += ["", "RESULT: " + ("PASS" if not failures else "FAIL")] + [f"  - {f}" for f in failures]
    return "\n".join(lines)


def copy_results(files: Mapping[str, Path], out_dir: Path, summary: Mapping[str, Any]) -> list[Path]:
    """Copy ``files`` (name in $OUT -> source) and write the summary into ``out_dir``: at most MAX_OUT_FILES."""
    present = {name: src for name, src in files.items() if Path(src).is_file()}
    if len(present) + 1 > MAX_OUT_FILES:
        raise ValueError(f"{len(present) + 1} result files, but only {MAX_OUT_FILES} come back from $OUT: "
                         f"{sorted(present)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, src in present.items():
        target = out_dir / name
        if Path(src).resolve() != target.resolve():
            shutil.copyfile(src, target)
        written.append(target)
    atomic_write_json(out_dir / SUMMARY_FILE, dict(summary))
    return [*written, out_dir / SUMMARY_FILE]


def load_json(path: Path) -> dict[str, Any] | None:
    """A step's JSON result, or None where the step wrote none."""
    return json.loads(path.read_text()) if path.is_file() else None
