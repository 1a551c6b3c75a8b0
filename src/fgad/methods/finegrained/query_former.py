"""The released code's untrained QueryFormer, reproduced on purpose (``model.reproduce: released``; F1).

The release routes every token to a text pair by ``argmax_j cos(F_u, Q_j)`` with ``Q = QF(T^n, T^a)`` ``[P, C]``
instead of ``T^n`` itself. Its QueryFormer is two cross-attentions (one fed the pairs' normal features, one the
abnormal ones) whose learnable queries attend to a single key each: the attention weight is 1, so the queries
have no effect and each branch is ``proj(v(y))``; a linear layer fuses the two:

    Q_j = W_f [W_p1 (W_v1 T^n_j + b_v1) + b_p1 ; W_p2 (W_v2 T^a_j + b_v2) + b_p2] + b_f

It is never trained (the loss does not use it) and never saved, so at test it is whatever the seeded
initialisation gives: a random projection. Here it is drawn from its own ``torch.Generator`` seeded with
``finegrained.seed`` (111, the release's seed), in the release's construction order (per branch q, kv, out
projections; then the 0.02-std queries; then the fusion layer) and with ``nn.Linear``'s default
initialisation, so the mode is deterministic and leaves the global RNG alone. The release's exact numbers also
depend on every draw made before it from the global stream (CLIP, prompt learner), which cannot be replayed;
the projection is of the same kind, not the same matrix.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["UntrainedQueryFormer"]


def _linear(gen: torch.Generator, fan_in: int, fan_out: int) -> tuple[Tensor, Tensor]:
    """``nn.Linear``'s default initialisation: weight and bias uniform in ±1/√fan_in (kaiming_uniform, a=√5)."""
    bound = 1.0 / math.sqrt(fan_in)
    weight = (torch.rand(fan_out, fan_in, generator=gen, dtype=torch.float32) * 2.0 - 1.0) * bound
    bias = (torch.rand(fan_out, generator=gen, dtype=torch.float32) * 2.0 - 1.0) * bound
    return weight, bias


class UntrainedQueryFormer(nn.Module):
    """``(T^n [P, C], T^a [P, C]) -> Q [P, C]``, the release's routing keys (module docstring).

    The weights are non-persistent buffers: not in a checkpoint (as in the release), rebuilt from ``seed``.
    """

    def __init__(self, dim: int, num_queries: int, seed: int) -> None:
        super().__init__()
        self.seed = int(seed)
        gen = torch.Generator().manual_seed(self.seed)
        names = ("v1", "p1", "v2", "p2")
        drawn: dict[str, tuple[Tensor, Tensor]] = {}
        for branch in ("1", "2"):
            _linear(gen, dim, dim)  # q_proj: unused (the one key makes the queries irrelevant)
            kv_w, kv_b = _linear(gen, dim, 2 * dim)
            drawn["v" + branch] = (kv_w[dim:], kv_b[dim:])  # rows dim..2dim of kv_proj are the values
            drawn["p" + branch] = _linear(gen, dim, dim)
        torch.randn(num_queries, dim, generator=gen)  # the learnable queries (std 0.02): no effect
        drawn["f"] = _linear(gen, 2 * dim, dim)
        for name in (*names, "f"):
            w, b = drawn[name]
            self.register_buffer(f"w_{name}", w.contiguous(), persistent=False)
            self.register_buffer(f"b_{name}", b.contiguous(), persistent=False)

    def forward(self, t_normal: Tensor, t_abnormal: Tensor) -> Tensor:
        out1 = (t_normal @ self.w_v1.T + self.b_v1) @ self.w_p1.T + self.b_p1
        out2 = (t_abnormal @ self.w_v2.T + self.b_v2) @ self.w_p2.T + self.b_p2
        return torch.cat([out1, out2], dim=-1) @ self.w_f.T + self.b_f
