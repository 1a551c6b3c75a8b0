"""MLLP prompt families (METHOD.md §2.3): texts, counts, determinism, location swaps, fusion rows, contexts."""

from __future__ import annotations

import re

import pytest
import torch

from fgad.backbone.clip_loader import create_clip, get_tokenizer
from fgad.backbone.dual_path import TextEncoder
from fgad.config import load_config
from fgad.methods.finegrained.captions.schema import CaptionRecord, Entity
from fgad.methods.finegrained.mllp import (
    ATTRIBUTE_KINDS,
    MllpTexts,
    MultiLevelPrompts,
    Vocabulary,
    _length_buckets,
    _top_by_embedding,
    build_mllp_texts,
)

VOCAB = Vocabulary(
    colors=("red", "blue", "green", "white", "black"),
    textures=("smooth", "rough", "glossy"),
    shapes=("round", "square", "flat", "oval"),
    locations=("center", "top", "bottom", "left", "right", "corners"),
)
DEFECTS = ("with a crack", "with a hole", "with a stain")

RECORD = CaptionRecord(
    class_name="widget",
    foreground="widget",
    background="dark gray",
    entities=(
        Entity(name="bolt", number="one", location="center", direction="vertical", color="red",
               texture="smooth", shape="round", caption="A red bolt sits in the center of the plate."),
        Entity(name="washer", number="two", location="top", direction="", color="blue and white",
               texture="glossy", shape="flat", caption="Two blue and white washers lie at the top."),
    ),
    relation="The bolt passes through the washers.",
    caption="A metal widget on a dark gray table, its bolt in the center.",
)


def _texts(seed: int = 111, **kwargs: object) -> MllpTexts:
    return build_mllp_texts(RECORD, DEFECTS, seed=seed, vocabulary=VOCAB, **kwargs)  # type: ignore[arg-type]


def test_families_and_counts_follow_the_table() -> None:
    texts = _texts()
    # pair order: entities, image, background
    assert [f.kind for f in texts.families] == ["entity", "entity", "image", "background"]
    assert texts.pair_names == ("entity: bolt", "entity: washer", "image", "background")
    image, background = texts.family("image"), texts.family("background")
    assert image.normal == RECORD.caption
    assert len(image.handle) == len(DEFECTS)
    for d, h in zip(DEFECTS, image.handle, strict=True):
        assert f"widget {d}" in h and h.replace(f" {d}", "") == RECORD.caption
    # every text ends with one full stop, as the released code's prompts (never two: issue 13, item 2)
    assert background.normal == "dark gray background."
    assert background.handle == tuple(f"dark gray background {d}." for d in DEFECTS)
    for fam, ent in zip(texts.families[:2], RECORD.entities, strict=True):
        assert fam.normal == ent.caption and len(fam.handle) == 1  # the captions end with "." already
        assert any(f"{ent.name}" in fam.handle[0] and d in fam.handle[0] for d in DEFECTS)
        assert fam.handle[0] == fam.handle[0].lower()
    # fusion sources: relation, then colour/texture/shape of the class
    assert [a.kind for a in texts.attributes] == list(ATTRIBUTE_KINDS)
    named = sum(1 for e in RECORD.entities if re.search(rf"\b{e.name}", RECORD.relation))
    assert len(texts.family("relation").handle) == named * len(DEFECTS)
    color = texts.family("color")
    used = {"red", "blue", "white"}
    assert color.normal == ". ".join(["red", "blue", "white"]) + "."
    assert {h.removesuffix(".") for h in color.handle} == set(VOCAB.colors) - used
    assert len(color.handle) == len(VOCAB.colors) - len(used)
    every = [t for f in (*texts.families, *texts.attributes) for t in (f.normal, *f.handle)]
    assert all(t.endswith(".") and not t.endswith("..") for t in every)
    assert len(texts.family("texture").handle) == len(VOCAB.textures) - 2
    assert len(texts.family("shape").handle) == len(VOCAB.shapes) - 2


