"""Few-shot patch memory: nearest-neighbour cosine distance of query patches to reference patches.

Reference patch tokens from ``k`` normal images are stored as L2-normalised rows; a query patch
scores ``1 - max_m cos(f, m)``. Memory sizes are fixed once set, so chunking over memory rows is a
static Python loop and the module stays export-safe.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PatchMemory", "normalize_memory", "patch_min_distance"]


def normalize_memory(tokens: Tensor) -> Tensor:
    """Flatten ``[k, N, D]`` (or ``[M, D]``) reference tokens to L2-normalised ``[k * N, D]`` rows."""
    if tokens.dim() not in (2, 3):
        raise ValueError(f"memory tokens must be [k, N, D] or [M, D], got {tuple(tokens.shape)}")
    return F.normalize(tokens.reshape(-1, tokens.shape[-1]), dim=-1)


def patch_min_distance(features: Tensor, memory: Tensor, chunk: int = 4096) -> Tensor:
    """Minimum cosine distance from each query patch to the memory.

    Args:
        features: ``[B, N, D]`` query patch tokens (normalised here).
        memory: ``[M, D]`` reference rows, already L2-normalised (see :func:`normalize_memory`).
        chunk: number of memory rows compared at once; bounds the ``[B, N, chunk]`` similarity
            block instead of materialising ``[B, N, M]``.

    Returns:
        ``[B, N]`` distances ``min_m (1 - cos(f, m))``.
    """
    if memory.dim() != 2 or memory.shape[0] == 0:
        raise ValueError(
            f"patch memory is empty or malformed (shape {tuple(memory.shape)}); "
            "add reference tokens with PatchMemory.set_memory / normalize_memory first"
        )
    if features.dim() != 3 or features.shape[-1] != memory.shape[-1]:
        raise ValueError(
            f"features {tuple(features.shape)} must be [B, N, D] with D matching memory {tuple(memory.shape)}"
        )
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    query = F.normalize(features, dim=-1)
    bank = memory.to(query.dtype)
    num_rows = int(memory.shape[0])
    best: Tensor | None = None
    for start in range(0, num_rows, chunk):
        sim = torch.matmul(query, bank[start : start + chunk].transpose(0, 1)).amax(dim=-1)
        best = sim if best is None else torch.maximum(best, sim)
    assert best is not None
    return 1.0 - best


class PatchMemory(nn.Module):
    """Per-stage reference memories; ``forward`` averages the stage-wise min distances.

    Memories are persistent buffers, so they travel with ``state_dict`` and can be replaced at any
    time with :meth:`set_memory` (adding few-shot references needs no retraining). Loading a state
    dict resizes the buffers to the stored memory sizes.

    Args:
        num_stages: number of feature stages (one memory each).
        dims: optional token width per stage (an int applies to all); when given, ``set_memory``
            checks it and the empty placeholders have that width.
        chunk: memory rows compared at once in :func:`patch_min_distance`.
    """

    def __init__(self, num_stages: int, dims: int | Sequence[int] | None = None, chunk: int = 4096) -> None:
        super().__init__()
        if num_stages < 1:
            raise ValueError(f"num_stages must be >= 1, got {num_stages}")
        if dims is None or isinstance(dims, int):
            dim_list: list[int | None] = [dims] * num_stages
        else:
            dim_list = [int(d) for d in dims]
            if len(dim_list) != num_stages:
                raise ValueError(f"got {len(dim_list)} dims for {num_stages} stages")
        self._num_stages = num_stages
        self.dims = dim_list
        self.chunk = chunk
        for i, dim in enumerate(dim_list):
            self.register_buffer(self._name(i), torch.zeros(0, dim or 0), persistent=True)

    @staticmethod
    def _name(stage_index: int) -> str:
        return f"memory_{stage_index}"

    @property
    def num_stages(self) -> int:
        return self._num_stages

    @property
    def has_memory(self) -> bool:
        """True when every stage holds at least one reference row."""
        return all(self.memory(i).shape[0] > 0 for i in range(self._num_stages))

    def memory(self, stage_index: int) -> Tensor:
        """The normalised ``[M, D]`` memory of one stage."""
        self._check_index(stage_index)
        return getattr(self, self._name(stage_index))

    def _check_index(self, stage_index: int) -> None:
        if not 0 <= stage_index < self._num_stages:
            raise IndexError(f"stage_index {stage_index} out of range for {self._num_stages} stages")

    def set_memory(self, stage_index: int, tokens: Tensor) -> None:
        """Replace one stage's memory with ``tokens`` (``[k, N, D]`` or ``[M, D]``), normalised and detached.

        The stored rows keep the module's current device and floating dtype.
        """
        self._check_index(stage_index)
        expected = self.dims[stage_index]
        if expected is not None and tokens.shape[-1] != expected:
            raise ValueError(f"stage {stage_index} expects width {expected}, got {tuple(tokens.shape)}")
        current = self.memory(stage_index)
        rows = normalize_memory(tokens.detach().to(dtype=current.dtype))
        setattr(self, self._name(stage_index), rows.to(current.device).contiguous())

    def clear(self) -> None:
        """Drop all reference rows (keeps the configured widths)."""
        for i in range(self._num_stages):
            current = self.memory(i)
            setattr(self, self._name(i), current.new_zeros(0, current.shape[-1]))

    def _load_from_state_dict(
        self,
        state_dict: Mapping[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # Memory sizes depend on how many references were stored, so resize the placeholders
        # before the default loader copies (it refuses shape mismatches).
        for i in range(self._num_stages):
            key = prefix + self._name(i)
            if key in state_dict:
                incoming = state_dict[key]
                current = self.memory(i)
                if incoming.shape != current.shape:
                    setattr(self, self._name(i), current.new_empty(incoming.shape))
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def forward(self, stage_features: Sequence[Tensor]) -> Tensor:
        """Mean over stages of :func:`patch_min_distance` for ``[B, N, D_i]`` stage features -> ``[B, N]``."""
        if len(stage_features) != self._num_stages:
            raise ValueError(f"expected {self._num_stages} stage features, got {len(stage_features)}")
        total: Tensor | None = None
        for i, feats in enumerate(stage_features):
            dist = patch_min_distance(feats, self.memory(i), self.chunk)
            total = dist if total is None else total + dist
        assert total is not None
        return total / self._num_stages
