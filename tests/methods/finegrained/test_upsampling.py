"""Upsampling of FineGrainedAD maps: half-pixel (``align_corners=False``, the released code's) everywhere.

PyTorch (``finegrained.align_corners``), the manifest (``post.align_corners``) and the torch-free runtime
(``fgad.runtime.fusion``) must say the same thing; a bundle written before the field existed declares nothing
and is read with the old behaviour (``align_corners=True``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fgad.bundle.spec import PostSpec
from fgad.config import load_config
from fgad.methods.finegrained.config import FineGrainedConfig
from fgad.methods.finegrained.export import runtime_post
from fgad.runtime.fusion import FusionSpec, finish_maps, upsample_bilinear, upsample_half_pixel


@pytest.mark.parametrize(("size_in", "size_out"), [(15, 400), (15, 240), (37, 518), (4, 4), (7, 3)])
def test_half_pixel_upsampling_matches_pytorch(size_in: int, size_out: int) -> None:
    maps = np.random.default_rng(0).random((2, size_in, size_in), dtype=np.float32)
    ours = upsample_half_pixel(maps, size_out)
    ref = F.interpolate(torch.from_numpy(maps)[:, None], size=(size_out, size_out), mode="bilinear",
                        align_corners=False)[:, 0].numpy()
    np.testing.assert_allclose(ours, ref, atol=5e-6)  # float32 rounding of the two matmuls


def test_the_two_modes_differ_by_half_a_token_at_the_edge() -> None:
    """A step between the last two tokens of a 15-grid lies ~13 px further out at 400 px with True."""
    grid = np.zeros((1, 15, 15), dtype=np.float32)
    grid[:, :, -1] = 1.0
    half = upsample_bilinear(grid, 400, align_corners=False)[0, 0]
    corners = upsample_bilinear(grid, 400, align_corners=True)[0, 0]
    # the 0.5 crossing: half-pixel puts it at the token border 14/15 * 400 = 373.3, align_corners at 386.2
    assert abs(int(np.argmax(half >= 0.5)) - 373) <= 1
    assert abs(int(np.argmax(corners >= 0.5)) - 386) <= 1


def test_finegrained_defaults_to_half_pixel_and_declares_it() -> None:
    assert FineGrainedConfig().align_corners is False
    cfg = load_config("fgad-tiny").model
    assert runtime_post(cfg)["align_corners"] is False


def test_old_bundles_keep_align_corners_true() -> None:
    """PostSpec's default is the behaviour of every bundle written before the field existed."""
    assert PostSpec(sigma=4.0, truncate=4.0).align_corners is True
    assert FusionSpec(sigma=4.0, truncate=4.0, map_size=15, output_size=400).align_corners is True


@pytest.mark.parametrize("align_corners", [False, True])
def test_runtime_fusion_follows_the_declared_mode(align_corners: bool) -> None:
    """The runtime's harmonic finish equals the PyTorch finish with the same mode."""
    from fgad.backbone.postprocess import GaussianBlur
    from fgad.methods.finegrained.model import fuse_and_score

    rng = np.random.default_rng(1)
    vl = rng.uniform(0.1, 0.9, (2, 15, 15)).astype(np.float32)
    few = rng.uniform(0.1, 0.9, (2, 15, 15)).astype(np.float32)
    prob = rng.uniform(0.1, 0.9, 2).astype(np.float32)
    spec = FusionSpec(sigma=4.0, truncate=4.0, map_size=15, output_size=400, fusion="harmonic",
                      score="harmonic", fewshot_scale=1.0, align_corners=align_corners)
    amap, score = finish_maps(vl, prob, few, spec)
    ref_map, ref_score = fuse_and_score(torch.from_numpy(vl), torch.from_numpy(few), torch.from_numpy(prob), 400,
                                        GaussianBlur(400, sigma=4.0, truncate=4.0), align_corners)
    np.testing.assert_allclose(amap, ref_map.numpy(), atol=2e-5)
    np.testing.assert_allclose(score, ref_score.numpy(), atol=1e-6)


def test_the_golden_bundle_declares_nothing_and_reads_as_align_corners_true() -> None:
    """The golden FineGrainedAD manifest (written before the field) parses with the old behaviour."""
    import json
    from pathlib import Path

    from fgad.bundle.parse import _parse

    golden = Path(__file__).parents[2] / "bundle" / "golden" / "finegrained" / "manifest.json"
    raw = json.loads(golden.read_text())
    assert "align_corners" not in raw["post"]
    assert _parse(raw, str(golden)).post.align_corners is True
