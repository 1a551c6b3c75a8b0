"""FineGrainedAD inference (METHOD.md §2.4, §2.7) on the tiny random CLIP: pair choice, maps, fusion, score."""

from __future__ import annotations

import math

import pytest
import torch

from fgad.config import load_config
from fgad.methods.finegrained.captions.schema import CaptionRecord, Entity
from fgad.methods.finegrained.mllp import build_mllp_texts
from fgad.methods.finegrained.model import FineGrainedAD, build_finegrained, choose_pairs, fuse_and_score

RECORD = CaptionRecord(
    class_name="tile",
    foreground="tile",
    background="black",
    entities=(
        Entity(name="grout lines", number="many", location="throughout", direction="", color="gray",
               texture="rough", shape="lattice", caption="Gray grout lines run throughout the tile."),
    ),
    relation="The grout lines divide the tile into squares.",
    caption="A square tile with gray grout lines on a black background.",
)


@pytest.fixture(scope="module")
def model() -> FineGrainedAD:
    cfg = load_config("fgad-tiny").model
    texts = build_mllp_texts(RECORD, ("with a crack", "with a stain"), seed=111)
    return build_finegrained(cfg, texts).eval()


def _images(batch: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, 112, 112, generator=gen)


def test_token_wise_pair_choice_equals_a_brute_force_loop() -> None:
    gen = torch.Generator().manual_seed(0)
    n = torch.nn.functional.normalize
    feats = n(torch.randn(2, 5, 4, generator=gen), dim=-1)
    t_n, t_a = n(torch.randn(3, 4, generator=gen), dim=-1), n(torch.randn(3, 4, generator=gen), dim=-1)
    scale = 4.6
    probs, choice = choose_pairs(feats, t_n, t_a, scale)
    for b in range(2):
        for u in range(5):
            sims = [float(feats[b, u] @ t_n[p]) for p in range(3)]
            best = max(range(3), key=lambda p: sims[p])
            a = float(feats[b, u] @ t_a[best])
            expected = math.exp(scale * a) / (math.exp(scale * a) + math.exp(scale * sims[best]))
            assert int(choice[b, u]) == best
            assert float(probs[b, u]) == pytest.approx(expected, rel=1e-5)
    g_prob, g_choice = choose_pairs(feats[:, 0], t_n, t_a, scale)  # a global feature: same rule
    assert torch.equal(g_choice, choice[:, 0]) and torch.allclose(g_prob, probs[:, 0])


def test_harmonic_fusion_and_image_score() -> None:
    text = torch.tensor([[[0.2, 0.6], [0.4, 0.8]]])
    visual = torch.tensor([[[0.3, 0.1], [0.5, 0.9]]])
    prob = torch.tensor([0.7])
    amap, score = fuse_and_score(text, visual, prob, output_size=2, blur=torch.nn.Identity())
    expected = 1.0 / (1.0 / text + 1.0 / visual)
    assert torch.allclose(amap, expected, atol=1e-6)
    assert float(score[0]) == pytest.approx(1.0 / (1.0 / 0.7 + 1.0 / 0.9), rel=1e-6)
    amap0, score0 = fuse_and_score(text, None, prob, output_size=2, blur=torch.nn.Identity())
    assert torch.equal(amap0, text)  # without references: the textual map alone
    assert float(score0[0]) == pytest.approx(1.0 / (1.0 / 0.7 + 1.0 / 0.8), rel=1e-6)


def test_forward_shapes_and_zero_shot_fallback(model: FineGrainedAD) -> None:
    model.clear_memory()
    fc, bb = model.cfg.finegrained, model.cfg.backbone
    with torch.no_grad():
        out = model(_images(2, 1))
    assert out.anomaly_map.shape == (2, fc.output_size, fc.output_size)
    assert out.text_map.shape == (2, bb.grid, bb.grid) and out.visual_map is None
    assert out.image_score.shape == out.global_prob.shape == (2,)
    assert ((out.text_map >= 0) & (out.text_map <= 1)).all()
    assert int(out.best_description.max()) < len(model.pair_names)


