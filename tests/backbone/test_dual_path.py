"""Dual-path backbone and text tower (METHOD.md §0.2, §0.3), re-derived from open_clip and by hand.

Reference values come from open_clip's own forward (``encode_image`` / ``encode_text`` and
forward hooks on its blocks) or from the block weights with explicit matrix products in float64,
never from ``fgad.backbone.dual_path`` itself.
"""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from fgad.backbone.clip_loader import (
    check_architecture,
    create_clip,
    ensure_position_grid,
    resize_position_embedding,
    state_fingerprint,
)
from fgad.backbone.compat import import_open_clip
from fgad.backbone.dual_path import ClipDualPath, TextEncoder
from fgad.config import ConfigError, ModelConfig, replace

ATOL = 1e-5  # float32 forward vs float64 / open_clip reference
RTOL = 1e-4


# ---------------------------------------------------------------- references


def _open_clip_block_outputs(
    clip: torch.nn.Module, images: torch.Tensor
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Run ``clip.encode_image`` and capture x^0 (transformer input) and x^l (1-indexed block outputs)."""
    captured: dict[int, torch.Tensor] = {}
    handles = [
        clip.visual.transformer.register_forward_pre_hook(
            lambda _m, args: captured.__setitem__(0, args[0].detach().clone())
        )
    ]
    for index, block in enumerate(clip.visual.transformer.resblocks, start=1):
        handles.append(
            block.register_forward_hook(lambda _m, _a, out, i=index: captured.__setitem__(i, out.detach().clone()))
        )
    try:
        with torch.no_grad():
            pooled = clip.encode_image(images)
    finally:
        for h in handles:
            h.remove()
    return pooled, captured


def _layer_norm64(ln: torch.nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """LayerNorm written out: (x - mean) / sqrt(var + eps) * w + b, float64."""
    x = x.double()
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + ln.eps) * ln.weight.double() + ln.bias.double()


def _vv_by_hand(block: torch.nn.Module, u: torch.Tensor, heads: int) -> torch.Tensor:
    """VV(u) = concat_h softmax(v_h v_h^T / sqrt(d)) v_h, then out_proj; v from in_proj (float64)."""
    width = u.shape[-1]
    d = width // heads
    w_qkv = block.attn.in_proj_weight.double()
    b_qkv = block.attn.in_proj_bias.double()
    v = u @ w_qkv[2 * width :].T + b_qkv[2 * width :]  # only the v third of in_proj
    per_head = []
    for h in range(heads):
        vh = v[..., h * d : (h + 1) * d]
        logits = vh @ vh.transpose(-1, -2) / math.sqrt(d)
        a = torch.exp(logits - logits.amax(dim=-1, keepdim=True))
        a = a / a.sum(dim=-1, keepdim=True)
        per_head.append(a @ vh)
    out = torch.cat(per_head, dim=-1)
    return out @ block.attn.out_proj.weight.double().T + block.attn.out_proj.bias.double()


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def dual(tiny_cfg: ModelConfig, tiny_clip: torch.nn.Module) -> ClipDualPath:
    """A dual path over the standalone open_clip model, every layer requested."""
    bb = tiny_cfg.backbone
    every = tuple(range(1, bb.layers + 1))
    return ClipDualPath(tiny_clip.visual, bb, every, tuple(range(bb.vv_start, bb.layers + 1))).eval()


@pytest.fixture(scope="module")
def reference(tiny_clip: torch.nn.Module, images: torch.Tensor):  # noqa: ANN201
    return _open_clip_block_outputs(tiny_clip, images)


# ---------------------------------------------------------------- (a) original path = open_clip


def test_tiny_blocks_have_no_layer_scale(tiny_clip: torch.nn.Module) -> None:
    """The hand derivations below omit LayerScale; make sure that is exact for this model."""
    for block in tiny_clip.visual.transformer.resblocks:
        assert isinstance(block.ls_1, torch.nn.Identity) and isinstance(block.ls_2, torch.nn.Identity)


def test_global_embedding_equals_open_clip_encode_image(
    tiny_model, tiny_clip: torch.nn.Module, images: torch.Tensor, reference
) -> None:
    pooled, _ = reference
    with torch.no_grad():
        feats = tiny_model.backbone(images)
    assert feats.global_embed.shape == (2, tiny_model.cfg.backbone.embed_dim)
    torch.testing.assert_close(feats.global_embed, pooled, atol=ATOL, rtol=RTOL)
    # G = LN_post(x^L[:, 0]) W_proj, with LN_post written out.
    _, blocks = reference
    last = blocks[len(tiny_clip.visual.transformer.resblocks)]
    g = _layer_norm64(tiny_clip.visual.ln_post, last[:, 0]) @ tiny_clip.visual.proj.double()
    torch.testing.assert_close(feats.global_embed.double(), g, atol=ATOL, rtol=RTOL)


def test_original_path_tokens_equal_open_clip_blocks(
    tiny_model, tiny_cfg: ModelConfig, images: torch.Tensor, reference
) -> None:
    _, blocks = reference
    with torch.no_grad():
        feats = tiny_model.backbone(images)
    n_tokens = tiny_cfg.backbone.num_patches + 1
    assert len(feats.ori) == len(tiny_cfg.feature_layers)
    for layer, tokens in zip(tiny_cfg.feature_layers, feats.ori, strict=True):
        assert tokens.shape == (2, n_tokens, tiny_cfg.backbone.width)
        torch.testing.assert_close(tokens, blocks[layer], atol=ATOL, rtol=RTOL)


def test_original_path_last_block_by_running_open_clip_blocks_directly(
    tiny_model, tiny_clip: torch.nn.Module, images: torch.Tensor
) -> None:
    """x^L from open_clip's own embedding + ``visual.transformer.resblocks`` called one by one."""
    visual = tiny_clip.visual
    with torch.no_grad():
        x = visual.conv1(images).flatten(2).transpose(1, 2)
        cls = visual.class_embedding.view(1, 1, -1).expand(x.shape[0], 1, -1)
        x = visual.ln_pre(torch.cat([cls, x], dim=1) + visual.positional_embedding)
        for block in visual.transformer.resblocks:
            x = block(x)
        feats = tiny_model.backbone(images)
    torch.testing.assert_close(feats.ori[-1], x, atol=ATOL, rtol=RTOL)


# ---------------------------------------------------------------- (b) V-V path by hand


@pytest.mark.parametrize("layer", [2, 3, 4])
def test_vv_block_by_hand(
    dual: ClipDualPath, tiny_cfg: ModelConfig, images: torch.Tensor, reference, layer: int
) -> None:
    """z^l = z^{l-1} + out_proj(concat_h softmax(v_h v_h^T/sqrt d) v_h), v from LN1(x^{l-1}), no MLP."""
    bb = tiny_cfg.backbone
    _, blocks = reference  # open_clip's x^l
    with torch.no_grad():
        feats = dual(images)
    vv = dict(zip(dual.vv_layers, feats.vv, strict=True))
    block = dual.blocks[layer - 1]
    x_prev = blocks[layer - 1].double()  # original-path state x^{l-1} (x^0 for l = 1)
    z_prev = x_prev if layer == bb.vv_start else vv[layer - 1].double()  # z^{l0-1} = x^{l0-1}
    expected = z_prev + _vv_by_hand(block, _layer_norm64(block.ln_1, x_prev), bb.heads)
    torch.testing.assert_close(vv[layer].double(), expected, atol=ATOL, rtol=RTOL)

    # The check can tell the wrong recipes apart: LN1 of z instead of x, or an MLP on the V-V path.
    if layer > bb.vv_start:
        wrong = z_prev + _vv_by_hand(block, _layer_norm64(block.ln_1, z_prev), bb.heads)
        assert (wrong - expected).abs().max() > 100 * ATOL
    with torch.no_grad():
        with_mlp = expected + block.mlp(block.ln_2(expected.float())).double()
    assert (with_mlp - expected).abs().max() > 100 * ATOL


def test_vv_starts_from_original_state_before_vv_start(dual: ClipDualPath, images: torch.Tensor, reference) -> None:
    """z^{l0} - x^{l0-1} is the V-V update alone: it must not contain the MLP of block l0."""
    _, blocks = reference
    with torch.no_grad():
        feats = dual(images)
    l0 = dual.cfg.vv_start
    z_l0 = feats.vv[dual.vv_layers.index(l0)]
    # z^{l0} differs from x^{l0} (the V-V path is not the original path) ...
    assert (z_l0 - blocks[l0]).abs().max() > 100 * ATOL
    # ... and differs from any choice of start other than x^{l0-1}, e.g. x^{l0}.
    block = dual.blocks[l0 - 1]
    from_xl0 = blocks[l0].double() + _vv_by_hand(
        block, _layer_norm64(block.ln_1, blocks[l0 - 1].double()), dual.cfg.heads
    )
    assert (z_l0.double() - from_xl0).abs().max() > 100 * ATOL


def test_vv_from_block_one(tiny_cfg: ModelConfig, tiny_clip: torch.nn.Module, images: torch.Tensor, reference) -> None:
    """l0 = 1 (the FineGrainedAD setting): z^0 = x^0, the transformer input after ln_pre."""
    bb = replace(tiny_cfg.backbone, vv_start=1)
    path = ClipDualPath(tiny_clip.visual, bb, (1,), (1, 2)).eval()
    _, blocks = reference
    with torch.no_grad():
        feats = path(images)
    block = path.blocks[0]
    x0 = blocks[0].double()
    z1 = x0 + _vv_by_hand(block, _layer_norm64(block.ln_1, x0), bb.heads)
    torch.testing.assert_close(feats.vv[0].double(), z1, atol=ATOL, rtol=RTOL)
    block2 = path.blocks[1]
    z2 = z1 + _vv_by_hand(block2, _layer_norm64(block2.ln_1, blocks[1].double()), bb.heads)
    torch.testing.assert_close(feats.vv[1].double(), z2, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(feats.ori[0], blocks[1], atol=ATOL, rtol=RTOL)


def test_vv_layer_before_start_is_refused(tiny_cfg: ModelConfig, tiny_clip: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match="vv_start"):
        ClipDualPath(tiny_clip.visual, tiny_cfg.backbone, (1,), (1, 2))


# ---------------------------------------------------------------- (c) out of place


def test_stored_features_are_distinct_tensors_with_distinct_values(dual: ClipDualPath, images: torch.Tensor) -> None:
    with torch.no_grad():
        feats = dual(images)
    stored = [("ori", i, t) for i, t in zip(dual.ori_layers, feats.ori, strict=True)]
    stored += [("vv", i, t) for i, t in zip(dual.vv_layers, feats.vv, strict=True)]
    for a in range(len(stored)):
        for b in range(a + 1, len(stored)):
            (ka, la, ta), (kb, lb, tb) = stored[a], stored[b]
            assert ta.data_ptr() != tb.data_ptr(), f"{ka}{la} and {kb}{lb} share storage"
            assert (ta - tb).abs().max() > 1e-3, f"{ka}{la} equals {kb}{lb} (aliasing, METHOD.md P1)"


def test_mutating_returned_features_changes_nothing(dual: ClipDualPath, images: torch.Tensor) -> None:
    with torch.no_grad():
        first = dual(images)
        saved = [t.clone() for t in (first.global_embed, *first.ori, *first.vv)]
        for t in (first.global_embed, *first.ori, *first.vv):
            t.mul_(-3.0).add_(7.0)
        again = dual(images)
    for before, after in zip(saved, (again.global_embed, *again.ori, *again.vv), strict=True):
        torch.testing.assert_close(after, before, atol=0.0, rtol=0.0)


def test_mutating_one_stored_layer_leaves_the_others(dual: ClipDualPath, images: torch.Tensor) -> None:
    with torch.no_grad():
        feats = dual(images)
    others = [t.clone() for t in (*feats.ori[1:], *feats.vv)]
    feats.ori[0].zero_()
    for before, after in zip(others, (*feats.ori[1:], *feats.vv), strict=True):
        torch.testing.assert_close(after, before, atol=0.0, rtol=0.0)


# ---------------------------------------------------------------- (d) position grid


def test_resize_position_embedding_keeps_cls_and_grid_rows() -> None:
    gen = torch.Generator().manual_seed(0)
    pos = torch.randn(1 + 5 * 5, 8, generator=gen)
    out = resize_position_embedding(pos, 7)
    assert out.shape == (1 + 7 * 7, 8)
    torch.testing.assert_close(out[0], pos[0], atol=0.0, rtol=0.0)
    # Same size: bicubic at scale 1 is the identity.
    torch.testing.assert_close(resize_position_embedding(pos, 5), pos, atol=1e-6, rtol=0.0)
    # A constant grid stays constant (the bicubic weights sum to 1).
    const = torch.cat([pos[:1], torch.full((25, 8), 0.25)])
    torch.testing.assert_close(resize_position_embedding(const, 9)[1:], torch.full((81, 8), 0.25), atol=1e-6, rtol=0)


def test_resize_position_embedding_matches_open_clip() -> None:
    """Upsampling agrees with open_clip's own ``resize_pos_embed``, the force_image_size path (METHOD §0)."""
    open_clip = import_open_clip()
    gen = torch.Generator().manual_seed(1)
    pos = torch.randn(1 + 24 * 24, 16, generator=gen)
    state = {"visual.positional_embedding": pos.clone()}
    open_clip.model.resize_pos_embed(state, SimpleNamespace(visual=SimpleNamespace(grid_size=(37, 37))))
    expected = state["visual.positional_embedding"]
    assert expected.shape == (1 + 37 * 37, 16)
    torch.testing.assert_close(resize_position_embedding(pos, 37), expected, atol=1e-5, rtol=1e-5)


def test_resize_position_embedding_refuses_non_square() -> None:
    with pytest.raises(ValueError, match="square"):
        resize_position_embedding(torch.zeros(1 + 24, 4), 5)


def test_ensure_position_grid_fixes_a_wrong_table(tiny_cfg: ModelConfig, tiny_clip: torch.nn.Module) -> None:
    bb = tiny_cfg.backbone
    visual = copy.deepcopy(tiny_clip.visual)
    small = resize_position_embedding(visual.positional_embedding.data, 5)  # 26 rows, wrong for 112 px
    visual.positional_embedding = torch.nn.Parameter(small)
    visual.grid_size = (5, 5)
    ensure_position_grid(visual, bb)
    assert visual.positional_embedding.shape == (bb.num_patches + 1, bb.width)
    assert tuple(visual.grid_size) == (bb.grid, bb.grid)
    torch.testing.assert_close(visual.positional_embedding[0], small[0], atol=0.0, rtol=0.0)
    with torch.no_grad():
        out = visual(torch.zeros(1, 3, bb.image_size, bb.image_size))
    assert out.shape == (1, bb.embed_dim)


def test_ensure_position_grid_leaves_a_right_table_alone(tiny_cfg: ModelConfig, tiny_clip: torch.nn.Module) -> None:
    visual = copy.deepcopy(tiny_clip.visual)
    before = visual.positional_embedding
    ensure_position_grid(visual, tiny_cfg.backbone)
    assert visual.positional_embedding is before


# ---------------------------------------------------------------- (e) architecture check


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("width", 128),
        ("heads", 4),
        ("layers", 6),
        ("embed_dim", 32),
        ("text_width", 128),
        ("patch_size", 8),
        ("context_length", 64),
    ],
)
def test_check_architecture_names_the_field(
    tiny_cfg: ModelConfig, tiny_clip: torch.nn.Module, field: str, value: int
) -> None:
    bb = replace(tiny_cfg.backbone, **{field: value})  # BackboneConfig alone does no validation
    with pytest.raises(ConfigError, match=rf"backbone\.{field}={value}\b"):
        check_architecture(tiny_clip, bb)


