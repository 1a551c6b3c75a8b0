"""fgad-train / fgad-eval end to end on a tiny synthetic dataset, and their error messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from fgad.cli.eval import main as eval_main
from fgad.cli.train import main as train_main
from fgad.data.synthetic import make_synthetic_dataset


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("cli")
    aux = make_synthetic_dataset(base / "aux", classes=("tile",), n_train_good=2, n_test_good=2,
                                 n_test_defect=1, image_size=112, seed=5)
    target = make_synthetic_dataset(base / "target", classes=("disc",), n_train_good=3, n_test_good=3,
                                    n_test_defect=1, image_size=112, seed=6)
    return aux, target


def test_train_then_eval_writes_metrics_overlays_and_predictions(roots: tuple[Path, Path], tmp_path: Path) -> None:
    aux, target = roots
    runner = CliRunner()
    ckpt = tmp_path / "ckpt"
    res = runner.invoke(train_main, ["--config", "tiny-test", "--data", str(aux), "--out", str(ckpt),
                                     "--epochs-phase1", "1", "--epochs-phase2", "1", "--bank", "synthetic",
                                     "--no-progress"])
    assert res.exit_code == 0, res.output
    assert (ckpt / "weights.safetensors").is_file() and (ckpt / "config.json").is_file()

    out = tmp_path / "eval"
    res = runner.invoke(eval_main, ["--checkpoint", str(ckpt), "--data", str(target), "--out", str(out),
                                    "--shots", "2", "--overlays", "3", "--no-progress"])
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["per_class"]) == {"disc"}
    for key in ("image_auroc", "pixel_auroc", "aupro", "image_f1_max", "pixel_f1_max"):
        assert 0.0 <= metrics["mean"][key] <= 1.0, key
    assert len(metrics["classes"]["disc"]["reference_images"]) == 2
    assert "| disc |" in (out / "metrics.md").read_text()
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == metrics["classes"]["disc"]["images"] == 3 + 3
    assert all(p["best_description"] for p in predictions)
    overlays = list((out / "overlays" / "disc").glob("*.png"))
    assert len(overlays) == 3


def test_eval_of_an_untrained_config_zero_shot(roots: tuple[Path, Path], tmp_path: Path) -> None:
    _, target = roots
    res = CliRunner().invoke(eval_main, ["--config", "tiny-test", "--pretrained", "none", "--data", str(target),
                                         "--out", str(tmp_path), "--overlays", "0", "--no-progress"])
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["settings"]["shots"] == 0 and "reference_images" not in metrics["classes"]["disc"]


def test_a_product_without_descriptions_gets_a_clear_error(tmp_path: Path) -> None:
    root = make_synthetic_dataset(tmp_path / "d", classes=("disc",), n_train_good=1, n_test_good=1,
                                  n_test_defect=1, image_size=112, seed=1)
    (root / "disc").rename(root / "widget")
    res = CliRunner().invoke(eval_main, ["--config", "tiny-test", "--data", str(root), "--out", str(tmp_path / "o"),
                                         "--no-progress"])
    assert res.exit_code == 1
    assert "widget" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--config", "no-such-config"], "no config named 'no-such-config'"),
        (["--config", "tiny-test", "--pretrained", "/nonexistent/weights.bin"], "does not exist"),
    ],
)
def test_train_errors_are_one_clear_line(
    roots: tuple[Path, Path], tmp_path: Path, args: list[str], needle: str
) -> None:
    aux, _ = roots
    res = CliRunner().invoke(train_main, [*args, "--data", str(aux), "--out", str(tmp_path / "x"), "--no-progress"])
    assert res.exit_code == 1
    assert needle in res.output
    assert "Traceback" not in res.output


def test_missing_data_root_is_reported(tmp_path: Path) -> None:
    res = CliRunner().invoke(train_main, ["--config", "tiny-test", "--data", str(tmp_path / "nowhere"),
                                          "--out", str(tmp_path / "x"), "--no-progress"])
    assert res.exit_code == 1
    assert "nowhere" in res.output


def test_eval_needs_exactly_one_model_source(roots: tuple[Path, Path], tmp_path: Path) -> None:
    _, target = roots
    res = CliRunner().invoke(eval_main, ["--data", str(target), "--out", str(tmp_path)])
    assert res.exit_code == 2 and "exactly one of --checkpoint or --config" in res.output


def test_train_refuses_a_crafted_state_pt_in_one_line(roots: tuple[Path, Path], tmp_path: Path) -> None:
    """fgad-train resumes by default: someone else's state.pt in --out must not run code."""
    import torch

    from tests.backbone.test_checkpoint import _state, _WritesAFile

    aux, _ = roots
    out = tmp_path / "someone-elses-run"
    out.mkdir()
    marker = tmp_path / "pwned.txt"
    torch.save(_state(_WritesAFile(marker)), out / "state.pt")
    res = CliRunner().invoke(train_main, ["--config", "tiny-test", "--data", str(aux), "--out", str(out),
                                          "--epochs-phase1", "1", "--epochs-phase2", "0", "--bank", "synthetic",
                                          "--no-progress"])
    assert res.exit_code == 1, res.output
    assert not marker.exists()
    assert "Traceback" not in res.output
    error = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and str(out / "state.pt") in error[0] and "refused" in error[0]


def test_eval_refuses_an_unreadable_reference_image_in_one_line(tmp_path: Path) -> None:
    root = make_synthetic_dataset(tmp_path / "d", classes=("disc",), n_train_good=3, n_test_good=1,
                                  n_test_defect=1, image_size=112, seed=2)
    broken = sorted((root / "disc" / "train" / "good").glob("*.png"))[1]
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    res = CliRunner().invoke(eval_main, ["--config", "tiny-test", "--pretrained", "none", "--data", str(root),
                                         "--out", str(tmp_path / "o"), "--shots", "3", "--overlays", "0",
                                         "--no-progress"])
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    error = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and str(broken) in error[0] and "1 of 3 reference images cannot be read" in error[0]
