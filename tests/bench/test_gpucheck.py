"""make gpu-check: its pieces (wheels and the carry limit, steps under timeouts, the verdict, the result files)
and its CPU dry run end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fgad.bench.gpucheck import results as res
from fgad.bench.gpucheck import wheels
from fgad.bench.gpucheck.main import BENCH_CONFIGS, CheckPlan, plan_steps
from fgad.bench.gpucheck.steps import Step, python_argv, run_step

REPO = Path(__file__).resolve().parents[2]
MIB = 2**20


# ------------------------------------------------------------------ wheels and the carry limit


def test_every_carried_package_is_pinned() -> None:
    pins = wheels.pinned(wheels.PACKAGES, (REPO / "constraints.txt").read_text())
    assert [p.split("==")[0] for p in pins] == list(wheels.PACKAGES)
    assert "open_clip_torch==3.3.0" in pins and all("==" in p and p.split("==")[1] for p in pins)
    with pytest.raises(ValueError, match="no pin for faiss-cpu"):
        wheels.pinned(("faiss-cpu",), "numpy==2.0\n# faiss-cpu==1.0 is only a comment\n")


def test_download_command_asks_for_binary_wheels_of_the_gpu_machine(tmp_path: Path) -> None:
    cmd = wheels.download_command(tmp_path, ["ftfy==6.3.1"], python="py")
    assert cmd[:4] == ["py", "-m", "pip", "download"]
    assert {"--no-deps", "--only-binary=:all:"} <= set(cmd) and cmd[cmd.index("--python-version") + 1] == "3.12"
    assert [cmd[i + 1] for i, c in enumerate(cmd) if c == "--platform"] == list(wheels.PLATFORMS)
    assert cmd[-1] == "ftfy==6.3.1"


def _sparse(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size)


def test_size_limits(tmp_path: Path) -> None:
    _sparse(tmp_path / "a-1-py3-none-any.whl", 30 * MIB)
    fits = wheels.SizeReport({"a.whl": 30 * MIB}, worktree=20 * MIB)
    assert fits.problems() == [] and fits.carry_total == 50 * MIB
    report = wheels.check_sizes(tmp_path)
    assert report.wheels_total == 30 * MIB and report.worktree is None and report.problems() == []
    _sparse(tmp_path / "b-1-py3-none-any.whl", 31 * MIB)
    over = wheels.check_sizes(tmp_path).problems()
    assert len(over) == 1 and "61.0 MiB, over the 60 MiB" in over[0]
    carry = wheels.SizeReport({"a.whl": 50 * MIB}, worktree=15 * MIB).problems()
    assert len(carry) == 1 and "over the 64 MiB a device call carries" in carry[0]
    assert wheels.missing_packages(tmp_path, ("a", "b", "open_clip_torch")) == ["open_clip_torch"]


def test_the_worktree_counts_tracked_and_untracked_files_only() -> None:
    size = wheels.worktree_bytes(REPO)
    assert 0 < size < wheels.CARRY_LIMIT - wheels.WHEELS_LIMIT, "the checkout leaves no room for the wheels"


def test_fetched_wheels_fit() -> None:
    folder = REPO / ".gpu-wheels"
    if not any(folder.glob("*.whl")):
        pytest.skip("no .gpu-wheels here: make gpu-wheels fetches them (needs PyPI)")
    report = wheels.check_sizes(folder, REPO)
    assert report.problems() == [] and wheels.missing_packages(folder) == []


# ------------------------------------------------------------------ steps under a timeout


def test_step_streams_output_and_reports_failure(tmp_path: Path) -> None:
    lines: list[str] = []
    with open(tmp_path / "log", "w") as log:
        ok = run_step(Step("hello", python_argv("-c", "print('one'); print('two')"), 30), log=log, echo=lines.append)
        bad = run_step(Step("bad", python_argv("-c", "import sys; print('oops'); sys.exit(3)"), 30), log=log,
                       echo=lines.append)
    assert ok.status == "ok" and ok.tail == ["one", "two"] and "[hello] two" in lines
    assert bad.status == "failed" and bad.returncode == 3 and bad.tail == ["oops"]
    assert "oops" in (tmp_path / "log").read_text()
    assert run_step(Step("none", ("python3", "-c", "pass"), 0)).status == "skipped"


def test_step_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    marker = tmp_path / "child.pid"
    code = ("import subprocess, sys, time; "
            f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            f"open({str(marker)!r}, 'w').write(str(p.pid)); print('started', flush=True); time.sleep(60)")
    start = time.monotonic()
    result = run_step(Step("sleepy", python_argv("-c", code), 3), echo=lambda _line: None)
    assert result.status == "timeout" and "killed" in (result.reason or "")
    assert time.monotonic() - start < 20
    stat = Path(f"/proc/{int(marker.read_text())}/stat")
    time.sleep(0.5)
    # the grandchild went with it: gone, or a zombie waiting for its new parent to reap it
    assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")


# ------------------------------------------------------------------ the verdict and the files


def _summary(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"dry": False, "steps": [{"name": "knn", "status": "ok", "seconds": 1.0, "reason": None}],
                            "gpu_tests": {"tests": 40, "failures": 0, "errors": 0, "skipped": 0},
                            "kernels": {"rows": [{"label": "7x7 cuda tiled", "dtype": "fp16", "ms": 0.1,
                                                  "error": 1e-3, "bound": 1e-2}]},
                            "knn": {"rows": []}, "bench": {}}
    base.update(over)
    return base


def test_correctness_failures() -> None:
    assert res.correctness_failures(_summary()) == []
    steps = [{"name": "build", "status": "failed", "seconds": 2.0, "reason": "exit status 1"},
             {"name": "bench-vitl14-518", "status": "timeout", "seconds": 9.0, "reason": "ran past"}]
    assert len(res.correctness_failures(_summary(steps=steps))) == 2
    over = {"rows": [{"label": "7x7 cuda direct", "dtype": "fp16", "ms": 0.1, "error": 0.5, "bound": 1e-2}]}
    assert res.correctness_failures(_summary(kernels=over)) == ["kernel: 7x7 cuda direct: 0.5 > bound 0.01"]
    skipped = {"tests": 40, "failures": 0, "errors": 0, "skipped": 40}
    assert "skipped on a GPU machine" in res.correctness_failures(_summary(gpu_tests=skipped))[0]
    assert res.correctness_failures(_summary(gpu_tests=skipped, dry=True)) == []  # every case skips without CUDA
    rows = [{"id": "torch-compile-fp16-0shot", "variant": "compile", "status": "failed", "reason": "inductor"},
            {"id": "torch-eager-fp16-0shot", "variant": "eager", "status": "failed", "reason": "dtype mismatch"}]
    failures = res.correctness_failures(_summary(bench={"vitb16-224": {"rows": rows}}))
    assert failures == ["bench vitb16-224: torch-eager-fp16-0shot failed: dtype mismatch"]


def test_summary_table_says_pass_or_fail() -> None:
    ok = res.summary_table({**_summary(), "failures": []})
    assert "RESULT: PASS" in ok and "7x7 cuda tiled" in ok and "GPU tests: 40 run" in ok
    bad = res.summary_table({**_summary(), "failures": ["kernel: x"], "skipped_parts": ["build: dry"]})
    assert "RESULT: FAIL" in bad and "  - kernel: x" in bad and "Not done in this run:" in bad


def test_copy_results_keeps_to_eight_files(tmp_path: Path) -> None:
    sources = {}
    for i in range(7):
        sources[f"f{i}.json"] = tmp_path / f"src{i}.json"
        sources[f"f{i}.json"].write_text("{}")
    sources["absent.json"] = tmp_path / "absent.json"
    written = res.copy_results(sources, tmp_path / "out", {"x": 1})
    assert len(written) == 8 and json.loads((tmp_path / "out" / res.SUMMARY_FILE).read_text()) == {"x": 1}
    (tmp_path / "src7.json").write_text("{}")
    with pytest.raises(ValueError, match="only 8 come back"):
        res.copy_results({**sources, "f7.json": tmp_path / "src7.json"}, tmp_path / "out2", {})


def test_junit_counts(tmp_path: Path) -> None:
    path = tmp_path / "r.xml"
    path.write_text('<testsuites><testsuite name="pytest" tests="5" failures="1" errors="0" skipped="2">'
                    "</testsuite></testsuites>")
    assert res.junit_counts(path) == {"tests": 5, "failures": 1, "errors": 0, "skipped": 2}


def test_gpu_plan_runs_every_step_on_cuda(tmp_path: Path) -> None:
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "a-1-py3-none-any.whl").write_text("x")
    plan = CheckPlan(out=tmp_path / "out", work=tmp_path / "work", wheels=tmp_path / "w", dry=False)
    steps, skipped = plan_steps(plan)
    names = [s.name for s in steps]
    assert names == ["install", "build", "gpu-tests", "kernels", "knn", "fp16",
                     *(f"bench-{n}" for n, _c, _s in BENCH_CONFIGS)] and skipped == []
    bench = {s.name: " ".join(s.argv) for s in steps}
    assert "--device cuda --precisions fp32,fp16,bf16 --compile-precisions fp16" in bench["bench-vitl14-518"]
    assert "--image-size 518" in bench["bench-vitl14-518"] and "--mdci-shapes" in bench["kernels"]
    # bench json per config + kernels, knn, fp16, log, summary: what comes back from $OUT
    assert len(BENCH_CONFIGS) + 5 <= res.MAX_OUT_FILES
    dry_steps, dry_skipped = plan_steps(CheckPlan(out=tmp_path, work=tmp_path, wheels=tmp_path / "none", dry=True))
    assert "build" not in [s.name for s in dry_steps] and any(s.startswith("build:") for s in dry_skipped)
    assert all("--device cuda" not in " ".join(s.argv) for s in dry_steps)


def _check(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-u", "-m", "fgad.bench.gpucheck", "--out", str(tmp_path / "out"),
                           "--work", str(tmp_path / "work"), "--wheels", str(tmp_path / "no-wheels"), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO / "src"), **(env or {})})


def test_dry_run_without_steps_writes_its_summary(tmp_path: Path) -> None:
    proc = _check(tmp_path, "--steps", "install,build", env={"GPU_CHECK_DRY": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "DRY RUN: CUDA steps skipped" in proc.stdout and "RESULT: PASS" in proc.stdout
    summary = json.loads((tmp_path / "out" / res.SUMMARY_FILE).read_text())
    assert summary["dry"] is True and any("build:" in s for s in summary["skipped_parts"])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [res.LOG_FILE, res.SUMMARY_FILE]


@pytest.mark.slow
def test_make_gpu_check_dry_runs_every_step_on_the_cpu(tmp_path: Path) -> None:
    """`make gpu-check GPU_CHECK_DRY=1`: every step's code on the CPU (about a minute on 2 cores)."""
    from fgad.bench.gpucheck.publish import publish

    out = tmp_path / "out"
    proc = subprocess.run(["make", "-s", "gpu-check", "GPU_CHECK_DRY=1", f"GPU_CHECK_PY={sys.executable}",
                           f"GPU_WHEELS={tmp_path / 'no-wheels'}"], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "OUT": str(out)})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "RESULT: PASS" in proc.stdout and "Not done in this run:" in proc.stdout
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["bench-tiny.json", "fp16.json", "kernels.json", "knn.json", res.LOG_FILE,
                            res.SUMMARY_FILE])
    summary = json.loads((out / res.SUMMARY_FILE).read_text())
    assert [s["status"] for s in summary["steps"]] == ["ok"] * 5
    assert summary["gpu_tests"]["tests"] > 0 and summary["gpu_tests"]["skipped"] == summary["gpu_tests"]["tests"]
    assert {r["dtype"] for r in summary["knn"]["rows"]} == {"fp32", "bf16"}
    assert summary["fp16"]["configs"][0]["distances"]["bf16 4-shot"]["non_finite"] == 0
    bench = {r["id"]: r for r in summary["bench"]["tiny"]["rows"]}
    assert bench["torch-eager-bf16-4shot"]["status"] == "ok" and bench["torch-eager-fp32-0shot"]["status"] == "ok"

    with pytest.raises(Exception, match="dry run"):
        publish(out, tmp_path / "results")
    summary["dry"] = False  # as if it had come from the GPU machine
    (out / res.SUMMARY_FILE).write_text(json.dumps(summary))
    publish(out, tmp_path / "results")
    readme = (tmp_path / "results" / "README.md").read_text()
    assert "<!-- h200/tiny/bench.json -->" in readme and "make gpu-check` run of" in readme
    assert "<!-- h200/gpu_check.md -->" in readme