def test_check_architecture_accepts_the_matching_config(tiny_cfg: ModelConfig, tiny_clip: torch.nn.Module) -> None:
    check_architecture(tiny_clip, tiny_cfg.backbone)


def test_check_architecture_position_table_names_the_field(tiny_cfg: ModelConfig, tiny_clip: torch.nn.Module) -> None:
    bb = replace(tiny_cfg.backbone, image_size=128)
    with pytest.raises(ConfigError, match=r"backbone\.image_size"):
        check_architecture(tiny_clip, bb)


def _activations(clip: torch.nn.Module) -> set[type]:
    blocks = list(clip.visual.transformer.resblocks) + list(clip.transformer.resblocks)
    return {type(b.mlp.gelu) for b in blocks}


def test_quick_gelu_flag_on(tiny_clip: torch.nn.Module) -> None:
    open_clip = import_open_clip()
    assert _activations(tiny_clip) == {open_clip.transformer.QuickGELU}


def test_quick_gelu_flag_off_gives_exact_gelu(tiny_cfg: ModelConfig) -> None:
    """METHOD.md §0 Loading: QuickGELU by default, with a flag for exact GELU (CODE-FiLo's P3)."""
    clip = create_clip(replace(tiny_cfg.backbone, quick_gelu=False))
    assert _activations(clip) == {torch.nn.GELU}


