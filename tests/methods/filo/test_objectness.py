"""The objectness prior: foreground probability, box = extent of the foreground cells, position, region."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fgad.config import ObjectnessConfig, load_config
from fgad.core.cells import position_index
from fgad.methods.filo.model import FiLoPlusPlus
from fgad.methods.filo.priors.objectness import (
    ObjectnessHead,
    ObjectnessPrior,
    objectness_prompts,
    objectness_text,
    objectness_tokens,
    token_source,
)
from fgad.methods.filo.priors.registry import build_box_prior
from fgad.methods.filo.scoring import l2n
from tests.helpers.tiny import CLASS_NAME


def _cfg(size: int, patch: int = 16):  # noqa: ANN202
    return load_config("tiny-test", {"model": {"backbone": {"image_size": size, "patch_size": patch}}}).model


def _tokens_for_mask(mask: np.ndarray, dim: int = 8) -> torch.Tensor:
    """Unit tokens [1, N, C]: foreground cells point along e0 (the object text), background along e1."""
    obj, bg = torch.zeros(dim), torch.zeros(dim)
    obj[0], bg[1] = 1.0, 1.0
    flat = torch.from_numpy(mask.reshape(-1).astype(bool))
    tokens = torch.where(flat.unsqueeze(1), obj, bg)
    return l2n(tokens + 0.01 * torch.arange(dim).float()).unsqueeze(0)


def _expected_box(mask: np.ndarray, patch: int, size: int) -> tuple[bool, list[float]]:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return False, [0.0, 0.0, float(size), float(size)]
    return True, [xs.min() * patch, ys.min() * patch, (xs.max() + 1) * patch, (ys.max() + 1) * patch]


MASKS = {
    "single": [(2, 5)],
    "l-shape": [(0, 1), (1, 1), (4, 1), (4, 2), (4, 6)],
    "corner": [(6, 6)],
    "empty": [],
    "full": "all",
}


@pytest.mark.parametrize("size", [112, 224, 336])
@pytest.mark.parametrize("kind", list(MASKS))
def test_box_is_the_extent_of_foreground_cells(size: int, kind: str) -> None:
    cfg = _cfg(size)
    g, p = cfg.backbone.grid, cfg.backbone.patch_size
    mask = np.zeros((g, g), dtype=bool)
    if MASKS[kind] == "all":
        mask[:] = True
    else:
        for i, j in MASKS[kind]:
            mask[i * g // 7, j * g // 7] = True
    obj, bg = torch.eye(8)[0], torch.eye(8)[1]
    head = ObjectnessHead(cfg, obj, bg, ObjectnessConfig())
    out = head(_tokens_for_mask(mask))
    np.testing.assert_array_equal(out.prob[0].numpy() > 0.5, mask)
    has, box = _expected_box(mask, p, size)
    assert bool(out.valid[0, 0]) == has
    assert out.boxes[0, 0].tolist() == box
    res = head.result(_tokens_for_mask(mask))
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    assert res.position.tolist() == [position_index(cx, cy, size)]
    region = res.region[0, 0].numpy()
    if has:
        centres = np.arange(size) + 0.5
        inside = ((centres[None, :] >= box[0]) & (centres[None, :] <= box[2])
                  & (centres[:, None] >= box[1]) & (centres[:, None] <= box[3]))
        np.testing.assert_array_equal(region > 0.5, inside)
    else:
        assert region.min() == 1.0 and res.position.tolist() == [4]


def test_probability_is_the_two_way_softmax() -> None:
    cfg = _cfg(112)
    gen = torch.Generator().manual_seed(0)
    tokens = l2n(torch.randn(2, cfg.backbone.num_patches, 8, generator=gen))
    obj, bg = l2n(torch.randn(8, generator=gen)), l2n(torch.randn(8, generator=gen))
    params = ObjectnessConfig(temperature=7.0, threshold=0.6)
    out = ObjectnessHead(cfg, obj, bg, params)(tokens)
    a, b = params.temperature * (tokens @ obj), params.temperature * (tokens @ bg)
    want = (1.0 / (1.0 + torch.exp(b - a))).reshape(2, cfg.backbone.grid, cfg.backbone.grid)
    torch.testing.assert_close(out.prob, want, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.scores[:, 0], want.flatten(1).amax(dim=1))


def test_prompts_use_the_display_name() -> None:
    objects, background = objectness_prompts("metal_nut", ObjectnessConfig())
    assert objects[0] == "a photo of a metal nut." and "a photo of the background." in background


@torch.no_grad()
def test_text_directions_come_from_the_frozen_text_encoder(tiny_model: FiLoPlusPlus) -> None:
    params = ObjectnessConfig()
    t_obj, t_bg = objectness_text(tiny_model, CLASS_NAME, params)
    objects, background = objectness_prompts(CLASS_NAME, params)
    # independent path: the prompt learner's own fixed-template encoder
    want_obj = l2n(l2n(tiny_model.prompts._encode_fixed(objects)).mean(dim=0))
    want_bg = l2n(l2n(tiny_model.prompts._encode_fixed(background)).mean(dim=0))
    torch.testing.assert_close(t_obj, want_obj, atol=1e-6, rtol=0)
    torch.testing.assert_close(t_bg, want_bg, atol=1e-6, rtol=0)


@torch.no_grad()
def test_prior_reads_the_deepest_vv_tokens(tiny_model: FiLoPlusPlus, images: torch.Tensor) -> None:
    cfg = tiny_model.cfg
    assert token_source(cfg) == ("vv", cfg.heads.mdci_layers.index(max(cfg.heads.mdci_layers)))
    feats = tiny_model.encode_images(images)
    tokens = objectness_tokens(tiny_model.backbone, feats, cfg)
    vv = feats.vv[-1][:, 1:]
    want = l2n(tiny_model.backbone.ln_post(vv) @ tiny_model.backbone.proj)
    torch.testing.assert_close(tokens, want)
    prior = build_box_prior("objectness", model=tiny_model)
    assert isinstance(prior, ObjectnessPrior)
    a, b = prior(images, CLASS_NAME), prior(images, CLASS_NAME, features=feats)
    assert torch.equal(a.boxes, b.boxes) and torch.equal(a.region, b.region) and torch.equal(a.position, b.position)
    out = tiny_model(images, CLASS_NAME, box_prior=prior, use_memory=False)
    manual = tiny_model(images, CLASS_NAME, positions=a.positions, region=a.region, use_memory=False)
    assert torch.equal(out.anomaly_map, manual.anomaly_map) and torch.equal(out.image_score, manual.image_score)


def test_fgad_eval_with_objectness(tmp_path) -> None:  # noqa: ANN001
    import json

    from click.testing import CliRunner

    from fgad.cli.eval import main as eval_main
    from fgad.core.cells import POSITIONS
    from fgad.data.synthetic import make_synthetic_dataset

    root = make_synthetic_dataset(tmp_path / "d", classes=("disc",), n_train_good=2, n_test_good=2, n_test_defect=1,
                                  image_size=112, seed=4)
    res = CliRunner().invoke(eval_main, ["--config", "tiny-test", "--pretrained", "none", "--data", str(root),
                                         "--out", str(tmp_path / "o"), "--overlays", "0", "--no-progress",
                                         "--shots", "1", "--box-prior", "objectness"])
    assert res.exit_code == 0, res.output
    predictions = [json.loads(line) for line in (tmp_path / "o" / "predictions.jsonl").read_text().splitlines()]
    images = json.loads((tmp_path / "o" / "metrics.json").read_text())["classes"]["disc"]["images"]
    assert len(predictions) == images >= 3
    assert all(p["position"] in POSITIONS and len(p["boxes"]) <= 1 for p in predictions)
    bad = CliRunner().invoke(eval_main, ["--config", "tiny-test", "--data", str(root), "--out", str(tmp_path / "x"),
                                         "--box-prior", "yolo"])
    assert bad.exit_code == 2 and "yolo" in bad.output
