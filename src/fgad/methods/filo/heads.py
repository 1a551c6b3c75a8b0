"""Local heads of FiLo++: linear maps on original-path stages and MDCI on V-V stages; the adapter.

MDCI (multi-scale deformable convolutional interaction, METHOD.md §1.6b): at each V-V stage the
patch tokens are laid out on the g x g grid and passed through n DCNv2 kernels of different
shapes (default 1x1, 3x3, 5x5, 7x7, 1x5, 5x1), each D -> C. Each kernel's output is scored on
its own and the probabilities are averaged over kernels (Eq. 2).
"""

from __future__ import annotations

import torch
from torch import nn

from fgad.backbone.deform import ModulatedDeformConv2d
from fgad.config import ModelConfig


class LinearStageHeads(nn.Module):
    """F_i = Linear_i(ori[i]) on the raw residual stream, patch tokens only, D -> C."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        bb = cfg.backbone
        self.layers = tuple(cfg.heads.linear_layers)
        self.maps = nn.ModuleList(nn.Linear(bb.width, bb.embed_dim) for _ in self.layers)

    def forward(self, stage_tokens: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        """stage_tokens: [B, N+1, D] per linear layer -> [B, N, C] per layer."""
        return [head(tokens[:, 1:]) for head, tokens in zip(self.maps, stage_tokens, strict=True)]


class MDCIStage(nn.Module):
    """n deformable kernels over one stage's token grid."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        bb, hc = cfg.backbone, cfg.heads
        self.grid = bb.grid
        self.kernels = nn.ModuleList(
            ModulatedDeformConv2d(bb.width, bb.embed_dim, kernel_size=k, padding=None, modulation=hc.mdci_modulation)
            for k in hc.mdci_kernels
        )

    def forward(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """tokens [B, N+1, D] -> per kernel [B, N, C]."""
        grid = tokens[:, 1:].transpose(1, 2).unflatten(2, (self.grid, self.grid))  # [B, D, g, g]
        return [conv(grid).flatten(2).transpose(1, 2) for conv in self.kernels]


class MDCIHead(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.layers = tuple(cfg.heads.mdci_layers)
        self.stages = nn.ModuleList(MDCIStage(cfg) for _ in self.layers)

    def forward(self, vv_tokens: tuple[torch.Tensor, ...]) -> list[list[torch.Tensor]]:
        return [stage(tokens) for stage, tokens in zip(self.stages, vv_tokens, strict=True)]

    @torch.no_grad()
    def randomize_offsets(self, seed: int = 0) -> None:
        """Non-zero offset/modulation convolutions, as in a trained model (a fresh layer's are zero, which makes
        it an ordinary convolution), so tests and benchmarks exercise the deformable sampling: weights
        N(0, 0.02^2), biases N(0, 0.5^2) (offsets of about half a pixel, modulation away from 0.5)."""
        gen = torch.Generator().manual_seed(seed)
        for stage in self.stages:
            for conv in stage.kernels:
                w, b = conv.offset_conv.weight, conv.offset_conv.bias
                w.copy_(torch.randn(w.shape, generator=gen) * 0.02)
                b.copy_(torch.randn(b.shape, generator=gen) * 0.5)


class Adapter(nn.Module):
    """a(x) = x + SiLU(W2 ReLU(W1 x)), no biases (the released FiLo adapter, residual kept)."""

    def __init__(self, embed_dim: int, reduction: int) -> None:
        super().__init__()
        hidden = max(1, embed_dim // reduction)
        self.fc1 = nn.Linear(embed_dim, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, embed_dim, bias=False)
        self.relu = nn.ReLU()
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.fc2(self.relu(self.fc1(x))))
