"""MLSA (a): region aggregation of the k shots into background and entity regions (METHOD.md §2.5).

Training only, once per class, with the just-initialised prompts:

1. each shot is resized to ``tiles * s`` and encoded as ``tiles^2`` crops of ``s``; the crops' patch
   features are stitched into ``Z`` ``[k, (tiles * g)^2, C]`` (:func:`stitch_tiles`, :func:`split_tiles`);
2. language-guided features ``Sigma = cos(Z, [t_e1 .. t_eE, t_bg])`` ``[k, T, E + 1]``;
3. stage 1: DPC-KNN into 2 clusters; the cluster whose mean ``Z`` has the larger dot product with
   ``t_bg`` is the background;
4. stage 2: DPC-KNN of the other tokens into ``E + 1`` clusters (background masked);
5. matching: family ``e`` (entities, then the background family) takes the region whose mean ``Z`` is
   closest in cosine to ``t_e``. CHOICE: the candidate regions are the background of stage 1 plus the
   ``E + 1`` stage-2 clusters (``E + 2`` in all); a region may serve several families;
6. weights: ``omega_e = 1 + boost * [token in r(e)]`` on the fine grid, average-pooled ``tiles x tiles``
   to the ``g x g`` grid: ``[E + 1, k, N]``, values in ``[1, 1 + boost]``.

Every shot is clustered on its own (CHOICE, F8: the released code used shot 0's mask for all).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from fgad.methods.finegrained.dpc_knn import dpc_knn

__all__ = ["RegionResult", "aggregate_regions", "language_guided", "split_tiles", "stitch_tiles"]


class RegionResult(NamedTuple):
    weights: Tensor  # [E + 1, k, N] omega per family (entities, then background) on the g x g grid
    regions: Tensor  # [k, T] region id on the fine grid: 0 = background, 1 + c = stage-2 cluster c
    matched: Tensor  # [k, E + 1] region id taken by each family
    background: Tensor  # [k, T] bool, stage-1 background


def split_tiles(images: Tensor, tiles: int) -> Tensor:
    """``[k, 3, tiles*s, tiles*s]`` -> ``[k * tiles^2, 3, s, s]``, row-major tiles per image."""
    k, c, height, width = images.shape
    if height != width or height % tiles:
        raise ValueError(f"split_tiles: images {tuple(images.shape)} are not square multiples of tiles={tiles}")
    s = height // tiles
    x = images.reshape(k, c, tiles, s, tiles, s).permute(0, 2, 4, 1, 3, 5)  # [k, ty, tx, c, s, s]
    return x.reshape(k * tiles * tiles, c, s, s)


def stitch_tiles(features: Tensor, tiles: int, grid: int) -> Tensor:
    """Patch features of the tiles ``[k * tiles^2, g*g, C]`` -> ``[k, (tiles*g)^2, C]`` in image order."""
    channels = features.shape[-1]
    x = features.reshape(-1, tiles, tiles, grid, grid, channels).permute(0, 1, 3, 2, 4, 5)  # [k, ty, y, tx, x, C]
    return x.reshape(-1, tiles * grid * tiles * grid, channels)


def language_guided(z: Tensor, text: Tensor) -> Tensor:
    """Cosine of every token with every family's normal feature: ``[k, T, C] x [F, C] -> [k, T, F]``."""
    return F.normalize(z, dim=-1) @ F.normalize(text, dim=-1).T


def _region_means(z: Tensor, regions: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """Mean ``z`` of each region ``[k, R, C]`` and whether the region has any token ``[k, R]``."""
    one_hot = F.one_hot(regions, count).to(z.dtype)  # [k, T, R]
    sizes = one_hot.sum(dim=1)  # [k, R]
    means = one_hot.transpose(1, 2) @ z / sizes.clamp_min(1.0).unsqueeze(-1)
    return means, sizes > 0


@torch.no_grad()
def aggregate_regions(
    z: Tensor,
    entity_text: Tensor,
    background_text: Tensor,
    tiles: int,
    grid: int,
    knn: tuple[int, int] = (8, 5),
    boost: float = 1.5,
) -> RegionResult:
    """Region weights of the shots (see the module docstring).

    Args:
        z: stitched patch features ``[k, (tiles * grid)^2, C]``.
        entity_text: normal features of the entity families ``[E, C]`` (E may be 0).
        background_text: normal feature of the background family ``[C]``.
        tiles, grid: fine grid side = ``tiles * grid``; weights are pooled to ``grid x grid``.
        knn: DPC-KNN neighbours of stage 1 and stage 2.
        boost: ``omega`` inside the matched region is ``1 + boost``.
    """
    shots, tokens, _ = z.shape
    side = tiles * grid
    if tokens != side * side:
        raise ValueError(f"aggregate_regions: z has {tokens} tokens, expected ({tiles} * {grid})^2 = {side * side}")
    num_entities = int(entity_text.shape[0])
    families = torch.cat([entity_text, background_text.reshape(1, -1)], dim=0)  # [E + 1, C]
    z = z.float()
    sigma = language_guided(z, families.float())  # [k, T, E + 1]

    stage1 = dpc_knn(sigma, 2, knn[0])
    means, _ = _region_means(z, stage1.assignment, 2)  # [k, 2, C]
    bg_cluster = (means @ background_text.float()).argmax(dim=1)  # [k]
    background = stage1.assignment == bg_cluster[:, None]  # [k, T]

    clusters = num_entities + 1
    stage2 = dpc_knn(sigma, clusters, knn[1], mask=~background)
    regions = torch.where(background, torch.zeros_like(stage2.assignment), stage2.assignment + 1)  # [k, T]

    means, present = _region_means(z, regions, clusters + 1)  # [k, E + 2, C]
    cos = F.normalize(families.float(), dim=-1) @ F.normalize(means, dim=-1).transpose(1, 2)  # [k, E + 1, E + 2]
    cos = torch.where(present[:, None, :], cos, torch.full_like(cos, -2.0))  # empty regions never match
    matched = cos.argmax(dim=-1)  # [k, E + 1]

    inside = regions[:, None, :] == matched[:, :, None]  # [k, E + 1, T]
    omega = 1.0 + boost * inside.to(z.dtype)
    pooled = F.avg_pool2d(omega.reshape(shots * clusters, 1, side, side), kernel_size=tiles)
    weights = pooled.reshape(shots, clusters, grid * grid).transpose(0, 1).contiguous()  # [E + 1, k, N]
    return RegionResult(weights=weights, regions=regions, matched=matched, background=background)
