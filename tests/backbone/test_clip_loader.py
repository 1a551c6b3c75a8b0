"""Weights by file and local folder, random init by seed, and the offline error message."""

from __future__ import annotations

import json
import logging
from importlib import resources
from pathlib import Path

import pytest
import torch

from fgad.backbone.clip_loader import WeightsUnavailableError, create_clip, state_fingerprint
from fgad.config import load_config, replace

logging.getLogger("root").setLevel(logging.ERROR)


@pytest.fixture(scope="module")
def backbone_cfg():
    return load_config("tiny-test").model.backbone


def test_weights_file_loads_exactly(backbone_cfg, tmp_path: Path) -> None:
    source = create_clip(replace(backbone_cfg, init_seed=5))
    path = tmp_path / "weights.pt"
    torch.save(source.state_dict(), path)
    loaded = create_clip(backbone_cfg, pretrained=str(path))
    assert state_fingerprint(loaded) == state_fingerprint(source)
    assert state_fingerprint(loaded) != state_fingerprint(create_clip(backbone_cfg))  # seed 0 differs


def test_local_dir_loads_config_and_weights(backbone_cfg, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    source = create_clip(replace(backbone_cfg, init_seed=9))
    model_cfg = json.loads((resources.files("fgad.configs") / "open_clip" / "fgad-tiny.json").read_text())
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    weights = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(weights, str(tmp_path / "open_clip_model.safetensors"))
    loaded = create_clip(backbone_cfg, pretrained=f"local-dir:{tmp_path}")
    assert state_fingerprint(loaded) == state_fingerprint(source)


def test_local_dir_without_config_says_what_is_missing(backbone_cfg, tmp_path: Path) -> None:
    with pytest.raises(WeightsUnavailableError, match="open_clip_config.json"):
        create_clip(backbone_cfg, pretrained=f"local-dir:{tmp_path}")


def test_missing_weights_file(backbone_cfg, tmp_path: Path) -> None:
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        create_clip(backbone_cfg, pretrained=str(tmp_path / "nope.bin"))


def test_unreachable_hub_gives_an_actionable_message(backbone_cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    from fgad.backbone.compat import import_open_clip

    open_clip = import_open_clip()

    def offline(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("Failed to download weights for tag 'openai': cannot reach the hub")

    monkeypatch.setattr(open_clip, "create_model", offline)
    with pytest.raises(WeightsUnavailableError) as info:
        create_clip(backbone_cfg, pretrained="openai")
    message = str(info.value)
    assert "'openai'" in message and "--pretrained" in message and "local-dir:" in message


def test_random_init_keywords(backbone_cfg) -> None:
    a = create_clip(backbone_cfg, pretrained="none")
    b = create_clip(backbone_cfg, pretrained="random")
    assert state_fingerprint(a) == state_fingerprint(b)


def test_a_crafted_pickle_weights_file_is_refused_without_running_code(backbone_cfg, tmp_path: Path) -> None:
    from tests.backbone.test_checkpoint import _WritesAFile

    source = create_clip(backbone_cfg)
    marker = tmp_path / "pwned.txt"
    weights = dict(source.state_dict())
    weights["payload"] = _WritesAFile(marker)
    path = tmp_path / "weights.pt"
    torch.save(weights, path)
    with pytest.raises(WeightsUnavailableError, match=r"refused to load weights.*references exec.*safetensors"):
        create_clip(backbone_cfg, pretrained=str(path))
    assert not marker.exists()


def test_open_clip_is_asked_for_weights_only_loads(backbone_cfg, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Even an open_clip that passed weights_only=False would get weights-only loads (the env override)."""
    import functools
    import os

    from fgad.backbone.compat import import_open_clip

    open_clip = import_open_clip()
    seen: dict[str, object] = {}
    real = open_clip.create_model

    @functools.wraps(real)  # keeps its signature
    def spy(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        seen["weights_only"] = kwargs.get("weights_only")
        seen["env"] = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
        return real(*args, **kwargs)

    monkeypatch.setattr(open_clip, "create_model", spy)
    path = tmp_path / "weights.pt"
    torch.save(create_clip(backbone_cfg).state_dict(), path)
    before = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    create_clip(backbone_cfg, pretrained=str(path))
    assert seen == {"weights_only": True, "env": "1"}
    assert os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD") == before
