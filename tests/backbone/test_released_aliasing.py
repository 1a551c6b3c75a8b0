"""``aliasing=True`` (``model.reproduce: released``) against the released control flow run literally.

The reference below is the released dual-path forward written with its in-place updates (``x += ...`` on
the V-V tensor, ``x_ori += ...`` on the stored original-path tensor) and its output list that keeps
references, on the tiny random CLIP; our mode computes the same features out of place. The distance between
the two is recorded in the assertion (float32 rounding only); the default mode must differ from it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fgad.backbone.dual_path import ClipDualPath
from fgad.config import ModelConfig, replace


def _released_forward(path: ClipDualPath, images: torch.Tensor, layers: tuple[int, ...]) -> list[torch.Tensor]:
    """The released loop: out_tokens get x (single path) or [x, x_ori] (dual) by reference at ``layers``."""
    x = path.embed(images)
    out: list[torch.Tensor] = []
    heads, head_dim = path.cfg.heads, path.cfg.head_dim
    for index, block in enumerate(path.blocks, start=1):
        attn = block.attn

        def attention(u: torch.Tensor, attn: torch.nn.Module = attn) -> tuple[torch.Tensor, torch.Tensor]:
            qkv = F.linear(u, attn.in_proj_weight, attn.in_proj_bias).unflatten(-1, (3, heads, head_dim))
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            ori = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
            vv = F.scaled_dot_product_attention(v, v, v).transpose(1, 2).flatten(2)
            return (F.linear(vv, attn.out_proj.weight, attn.out_proj.bias),
                    F.linear(ori, attn.out_proj.weight, attn.out_proj.bias))

        if index < path.cfg.vv_start:
            x = x + attention(block.ln_1(x))[1]
            x = x + block.mlp(block.ln_2(x))
        elif index == path.cfg.vv_start:
            x_res, x_ori_res = attention(block.ln_1(x))
            x_ori = x + x_ori_res
            x_ori = x_ori + block.mlp(block.ln_2(x_ori))
            x += x_res  # in place: the tensor stored at vv_start - 1 becomes the V-V path
        else:
            x_res, x_ori_res = attention(block.ln_1(x_ori))
            x_ori += x_ori_res  # in place: the tensor stored at the previous layer changes too
            x_ori = x_ori + block.mlp(block.ln_2(x_ori))
            x += x_res
        if index in layers:
            out.extend([x] if index < path.cfg.vv_start else [x, x_ori])
    return out


def test_aliasing_mode_reproduces_the_released_features(tiny_cfg: ModelConfig, tiny_clip: torch.nn.Module,
                                                        images: torch.Tensor) -> None:
    bb = replace(tiny_cfg.backbone, vv_start=3)  # blocks 1-2 single, 3..L dual (FiLo: 7 of 24)
    last = bb.layers
    layers = (2, 3, last)
    ours = ClipDualPath(tiny_clip.visual, bb, layers, (3, last), aliasing=True)
    plain = ClipDualPath(tiny_clip.visual, bb, layers, (3, last))
    with torch.no_grad():
        ref = _released_forward(ours, images, layers)  # [x2 (aliased), z3, x3+, zL, xL]
        feats = ours(images)
        default = plain(images)
    want_ori = (ref[0], ref[2], ref[4])
    want_vv = (ref[1], ref[3])
    dist = max(float((a - b).abs().max()) for a, b in zip(feats.ori + feats.vv, want_ori + want_vv, strict=True))
    assert dist < 1e-5, f"aliasing mode vs the released control flow: max |diff| {dist:.2e}"
    assert torch.equal(ref[0], ref[3]) and torch.equal(ref[1], ref[3])  # the released lists alias
    gap = float((default.ori[0] - want_ori[0]).abs().max())
    assert gap > 1e-3, f"the default (out-of-place) features should differ from the released ones, got {gap:.2e}"
