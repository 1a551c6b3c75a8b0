"""Benchmark reports (fgad.bench.report): JSON, markdown tables, the PNG chart and the collected README."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from fgad.bench import report
from fgad.bench.report import (
    CHART_FILE,
    JSON_FILE,
    MARKDOWN_FILE,
    bar_chart,
    collect,
    load_result,
    markdown_report,
    rows_table,
    write_results,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: The reason chart tests skip where matplotlib is not installed.
PLOT_EXTRA = "PNG charts need the plot extra (matplotlib): pip install 'fgad[plot]'"


def _stats(median: float) -> dict[str, Any]:
    return {"median": median, "p90": median * 1.1, "p99": median * 1.2, "mean": median, "min": median,
            "max": median * 1.2, "n": 3}


def _row(backend: str, variant: str, precision: str, shots: int, median: float | None,
         reason: str | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {"id": f"{backend}-{variant}-{precision}-{shots}shot", "backend": backend,
                           "variant": variant, "precision": precision, "shots": shots}
    if median is None:
        return {**row, "status": "skipped", "reason": reason}
    stages = {"decode": _stats(1.0), "engine": _stats(median - 3.0), "post": _stats(2.0)}
    return {**row, "status": "ok", "reason": None, "frames": 3, "batch": 1, "latency_ms": _stats(median),
            "fps": 1000.0 / median, "stages_ms": stages, "peak_rss_mb": 512.0, "peak_fraction": {"engine": 0.0123},
            "speedup": {"vs_torch-eager-fp32": 40.0 / median}}


def _result(config: str = "tiny-test") -> dict[str, Any]:
    return {
        "schema": "fgad-bench/1",
        "created": "2026-01-01T00:00:00Z",
        "command": f"fgad-bench --config {config} --out x",
        "git": {"commit": "0123456789abcdef" * 2 + "01234567", "dirty": False},
        "source": {"mode": "config", "config": config, "model": "fgad-tiny", "image_size": 112,
                   "weights": "random", "workload": {"frames": "synthetic", "references": "4 good"}},
        "settings": {"frames": 3, "warmup": 1, "batch": 1},
        "device": {"target": "cpu", "python": "3.11", "cpu": {"model": "Test CPU", "cores": 2, "simd": "avx2"},
                   "gpu": None, "libraries": {"numpy": "2.0", "torch": None}},
        "peaks": {"fp32": {"flops_per_s": 1.5e11, "source": "assumption: test"},
                  "int8": {"flops_per_s": None, "source": "none here"}},
        "flops": {"0": {"encoder": 3e9, "heads": 1e8, "mdci": 2e9, "text": 0, "fewshot": 0, "total": 5.1e9}},
        "rows": [_row("torch", "eager", "fp32", 0, 40.0), _row("ort", "session", "fp32", 0, 10.0),
                 _row("ort", "session", "int8", 0, None, "int8: not available (fgad.calibration missing)")],
        "notes": ["a note"],
    }


def test_rows_table_has_one_line_per_measured_row() -> None:
    table = rows_table(_result())
    lines = table.strip().splitlines()
    assert len(lines) == 2 + 2  # header, rule, two measured rows (the skipped one is listed elsewhere)
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert all(len(line.strip("|").split("|")) == len(header) for line in lines)
    ort = next(line for line in lines if line.startswith("| ort session fp32"))
    cells = [c.strip() for c in ort.strip("|").split("|")]
    assert cells[header.index("median ms")] == "10.0"
    assert cells[header.index("vs torch eager")] == "4.00x"  # 40 ms / 10 ms
    assert cells[header.index("engine % peak")] == "1.23 %"
    assert "overlay ms" not in header  # no row timed it


def test_markdown_report_sections() -> None:
    text = markdown_report(_result(), chart="bench.png")
    assert text.startswith("# tiny-test (fgad-tiny, 112 px), cpu")
    assert "    fgad-bench --config tiny-test --out x" in text
    assert "commit 0123456789" in text
    assert "![latency by stage](bench.png)" in text
    assert "| 0 | 3.000 | 0.100 | 2.000 | 0.000 | 0.000 | 5.100 |" in text
    assert "int8: not available (fgad.calibration missing)" in text
    assert "fp32: 0.150 TFLOP/s (assumption: test)" in text
    assert "- a note" in text


def test_bar_chart_is_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason=PLOT_EXTRA)
    path = bar_chart(_result(), tmp_path / "chart.png")
    assert path.read_bytes()[:8] == PNG_MAGIC
    empty = _result()
    empty["rows"] = [r for r in empty["rows"] if r["status"] != "ok"]
    with pytest.raises(ValueError, match="no measured rows"):
        bar_chart(empty, tmp_path / "none.png")


def test_bar_chart_names_the_extra_without_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install 'fgad\[plot\]'"):
        bar_chart(_result(), tmp_path / "chart.png")
    assert not (tmp_path / "chart.png").exists()


def test_write_results_with_the_chart(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason=PLOT_EXTRA)
    paths = write_results(_result(), tmp_path / "out")
    assert {p.name for p in paths.values()} == {JSON_FILE, MARKDOWN_FILE, CHART_FILE}
    assert load_result(paths["json"])["rows"][1]["latency_ms"]["median"] == 10.0
    assert "![latency by stage](bench.png)" in paths["markdown"].read_text()


def test_write_results_without_the_chart_and_load(tmp_path: Path) -> None:
    no_chart = write_results(_result(), tmp_path / "plain", chart=False)
    assert "chart" not in no_chart and not (tmp_path / "plain" / CHART_FILE).exists()
    assert load_result(no_chart["json"])["rows"][1]["latency_ms"]["median"] == 10.0
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"config": "x"}))
    with pytest.raises(ValueError, match="not an fgad-bench result"):
        load_result(other)


def test_collect_builds_the_readme(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason=PLOT_EXTRA)  # one of the collected results has its chart
    root = tmp_path / "results"
    write_results(_result("tiny-test"), root / "cpu" / "tiny")
    write_results(_result("vitb16-224"), root / "cpu" / "vitb16", chart=False)
    (root / "cpu" / "README.md").write_text("older results\n")
    (root / "cpu" / "acc").mkdir()
    (root / "cpu" / "acc" / "accuracy.md").write_text("# Accuracy: tiny\n\n| class | 0-shot |\n|:---|---:|\n")
    (root / "cpu" / "vitb16" / "NOTE.md").write_text("> fp32 only: int8 ran out of memory.\n")
    (root / "cpu" / "int8").mkdir()
    (root / "cpu" / "int8" / "int8_accuracy.md").write_text("# INT8 vs fp32\n\n| | fp32 |\n")
    (root / "cpu" / "soak").mkdir()
    (root / "cpu" / "soak" / "soak.md").write_text("# Soak\n\n![RSS over frames](soak.png)\n")
    text = collect(root)
    assert "## Soak\n\n![RSS over frames](cpu/soak/soak.png)" in text  # its chart link seen from the README
    assert text.startswith("# Benchmark results")
    assert "## vitb16-224 (fgad-tiny, 112 px), cpu\n\n> fp32 only: int8 ran out of memory.\n" in text
    assert "> fp32 only" not in text.split("## vitb16-224")[0]  # the note stays in its own section
    assert "## INT8 vs fp32" in text and "written by `benchmarks/int8_accuracy.py`" in text
    assert "## tiny-test (fgad-tiny, 112 px), cpu" in text and "## vitb16-224 (fgad-tiny, 112 px), cpu" in text
    assert "![latency by stage](cpu/tiny/bench.png)" in text
    assert "cpu/vitb16/bench.png" not in text  # no chart there
    assert "- [cpu/README.md](cpu/README.md)" in text
    assert "## Accuracy: tiny\n\n| class | 0-shot |" in text and "(from [cpu/acc/accuracy.md]" in text
    assert "## GPU: not measured" in text  # both results ran on the CPU
    result = CliRunner().invoke(report.main, ["--collect", str(root)])
    assert result.exit_code == 0, result.output
    assert (root / "README.md").read_text() == text
    gpu = _result("gpu-run")
    gpu["device"]["target"] = "cuda"
    write_results(gpu, root / "h100" / "tiny", chart=False)
    assert "## GPU: not measured" not in collect(root)


# ------------------------------------------------------------------ benchmarks/accuracy.py


def _accuracy_module() -> Any:
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "accuracy.py"
    spec = importlib.util.spec_from_file_location("fgad_benchmarks_accuracy", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_accuracy_table_paper_layout() -> None:
    accuracy = _accuracy_module()
    per_shot = {
        0: {"per_class": {"a": {"image_auroc": 0.9, "pixel_auroc": 0.8, "aupro": float("nan")}},
            "mean": {"image_auroc": 0.9, "pixel_auroc": 0.8, "aupro": float("nan")}},
        4: {"per_class": {"a": {"image_auroc": 0.95, "pixel_auroc": 0.85, "aupro": 0.5},
                          "b": {"image_auroc": 0.75, "pixel_auroc": 0.65, "aupro": 0.3}},
            "mean": {"image_auroc": 0.85, "pixel_auroc": 0.75, "aupro": 0.4}},
    }
    lines = accuracy.accuracy_table(per_shot).strip().splitlines()
    assert lines[0] == "| class (I-AUROC / P-AUROC / AUPRO, %) | 0-shot | 4-shot |"
    assert lines[2] == "| a | 90.0 / 80.0 / – | 95.0 / 85.0 / 50.0 |"
    assert lines[3] == "| b | – / – / – | 75.0 / 65.0 / 30.0 |"  # not evaluated at 0 shots
    assert lines[4] == "| **mean** | 90.0 / 80.0 / – | 85.0 / 75.0 / 40.0 |"


def test_accuracy_script_on_synthetic_data(tmp_path: Path) -> None:
    from fgad.data.synthetic import make_synthetic_dataset

    accuracy = _accuracy_module()
    root = make_synthetic_dataset(tmp_path / "data", classes=("tile",), n_train_good=2, n_test_good=2,
                                  n_test_defect=1, image_size=112, seed=0)
    config = tmp_path / "tiny.yaml"
    config.write_text("base: tiny-test\nmodel:\n  prompts:\n    banks: [synthetic]\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(accuracy.main, ["--config", str(config), "--data", str(root), "--shots", "0,2",
                                                "--limit", "4", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "accuracy.json").read_text())
    assert set(record["per_shot"]) == {"0", "2"} and record["images"] == {"0": 4, "2": 4}
    assert record["weights"]["checkpoint"] is None and "random init" in record["weights"]["pretrained"]
    assert record["settings"]["limit_per_class"] == 4 and "commit" in record["git"]
    two = record["per_shot"]["2"]
    assert len(two["classes"]["tile"]["reference_images"]) == 2
    assert 0.0 <= two["mean"]["image_auroc"] <= 1.0
    table = (out / "accuracy.md").read_text()
    assert "| tile |" in table and "| **mean** |" in table and "python benchmarks/accuracy.py" in table
    assert (out / "2shot" / "metrics.json").is_file()
