"""Full-size FiLo++ (ViT-L-14-336 at 518 px, random weights) builds and runs one forward on CPU."""

from __future__ import annotations

import logging

import pytest
import torch

from fgad.config import load_config

logging.getLogger("root").setLevel(logging.ERROR)


@pytest.mark.slow
def test_vitl14_336_at_518_builds_and_runs_one_forward() -> None:
    from fgad.methods.filo.build import build_model

    cfg = load_config("filo-vitl14-336", {"model": {"backbone": {"pretrained": None}}}).model
    model = build_model(cfg).eval()
    assert model.backbone.positional_embedding.shape == (37 * 37 + 1, 1024)

    taps = sum(kh * kw for kh, kw in cfg.heads.mdci_kernels)  # 1+9+25+49+5+5 = 94
    main_weights = sum(k.weight.numel() for stage in model.mdci.stages for k in stage.kernels)
    assert main_weights == len(cfg.heads.mdci_layers) * taps * 1024 * 768  # ≈ 222 M, METHOD.md §1.6

    x = torch.randn(1, 3, 518, 518, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(x, "bottle")
    assert out.anomaly_map.shape == (1, 518, 518)
    assert len(out.stage_probs) == 7 and out.stage_probs[0].shape == (1, 2, 37, 37)
    assert torch.isfinite(out.anomaly_map).all() and 0.0 <= float(out.image_score[0]) <= 1.0
