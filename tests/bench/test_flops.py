"""Analytic FLOPs (fgad.bench.flops): a hand-counted small config, and torch's FlopCounterMode on the tiny model."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from fgad.backbone.deform import exportable
from fgad.backbone.fewshot import normalize_memory, patch_min_distance
from fgad.bench.flops import SAMPLING_FLOPS_PER_VALUE, fewshot_flops, model_flops
from fgad.config import BackboneConfig, FewShotConfig, HeadConfig, ModelConfig
from fgad.methods.filo.export_module import FiloExportModule
from fgad.methods.filo.frozen_text import freeze_text
from tests.helpers.tiny import CLASS_NAME, make_images


def _gemm(*shapes: tuple[int, int, int]) -> int:
    """FLOPs of [M, K] @ [K, N] products: 2 * M * K * N each."""
    return sum(2 * m * k * n for m, k, n in shapes)


@pytest.fixture(scope="module")
def hand_cfg() -> ModelConfig:
    """32 px, patch 16 -> 2x2 grid (N=4, T=5 with CLS); D=8, 2 heads of 4, 2 blocks, V-V from block 2; C=4."""
    return ModelConfig(
        name="hand",
        backbone=BackboneConfig(model_name="hand", pretrained=None, image_size=32, patch_size=16, width=8, heads=2,
                                layers=2, embed_dim=4, text_width=4, vv_start=2),
        heads=HeadConfig(linear_layers=(1, 2), mdci_layers=(2,), mdci_kernels=((1, 1), (3, 3)), adapter=True,
                         adapter_reduction=2),
        fewshot=FewShotConfig(memory_layers=(1, 2)),
    )


def test_hand_counted_encoder(hand_cfg: ModelConfig) -> None:
    f = model_flops(hand_cfg)
    # patch embedding: each of the 4 patches is a [1, 3*16*16] @ [768, 8] product
    assert f.patch_embed == _gemm((4, 768, 8))
    # per block, over T=5 tokens: QKV [5,8]@[8,24]; per head (2 heads of width 4) q k^T [5,4]@[4,5] and A v
    # [5,5]@[5,4]; out proj [5,8]@[8,8]; MLP [5,8]@[8,32] and [5,32]@[32,8]. Two blocks.
    per_head = _gemm((5, 4, 5), (5, 5, 4))
    assert f.attention_qkv == 2 * _gemm((5, 8, 24))
    assert f.attention_matmul == 2 * 2 * per_head
    assert f.attention_proj == 2 * _gemm((5, 8, 8))
    assert f.mlp == 2 * _gemm((5, 8, 32), (5, 32, 8))
    # V-V path in block 2 only: v v^T and A v per head, and a second output projection (no MLP)
    assert f.vv_matmul == 2 * per_head
    assert f.vv_proj == _gemm((5, 8, 8))


def test_hand_counted_heads_mdci_fewshot(hand_cfg: ModelConfig) -> None:
    f = model_flops(hand_cfg, shots=3, abnormal_prompts=10)
    # CLS projection [1,8]@[8,4]; adapter [1,4]@[4,2] and [1,2]@[2,4]
    assert f.global_head == _gemm((1, 8, 4), (1, 4, 2), (1, 2, 4))
    # two linear stages, [4 patches, 8] @ [8, 4]
    assert f.linear_heads == 2 * _gemm((4, 8, 4))
    # 4 maps (2 linear + 1 MDCI stage x 2 kernels) scored against T_n, T_a: [4,4]@[4,2]; best description [1,4]@[4,10]
    assert f.scoring == 4 * _gemm((4, 4, 2)) + _gemm((1, 4, 10))
    # offset convs: 1x1 -> 3 channels from 8 inputs x 1 tap; 3x3 -> 27 channels from 8 x 9 taps; at 4 positions
    assert f.mdci_offset == _gemm((4, 8, 3), (4, 72, 27))
    # main GEMMs: [4, 8 * taps] @ [8 * taps, 4]
    assert f.mdci_gemm == _gemm((4, 8, 4), (4, 72, 4))
    # bilinear sampling of 8 channels x taps per position, plus the modulation multiply
    assert f.mdci_sampling == (SAMPLING_FLOPS_PER_VALUE + 1) * 4 * 8 * (1 + 9)
    # few-shot: 4 query patches against 3 * 4 memory rows of width 8, at 2 layers
    assert f.fewshot == 2 * _gemm((4, 8, 12))
    assert f.text == 0
    assert f.total == f.encoder + f.heads + f.mdci + f.fewshot
    assert f.matmul == f.engine - f.mdci_sampling
    assert f.to_dict()["total"] == f.total


def test_batch_and_shots_scale_linearly(hand_cfg: ModelConfig) -> None:
    one, four = model_flops(hand_cfg, shots=2), model_flops(hand_cfg, shots=2, batch=4)
    assert four.total == 4 * one.total
    assert fewshot_flops(hand_cfg, 0) == 0
    assert fewshot_flops(hand_cfg, 6) == 3 * fewshot_flops(hand_cfg, 2)
    with pytest.raises(ValueError, match="shots"):
        fewshot_flops(hand_cfg, -1)
    with pytest.raises(ValueError, match="batch"):
        model_flops(hand_cfg, batch=0)


def test_dcnv1_samples_without_modulation(hand_cfg: ModelConfig) -> None:
    from fgad.config import replace

    v1 = replace(hand_cfg, heads=replace(hand_cfg.heads, mdci_modulation=False))
    v2f, v1f = model_flops(hand_cfg), model_flops(v1)
    assert v1f.mdci_sampling == SAMPLING_FLOPS_PER_VALUE * 4 * 8 * 10
    assert v1f.mdci_offset * 3 == v2f.mdci_offset * 2  # 2K instead of 3K predicted channels


def test_export_graph_matches_flop_counter(tiny_model: torch.nn.Module) -> None:
    """Every matmul/conv of the export graph, as torch counts them (deform conv decomposed, math attention)."""
    text = freeze_text(tiny_model, CLASS_NAME, None)
    module = FiloExportModule(tiny_model, text).eval()
    x = make_images(2, tiny_model.cfg.backbone.image_size)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), exportable(True), sdpa_kernel([SDPBackend.MATH]), counter:
        module(x)
    analytic = model_flops(tiny_model.cfg, batch=2, abnormal_prompts=text.num_abnormal)
    assert counter.get_total_flops() == analytic.matmul


def test_encoder_matches_flop_counter(tiny_model: torch.nn.Module) -> None:
    x = make_images(1, tiny_model.cfg.backbone.image_size)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]), counter:
        tiny_model.backbone(x)
    f = model_flops(tiny_model.cfg)
    # the backbone alone: encoder plus the global projection (the adapter is not part of it)
    bb = tiny_model.cfg.backbone
    assert counter.get_total_flops() == f.encoder + 2 * bb.width * bb.embed_dim


def test_fewshot_matches_flop_counter(tiny_model: torch.nn.Module) -> None:
    cfg = tiny_model.cfg
    n, d, shots = cfg.backbone.num_patches, cfg.backbone.width, 3
    gen = torch.Generator().manual_seed(0)
    memory = normalize_memory(torch.randn(shots, n, d, generator=gen))
    counter = FlopCounterMode(display=False)
    with counter:
        for _ in cfg.fewshot.memory_layers:
            patch_min_distance(torch.randn(1, n, d, generator=gen), memory)
    assert counter.get_total_flops() == fewshot_flops(cfg, shots)
