"""Tests for fgad.backbone.fewshot: nearest-neighbour cosine distance and the per-stage memory."""

from __future__ import annotations

import math

import pytest
import torch

from fgad.backbone.fewshot import PatchMemory, normalize_memory, patch_min_distance


def _brute_force(features: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """Explicit loops: min over memory rows of 1 - cos(f, m)."""
    batch, num, _ = features.shape
    out = torch.empty(batch, num, dtype=torch.float64)
    for b in range(batch):
        for n in range(num):
            f = features[b, n].double()
            best = math.inf
            for m in memory.double():
                cos = float((f * m).sum() / (f.norm() * m.norm()))
                best = min(best, 1.0 - cos)
            out[b, n] = best
    return out


def test_normalize_memory_flattens_and_normalises() -> None:
    tokens = torch.randn(3, 5, 8) * 4
    rows = normalize_memory(tokens)
    assert rows.shape == (15, 8)
    torch.testing.assert_close(rows.norm(dim=-1), torch.ones(15))
    torch.testing.assert_close(rows[5], tokens[1, 0] / tokens[1, 0].norm())
    assert normalize_memory(torch.randn(7, 8)).shape == (7, 8)
    with pytest.raises(ValueError):
        normalize_memory(torch.randn(8))


def test_patch_min_distance_matches_brute_force() -> None:
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(2, 6, 5, generator=gen)
    raw = torch.randn(2, 4, 5, generator=gen)
    got = patch_min_distance(features, normalize_memory(raw))
    assert got.shape == (2, 6)
    torch.testing.assert_close(got.double(), _brute_force(features, raw.reshape(-1, 5)), atol=1e-6, rtol=0)


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 100])
def test_chunking_matches_single_block(chunk: int) -> None:
    gen = torch.Generator().manual_seed(1)
    features = torch.randn(3, 20, 16, generator=gen)
    memory = normalize_memory(torch.randn(100, 16, generator=gen))
    full = patch_min_distance(features, memory, chunk=4096)
    torch.testing.assert_close(patch_min_distance(features, memory, chunk=chunk), full, atol=1e-6, rtol=0)


def test_identical_feature_has_zero_distance() -> None:
    gen = torch.Generator().manual_seed(2)
    raw = torch.randn(1, 9, 12, generator=gen)
    features = torch.randn(2, 4, 12, generator=gen)
    features[1, 2] = raw[0, 5] * 3.0  # same direction, different length
    dist = patch_min_distance(features, normalize_memory(raw), chunk=4)
    assert dist[1, 2].abs().item() < 1e-6
    assert (dist[0] > 1e-3).all()


def test_empty_or_mismatched_memory_raises() -> None:
    with pytest.raises(ValueError, match="empty"):
        patch_min_distance(torch.randn(1, 3, 4), torch.zeros(0, 4))
    with pytest.raises(ValueError):
        patch_min_distance(torch.randn(1, 3, 4), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="empty"):
        PatchMemory(1, dims=4)([torch.randn(1, 3, 4)])


def test_patch_memory_averages_stages_and_can_be_replaced() -> None:
    gen = torch.Generator().manual_seed(3)
    mem = PatchMemory(2, dims=[8, 6], chunk=5)
    assert mem.num_stages == 2 and not mem.has_memory
    refs = [torch.randn(2, 7, 8, generator=gen), torch.randn(2, 7, 6, generator=gen)]
    mem.set_memory(0, refs[0])
    assert not mem.has_memory
    mem.set_memory(1, refs[1])
    assert mem.has_memory
    assert mem.memory(0).shape == (14, 8)
    feats = [torch.randn(2, 7, 8, generator=gen), torch.randn(2, 7, 6, generator=gen)]
    expected = (
        patch_min_distance(feats[0], normalize_memory(refs[0]))
        + patch_min_distance(feats[1], normalize_memory(refs[1]))
    ) / 2
    torch.testing.assert_close(mem(feats), expected)
    # adding references without retraining: the queries themselves become the memory
    mem.set_memory(0, feats[0])
    mem.set_memory(1, feats[1])
    torch.testing.assert_close(mem(feats), torch.zeros(2, 7), atol=1e-6, rtol=0)
    with pytest.raises(ValueError):
        mem.set_memory(0, torch.randn(3, 6))
    with pytest.raises(IndexError):
        mem.set_memory(2, torch.randn(3, 6))
    with pytest.raises(ValueError):
        mem(feats[:1])


def test_patch_memory_state_dict_round_trip() -> None:
    gen = torch.Generator().manual_seed(4)
    mem = PatchMemory(2)
    mem.set_memory(0, torch.randn(3, 5, 4, generator=gen))
    mem.set_memory(1, torch.randn(11, 4, generator=gen))
    state = mem.state_dict()
    assert set(state) == {"memory_0", "memory_1"}

    fresh = PatchMemory(2)
    assert not fresh.has_memory
    fresh.load_state_dict(state)
    assert fresh.has_memory
    for i in range(2):
        assert torch.equal(fresh.memory(i), mem.memory(i))
    feats = [torch.randn(1, 6, 4, generator=gen), torch.randn(1, 6, 4, generator=gen)]
    torch.testing.assert_close(fresh(feats), mem(feats))

    # nested inside a parent module the prefix is handled too
    parent = torch.nn.Sequential(mem)
    other = torch.nn.Sequential(PatchMemory(2))
    other.load_state_dict(parent.state_dict())
    assert torch.equal(other[0].memory(1), mem.memory(1))
    with pytest.raises(RuntimeError):
        PatchMemory(2).load_state_dict({"memory_0": state["memory_0"]})