def test_visual_map_is_half_the_mean_min_distance(model: FineGrainedAD) -> None:
    refs, queries = _images(2, 2), _images(2, 3)
    model.set_reference_images(refs, ["a.png", "b.png"])
    try:
        with torch.no_grad():
            out = model(queries)
            gallery = model.visual_features(refs).gallery
            query = model.visual_features(queries).gallery
        g = model.cfg.backbone.grid
        per_layer = []
        for ref_layer, q_layer in zip(gallery, query, strict=True):
            bank = ref_layer.reshape(-1, ref_layer.shape[-1])
            dist = torch.stack([(1 - q_layer[b] @ bank.T).amin(dim=1) for b in range(2)])  # [B, N]
            per_layer.append(dist)
        expected = 0.5 * torch.stack(per_layer).mean(dim=0)
        assert out.visual_map is not None
        assert torch.allclose(out.visual_map, expected.unflatten(1, (g, g)), atol=1e-5)
        with torch.no_grad():
            own = model(refs[:1])
        assert own.visual_map is not None and float(own.visual_map.abs().max()) < 1e-4  # a shot matches itself
        assert model.reference_paths == ["a.png", "b.png"]
    finally:
        model.clear_memory()


def test_text_pairs_are_cached_until_the_contexts_change(model: FineGrainedAD) -> None:
    with torch.no_grad():
        first = model.text_pairs()
        assert model.text_pairs() is first
        model.prompts.ctx_normal.add_(0.5)
        try:
            second = model.text_pairs()
            assert second is not first and not torch.allclose(second[0], first[0])
        finally:
            model.prompts.ctx_normal.sub_(0.5)


def test_checks_and_trainable_state(model: FineGrainedAD) -> None:
    with pytest.raises(ValueError, match="trained for class 'tile'"):
        model(_images(1, 4), "bottle")
    with pytest.raises(ValueError, match="box prior"):
        model(_images(1, 4), region=torch.ones(1, 1, 112, 112))
    state = model.trainable_state_dict()
    assert set(state) == {"prompts.ctx_normal", "prompts.ctx_abnormal", "prompts.fusion_weights"}
    assert all(not p.requires_grad for p in model.backbone.parameters())
    assert float(model.logit_scale) == pytest.approx(math.log(1 / 0.07), rel=1e-5)  # raw open_clip init (F3)


# ---------------------------------------------------------------------------------- combined mode


def test_combined_mode_averages_both_methods(tmp_path) -> None:  # noqa: ANN001
    """METHOD.md §3: FineGrainedAD on FiLo++'s backbone, maps and scores averaged with FiLo++'s."""
    from fgad.data.synthetic import make_synthetic_dataset
    from fgad.evaluation import EvalSettings, evaluate
    from fgad.methods.filo.build import build_model
    from fgad.methods.finegrained.combined import CombinedModel

    filo_cfg = load_config("tiny-test", {"model": {"prompts": {"banks": ["synthetic"]}}}).model
    fgad_cfg = load_config("tiny-test", {"model": {"method": "finegrained", "finegrained": {
        "gallery_layers": [2, 4], "output_size": 56, "tiles": 2}}}).model
    filo = build_model(filo_cfg, seed=1).eval()
    fgad = build_finegrained(fgad_cfg, build_mllp_texts(RECORD, ("with a crack",), seed=111)).eval()
    combined = CombinedModel(filo, fgad)
    refs, images = _images(2, 5), _images(2, 6)
    combined.set_reference_images(refs, ["r0.png", "r1.png"])
    with torch.no_grad():
        out = combined(images)
        f, g = filo(images, "tile"), fgad(images)
    fgad_up = torch.nn.functional.interpolate(g.anomaly_map.unsqueeze(1), size=(112, 112), mode="bilinear",
                                              align_corners=False)[:, 0]
    assert out.anomaly_map.shape == (2, 112, 112)
    assert torch.allclose(out.anomaly_map, (f.anomaly_map + fgad_up) / 2, atol=1e-6)
    assert torch.allclose(out.image_score, (f.image_score + g.image_score) / 2, atol=1e-6)
    assert f.fewshot_map is not None and g.visual_map is not None  # both used the references

    with pytest.raises(ValueError, match="one input for both"):
        CombinedModel(build_model(load_config("tiny-test").model), _model_at(224))

    root = make_synthetic_dataset(tmp_path / "data", classes=("tile",), n_train_good=2, n_test_good=2,
                                  n_test_defect=1, image_size=112, seed=0)
    result = evaluate(combined, root, None, ["tile"], EvalSettings(shots=2, num_overlays=0), progress=False)
    assert result["classes"]["tile"]["method"] == "combined"
    assert result["classes"]["tile"]["output_size"] == 112


def _model_at(size: int) -> FineGrainedAD:
    cfg = load_config("tiny-test", {"model": {"method": "finegrained", "backbone": {"image_size": size},
                                              "finegrained": {"gallery_layers": [2], "output_size": size}}}).model
    return build_finegrained(cfg, build_mllp_texts(RECORD, ("with a crack",), seed=111))
