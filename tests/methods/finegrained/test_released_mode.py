"""``model.reproduce: released`` for FineGrainedAD: the released code's texts, top-k and fusion weights.

Pins the chosen default for issue 13's items 2-5 (docs/finegrained.md, "Departures") and that the switch
reproduces the release: full stops, raw attribute values, top-k over the assembled 77 rows, N(0, 1) fusion
weights. Measured on the shipped ``bottle`` record and the tiny random CLIP.
"""

from __future__ import annotations

import pytest
import torch

from fgad.backbone.clip_loader import create_clip, get_tokenizer
from fgad.config import ConfigError, load_config
from fgad.methods.finegrained.captions.schema import defect_phrases, load_caption
from fgad.methods.finegrained.mllp import MultiLevelPrompts, build_mllp_texts


@pytest.fixture(scope="module")
def bottle() -> tuple:
    return load_caption("bottle"), defect_phrases("bottle")


@pytest.fixture(scope="module")
def tiny() -> tuple:
    cfg = load_config("fgad-tiny").model
    return cfg, create_clip(cfg.backbone), get_tokenizer(cfg.backbone)


def test_full_stops(bottle: tuple) -> None:
    record, defects = bottle
    ours = build_mllp_texts(record, defects)
    released = build_mllp_texts(record, defects, released=True)
    assert ours.family("image").normal == record.caption  # ends with "." already: kept as it is
    assert released.family("image").normal == record.caption + "."  # the release's ".."
    assert ours.family("background").normal == f"{record.background} background."
    assert released.family("background").normal == f"{record.background} background."


def test_attribute_values_raw_or_split(bottle: tuple) -> None:
    record, defects = bottle
    colours = [e.color for e in record.entities]
    assert "brown and black" in colours
    ours = build_mllp_texts(record, defects).family("color")
    released = build_mllp_texts(record, defects, released=True).family("color")
    assert ours.normal == "brown. black."
    assert released.normal == ".".join(colours) + "."  # "brown.brown and black.brown."
    assert "black." not in ours.handle  # a colour the bottle has is never an abnormal colour
    assert "black." in released.handle  # the release counts it as one


def test_top_k_and_fusion_weights(tiny: tuple, bottle: tuple) -> None:
    cfg, clip, tokenizer = tiny
    record, defects = bottle
    texts = build_mllp_texts(record, defects)
    torch.manual_seed(0)
    ours = MultiLevelPrompts(cfg.finegrained, texts, tokenizer, clip.token_embedding)
    torch.manual_seed(0)
    released = MultiLevelPrompts(cfg.finegrained, texts, tokenizer, clip.token_embedding, released=True)
    assert torch.count_nonzero(ours.fusion_weights) == 0
    assert torch.count_nonzero(released.fusion_weights) == 8
    assert released.fusion_rows == "all" and ours.fusion_rows == cfg.finegrained.fusion_rows
    # the ranking scores: mean over the word rows, or over the whole prompt assembled with N_1 (by hand here)
    shape = list(texts.family("shape").handle)
    released._tokenizer, released._embedding = tokenizer, clip.token_embedding
    try:
        words, full = released._word_score(shape), released._assembled_score(shape)
    finally:
        released._tokenizer = released._embedding = None
    tokens = tokenizer([" ".join(["X"] * cfg.finegrained.n_normal_ctx) + " " + t for t in shape])
    with torch.no_grad():
        emb = clip.token_embedding(tokens).clone()
        emb[:, 1:1 + cfg.finegrained.n_normal_ctx] = released.ctx_normal[0]
    assert torch.allclose(full, emb.mean(dim=(1, 2)), atol=1e-7)
    assert not torch.allclose(words, full)


def test_the_switch_is_validated() -> None:
    assert load_config("fgad-tiny").model.reproduce == "fgad"
    assert load_config("fgad-tiny", {"model": {"reproduce": "released"}}).model.reproduce == "released"
    with pytest.raises(ConfigError, match="reproduce"):
        load_config("fgad-tiny", {"model": {"reproduce": "paper"}})