def test_layer_recorder_names_layers_over_the_fp16_range_per_precision() -> None:
    import torch

    from fgad.bench.gpucheck.fp16 import FP16_MAX, LayerRecorder, _distances

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight.fill_(1e5)
        model[0].bias.zero_()
    recorder = LayerRecorder()
    recorder.attach(model)
    recorder.attach(model)  # a second runner sharing the modules: hooked once
    with torch.no_grad():
        model(torch.ones(1, 4))
        recorder.current = "bf16"
        model(torch.full((1, 4), float("inf")))
    recorder.close()
    fp32 = recorder.max_abs["fp32"]
    assert set(fp32) == {"0", "1", "2"} and fp32["0"] == pytest.approx(4e5)
    over = {n for n, v in fp32.items() if v > FP16_MAX}
    assert {"0", "1"} <= over  # the Linear and the ReLU that passes its 4e5 on
    assert "0" in recorder.non_finite["bf16"] and "fp32" not in recorder.non_finite
    ref = (torch.zeros(1, 2, 2), torch.zeros(1))
    low = (torch.tensor([[[0.0, 0.5], [float("nan"), 0.0]]]), torch.tensor([0.25]))
    d = _distances(ref, low)
    assert d["non_finite"] == 1 and d["score_max_abs"] == pytest.approx(0.25) and d["map_max_abs"] == float("inf")
