"""Per-class few-shot training of FineGrainedAD on synthetic data: shots, loss, checkpoint, resume, CLIs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fgad.config import load_config
from fgad.data.synthetic import make_synthetic_dataset
from fgad.methods.finegrained.captions.schema import CaptionRecord, Entity, caption_to_dict
from fgad.methods.finegrained.checkpoint import load_finegrained_checkpoint
from fgad.methods.finegrained.evaluate import load_references
from fgad.methods.finegrained.mllp import build_mllp_texts
from fgad.methods.finegrained.model import build_finegrained
from fgad.methods.finegrained.train import parse_seed_file, select_shots, train_finegrained
from fgad.methods.registry import load_any_checkpoint

CLASS = "disc"
RECORD = CaptionRecord(
    class_name=CLASS,
    foreground="disc",
    background="dark",
    entities=(
        Entity(name="hub", number="one", location="center", direction="", color="gray", texture="smooth",
               shape="round", caption="A dark gray hub sits in the center."),
        Entity(name="rings", number="many", location="throughout", direction="", color="silver",
               texture="metallic", shape="ring-shaped", caption="Concentric silver rings run throughout the disc."),
    ),
    relation="The rings surround the hub.",
    caption="A machined disc with concentric rings and a hub on a dark background.",
)
DEFECTS = ("with a scratch", "with a hole")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fgad_data")
    return make_synthetic_dataset(root, classes=(CLASS,), n_train_good=5, n_test_good=2, n_test_defect=1,
                                  image_size=112, seed=0)


def _config(epochs: int = 6):  # noqa: ANN202 - Config
    return load_config("fgad-tiny", {"model": {"finegrained": {"epochs": epochs}}})


def _model(config):  # noqa: ANN001, ANN202
    return build_finegrained(config.model, build_mllp_texts(RECORD, DEFECTS, seed=config.model.finegrained.seed))


def test_seed_file_and_seeded_shot_choice(tmp_path: Path) -> None:
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("#1: 7\n#2: 3 11\n# a comment\n#4: 0, 5, 9, 12\n")
    assert parse_seed_file(seeds, 2) == [3, 11]
    assert parse_seed_file(seeds, 4) == [0, 5, 9, 12]
    with pytest.raises(ValueError, match="no line '#8:"):
        parse_seed_file(seeds, 8)
    assert select_shots(20, 4, seed=0, seed_file=seeds) == [0, 5, 9, 12]
    with pytest.raises(ValueError, match="distinct and in"):
        select_shots(10, 4, seed=0, seed_file=seeds)
    a = select_shots(50, 4, seed=111)
    assert a == select_shots(50, 4, seed=111) and a == sorted(a) and len(set(a)) == 4
    assert a == sorted(np.random.default_rng(111).choice(50, size=4, replace=False).tolist())


def test_training_lowers_the_loss_and_checkpoints(data_root: Path, tmp_path: Path) -> None:
    config = _config(epochs=6)
    model = _model(config)
    before = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    result = train_finegrained(model, config, data_root, shots=2, out_dir=tmp_path / "ck", progress=False)
    losses = [r["loss"] for r in result.losses]
    assert len(losses) == 6 and losses[-1] < losses[0]
    assert all(r["seconds"] > 0 for r in result.losses)
    lines = [json.loads(line) for line in (tmp_path / "ck" / "train_log.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == list(range(1, 7))
    assert lines[0]["lr"] == pytest.approx(config.model.finegrained.lr)
    after = model.trainable_state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert len(result.shots) == 2 and all(Path(p).parent.name == "good" for p in result.shots)

    loaded, _, meta = load_finegrained_checkpoint(tmp_path / "ck")
    assert meta["finegrained"]["shots"]["paths"] == result.shots
    assert loaded.texts == model.texts and loaded.reference_paths == result.shots
    for k, v in after.items():
        assert torch.equal(loaded.trainable_state_dict()[k], v)
    load_references(loaded, loaded.reference_paths)
    images = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = model.eval()(images), loaded(images)
    assert torch.allclose(a.anomaly_map, b.anomaly_map) and torch.allclose(a.image_score, b.image_score)
    assert load_any_checkpoint(tmp_path / "ck")[0].method == "finegrained"


class _Stop(Exception):
    """Interrupts a training run from its epoch callback."""


def _stop_after(record: dict[str, float], epochs: int) -> None:
    if record["epoch"] >= epochs:
        raise _Stop


def test_resume_continues_exactly(data_root: Path, tmp_path: Path) -> None:
    """A 4-epoch run interrupted after epoch 2 and resumed ends with the weights of an uninterrupted one."""
    straight = _model(_config(epochs=4))
    train_finegrained(straight, _config(epochs=4), data_root, 1, tmp_path / "a", progress=False)
    interrupted = _model(_config(epochs=4))
    with pytest.raises(_Stop):
        train_finegrained(interrupted, _config(epochs=4), data_root, 1, tmp_path / "c", progress=False,
                          on_epoch=lambda rec: _stop_after(rec, 2))
    again = _model(_config(epochs=4))
    result = train_finegrained(again, _config(epochs=4), data_root, 1, tmp_path / "c", progress=False)
    assert [int(r["epoch"]) for r in result.losses] == [3, 4]
    for k, v in straight.trainable_state_dict().items():
        assert torch.allclose(again.trainable_state_dict()[k], v, atol=1e-7), k
    with pytest.raises(ValueError, match="other shots"):  # a resume must not mix classes or shots
        train_finegrained(_model(_config(epochs=4)), _config(epochs=4), data_root, 2, tmp_path / "c", progress=False)


def test_cli_train_then_eval(data_root: Path, tmp_path: Path) -> None:
    from fgad.cli.eval import main as eval_main
    from fgad.cli.train import main as train_main

    captions = tmp_path / "disc.json"
    captions.write_text(json.dumps(caption_to_dict(RECORD)))
    runner = CliRunner()
    out = tmp_path / "ck"
    res = runner.invoke(train_main, ["--config", "fgad-tiny", "--class-name", CLASS, "--shots", "2", "--data",
                                     str(data_root), "--out", str(out), "--epochs", "3", "--captions", str(captions),
                                     "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "epoch 3: loss" in res.output
    res = runner.invoke(eval_main, ["--checkpoint", str(out), "--data", str(data_root), "--out",
                                    str(tmp_path / "ev"), "--no-progress"])
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert list(metrics["per_class"]) == [CLASS]
    assert metrics["classes"][CLASS]["references_from"] == "the checkpoint's training shots"
    assert metrics["settings"]["shots_used"] == 2  # the 2 training shots, though --shots was not given
    assert ", 2-shot, " in (tmp_path / "ev" / "metrics.md").read_text().splitlines()[0]
    res = runner.invoke(train_main, ["--config", "fgad-tiny", "--data", str(data_root), "--out", str(out)])
    assert res.exit_code != 0 and "--class-name" in res.output