# ---------------------------------------------------------------- (f) reproducible random init


def test_random_init_is_reproducible_from_init_seed(tiny_cfg: ModelConfig, tiny_clip: torch.nn.Module) -> None:
    rng_before = torch.random.get_rng_state()
    again = create_clip(tiny_cfg.backbone)
    other = create_clip(replace(tiny_cfg.backbone, init_seed=tiny_cfg.backbone.init_seed + 1))
    assert torch.equal(torch.random.get_rng_state(), rng_before), "create_clip disturbed the global RNG"
    assert state_fingerprint(again) == state_fingerprint(tiny_clip)
    assert state_fingerprint(other) != state_fingerprint(tiny_clip)
    assert not torch.equal(other.visual.conv1.weight, tiny_clip.visual.conv1.weight)


def test_state_fingerprint_sees_one_changed_value(tiny_clip: torch.nn.Module) -> None:
    module = copy.deepcopy(tiny_clip.visual.ln_post)
    before = state_fingerprint(module)
    assert state_fingerprint(copy.deepcopy(module)) == before
    with torch.no_grad():
        module.weight[3] += 1e-6
    assert state_fingerprint(module) != before


def test_model_towers_are_frozen_and_equal_the_standalone_clip(tiny_model, tiny_clip: torch.nn.Module) -> None:
    assert state_fingerprint(tiny_model.backbone.blocks) == state_fingerprint(tiny_clip.visual.transformer.resblocks)
    assert not any(p.requires_grad for p in tiny_model.backbone.parameters())
    assert not any(p.requires_grad for p in tiny_model.text_encoder.parameters())


