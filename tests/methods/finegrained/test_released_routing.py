"""``model.reproduce: released`` for FineGrainedAD: the untrained QueryFormer's token routing (F1).

The release's QueryFormer is written out below as it is built there (two cross-attentions with q / kv / out
projections, 8 heads, learnable queries attending to one key each, a fusion layer) and given the same random
weights as :class:`UntrainedQueryFormer`; the two must agree. The model's routing is checked against a
brute-force loop in the release's form (cosine against the projected keys, then the chosen pair's two-way
softmax), and its distance to fgad's routing (argmax against T^n) recorded on the tiny random CLIP.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fgad.config import load_config
from fgad.methods.finegrained.export import FgadExportModule
from fgad.methods.finegrained.mllp import build_mllp_texts
from fgad.methods.finegrained.model import FineGrainedAD, build_finegrained
from fgad.methods.finegrained.query_former import UntrainedQueryFormer
from tests.methods.finegrained.test_model import RECORD, _images

DIM = 64


class _ReleasedCrossAttention(nn.Module):
    """One branch as released: q from the queries, k and v from the input, softmax over the keys, out proj."""

    def __init__(self, dim: int, heads: int = 8) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.q_proj = nn.Linear(dim, dim)
        self.kv_proj = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q = self.q_proj(x).reshape(b, n, self.heads, c // self.heads).permute(0, 2, 1, 3)
        kv = self.kv_proj(y).reshape(b, n, 2, self.heads, c // self.heads).permute(0, 2, 3, 1, 4)
        k, v = kv[:, 0], kv[:, 1]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class _ReleasedQueryFormer(nn.Module):
    def __init__(self, num_queries: int, dim: int) -> None:
        super().__init__()
        self.cross_attn1 = _ReleasedCrossAttention(dim)
        self.cross_attn2 = _ReleasedCrossAttention(dim)
        self.query_tokens = nn.Parameter(torch.randn(num_queries, dim) * 0.02)
        self.fuse_layer = nn.Linear(2 * dim, dim)

    def forward(self, y1: torch.Tensor, y2: torch.Tensor) -> torch.Tensor:
        out1 = self.cross_attn1(self.query_tokens.unsqueeze(1), y1.unsqueeze(1)).squeeze(1)
        out2 = self.cross_attn2(self.query_tokens.unsqueeze(1), y2.unsqueeze(1)).squeeze(1)
        return self.fuse_layer(torch.cat([out1, out2], dim=1))


def _load_into(ours: UntrainedQueryFormer, ref: _ReleasedQueryFormer) -> None:
    """Give ``ours`` the reference's weights (the value rows of kv_proj, the out projections, the fusion)."""
    with torch.no_grad():
        for i, branch in ((1, ref.cross_attn1), (2, ref.cross_attn2)):
            getattr(ours, f"w_v{i}").copy_(branch.kv_proj.weight[DIM:])
            getattr(ours, f"b_v{i}").copy_(branch.kv_proj.bias[DIM:])
            getattr(ours, f"w_p{i}").copy_(branch.proj.weight)
            getattr(ours, f"b_p{i}").copy_(branch.proj.bias)
        ours.w_f.copy_(ref.fuse_layer.weight)
        ours.b_f.copy_(ref.fuse_layer.bias)


def test_the_query_former_is_the_released_one_with_its_queries_irrelevant() -> None:
    torch.manual_seed(0)
    ref = _ReleasedQueryFormer(4, DIM).eval()
    ours = UntrainedQueryFormer(DIM, 4, seed=111)
    _load_into(ours, ref)
    gen = torch.Generator().manual_seed(1)
    tn, ta = torch.randn(4, DIM, generator=gen), torch.randn(4, DIM, generator=gen)
    with torch.no_grad():
        want = ref(tn, ta)
        ref.query_tokens.normal_()  # other queries, same output: one key, attention weight 1
        again = ref(tn, ta)
    torch.testing.assert_close(ours(tn, ta), want, atol=1e-6, rtol=0)
    torch.testing.assert_close(again, want, atol=1e-6, rtol=0)


