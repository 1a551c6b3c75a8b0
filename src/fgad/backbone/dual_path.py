"""Dual-path ("V-V", CLIP-Surgery) forward over an open_clip vision transformer.

Original path (plain CLIP):  y = x + Attn(LN1(x));  x' = y + MLP(LN2(y)).
V-V path, from block l0 on:  z' = z + VV(LN1(x)),   z starts as x before block l0.
VV takes LN1 of the *original* state, uses only v: softmax(v v^T / sqrt(d)) v, then out_proj.

Every residual update here is out of place: the released code's ``x += ...`` made stored
intermediate features alias later ones (METHOD.md P1/F11). Head counts and widths come from
the config, so the traced graph holds no Python arithmetic on tensor sizes.

``aliasing=True`` reproduces that aliasing on purpose (``model.reproduce: released``), computed out of
place from the same quantities: the stored ``x^l`` of a dual block ``l < L`` also carries block ``l+1``'s
attention residual (``x_ori += ...`` on the stored tensor), the stored ``x^(l0-1)`` and every stored
``z^l`` are the final ``z^L`` (the V-V path was ``x += ...`` on that tensor). For FiLo's l0 = 7 the
linear heads then see ``[z^24, x^12+, x^18+, x^24]`` and every MDCI head ``z^24`` (METHOD.md P1); for
FineGrainedAD (l0 = 1) the galleries ``x^3+, x^8+`` (F11).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from fgad.config import BackboneConfig


class VisualFeatures(NamedTuple):
    """Outputs of :class:`ClipDualPath`; tokens include CLS at index 0."""

    global_embed: torch.Tensor  # G = LN_post(x^L[:, 0]) @ W_proj, [B, C]
    ori: tuple[torch.Tensor, ...]  # original-path x^l for each requested layer, [B, N+1, D]
    vv: tuple[torch.Tensor, ...]  # V-V z^l for each requested layer, [B, N+1, D]


class ClipDualPath(nn.Module):
    """Frozen open_clip visual tower with a second, V-V path from block ``vv_start``."""

    def __init__(
        self,
        visual: nn.Module,
        cfg: BackboneConfig,
        ori_layers: tuple[int, ...],
        vv_layers: tuple[int, ...],
        aliasing: bool = False,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.aliasing = aliasing
        self.ori_layers = tuple(ori_layers)
        self.vv_layers = tuple(vv_layers)
        bad = [i for i in vv_layers if i < cfg.vv_start]
        if bad:
            raise ValueError(f"V-V layers {bad} precede vv_start={cfg.vv_start}")
        self.conv1 = visual.conv1
        self.class_embedding = visual.class_embedding
        self.positional_embedding = visual.positional_embedding
        self.ln_pre = visual.ln_pre
        self.blocks = visual.transformer.resblocks
        self.ln_post = visual.ln_post
        self.proj = visual.proj
        self.last_needed = max(self.ori_layers + self.vv_layers + (cfg.layers,))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        x = self.conv1(images)  # [B, D, g, g]
        x = x.flatten(2).transpose(1, 2)  # [B, N, D]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        return self.ln_pre(x)

    def _attention(self, block: nn.Module, u: torch.Tensor, with_vv: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        attn = block.attn
        heads, head_dim = self.cfg.heads, self.cfg.head_dim
        qkv = F.linear(u, attn.in_proj_weight, attn.in_proj_bias)  # [B, T, 3D]
        qkv = qkv.unflatten(-1, (3, heads, head_dim)).permute(2, 0, 3, 1, 4)  # [3, B, H, T, d]
        q, k, v = qkv.unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        out = F.linear(out.transpose(1, 2).flatten(2), attn.out_proj.weight, attn.out_proj.bias)
        if not with_vv:
            return out, None
        vv = F.scaled_dot_product_attention(v, v, v)
        vv = F.linear(vv.transpose(1, 2).flatten(2), attn.out_proj.weight, attn.out_proj.bias)
        return out, vv

    def forward(self, images: torch.Tensor) -> VisualFeatures:
        x = self.embed(images)
        z = x
        ori: dict[int, torch.Tensor] = {}
        vv: dict[int, torch.Tensor] = {}
        for index, block in enumerate(self.blocks, start=1):
            if index > self.last_needed:
                break
            dual = index >= self.cfg.vv_start
            u = block.ln_1(x)
            attn_out, vv_out = self._attention(block, u, dual)
            if dual:
                z = (x if index == self.cfg.vv_start else z) + block.ls_1(vv_out)
            if self.aliasing and dual and index - 1 in ori and index - 1 >= self.cfg.vv_start:
                ori[index - 1] = ori[index - 1] + block.ls_1(attn_out)  # the released x_ori += ...
            y = x + block.ls_1(attn_out)
            x = y + block.ls_2(block.mlp(block.ln_2(y)))
            if index in self.ori_layers:
                ori[index] = x
            if index in self.vv_layers:
                vv[index] = z
        if self.aliasing:
            for layer in ori:
                if layer == self.cfg.vv_start - 1:
                    ori[layer] = z  # the tensor the V-V path was added onto in place
            vv = {layer: z for layer in vv}
        global_embed = self.ln_post(x[:, 0]) @ self.proj
        return VisualFeatures(
            global_embed=global_embed,
            ori=tuple(ori[i] for i in self.ori_layers),
            vv=tuple(vv[i] for i in self.vv_layers),
        )


class TextEncoder(nn.Module):
    """open_clip text tower fed with token *embeddings* (so context vectors can be learned)."""

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        self.token_embedding = clip.token_embedding
        self.positional_embedding = clip.positional_embedding
        self.transformer = clip.transformer
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection
        self.register_buffer("attn_mask", clip.attn_mask.clone(), persistent=False)
        self.batch_first = getattr(clip.transformer, "batch_first", True)

    def forward(self, embeddings: torch.Tensor, eot_index: torch.Tensor, seq_len: int | None = None) -> torch.Tensor:
        """embeddings [P, T, W], eot_index [P] (int64) -> features [P, C] (not normalised).

        ``seq_len`` (a build-time constant, >= every EOT index + 1) lets callers pass prompts cut
        after their longest EOT: attention is causal, so later tokens never reach the EOT
        feature and the result is exact, at a fraction of the cost.
        """
        length = seq_len if seq_len is not None else self.positional_embedding.shape[0]
        x = embeddings[:, :length] + self.positional_embedding[:length].to(embeddings.dtype)
        if not self.batch_first:
            x = x.transpose(0, 1)
        x = self.transformer(x, attn_mask=self.attn_mask[:length, :length])
        if not self.batch_first:
            x = x.transpose(0, 1)
        x = self.ln_final(x)
        idx = eot_index.view(-1, 1, 1).expand(-1, 1, x.shape[-1])
        x = x.gather(1, idx).squeeze(1)
        proj = self.text_projection
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.token_embedding(tokens)
