"""Density-peaks clustering with k-nearest-neighbour density (DPC-KNN), batched, pure torch.

METHOD.md §2.5 step 3, for each set of tokens ``x[b]`` (one shot) on its own:

* distances ``d = cdist(x, x) / sqrt(dim)``;
* density ``rho_i = exp(-mean of d_ij^2 over the k nearest neighbours j of i)`` (i itself included, at 0);
* ``delta_i`` = distance to the nearest *denser* token; the densest token gets the largest distance;
* centres = the ``K`` tokens with the largest ``rho * delta``; every token joins its nearest centre.

A token mask removes tokens from the clustering (stage 2 masks the background): masked tokens are
never neighbours (their distance becomes ``max + 1``), have density 0 (never a centre) and are still
assigned to their nearest centre, by their true distance (callers ignore them). Ties in density are
broken by token index (lower index = denser), not by random noise, so the result is deterministic.
No Python loop runs over tokens or shots. Training only: never exported (METHOD.md §5).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["DpcResult", "dpc_knn"]


class DpcResult(NamedTuple):
    assignment: Tensor  # [B, T] int64 cluster index in [0, K) (the rank of its centre)
    centres: Tensor  # [B, K] int64 token index of each cluster's centre
    density: Tensor  # [B, T] rho (0 for masked tokens)
    delta: Tensor  # [B, T] distance to the nearest denser token


def dpc_knn(x: Tensor, num_clusters: int, k: int, mask: Tensor | None = None) -> DpcResult:
    """Cluster ``x`` ``[B, T, D]`` into ``num_clusters`` clusters per batch entry.

    Args:
        x: token features ``[B, T, D]``.
        num_clusters: ``K``; at most ``T``.
        k: neighbours of the density estimate; values above ``T`` use all ``T`` tokens.
        mask: optional ``[B, T]`` (bool or 0/1): 1 = take part in the clustering.
    """
    if x.dim() != 3:
        raise ValueError(f"dpc_knn: x must be [B, T, D], got {tuple(x.shape)}")
    batch, tokens, dim = x.shape
    if not 1 <= num_clusters <= tokens:
        raise ValueError(f"dpc_knn: num_clusters={num_clusters} must be in [1, {tokens}] (the number of tokens)")
    if k < 1:
        raise ValueError(f"dpc_knn: k={k} must be >= 1")
    k = min(k, tokens)
    x = x.float()
    raw = torch.cdist(x, x) / math.sqrt(dim)  # [B, T, T]
    dist = raw
    keep: Tensor | None = None
    if mask is not None:
        if mask.shape != (batch, tokens):
            raise ValueError(f"dpc_knn: mask must be [B, T] = {[batch, tokens]}, got {list(mask.shape)}")
        keep = mask.to(raw.dtype)
        far = raw.flatten(1).amax(dim=1)[:, None, None] + 1.0
        dist = raw * keep[:, None, :] + far * (1.0 - keep[:, None, :])  # masked columns: never a neighbour

    nearest, _ = dist.topk(k, dim=-1, largest=False)  # [B, T, k]
    density = torch.exp(-(nearest * nearest).mean(dim=-1))  # [B, T]
    if keep is not None:
        density = density * keep

    index = torch.arange(tokens, device=x.device)
    rho_i, rho_j = density[:, :, None], density[:, None, :]
    denser = (rho_j > rho_i) | ((rho_j == rho_i) & (index[None, None, :] < index[None, :, None]))  # j denser than i
    dist_max = dist.flatten(1).amax(dim=1)[:, None, None]
    delta = torch.where(denser, dist, dist_max.expand_as(dist)).amin(dim=-1)  # [B, T]

    score = delta * density
    centres = score.topk(num_clusters, dim=-1).indices  # [B, K]
    to_centres = raw.gather(1, centres[:, :, None].expand(-1, -1, tokens))  # [B, K, T]
    assignment = to_centres.argmin(dim=1)  # [B, T]
    own = torch.arange(num_clusters, device=x.device).expand(batch, -1)
    assignment = assignment.scatter(1, centres, own)  # a centre is always in its own cluster
    return DpcResult(assignment=assignment, centres=centres, density=density, delta=delta)
