"""``make gpu-check``: every GPU step in one command, within one time budget (see the package docstring).

    python -u -m fgad.bench.gpucheck --out "$OUT"            # on the GPU machine (make gpu-check)
    python -u -m fgad.bench.gpucheck --dry --out /tmp/check  # here: the same steps on the CPU, CUDA skipped

Each step is a child process under its own timeout (and the remaining budget); its output is streamed with
a ``[step]`` prefix and kept in the log. Results go to ``--out`` (default ``$OUT``) as at most 8 files.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from fgad.bench.gpucheck import results as res
from fgad.bench.gpucheck.steps import Step, StepResult, child_env, python_argv, run_step

__all__ = ["BENCH_CONFIGS", "STEP_NAMES", "CheckPlan", "plan_steps", "run_check"]

REPO = Path(__file__).resolve().parents[4]
#: fgad-bench runs on CUDA: (result name, config, image size or None for the config's own)
BENCH_CONFIGS = (("vitb16-224", "vitb16-224", None), ("vitl14-336", "filo-vitl14-336", 336),
                 ("vitl14-518", "filo-vitl14-336", 518))
DRY_BENCH = (("tiny", "tiny-test", None),)
FP16_CONFIGS = ("vitb16-224", "filo-vitl14-336@518")
STEP_NAMES = ("install", "build", "gpu-tests", "kernels", "knn", "fp16", "bench")
#: the whole check's budget: 8 minutes, less a margin for the summary and the copies
DEFAULT_BUDGET_S = 465.0


@dataclass(frozen=True)
class CheckPlan:
    """Where a check reads and writes, and what it skips."""

    out: Path
    work: Path
    wheels: Path
    dry: bool
    steps: tuple[str, ...] = STEP_NAMES
    budget_s: float = DEFAULT_BUDGET_S
    frames: int = 20

    @property
    def site(self) -> Path:
        return self.work / "site"

    @property
    def lib(self) -> Path:
        return self.work / "build" / "libfgad_deform_cuda.so"


def _bench_step(plan: CheckPlan, name: str, config: str, size: int | None, timeout: float) -> Step:
    args = ["-m", "fgad.cli.bench", "--config", config, "--backends", "torch", "--shots", "0,4", "--no-chart",
            "--no-progress", "--out", str(plan.work / f"bench-{name}")]
    if size is not None:
        args += ["--image-size", str(size)]
    if plan.dry:  # the same runner code on the CPU: eager fp32 and bf16 autocast, no compile
        args += ["--device", "cpu", "--precisions", "fp32,bf16", "--no-compile", "--frames", "2", "--warmup", "1"]
    else:
        args += ["--device", "cuda", "--precisions", "fp32,fp16,bf16", "--compile-precisions", "fp16",
                 "--frames", str(plan.frames), "--warmup", "3"]
        if name != "vitb16-224":
            args.append("--no-torch-model")
    return Step(f"bench-{name}", python_argv(*args), timeout, f"fgad-bench {config} on "
                f"{'cpu' if plan.dry else 'cuda'}")


def plan_steps(plan: CheckPlan) -> tuple[list[Step], list[str]]:
    """The child processes of a check, in order, and what the plan leaves out (said in the output)."""
    steps: list[Step] = []
    skipped: list[str] = []
    wheels = sorted(plan.wheels.glob("*.whl")) if plan.wheels.is_dir() else []
    if "install" in plan.steps:
        if wheels:
            steps.append(Step("install", python_argv("-m", "pip", "install", "--no-index", "--no-deps", "--no-compile",
                                                     "--disable-pip-version-check", "-q", "--target", str(plan.site),
                                                     *map(str, wheels)), 90, "carried wheels into a target folder"))
        else:
            skipped.append(f"install: no wheels in {plan.wheels} (make gpu-wheels fetches them); the installed "
                           "packages are used")
    if "build" in plan.steps:
        if plan.dry:
            skipped.append("build: the CUDA kernels are not compiled (no nvcc/GPU in a dry run)")
        else:
            steps.append(Step("build", python_argv("cpp_ext/tools/bench_gpu.py", "--build", str(plan.lib.parent)),
                              180, "nvcc -arch=native of the deformable kernels"))
    if "gpu-tests" in plan.steps:
        steps.append(Step("gpu-tests", python_argv("-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu",
                                                   "tests/cpp_ext/test_cuda_gpu.py",
                                                   f"--junitxml={plan.work / 'gpu-tests.xml'}"), 150,
                          "CUDA kernels vs the PyTorch op, fp32 and fp16, both algorithms"))
        if plan.dry:
            skipped.append("gpu-tests: collected and run, every case skips without a CUDA device")
    if "kernels" in plan.steps:
        args = ["cpp_ext/tools/bench_gpu.py", "--json", str(plan.work / "kernels.json")]
        args += ["--dry", "--repeats", "3"] if plan.dry else ["--mdci-shapes", "--lib", str(plan.lib)]
        steps.append(Step("kernels", python_argv(*args), 90, "kernel timings vs the torch op and torchvision"))
        if plan.dry:
            skipped.append("kernels: CUDA kernel rows (dry run: the torch op and torchvision on the CPU only)")
    if "knn" in plan.steps:
        args = ["-m", "fgad.bench.gpucheck.knn", "--json", str(plan.work / "knn.json")]
        args += ["--device", "cpu", "--tiny", "--repeats", "3"] if plan.dry else ["--device", "cuda"]
        steps.append(Step("knn", python_argv(*args), 90, "few-shot search in torch vs numpy/FAISS"))
        if plan.dry:
            skipped.append("knn: CUDA fp32/fp16 rows (dry run: tiny shapes, CPU fp32 and bf16)")
    if "fp16" in plan.steps:
        args = ["-m", "fgad.bench.gpucheck.fp16", "--json", str(plan.work / "fp16.json")]
        if plan.dry:
            args += ["--config", "tiny-test", "--device", "cpu", "--frames", "2"]
            skipped.append("fp16: CUDA fp16 (dry run: bf16 autocast on the CPU, tiny-test)")
        else:
            for config in FP16_CONFIGS:
                args += ["--config", config]
            args += ["--device", "cuda"]
        steps.append(Step("fp16", python_argv(*args), 120, "fp16/bf16 distance from fp32, overflowing layers"))
    if "bench" in plan.steps:
        configs = DRY_BENCH if plan.dry else BENCH_CONFIGS
        timeouts = (240,) if plan.dry else (120, 150, 180)
        for (name, config, size), timeout in zip(configs, timeouts, strict=True):
            steps.append(_bench_step(plan, name, config, size, timeout))
        if plan.dry:
            skipped.append("bench: CUDA rows, fp16 and torch.compile (dry run: tiny-test on the CPU, fp32 and bf16)")
    return steps, skipped


def _bench_summary(result: dict[str, Any]) -> dict[str, Any]:
    keep = ("id", "backend", "variant", "precision", "shots", "status", "reason", "latency_ms", "stages_ms",
            "peak_fraction", "achieved_tflops_engine")
    return {"config": result.get("source", {}).get("config"), "image_size": result.get("source", {}).get("image_size"),
            "rows": [{k: r.get(k) for k in keep} for r in result.get("rows", [])]}


def run_check(plan: CheckPlan, echo: Any = None) -> tuple[int, dict[str, Any]]:
    """Run every planned step, write the results to ``plan.out``; (exit status, summary)."""
    from fgad.bench.device import device_record, git_commit

    say = echo or (lambda line: print(line, flush=True))
    plan.work.mkdir(parents=True, exist_ok=True)
    plan.out.mkdir(parents=True, exist_ok=True)
    log_path = plan.work / res.LOG_FILE
    steps, skipped = plan_steps(plan)
    deadline = time.monotonic() + plan.budget_s
    site = str(plan.site) if any(s.name == "install" for s in steps) else None
    env = child_env(site, str(REPO / "src"), [("FGAD_CUDA_LIB", str(plan.lib))] if not plan.dry else [])
    env.setdefault("OMP_NUM_THREADS", str(min(8, os.cpu_count() or 1)))
    git = git_commit(REPO)
    if not git.get("commit") and os.environ.get("GPU_CHECK_COMMIT"):
        git = {"commit": os.environ["GPU_CHECK_COMMIT"], "dirty": None, "from": "GPU_CHECK_COMMIT"}
    summary: dict[str, Any] = {"schema": "fgad-gpu-check/1", "dry": plan.dry,
                               "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                               "git": git, "budget_s": plan.budget_s, "device": device_record("cpu" if plan.dry
                                                                                               else "cuda"),
                               "skipped_parts": skipped, "steps": []}
    gpu = summary["device"].get("gpu")
    say(f"gpu-check{' (DRY RUN: CUDA steps skipped)' if plan.dry else ''}: {len(steps)} steps, budget "
        f"{plan.budget_s:.0f} s, GPU {gpu['name'] if gpu else 'none'}, commit {git.get('commit')}")
    for line in skipped:
        say(f"  skipped: {line}")
    results: list[StepResult] = []
    with open(log_path, "w", encoding="utf-8") as log:
        for step in steps:
            left = deadline - time.monotonic()
            timed = Step(step.name, step.argv, min(step.timeout_s, max(0.0, left)), step.what)
            result = run_step(timed, env=env, log=log, echo=say, cwd=str(REPO))
            if result.status == "skipped":
                result = StepResult(step.name, "timeout", 0.0, reason="not started: the check's budget was spent")
            why = f": {result.reason}" if result.reason else ""
            say(f"[{step.name}] -> {result.status} in {result.seconds:.1f} s{why}")
            results.append(result)
    summary["steps"] = [r.to_dict() for r in results]
    junit = plan.work / "gpu-tests.xml"
    if junit.is_file():
        summary["gpu_tests"] = res.junit_counts(junit)
    for name in ("kernels", "knn", "fp16"):
        summary[name] = res.load_json(plan.work / f"{name}.json")
    files = {f"{name}.json": plan.work / f"{name}.json" for name in ("kernels", "knn", "fp16")}
    summary["bench"] = {}
    for name, _config, _size in (DRY_BENCH if plan.dry else BENCH_CONFIGS):
        bench = res.load_json(plan.work / f"bench-{name}" / "bench.json")
        if bench is not None:
            summary["bench"][name] = _bench_summary(bench)
            files[f"bench-{name}.json"] = plan.work / f"bench-{name}" / "bench.json"
    summary["failures"] = res.correctness_failures(summary)
    table = res.summary_table(summary)
    say("")
    say(table)
    with open(log_path, "a", encoding="utf-8") as log:
        log.write("\n" + table + "\n")
    files[res.LOG_FILE] = log_path
    written = res.copy_results(files, plan.out, summary)
    say(f"wrote {len(written)} files to {plan.out}: {', '.join(p.name for p in written)}")
    return (1 if summary["failures"] else 0), summary


def _steps(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, ...]:
    if value is None:
        return STEP_NAMES
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    bad = [n for n in names if n not in STEP_NAMES]
    if bad or not names:
        raise click.BadParameter(f"choose from {','.join(STEP_NAMES)}, got {value!r}")
    return names


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Results folder (default: $OUT, else gpu_check_out).")
@click.option("--dry", is_flag=True, default=False, help="CPU dry run: the same steps, CUDA parts skipped.")
@click.option("--wheels", type=click.Path(path_type=Path, file_okay=False), default=Path(".gpu-wheels"),
              show_default=True, help="Carried wheels to install into the work folder (make gpu-wheels).")
@click.option("--work", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Scratch folder (default: a new temporary one).")
@click.option("--steps", "step_names", default=None, callback=_steps,
              help=f"Comma-separated subset of {','.join(STEP_NAMES)} (default: all).")
@click.option("--budget", "budget_s", type=click.FloatRange(min=1), default=DEFAULT_BUDGET_S, show_default=True,
              help="Seconds for all steps together.")
@click.option("--frames", type=click.IntRange(min=1), default=20, show_default=True, help="fgad-bench frames per row.")
def main(out_dir: Path | None, dry: bool, wheels: Path, work: Path | None, step_names: tuple[str, ...],
         budget_s: float, frames: int) -> None:
    """Run the GPU check (or its CPU dry run); exit 1 on any correctness failure or unfinished step."""
    dry = dry or os.environ.get("GPU_CHECK_DRY", "") not in ("", "0")
    out = out_dir or Path(os.environ.get("OUT") or "gpu_check_out")
    scratch = work or Path(tempfile.mkdtemp(prefix="fgad-gpu-check-"))
    plan = CheckPlan(out=out.resolve(), work=scratch.resolve(), wheels=wheels.resolve(), dry=dry, steps=step_names,
                     budget_s=budget_s, frames=frames)
    code, _summary = run_check(plan)
    sys.exit(code)


if __name__ == "__main__":
    main()