def test_texts_are_deterministic_given_the_seed_and_round_trip() -> None:
    a, b = _texts(seed=5), _texts(seed=5)
    assert a == b
    assert MllpTexts.from_dict(a.to_dict()) == a
    draws = {tuple(f.handle for f in _texts(seed=s).families[:2]) for s in range(12)}
    assert len(draws) > 1  # the seed matters (random δ and location)


def test_location_swap_never_keeps_the_original_location() -> None:
    for seed in range(40):
        texts = _texts(seed=seed, entity_handles=2)
        for fam, ent in zip(texts.families[:2], RECORD.entities, strict=True):
            for handle, note in zip(fam.handle, fam.notes, strict=True):
                new = note.split(" -> ")[1]
                assert new != ent.location and new in VOCAB.locations
                assert not re.search(rf"(?<!\w){ent.location}(?!\w)", handle), handle
                assert new in handle


def test_top_k_cut_cycles_when_the_set_is_small() -> None:
    """F17: a complement set smaller than the image handle count is cycled, best first."""
    scores = {"a": 0.1, "b": 0.9, "c": 0.5}

    def score(texts: list[str]) -> torch.Tensor:
        return torch.tensor([scores[t] for t in texts])

    assert _top_by_embedding(["a", "b", "c"], 2, score) == ["b", "c"]
    assert _top_by_embedding(["a", "b", "c"], 7, score) == ["b", "c", "a", "b", "c", "a", "b"]
    assert _top_by_embedding([], 3, score) == []


@pytest.fixture(scope="module")
def tiny() -> tuple:
    """(model config, frozen tiny CLIP, tokenizer) of fgad-tiny."""
    cfg = load_config("fgad-tiny").model
    return cfg, create_clip(cfg.backbone), get_tokenizer(cfg.backbone)


def _prompts(tiny: tuple, **fc_changes: object) -> MultiLevelPrompts:
    from fgad.config import replace

    cfg, clip, tokenizer = tiny
    fc = replace(cfg.finegrained, **fc_changes)
    torch.manual_seed(0)
    return MultiLevelPrompts(fc, _texts(), tokenizer, clip.token_embedding)


def test_learnable_contexts_and_encoded_prompt_count(tiny: tuple) -> None:
    cfg, clip, _ = tiny
    width = cfg.backbone.text_width
    prompts = _prompts(tiny, n_pro=2)
    fc = prompts.fc
    assert prompts.ctx_normal.shape == (2, fc.n_normal_ctx, width)
    assert prompts.ctx_abnormal.shape == (fc.n_abnormal_ctx, fc.abnormal_ctx_len, width)
    assert prompts.fusion_weights.shape == (8,)
    texts = prompts.texts
    # per family: n_pro normal + n_pro * handles + n_pro * n_abnormal_ctx learned prompts
    expected = sum(fc.n_pro * (1 + len(f.handle) + fc.n_abnormal_ctx) for f in texts.families)
    feats = prompts(TextEncoder(clip))
    assert feats.features.shape == (expected, cfg.backbone.embed_dim)
    for i, fam in enumerate(texts.families):
        assert feats.normal(i).shape[0] == fc.n_pro
        assert feats.handle(i).shape[0] == fc.n_pro * len(fam.handle)
        assert feats.learned(i).shape[0] == fc.n_pro * fc.n_abnormal_ctx
    t_n, t_a = prompts.pairs(feats)
    assert t_n.shape == t_a.shape == (len(texts.families), cfg.backbone.embed_dim)
    assert torch.allclose(t_n.norm(dim=-1), torch.ones(len(texts.families)), atol=1e-5)


