"""`make demo`, the main job on the embedded default, runs end to end and writes what it promises."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from fgad.cli.demo import main


# About two minutes on 2 CPU cores: the real demo (its data sizes are fixed by fgad-demo, not by this test).
@pytest.mark.slow
def test_demo_runs_the_whole_pipeline(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    res = CliRunner().invoke(main, ["--out", str(out), "--epochs", "1", "--no-progress"])
    assert res.exit_code == 0, res.output
    for step in ("[1/4]", "[2/4]", "[3/4]", "[4/4]"):
        assert step in res.output
    assert "| mesh |" in res.output
    for shots in (0, 2):
        metrics = json.loads((out / f"eval-{shots}shot" / "metrics.json").read_text())
        assert set(metrics["per_class"]) == {"mesh"}
        assert list((out / f"eval-{shots}shot" / "overlays" / "mesh").glob("*.png"))
    manifest = json.loads((out / "bundle" / "manifest.json").read_text())
    assert manifest["class_name"] == "mesh" and manifest["parity"]["max_abs_diff_vl_map"] < 1e-4
    lines = (out / "run" / "results.jsonl").read_text().splitlines()
    test_images = list((out / "data" / "target" / "mesh" / "test").rglob("*.png"))
    assert len(lines) == len(test_images) == len(list((out / "run" / "overlays").glob("*.png")))
    assert all(0.0 <= json.loads(line)["score"] <= 1.0 for line in lines)
