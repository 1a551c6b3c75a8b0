"""Few-shot memory: FAISS and numpy agree, match the brute-force definition and the PyTorch reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fgad.runtime.knn import FewShotMemory, PatchMemoryIndex, faiss_available, normalize_rows

needs_faiss = pytest.mark.skipif(not faiss_available(), reason="faiss is not installed")


def _data(seed: int, b: int, n: int, m: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((b, n, d)).astype(np.float32), rng.standard_normal((m, d)).astype(np.float32)


def _brute(tokens: np.ndarray, memory: np.ndarray) -> np.ndarray:
    q = tokens.astype(np.float64)
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    r = memory.astype(np.float64)
    r /= np.linalg.norm(r, axis=-1, keepdims=True)
    return 1.0 - (q @ r.T).max(axis=-1)


@needs_faiss
@pytest.mark.parametrize(("b", "n", "m", "d"), [(1, 16, 64, 16), (3, 49, 500, 64), (2, 256, 3000, 128)])
def test_faiss_equals_numpy(b: int, n: int, m: int, d: int) -> None:
    tokens, memory = _data(b + n + m, b, n, m, d)
    faiss_idx = PatchMemoryIndex.from_features(memory, use_faiss=True, use_gpu=False)
    numpy_idx = PatchMemoryIndex.from_features(memory, use_faiss=False, chunk=97)  # several chunks
    assert faiss_idx.backend == "faiss-cpu" and numpy_idx.backend == "numpy"
    a, c = faiss_idx.min_distance(tokens), numpy_idx.min_distance(tokens)
    assert a.shape == c.shape == (b, n) and a.dtype == c.dtype == np.float32
    np.testing.assert_allclose(a, c, atol=1e-6, rtol=0)
    np.testing.assert_allclose(c, _brute(tokens, memory), atol=2e-6, rtol=0)
    np.testing.assert_allclose(faiss_idx.rows(), numpy_idx.rows(), atol=0)


@pytest.mark.parametrize("use_faiss", [pytest.param(True, marks=needs_faiss), False])
def test_add_and_identical_patches(use_faiss: bool) -> None:
    tokens, memory = _data(1, 2, 16, 40, 32)
    index = PatchMemoryIndex(32, use_faiss=use_faiss)
    index.add(memory.reshape(2, 20, 32))  # [k, N, D] is accepted
    assert index.ntotal == 40
    before = index.min_distance(tokens)
    index.add(tokens[0] * 3.0)  # scale does not matter: rows are normalised
    after = index.min_distance(tokens)
    assert np.all(after <= before + 1e-7)
    assert np.abs(after[0]).max() < 1e-6  # every patch of image 0 is now in the memory
    np.testing.assert_allclose(after[1], np.minimum(before[1], _brute(tokens[1:], tokens[0])[0]), atol=2e-6)
    index.reset()
    with pytest.raises(ValueError, match="empty"):
        index.min_distance(tokens)


def test_exclude_equals_memory_without_those_rows() -> None:
    tokens, memory = _data(2, 1, 16, 90, 8)
    full = PatchMemoryIndex.from_features(memory, use_faiss=False, chunk=25)
    rest = PatchMemoryIndex.from_features(np.concatenate([memory[:30], memory[60:]]), use_faiss=False)
    np.testing.assert_allclose(full.min_distance(tokens, exclude=(30, 60)), rest.min_distance(tokens), atol=1e-7)


def test_bad_inputs() -> None:
    index = PatchMemoryIndex(8, use_faiss=False)
    with pytest.raises(ValueError, match=r"\[k, N, 8\]"):
        index.add(np.zeros((4, 7), np.float32))
    with pytest.raises(ValueError, match="finite"):
        index.add(np.full((4, 8), np.nan, np.float32))
    with pytest.raises(ValueError, match="positive"):
        PatchMemoryIndex(0)


def test_multi_layer_mean_npz_roundtrip(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    feats = {layer: rng.standard_normal((2, 16, d)).astype(np.float32) for layer, d in ((3, 8), (6, 12))}
    tokens = {layer: rng.standard_normal((1, 16, d)).astype(np.float32) for layer, d in ((3, 8), (6, 12))}
    memory = FewShotMemory.from_features(feats, use_faiss=False)
    assert memory.layers == [3, 6] and memory.ntotal == 32
    expected = (_brute(tokens[3], feats[3].reshape(-1, 8)) + _brute(tokens[6], feats[6].reshape(-1, 12))) / 2
    np.testing.assert_allclose(memory.min_distance(tokens), expected, atol=2e-6)

    path = tmp_path / "refs.npz"
    memory.save_npz(path, ["a.png", "b.png"])
    loaded = FewShotMemory.from_npz(path, [3, 6])
    np.testing.assert_allclose(loaded.min_distance(tokens), memory.min_distance(tokens), atol=1e-6)
    with np.load(path) as data:
        assert list(data["paths"]) == ["a.png", "b.png"]
        np.testing.assert_allclose(data["layer_6"], normalize_rows(feats[6].reshape(-1, 12)))
    with pytest.raises(ValueError, match="same number of rows"):
        memory.add({3: feats[3], 6: feats[6][:1]})
    with pytest.raises(KeyError, match="layer_9"):
        FewShotMemory.from_npz(path, [9])


def test_matches_the_pytorch_reference() -> None:
    torch = pytest.importorskip("torch", reason="the PyTorch reference needs the train extra (torch)")
    from fgad.backbone.fewshot import normalize_memory, patch_min_distance

    tokens, memory = _data(4, 2, 49, 300, 32)
    ref = patch_min_distance(torch.from_numpy(tokens), normalize_memory(torch.from_numpy(memory)), chunk=64).numpy()
    ours = PatchMemoryIndex.from_features(memory).min_distance(tokens)
    np.testing.assert_allclose(ours, ref, atol=1e-6)
