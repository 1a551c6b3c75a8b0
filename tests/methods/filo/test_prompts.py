"""FusDes prompt sets and learnable context (METHOD.md §0.3, §1.2-1.3).

Expected text features come from open_clip's ``encode_text`` on token ids, on a CLIP built
separately from the same seed: learnable prompts are checked by setting their context vectors
to the token embeddings of the placeholder words, which must reproduce the plain-text prompt.
"""

from __future__ import annotations

import json
from importlib import resources

import pytest
import torch

from fgad.config import ModelConfig
from fgad.core.cells import POSITIONS
from fgad.methods.filo.model import FiLoPlusPlus
from fgad.methods.filo.prompts import PromptLearner
from tests.helpers.tiny import CLASS_NAME, tiny_model_config

ATOL = 1e-5
RTOL = 1e-4
NUM_NORMAL_STATES = 7  # METHOD.md §1.2
NUM_GENERIC_ABNORMAL = 5
NUM_POSITIONS = 9


def _bank_phrases(class_name: str) -> list[str]:
    """The synthetic bank read straight from the package data (not through fgad's loader)."""
    text = (resources.files("fgad.data") / "banks" / "synthetic.json").read_text()
    return json.loads(text)[class_name]


def _learner(model: FiLoPlusPlus, seed: int = 0, **prompt_overrides: object) -> PromptLearner:
    """A fresh prompt learner over the tiny model's frozen text tower."""
    cfg = tiny_model_config(**prompt_overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return PromptLearner(cfg, model.text_encoder, model.prompts.tokenizer).eval()


def _placeholder_ctx(clip: torch.nn.Module, tokenizer, n_ctx: int) -> torch.Tensor:  # noqa: ANN001
    """Token embeddings of "X X ... X" (rows 1..n_ctx, after SOS)."""
    tokens = tokenizer([" ".join(["X"] * n_ctx)])
    assert int(tokens.argmax(dim=-1)) == n_ctx + 1, "each X must be one token"
    with torch.no_grad():
        return clip.token_embedding(tokens)[0, 1 : 1 + n_ctx].clone()


def _encode(clip: torch.nn.Module, tokenizer, texts: list[str]) -> torch.Tensor:  # noqa: ANN001
    with torch.no_grad():
        return clip.encode_text(tokenizer(texts))


def _unit_globals(batch: int, dim: int, seed: int = 3) -> torch.Tensor:
    g = torch.randn(batch, dim, generator=torch.Generator().manual_seed(seed))
    return g / g.norm(dim=-1, keepdim=True)


@pytest.fixture(scope="module")
def n_ctx(tiny_cfg: ModelConfig) -> int:
    return tiny_cfg.prompts.n_ctx


@pytest.fixture(scope="module")
def k_c() -> int:
    return len(_bank_phrases(CLASS_NAME)) + NUM_GENERIC_ABNORMAL


# ---------------------------------------------------------------- fixed prompts


def test_fixed_features_equal_encode_text(tiny_model: FiLoPlusPlus, tiny_clip, tiny_tokenizer, k_c: int) -> None:
    prompts = tiny_model.prompts.prepare(CLASS_NAME)
    texts = prompts.texts
    assert len(texts.fixed_normal) == NUM_NORMAL_STATES
    torch.testing.assert_close(
        prompts.fixed_normal,
        _encode(tiny_clip, tiny_tokenizer, list(texts.fixed_normal)),
        atol=ATOL,
        rtol=RTOL,
    )
    assert prompts.fixed_abnormal.shape == (NUM_POSITIONS, k_c, tiny_clip.text_projection.shape[1])
    flat = [t for row in texts.fixed_abnormal for t in row]
    expected = _encode(tiny_clip, tiny_tokenizer, flat).unflatten(0, (NUM_POSITIONS, k_c))
    torch.testing.assert_close(prompts.fixed_abnormal, expected, atol=ATOL, rtol=RTOL)


def test_fixed_texts_follow_the_templates(tiny_model: FiLoPlusPlus) -> None:
    """METHOD.md §1.2-1.3 with domain "industrial": states, anomaly phrases and positions."""
    texts = tiny_model.prompts.prepare(CLASS_NAME).texts
    phrases = _bank_phrases(CLASS_NAME)
    assert texts.fixed_normal[0] == f"an industrial photo of {CLASS_NAME}."
    assert texts.fixed_normal[4] == f"an industrial photo of {CLASS_NAME} without flaw."
    for p, pos in enumerate(POSITIONS):
        row = texts.fixed_abnormal[p]
        assert row[0] == f"an industrial photo of abnormal {CLASS_NAME} with {phrases[0]} at {pos}."
        assert row[len(phrases)] == f"an industrial photo of damaged {CLASS_NAME} at {pos}."
        assert texts.learn_abnormal[p][1] == f"abnormal {CLASS_NAME} with {phrases[1]} at {pos}."


# ---------------------------------------------------------------- counts


def test_prompt_counts(tiny_model: FiLoPlusPlus, tiny_cfg: ModelConfig, k_c: int) -> None:
    g = _unit_globals(3, tiny_cfg.backbone.embed_dim)
    with torch.no_grad():
        normal, abnormal = tiny_model.prompts(CLASS_NAME, g)
    c = tiny_cfg.backbone.embed_dim
    assert normal.shape == (3, 2 * NUM_NORMAL_STATES, c)  # 7 fixed + 7 learnable
    assert abnormal.shape == (3, NUM_POSITIONS, 2 * k_c, c)
    prompts = tiny_model.prompts.prepare(CLASS_NAME)
    assert prompts.num_normal == 2 * NUM_NORMAL_STATES
    assert prompts.num_abnormal_per_position == 2 * k_c


@pytest.mark.parametrize(("use_fixed", "use_learnable"), [(True, False), (False, True)])
def test_prompt_counts_with_one_source(
    tiny_model: FiLoPlusPlus, tiny_cfg: ModelConfig, k_c: int, use_fixed: bool, use_learnable: bool
) -> None:
    learner = _learner(tiny_model, use_fixed=use_fixed, use_learnable=use_learnable)
    with torch.no_grad():
        normal, abnormal = learner(CLASS_NAME, _unit_globals(2, tiny_cfg.backbone.embed_dim))
    assert normal.shape[1] == NUM_NORMAL_STATES
    assert abnormal.shape[1:3] == (NUM_POSITIONS, k_c)
    assert len(learner.prepare(CLASS_NAME).abnormal_descriptions()) == NUM_POSITIONS * k_c


def test_context_parameters(tiny_model: FiLoPlusPlus, tiny_cfg: ModelConfig) -> None:
    """Separate V and W contexts [n_ctx, W], each with its own meta-net C -> C/16 -> W."""
    pl = tiny_model.prompts
    w, c = tiny_cfg.backbone.text_width, tiny_cfg.backbone.embed_dim
    assert pl.ctx_normal.shape == pl.ctx_abnormal.shape == (tiny_cfg.prompts.n_ctx, w)
    assert pl.ctx_normal.data_ptr() != pl.ctx_abnormal.data_ptr()
    for meta in (pl.meta_normal, pl.meta_abnormal):
        assert meta.linear1.weight.shape == (max(1, c // 16), c)
        assert meta.linear2.weight.shape == (w, max(1, c // 16))
    assert pl.meta_normal.linear1.weight.data_ptr() != pl.meta_abnormal.linear1.weight.data_ptr()


def test_context_init_and_meta_net_sizes_for_filo() -> None:
    """§0.3 / §1.3 at full size: V, W are [12, 768] ~ N(0, 0.02^2); pi is 768 -> 48 -> 768."""
    from fgad.config import load_config

    cfg = load_config("filo-vitl14-336").model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        learner = PromptLearner(cfg, text_encoder=None, tokenizer=None)  # no text tower needed
    for ctx in (learner.ctx_normal, learner.ctx_abnormal):
        assert ctx.shape == (12, 768)
        assert abs(ctx.std().item() - 0.02) < 1e-3  # 9216 samples: std error ~1.5e-4
        assert abs(ctx.mean().item()) < 1e-3
    assert not torch.equal(learner.ctx_normal, learner.ctx_abnormal)
    for meta in (learner.meta_normal, learner.meta_abnormal):
        assert meta.linear1.weight.shape == (48, 768) and meta.linear2.weight.shape == (768, 48)


# ---------------------------------------------------------------- CoOp


def test_coop_with_placeholder_context_equals_plain_text(
    tiny_model: FiLoPlusPlus, tiny_clip, tiny_tokenizer, n_ctx: int, k_c: int
) -> None:
    learner = _learner(tiny_model, conditioning="coop")
    ctx = _placeholder_ctx(tiny_clip, tiny_tokenizer, n_ctx)
    with torch.no_grad():
        learner.ctx_normal.copy_(ctx)
        learner.ctx_abnormal.copy_(ctx)
        normal, abnormal = learner(CLASS_NAME, _unit_globals(1, tiny_clip.text_projection.shape[1]))
    texts = learner.prepare(CLASS_NAME).texts
    placeholder = " ".join(["X"] * n_ctx)
    expected_n = _encode(tiny_clip, tiny_tokenizer, [f"{placeholder} {t}" for t in texts.learn_normal])
    torch.testing.assert_close(normal[0, NUM_NORMAL_STATES:], expected_n, atol=ATOL, rtol=RTOL)
    flat = [f"{placeholder} {t}" for row in texts.learn_abnormal for t in row]
    expected_a = _encode(tiny_clip, tiny_tokenizer, flat).unflatten(0, (NUM_POSITIONS, k_c))
    torch.testing.assert_close(abnormal[0, :, k_c:], expected_a, atol=ATOL, rtol=RTOL)


def test_coop_features_do_not_depend_on_the_image(tiny_model: FiLoPlusPlus, tiny_cfg: ModelConfig) -> None:
    learner = _learner(tiny_model, conditioning="coop")
    g = _unit_globals(2, tiny_cfg.backbone.embed_dim)
    with torch.no_grad():
        normal, abnormal = learner(CLASS_NAME, g)
    torch.testing.assert_close(normal[0], normal[1], atol=0.0, rtol=0.0)
    torch.testing.assert_close(abnormal[0], abnormal[1], atol=0.0, rtol=0.0)
    assert not hasattr(learner, "meta_normal")


# ---------------------------------------------------------------- CoCoOp


def test_cocoop_bias_goes_to_every_context_token(
    tiny_model: FiLoPlusPlus, tiny_clip, tiny_tokenizer, n_ctx: int, k_c: int
) -> None:
    """Meta-net output fixed to b and context set to E_X - b: every token must become E_X again."""
    learner = _learner(tiny_model, conditioning="cocoop")
    ctx = _placeholder_ctx(tiny_clip, tiny_tokenizer, n_ctx)
    width = ctx.shape[1]
    b_n = torch.linspace(-0.05, 0.07, width)
    b_a = torch.linspace(0.04, -0.06, width)
    with torch.no_grad():
        for meta, b in ((learner.meta_normal, b_n), (learner.meta_abnormal, b_a)):
            meta.linear2.weight.zero_()
            meta.linear2.bias.copy_(b)
        learner.ctx_normal.copy_(ctx - b_n)
        learner.ctx_abnormal.copy_(ctx - b_a)
        normal, abnormal = learner(CLASS_NAME, _unit_globals(2, tiny_clip.text_projection.shape[1]))
    texts = learner.prepare(CLASS_NAME).texts
    placeholder = " ".join(["X"] * n_ctx)
    expected_n = _encode(tiny_clip, tiny_tokenizer, [f"{placeholder} {t}" for t in texts.learn_normal])
    flat = [f"{placeholder} {t}" for row in texts.learn_abnormal for t in row]
    expected_a = _encode(tiny_clip, tiny_tokenizer, flat).unflatten(0, (NUM_POSITIONS, k_c))
    for i in range(2):
        torch.testing.assert_close(normal[i, NUM_NORMAL_STATES:], expected_n, atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(abnormal[i, :, k_c:], expected_a, atol=ATOL, rtol=RTOL)


def test_cocoop_equals_coop_with_hand_computed_bias(tiny_model: FiLoPlusPlus, tiny_cfg: ModelConfig) -> None:
    """c_i = c_i^0 + pi(n(G)), pi = Linear - ReLU - Linear, computed with explicit matrix products."""
    cocoop = _learner(tiny_model, seed=5, conditioning="cocoop")
    coop = _learner(tiny_model, seed=6, conditioning="coop", use_fixed=False)
    with torch.no_grad():  # make the meta-nets produce sizeable biases
        for meta in (cocoop.meta_normal, cocoop.meta_abnormal):
            meta.linear2.weight.mul_(20.0)
    g = _unit_globals(2, tiny_cfg.backbone.embed_dim, seed=11)

    def pi(meta: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.clamp(x @ meta.linear1.weight.T + meta.linear1.bias, min=0.0)
        return hidden @ meta.linear2.weight.T + meta.linear2.bias

    with torch.no_grad():
        normal, abnormal = cocoop(CLASS_NAME, g)
        for i in range(2):
            coop.ctx_normal.copy_(cocoop.ctx_normal + pi(cocoop.meta_normal, g[i]))
            coop.ctx_abnormal.copy_(cocoop.ctx_abnormal + pi(cocoop.meta_abnormal, g[i]))
            ref_n, ref_a = coop(CLASS_NAME, g[i : i + 1])
            torch.testing.assert_close(normal[i, NUM_NORMAL_STATES:], ref_n[0], atol=ATOL, rtol=RTOL)
            torch.testing.assert_close(abnormal[i, :, -ref_a.shape[2] :], ref_a[0], atol=ATOL, rtol=RTOL)
    # Image-conditioned: the two images get different learnable features, the same fixed ones.
    assert (normal[0, NUM_NORMAL_STATES:] - normal[1, NUM_NORMAL_STATES:]).abs().max() > 1e-4
    torch.testing.assert_close(normal[0, :NUM_NORMAL_STATES], normal[1, :NUM_NORMAL_STATES], atol=0.0, rtol=0.0)


# ---------------------------------------------------------------- descriptions


def test_abnormal_descriptions_match_the_flattened_features(
    tiny_model: FiLoPlusPlus, tiny_clip, tiny_tokenizer, n_ctx: int, k_c: int
) -> None:
    """descriptions[i] is the text of row i of abnormal.flatten(1, 2), for fixed and learnable prompts."""
    learner = _learner(tiny_model, conditioning="coop")
    ctx = _placeholder_ctx(tiny_clip, tiny_tokenizer, n_ctx)
    with torch.no_grad():
        learner.ctx_abnormal.copy_(ctx)
        _, abnormal = learner(CLASS_NAME, _unit_globals(1, tiny_clip.text_projection.shape[1]))
    flat = abnormal.flatten(1, 2)[0]
    descriptions = learner.prepare(CLASS_NAME).abnormal_descriptions()
    assert len(descriptions) == NUM_POSITIONS * 2 * k_c == flat.shape[0]
    placeholder = " ".join(["X"] * n_ctx)
    texts = [d.replace("[ctx]", placeholder) if d.startswith("[ctx] ") else d for d in descriptions]
    assert sum(d.startswith("[ctx] ") for d in descriptions) == NUM_POSITIONS * k_c
    torch.testing.assert_close(flat, _encode(tiny_clip, tiny_tokenizer, texts), atol=ATOL, rtol=RTOL)
    # Position blocks of 2 * K_c consecutive rows, in POSITIONS order.
    for i, d in enumerate(descriptions):
        assert d.endswith(f" at {POSITIONS[i // (2 * k_c)]}."), (i, d)


def test_prepare_is_cached_and_cache_cleared_on_move(tiny_model: FiLoPlusPlus) -> None:
    learner = _learner(tiny_model)
    first = learner.prepare(CLASS_NAME)
    assert learner.prepare(CLASS_NAME) is first
    learner.to(torch.float32)
    assert learner.prepare(CLASS_NAME) is not first


def test_unknown_class_is_reported(tiny_model: FiLoPlusPlus) -> None:
    with pytest.raises(KeyError):
        _learner(tiny_model).prepare("no-such-class-xyz")


def test_truncating_after_the_longest_eot_is_exact(tiny_model) -> None:  # noqa: ANN001
    """Causal attention: tokens after EOT cannot change the EOT feature, so cutting them is exact."""
    import torch

    prompts = tiny_model.prompts
    texts = ["an industrial photo of a flawless tile.", "abnormal tile with a scratch at top left."]
    tokens = prompts.tokenizer(texts)
    eot = tokens.argmax(dim=-1)
    emb = tiny_model.text_encoder.embed_tokens(tokens)
    with torch.no_grad():
        full = tiny_model.text_encoder(emb, eot)
        cut = tiny_model.text_encoder(emb, eot, seq_len=int(eot.max()) + 1)
    assert int(eot.max()) + 1 < tokens.shape[1]  # the cut really shortens the sequence
    torch.testing.assert_close(cut, full, rtol=1e-5, atol=1e-6)
