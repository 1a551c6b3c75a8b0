"""The checkpoint files read from disk: state.pt only through torch.load(weights_only=True), JSON checked for shape."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fgad.backbone.checkpoint import (
    CONFIG_FILE,
    STATE_FILE,
    CheckpointError,
    load_train_state,
    read_checkpoint_meta,
)


class _WritesAFile:
    """A pickle payload: unpickling it calls exec, which creates ``marker`` (what a crafted state.pt would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",)


def _state(optimizer: object) -> dict[str, object]:
    return {"phase": 1, "epoch": 2, "step": 7, "optimizer": optimizer}


def test_real_optimiser_and_scheduler_state_loads_with_weights_only(tmp_path: Path) -> None:
    params = [torch.nn.Parameter(torch.randn(3, 2))]
    sgd = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(sgd, T_max=4, eta_min=1e-3)
    adam = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.99))
    for opt in (sgd, adam):
        params[0].grad = torch.ones(3, 2)
        opt.step()
    scheduler.step()
    saved = {"optimizer": sgd.state_dict(), "scheduler": scheduler.state_dict(), "adam": adam.state_dict()}
    torch.save(_state(saved), tmp_path / STATE_FILE)

    state = load_train_state(tmp_path)
    assert state is not None and (state.phase, state.epoch, state.step) == (1, 2, 7)
    assert state.optimizer is not None
    restored = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4)
    restored.load_state_dict(state.optimizer["optimizer"])
    torch.testing.assert_close(restored.state_dict()["state"][0]["momentum_buffer"],
                               sgd.state_dict()["state"][0]["momentum_buffer"])
    assert state.optimizer["adam"]["param_groups"][0]["betas"] == (0.9, 0.99)


def test_a_malicious_state_pt_is_refused_before_any_code_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned.txt"
    crafted = tmp_path / "other" / STATE_FILE
    crafted.parent.mkdir()
    torch.save(_state(_WritesAFile(marker)), crafted)
    # the payload is live: a trusting load runs it
    torch.load(crafted, weights_only=False)
    assert marker.read_text() == "code ran"
    marker.unlink()

    with pytest.raises(CheckpointError) as caught:
        load_train_state(crafted.parent)
    assert not marker.exists(), "the crafted state.pt ran code"
    message = str(caught.value)
    assert str(crafted) in message
    assert "refused" in message and "exec" in message and "weights_only=True" in message
    assert "delete it and train again" in message and "\n" not in message


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"not a torch file at all", "damaged"),
        (None, "integer phase, epoch and step"),
    ],
)
def test_a_damaged_state_pt_is_a_checkpoint_error(tmp_path: Path, content: bytes | None, needle: str) -> None:
    path = tmp_path / STATE_FILE
    if content is None:
        torch.save({"phase": "one", "epoch": 0, "step": 0, "optimizer": None}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=needle) as caught:
        load_train_state(tmp_path)
    assert str(path) in str(caught.value)


def test_no_state_pt_means_no_state(tmp_path: Path) -> None:
    assert load_train_state(tmp_path) is None


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object, found list"),
        ('{"config": "tiny"}', "field 'config' must be a JSON object, found str"),
        ('{"pretrained": null}', "field 'config' must be a JSON object, found nothing"),
    ],
)
def test_a_damaged_config_json_names_the_file(tmp_path: Path, text: str, needle: str) -> None:
    (tmp_path / CONFIG_FILE).write_text(text)
    with pytest.raises(CheckpointError, match=needle) as caught:
        read_checkpoint_meta(tmp_path)
    assert str(tmp_path / CONFIG_FILE) in str(caught.value)


def test_a_good_config_json_reads_back(tmp_path: Path) -> None:
    meta = {"config": {"model": {}}, "pretrained": None, "phase": 1}
    (tmp_path / CONFIG_FILE).write_text(json.dumps(meta))
    assert read_checkpoint_meta(tmp_path) == meta