def test_words_fusion_only_touches_word_rows_before_the_image_eot(tiny: tuple) -> None:
    fused = _prompts(tiny)
    plain = _prompts(tiny, fusion=False)
    assert torch.equal(fused.ctx_normal, plain.ctx_normal)
    emb_f, eot = fused.embeddings()
    emb_p, eot_p = plain.embeddings()
    assert torch.equal(eot, eot_p)
    image = fused.layout[fused.family_index("image")]
    rows = list(range(image.normal.start, image.handle.stop)) + list(range(image.learned.start, image.learned.stop))
    others = [r for r in range(emb_f.shape[0]) if r not in rows]
    assert torch.equal(emb_f[others], emb_p[others])  # entity and background prompts are never fused
    n_ctx = fused.fc.n_normal_ctx
    for r in rows:
        changed = (emb_f[r] - emb_p[r]).abs().amax(dim=-1) > 0
        first = 1 + n_ctx + (fused.fc.abnormal_ctx_len if r >= fused.num_plain else 0)
        assert not changed[:first].any(), "SOS and context rows must stay"
        assert not changed[int(eot[r]):].any(), "the image EOT row and what follows must stay"
        assert changed[first:int(eot[r])].any()
    # sigma(w) -> 0 switches fusion off
    with torch.no_grad():
        fused.fusion_weights.fill_(-1e4)
    assert torch.allclose(fused.embeddings()[0], emb_p, atol=1e-6)


def test_all_rows_fusion_mixes_special_tokens(tiny: tuple) -> None:
    """fusion_rows='all' reproduces the released code (F9): SOS rows of the image prompts change too."""
    fused = _prompts(tiny, fusion_rows="all")
    plain = _prompts(tiny, fusion=False)
    image = fused.layout[fused.family_index("image")]
    sos_f = fused.embeddings()[0][image.normal.start, 0]
    sos_p = plain.embeddings()[0][image.normal.start, 0]
    weights = torch.sigmoid(fused.fusion_weights[: len(ATTRIBUTE_KINDS)]).sum()
    assert torch.allclose(sos_f, sos_p * (1 + weights), atol=1e-6)  # every attribute adds its SOS row


def test_trainable_size_matches_the_spec_formula(tiny: tuple) -> None:
    """METHOD.md F16: N [1, 4, W] + A [4, 1, W] + 8 weights (~5.1 K for W = 640)."""
    prompts = _prompts(tiny)
    width = tiny[0].backbone.text_width
    assert sum(p.numel() for p in prompts.parameters()) == 4 * width + 4 * width + 8


def test_length_buckets_are_exact_and_save_tokens(tiny: tuple) -> None:
    """Encoding in length groups (each cut after its longest EOT) equals one pass over the full length."""
    _, clip, _ = tiny
    prompts = _prompts(tiny)
    encoder = TextEncoder(clip)
    emb, eot = prompts.embeddings()
    with torch.no_grad():
        one_pass = encoder(emb, eot, seq_len=prompts.seq_len)
        grouped = prompts(encoder).features
    assert torch.allclose(grouped, one_pass, atol=1e-5)
    lengths = sorted(int(v) + 1 for v in eot)
    spans = _length_buckets(lengths, 3)
    assert spans[0][0] == 0 and spans[-1][1] == len(lengths) and len(spans) <= 3
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    cost = sum((stop - start) * lengths[stop - 1] for start, stop in spans)
    assert cost <= len(lengths) * max(lengths)
    assert _length_buckets([3, 3, 9, 9], 2) == [(0, 2), (2, 4)]
    assert _length_buckets([4, 4, 4], 3) == [(0, 3)]


def test_a_bank_file_gives_a_new_product_its_defect_phrases(tmp_path) -> None:
    import dataclasses
    import json
    from pathlib import Path

    import fgad.methods.finegrained as fg
    from fgad.methods.finegrained.captions.schema import CaptionError
    from fgad.methods.finegrained.mllp import class_texts

    bank = tmp_path / "bank.json"
    bank.write_text(json.dumps({"my_bracket": ["a bent tab", "a missing rivet"]}))
    shipped = Path(fg.__file__).resolve().parents[2] / "data" / "captions" / "magnetic_tile.json"
    record = json.loads(shipped.read_text())
    record["class_name"] = "my_bracket"
    captions = tmp_path / "my_bracket.json"
    captions.write_text(json.dumps(record))
    fc = load_config("fgad-tiny").model.finegrained
    with pytest.raises(CaptionError, match="fgad-train: --bank FILE"):
        class_texts(fc, "my_bracket", captions=str(captions))
    texts = class_texts(dataclasses.replace(fc, bank=str(bank)), "my_bracket", captions=str(captions))
    assert texts.defects == ("with a bent tab", "with a missing rivet")
