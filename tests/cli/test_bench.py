"""fgad-bench end to end: a bundle without torch (fast), and the tiny model through torch and ORT (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from fgad.bench.report import CHART_FILE, JSON_FILE, MARKDOWN_FILE
from fgad.cli.bench import main
from tests.helpers.fake_bundle import make_bundle

REPO = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: The reason tests that write a chart skip where matplotlib is not installed.
PLOT_EXTRA = "PNG charts need the plot extra (matplotlib): pip install 'fgad[plot]'"
#: tiny-test with fewer heads (as tests/export/conftest.py's MINI_HEADS): the export takes seconds, not a minute
MINI_YAML = """base: tiny-test
model:
  heads:
    linear_layers: [2, 4]
    mdci_layers: [3, 4]
    mdci_kernels: [[3, 3], [1, 5]]
  fewshot:
    memory_layers: [2, 4]
"""
ROW_KEYS = {"id", "backend", "variant", "precision", "shots", "status", "reason"}
OK_KEYS = {"latency_ms", "fps", "stages_ms", "peak_rss_mb", "speedup", "peak_fraction", "frames", "batch"}


def _rows(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in result["rows"]}


def _check_schema(result: dict[str, Any]) -> None:
    assert result["schema"] == "fgad-bench/1"
    for key in ("created", "command", "git", "source", "settings", "device", "peaks", "flops", "rows", "notes"):
        assert key in result, key
    for row in result["rows"]:
        assert ROW_KEYS <= set(row), row
        if row["status"] == "ok":
            assert OK_KEYS <= set(row), row["id"]
            lat = row["latency_ms"]
            assert 0 < lat["min"] <= lat["median"] <= lat["p90"] <= lat["p99"] <= lat["max"]
            assert row["fps"] > 0
        else:
            assert row["status"] in ("skipped", "failed") and row["reason"], row


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "exactly one of --bundle or --config"),
        (["--config", "tiny-test", "--backends", "torch,onnx"], "choose from torch,ort,trt"),
        (["--config", "tiny-test", "--shots", "0,x"], "comma-separated counts"),
        (["--config", "tiny-test", "--precisions", "fp8"], "choose from fp32,fp16,bf16,int8"),
        (["--config", "tiny-test", "--compile-precisions", "fp16"], "not among --precisions fp32"),
    ],
)
def test_bad_options_are_named(tmp_path: Path, args: list[str], message: str) -> None:
    # --no-chart: without matplotlib the missing chart extra would be reported before the bad option
    result = CliRunner().invoke(main, [*args, "--no-chart", "--out", str(tmp_path / "out"), "--no-progress"])
    assert result.exit_code != 0
    assert message in result.output
    assert not (tmp_path / "out").exists()


def test_bundle_mode_runs_without_torch(tmp_path: Path) -> None:
    """A bundle is timed with torch unimportable: ORT rows measured, torch and TensorRT rows give reasons."""
    pytest.importorskip("matplotlib", reason=PLOT_EXTRA)  # the run writes its chart
    bundle = make_bundle(tmp_path / "bundle", size=32, grid=4, dim=16)
    out = tmp_path / "out"
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from fgad.cli.bench import main\n"
        f"main(['--bundle', {str(bundle.path)!r}, '--backends', 'torch,ort,trt', '--precisions', 'fp32,int8',"
        f" '--shots', '0,2', '--frames', '2', '--warmup', '1', '--out', {str(out)!r}, '--no-progress'])\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / JSON_FILE).read_text())
    _check_schema(result)
    rows = _rows(result)
    assert set(rows) == {f"{k}-{s}shot" for s in (0, 2) for k in (
        "torch-eager-fp32", "torch-compile-fp32", "torch-model-fp32", "torch-eager-int8", "ort-session-fp32",
        "ort-session-int8", "trt-engine-fp32", "trt-engine-int8")}
    assert rows["torch-eager-fp32-0shot"]["status"] == "skipped"
    assert "--config" in rows["torch-eager-fp32-0shot"]["reason"]
    trt = rows["trt-engine-fp32-2shot"]
    assert trt["status"] == "skipped" and "tensorrt" in trt["reason"]
    ort = rows["ort-session-fp32-2shot"]
    assert ort["status"] == "ok" and ort["providers"] == ["CPUExecutionProvider"]
    assert {"decode", "preprocess", "engine", "fewshot", "post", "overlay"} <= set(ort["stages_ms"])
    assert ort["speedup"]["vs_ort-fp32"] == pytest.approx(1.0)
    int8 = rows["ort-session-int8-0shot"]
    assert int8["status"] == "ok" or int8["reason"]  # measured, or the reason it was not
    assert result["flops"] == {} and any("no FLOPs" in n for n in result["notes"])  # "fake" is no known config
    assert result["source"]["class_name"] == "tile" and result["source"]["mode"] == "bundle"
    assert (out / CHART_FILE).read_bytes()[:8] == PNG_MAGIC
    assert "ort session fp32" in (out / MARKDOWN_FILE).read_text()


def test_int8_without_the_calibration_package_is_a_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fgad.bench.bundles import INT8_MISSING, int8_bundle

    monkeypatch.setitem(sys.modules, "fgad.calibration", None)
    assert int8_bundle(tmp_path / "bundle", tmp_path / "int8", None) == (None, INT8_MISSING)
    assert INT8_MISSING == "int8: not available (fgad.calibration missing)"


def test_a_failed_int8_quantization_is_a_reason_not_a_crash(tmp_path: Path) -> None:
    from fgad.bench.bundles import int8_bundle

    path, reason = int8_bundle(tmp_path / "no-bundle", tmp_path / "int8", None, method="minmax", limit=2)
    assert path is None and reason is not None
    assert reason.startswith("int8: quantization failed (exit ") and "no-bundle" in reason
    assert not (tmp_path / "int8").exists()


@pytest.mark.slow
def test_config_mode_tiny_torch_and_ort(tmp_path: Path) -> None:
    """Random tiny model -> bundle -> torch eager/model, ORT fp32/int8, 0 and 2 shots, with FLOPs and ratios."""
    pytest.importorskip("matplotlib", reason=PLOT_EXTRA)  # the run writes its chart
    config = tmp_path / "mini.yaml"
    config.write_text(MINI_YAML)
    out = tmp_path / "out"
    args = ["--config", str(config), "--backends", "torch,ort", "--precisions", "fp32,int8", "--shots", "0,2",
            "--frames", "3", "--warmup", "1", "--no-compile", "--out", str(out), "--no-progress"]
    result_cli = CliRunner().invoke(main, args)
    assert result_cli.exit_code == 0, result_cli.output
    result = json.loads((out / JSON_FILE).read_text())
    _check_schema(result)
    assert "--no-compile" in result["command"] and "--frames 3" in result["command"]
    rows = _rows(result)
    for shots in (0, 2):
        torch_row, ort_row = rows[f"torch-eager-fp32-{shots}shot"], rows[f"ort-session-fp32-{shots}shot"]
        assert torch_row["status"] == ort_row["status"] == rows[f"torch-model-fp32-{shots}shot"]["status"] == "ok"
        # the same weights and frozen text on both backends: the same scores
        assert ort_row["score_max_abs_diff_vs_torch_eager_fp32"] < 1e-4
        ratio = ort_row["speedup"]["vs_torch-eager-fp32"]
        assert ratio == pytest.approx(torch_row["latency_ms"]["median"] / ort_row["latency_ms"]["median"])
        assert 0 < ort_row["peak_fraction"]["engine"] < 1
        int8 = rows[f"ort-session-int8-{shots}shot"]
        assert int8["status"] == "ok", int8.get("reason")  # quantized in a child process by fgad-calibrate
    assert "fewshot" in rows["ort-session-fp32-2shot"]["stages_ms"]
    assert "fewshot" not in rows["torch-eager-fp32-0shot"]["stages_ms"]
    assert result["flops"]["0"]["fewshot"] == 0 < result["flops"]["2"]["fewshot"]
    assert result["flops"]["0"]["encoder"] == result["flops"]["2"]["encoder"] > 0
    assert "torch-compile-fp32-0shot" not in rows  # --no-compile plans no compile rows
    assert (out / CHART_FILE).read_bytes()[:8] == PNG_MAGIC