def test_the_projection_is_seeded_and_leaves_the_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    a, b, c = UntrainedQueryFormer(DIM, 4, 111), UntrainedQueryFormer(DIM, 4, 111), UntrainedQueryFormer(DIM, 4, 112)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a.w_f, b.w_f) and torch.equal(a.w_v1, b.w_v1)
    assert not torch.equal(a.w_f, c.w_f)
    bound = 1.0 / math.sqrt(DIM)  # nn.Linear's default initialisation
    assert float(a.w_v1.abs().max()) <= bound and float(a.w_v1.abs().max()) > 0.9 * bound
    assert len(a.state_dict()) == 0  # never saved, as released: rebuilt from the seed


@pytest.fixture(scope="module")
def released_model() -> FineGrainedAD:
    cfg = load_config("fgad-tiny", {"model": {"reproduce": "released"}}).model
    texts = build_mllp_texts(RECORD, ("with a crack", "with a stain"), seed=111, released=True)
    return build_finegrained(cfg, texts).eval()


def test_released_routing_is_the_released_loop_and_differs_from_ours(released_model: FineGrainedAD) -> None:
    model = released_model
    assert model.query_former is not None and model.query_former.seed == model.cfg.finegrained.seed == 111
    images = _images(2, seed=5)
    with torch.no_grad():
        visual = model.visual_features(images)
        tn, ta = model.text_pairs()
        keys = model.query_former(tn, ta)
        text_map, global_prob, _ = model.text_map(visual, (tn, ta))
    t = float(model.logit_scale)
    tokens = visual.patches
    want = torch.empty(tokens.shape[:2])
    ours_choice = torch.empty(tokens.shape[:2], dtype=torch.long)
    for b in range(tokens.shape[0]):
        for u in range(tokens.shape[1]):
            f = tokens[b, u]
            cos = (keys @ f) / (keys.norm(dim=1) * f.norm())  # get_max_cosine_similarity_match
            j = int(cos.argmax())
            want[b, u] = (t * torch.stack([f @ tn[j], f @ ta[j]])).softmax(dim=-1)[1]
            ours_choice[b, u] = int((tn @ f).argmax())
    g = model.cfg.backbone.grid
    torch.testing.assert_close(text_map, want.unflatten(1, (g, g)), atol=1e-6, rtol=0)
    # fgad's routing (argmax against T^n) on the same weights: the distance, recorded
    plain_choice = ours_choice.flatten()
    with torch.no_grad():
        routed = (tokens @ torch.nn.functional.normalize(keys, dim=-1).T).argmax(dim=-1).flatten()
    moved = float((routed != plain_choice).float().mean())
    saved, model.query_former = model.query_former, None
    try:
        with torch.no_grad():
            plain_map, plain_prob, _ = model.text_map(visual, (tn, ta))
    finally:
        model.query_former = saved
    gap = float((plain_map - text_map).abs().max())
    # measured on the tiny random CLIP: 73% of the tokens routed to another pair, the text map moved by 0.129
    assert moved > 0.3 and gap > 0.03, (moved, gap)


def test_export_module_routes_as_the_model(released_model: FineGrainedAD) -> None:
    images = _images(2, seed=6)
    module = FgadExportModule(released_model)
    assert module.route is not None
    with torch.no_grad():
        got = module(images)
        text_map, prob, choice = released_model.text_map(released_model.visual_features(images),
                                                         released_model.text_pairs())
    torch.testing.assert_close(got[0], text_map)
    torch.testing.assert_close(got[1], prob)
    assert torch.equal(got[2], choice)


def test_released_test_images_are_bgr_through_the_rgb_normalisation() -> None:
    """F4: the released test normalised BGR pixels with the RGB mean and std; written out per channel."""
    from fgad.methods.finegrained.evaluate import released_bgr

    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    raw = torch.rand(2, 3, 4, 5, generator=torch.Generator().manual_seed(2))
    rgb = torch.stack([(raw[:, c] - mean[c]) / std[c] for c in range(3)], dim=1)
    want = torch.stack([(raw[:, 2 - c] - mean[c]) / std[c] for c in range(3)], dim=1)
    torch.testing.assert_close(released_bgr(rgb, mean, std), want, atol=1e-6, rtol=0)
    assert float((want - rgb).abs().max()) > 0.1
