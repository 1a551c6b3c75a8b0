"""DPC-KNN (METHOD.md §2.5 step 3) on point sets with known clusters, and MLSA (a) region weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fgad.methods.finegrained.dpc_knn import dpc_knn
from fgad.methods.finegrained.regions import aggregate_regions, split_tiles, stitch_tiles

CENTRES = torch.tensor([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]])


def _blobs(per_blob: int = 30, seed: int = 0, std: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(len(CENTRES)).repeat_interleave(per_blob)
    points = CENTRES[labels] + std * torch.randn(len(labels), 2, generator=gen)
    order = torch.randperm(len(labels), generator=gen)
    return points[order], labels[order]


def _same_partition(assignment: torch.Tensor, labels: torch.Tensor) -> bool:
    """Equal up to renaming the clusters."""
    pairs = set(zip(assignment.tolist(), labels.tolist(), strict=True))
    return len(pairs) == len(set(labels.tolist())) == len(set(assignment.tolist()))


def test_three_blobs_give_one_centre_per_blob() -> None:
    points, labels = _blobs()
    result = dpc_knn(points.unsqueeze(0), 3, k=8)
    centre_blobs = labels[result.centres[0]]
    assert sorted(centre_blobs.tolist()) == [0, 1, 2]
    assert _same_partition(result.assignment[0], labels)
    # a centre belongs to its own cluster
    assert torch.equal(result.assignment[0, result.centres[0]], torch.arange(3))


def test_density_and_delta_match_the_definition() -> None:
    """rho = exp(-mean squared distance to the k nearest (self included)), d = euclid / sqrt(dim)."""
    x = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [3.5, 0.0]])
    k = 2
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1)) / math.sqrt(2)
    nearest = np.sort(d, axis=1)[:, :k]
    rho = np.exp(-(nearest**2).mean(axis=1))
    delta = []
    for i in range(len(x)):
        denser = [j for j in range(len(x)) if rho[j] > rho[i] or (rho[j] == rho[i] and j < i)]
        delta.append(min(d[i, j] for j in denser) if denser else d.max())
    result = dpc_knn(torch.tensor(x, dtype=torch.float32).unsqueeze(0), 2, k=k)
    assert np.allclose(result.density[0].numpy(), rho, atol=1e-6)
    assert np.allclose(result.delta[0].numpy(), delta, atol=1e-6)
    score = rho * np.array(delta)
    assert set(result.centres[0].tolist()) == set(np.argsort(-score)[:2].tolist())
    assert result.assignment[0].tolist() in ([0, 0, 1, 1], [1, 1, 0, 0])


def test_batch_entries_are_clustered_independently() -> None:
    a, la = _blobs(seed=1)
    b, lb = _blobs(seed=2)
    both = dpc_knn(torch.stack([a, b]), 3, k=8)
    alone = dpc_knn(b.unsqueeze(0), 3, k=8)
    assert torch.equal(both.assignment[1], alone.assignment[0])
    assert _same_partition(both.assignment[0], la) and _same_partition(both.assignment[1], lb)


def test_masked_tokens_are_never_centres_or_neighbours() -> None:
    points, labels = _blobs()
    extra = torch.tensor([[20.0, 20.0]]).repeat(10, 1) + 0.01 * torch.arange(10.0)[:, None]  # a dense 4th blob
    x = torch.cat([points, extra]).unsqueeze(0)
    mask = torch.cat([torch.ones(len(points)), torch.zeros(len(extra))]).bool().unsqueeze(0)
    result = dpc_knn(x, 3, k=8, mask=mask)
    assert (result.centres[0] < len(points)).all()
    assert torch.all(result.density[0, len(points):] == 0)
    assert _same_partition(result.assignment[0, : len(points)], labels)
    unmasked = dpc_knn(points.unsqueeze(0), 3, k=8)
    assert torch.allclose(result.density[0, : len(points)], unmasked.density[0])


def test_deterministic_and_input_checks() -> None:
    x = torch.zeros(1, 6, 3)  # all tokens tie: broken by index, no randomness
    a, b = dpc_knn(x, 2, k=3), dpc_knn(x, 2, k=3)
    assert torch.equal(a.assignment, b.assignment) and torch.equal(a.centres, b.centres)
    with pytest.raises(ValueError, match="num_clusters"):
        dpc_knn(x, 7, k=3)
    with pytest.raises(ValueError, match="mask"):
        dpc_knn(x, 2, k=3, mask=torch.ones(2, 6))


# ---------------------------------------------------------------------------------- regions


def test_split_and_stitch_follow_the_image_layout() -> None:
    tiles, s, grid = 2, 8, 4
    images = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).reshape(2, 3, 16, 16)
    crops = split_tiles(images, tiles)
    for k in range(2):
        for ty in range(tiles):
            for tx in range(tiles):
                crop = crops[k * tiles * tiles + ty * tiles + tx]
                assert torch.equal(crop, images[k, :, ty * s:(ty + 1) * s, tx * s:(tx + 1) * s])
    # "features" of a crop: its grid of pixel values -> stitched back to the full-resolution grid
    fine = torch.randn(2, tiles * grid, tiles * grid, 5)
    per_tile = torch.stack([
        fine[k, ty * grid:(ty + 1) * grid, tx * grid:(tx + 1) * grid].reshape(grid * grid, 5)
        for k in range(2) for ty in range(tiles) for tx in range(tiles)
    ])
    assert torch.equal(stitch_tiles(per_tile, tiles, grid), fine.reshape(2, -1, 5))


def _constructed_shot() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A 4x4 fine grid (2x2 tiles of a 2x2 grid): top half background, bottom-left the entity,
    bottom-right another foreground part. Features in R^3: texts e1 (entity), e2 (background)."""
    e1, e2 = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    other = torch.tensor([0.8, 0.0, 0.6])
    grid = torch.empty(4, 4, 3)
    grid[:2] = e2
    grid[2:, :2] = e1
    grid[2:, 2:] = other
    return grid.reshape(1, 16, 3), e1.unsqueeze(0), e2


def test_regions_on_a_constructed_shot() -> None:
    z, entity_text, bg_text = _constructed_shot()
    result = aggregate_regions(z, entity_text, bg_text, tiles=2, grid=2, knn=(8, 5), boost=1.5)
    background = torch.zeros(4, 4, dtype=torch.bool)
    background[:2] = True
    assert torch.equal(result.background[0], background.flatten())
    # pooled 2x2 cells: (0,0) (0,1) background, (1,0) entity, (1,1) the other part
    assert torch.allclose(result.weights[0, 0], torch.tensor([1.0, 1.0, 2.5, 1.0]))  # entity family
    assert torch.allclose(result.weights[1, 0], torch.tensor([2.5, 2.5, 1.0, 1.0]))  # background family
    assert result.matched[0, 1] == 0  # the background family takes the stage-1 background


def test_region_weights_lie_in_range_for_random_shots() -> None:
    gen = torch.Generator().manual_seed(3)
    z = torch.nn.functional.normalize(torch.randn(2, 64, 8, generator=gen), dim=-1)
    entities = torch.nn.functional.normalize(torch.randn(3, 8, generator=gen), dim=-1)
    bg = torch.nn.functional.normalize(torch.randn(8, generator=gen), dim=-1)
    result = aggregate_regions(z, entities, bg, tiles=2, grid=4, knn=(8, 5), boost=1.5)
    assert result.weights.shape == (4, 2, 16)
    assert result.weights.min() >= 1.0 and result.weights.max() <= 2.5
    assert result.regions.max() <= 4 and result.matched.shape == (2, 4)
