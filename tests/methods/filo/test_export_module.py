"""The frozen text and the export wrapper against FiLoPlusPlus itself (PyTorch only, no export).

Where freezing is exact the wrapper must reproduce ``FiLoPlusPlus.forward``: with CoOp context
(the text does not depend on the image) and no filtering in ``frozen`` mode, and with CoOp and
per-image filtering in ``bank`` mode. With CoCoOp the frozen text is an approximation, measured
by ``frozen_text_error``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fgad.core.cells import NUM_POSITIONS
from fgad.export.bundle import load_reference_images
from fgad.methods.filo.export import frozen_text_error, resize_model
from fgad.methods.filo.export_module import FiloExportModule, output_names
from fgad.methods.filo.frozen_text import freeze_text, freeze_text_bank
from fgad.methods.filo.model import FiLoPlusPlus
from fgad.methods.filo.scoring import l2n
from tests.helpers.tiny import CLASS_NAME, make_images

EXACT = 1e-6  # same ops in the same order; only reduction order may differ


@pytest.fixture(scope="module")
def refs(refs_dir: Path, cocoop_model: FiLoPlusPlus) -> torch.Tensor:
    return load_reference_images(sorted(refs_dir.iterdir()), cocoop_model.cfg)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return make_images(2)


@torch.no_grad()
def test_frozen_wrapper_equals_model_when_freezing_is_exact(coop_model: FiLoPlusPlus, images: torch.Tensor) -> None:
    # no references: no filtering, and CoOp context does not depend on the conditioning
    wrapper = FiloExportModule(coop_model, freeze_text(coop_model, CLASS_NAME, None)).eval()
    vl, prob, best, *tokens = wrapper(images)
    exact = coop_model(images, CLASS_NAME, filtering=False, use_memory=False)
    torch.testing.assert_close(vl, exact.vl_map, atol=EXACT, rtol=0)
    torch.testing.assert_close(prob, exact.global_prob, atol=EXACT, rtol=0)
    assert torch.equal(best, exact.best_description)
    assert vl.shape == (2, 112, 112) and prob.shape == (2,) and best.dtype == torch.int64
    feats = coop_model.backbone(images)
    for layer, t in zip(coop_model.cfg.fewshot.memory_layers, tokens, strict=True):
        index = coop_model.cfg.feature_layers.index(layer)
        torch.testing.assert_close(t, l2n(feats.ori[index][:, 1:]), atol=EXACT, rtol=0)
        assert t.shape == (2, 49, 64)


@torch.no_grad()
def test_bank_wrapper_filters_per_image_like_the_model(coop_model: FiLoPlusPlus, images: torch.Tensor) -> None:
    wrapper = FiloExportModule(coop_model, freeze_text_bank(coop_model, CLASS_NAME, None)).eval()
    vl, prob, best, *_ = wrapper(images)
    exact = coop_model(images, CLASS_NAME, use_memory=False)  # per-image filtering (cfg.prompts.filtering)
    torch.testing.assert_close(vl, exact.vl_map, atol=EXACT, rtol=0)
    torch.testing.assert_close(prob, exact.global_prob, atol=EXACT, rtol=0)
    assert torch.equal(best, exact.best_description)


@torch.no_grad()
def test_freeze_text_matches_the_models_text_pair(cocoop_model: FiLoPlusPlus, refs: torch.Tensor) -> None:
    text = freeze_text(cocoop_model, CLASS_NAME, refs)
    feats = cocoop_model.encode_images(refs)
    condition = l2n(feats.global_embed.mean(dim=0, keepdim=True))
    adapted = l2n(cocoop_model.adapted_global(feats.global_embed).mean(dim=0, keepdim=True))
    pair = cocoop_model.text_pair(CLASS_NAME, condition, adapted, torch.ones(1, NUM_POSITIONS), filtering=True)
    torch.testing.assert_close(text.t_normal, pair.t_normal[0], atol=EXACT, rtol=0)
    torch.testing.assert_close(text.t_abnormal, pair.t_abnormal[0], atol=EXACT, rtol=0)
    torch.testing.assert_close(text.abnormal, pair.abnormal[0], atol=EXACT, rtol=0)
    assert torch.equal(text.keep_abnormal, pair.keep_abnormal[0])
    summary = text.summary()
    prompts = cocoop_model.prompts.prepare(CLASS_NAME)
    assert summary["descriptions"] == prompts.abnormal_descriptions()
    assert summary["num_abnormal"] == len(summary["descriptions"]) == NUM_POSITIONS * prompts.num_abnormal_per_position
    assert summary["num_normal"] == prompts.num_normal == 14
    assert summary["conditioning"] == "cocoop" and summary["filtering"] == "reference-set"
    assert summary["conditioned_on"] == "n(mean G) of 4 reference images"
    assert 0 < summary["kept_abnormal"] <= summary["num_abnormal"]


@torch.no_grad()
def test_freeze_without_references_says_what_it_did(cocoop_model: FiLoPlusPlus) -> None:
    text = freeze_text(cocoop_model, CLASS_NAME, None)
    assert text.filtering == "none" and text.num_references == 0
    assert "zero vector" in text.conditioned_on
    assert bool(text.keep_abnormal.all()) and bool(text.keep_normal.all())
    assert any("zero vector" in n for n in text.notes) and any("filtering" in n for n in text.notes)
    bank = freeze_text_bank(cocoop_model, CLASS_NAME, None)
    assert bank.filtering == "per-image" and bank.mode == "bank"
    torch.testing.assert_close(bank.abnormal, text.abnormal)  # same conditioning, all prompts kept


@torch.no_grad()
def test_frozen_text_error_is_measured_not_hidden(
    cocoop_model: FiLoPlusPlus, refs: torch.Tensor, images: torch.Tensor
) -> None:
    err = frozen_text_error(cocoop_model, CLASS_NAME, images, ref_images=refs)
    assert err["images"] == 2
    assert 0 < err["max_abs_diff_anomaly_map"] < 1 and 0 < err["max_abs_diff_image_score"] < 1
    assert err["mean_abs_diff_anomaly_map"] <= err["max_abs_diff_anomaly_map"]
    # the exact case (CoOp, bank mode, per-image filtering) is checked in test_bundle's bank bundle


def test_wrapper_holds_no_text_encoder(cocoop_model: FiLoPlusPlus) -> None:
    text = freeze_text(cocoop_model, CLASS_NAME, None)
    wrapper = FiloExportModule(cocoop_model, text)
    keys = list(wrapper.state_dict())
    assert not [k for k in keys if k.startswith(("text_encoder.", "prompts.", "memory.", "blur."))]
    assert {"t_normal", "t_abnormal", "abnormal", "valid_abnormal"} <= set(keys)
    assert wrapper.output_names == output_names((2, 4)) == [
        "vl_map", "global_prob", "best_description", "tokens_2", "tokens_4"]
    # the wrapper shares the model's weights, it does not copy them
    assert wrapper.backbone is cocoop_model.backbone and wrapper.mdci is cocoop_model.mdci


@torch.no_grad()
def test_resize_model_keeps_weights_and_resizes_the_grid(coop_model: FiLoPlusPlus) -> None:
    resized, note = resize_model(coop_model, 96, None)
    assert resized.cfg.backbone.image_size == 96 and resized.cfg.backbone.grid == 6
    assert resized.backbone.positional_embedding.shape == (37, 64)
    assert note == {"trained": 112, "exported": 96,
                    "position_grid": "resized (bicubic) from the checkpoint's 7x7 table"}
    for key, value in coop_model.trainable_state_dict().items():
        assert torch.equal(resized.trainable_state_dict()[key], value), key
    torch.testing.assert_close(resized.backbone.conv1.weight, coop_model.backbone.conv1.weight)
    out = resized(make_images(1, 96), CLASS_NAME, use_memory=False)
    assert out.anomaly_map.shape == (1, 96, 96)
    assert resize_model(coop_model, 112, None)[0] is coop_model