# ---------------------------------------------------------------- (g) text tower


def test_text_encoder_on_embeddings_equals_encode_text(tiny_clip: torch.nn.Module, tiny_tokenizer) -> None:
    texts = ["a photo of a tile.", "abnormal tile with a long scratch across the surface at top left.", "x"]
    tokens = tiny_tokenizer(texts)
    encoder = TextEncoder(tiny_clip)
    with torch.no_grad():
        ours = encoder(encoder.embed_tokens(tokens), tokens.argmax(dim=-1))
        theirs = tiny_clip.encode_text(tokens)
    assert ours.shape == (3, tiny_clip.text_projection.shape[1])
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=RTOL)
    # The EOT row matters: reading a different row gives a different feature.
    with torch.no_grad():
        shifted = encoder(encoder.embed_tokens(tokens), tokens.argmax(dim=-1) - 1)
    assert (shifted - theirs).abs().max() > 1e-3


def test_text_encoder_is_causal(tiny_clip: torch.nn.Module, tiny_tokenizer) -> None:
    """Changing embeddings after the EOT does not change the feature (causal mask)."""
    tokens = tiny_tokenizer(["a photo of a tile."])
    encoder = TextEncoder(tiny_clip)
    eot = tokens.argmax(dim=-1)
    emb = encoder.embed_tokens(tokens)
    noisy = emb.clone()
    noisy[:, int(eot) + 1 :] += torch.randn_like(noisy[:, int(eot) + 1 :])
    with torch.no_grad():
        torch.testing.assert_close(encoder(noisy, eot), encoder(emb, eot), atol=ATOL, rtol=RTOL)


def test_layer_norm_reference_matches_torch(tiny_clip: torch.nn.Module) -> None:
    """Sanity of the float64 helper used above."""
    ln = tiny_clip.visual.ln_post
    x = torch.randn(3, 5, ln.weight.shape[0])
    with torch.no_grad():
        torch.testing.assert_close(
            _layer_norm64(ln, x).float(),
            F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps),
            atol=1e-5,
            rtol=1e-5,
        )
