"""``model.reproduce: released``: the released FiLo test's scoring and blur (P4, P5, P6; METHOD.md §5).

The reference below writes the released test out literally in float64 numpy on the tiny random model's own
features: text features divided by the Frobenius norm of the [2, C] pair (rows of norm 1/√2), 100 × the dot
product, logits upsampled (align_corners) before the softmax, an MDCI stage's kernels summed before that one
softmax, torchvision's ``GaussianBlur(kernel_size=3, sigma=4)`` (3 taps, numpy ``reflect`` padding = torch's)
on each stage map, the image score ½ (raw text probability + max map) before suppression, and the suppression
``where(copy == 1, map, 0.7 map)``. The default mode is run on identical weights and its distance recorded.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from fgad.methods.filo.model import FiloOutput, FiLoPlusPlus
from fgad.methods.filo.released import blur3, released_suppress
from tests.helpers.tiny import CLASS_NAME, make_images

LAMBDA = 0.7


def _n(x: np.ndarray) -> np.ndarray:
    return x / np.sqrt((x * x).sum(axis=-1, keepdims=True))


def _interp(src: int, dst: int) -> np.ndarray:
    r = np.zeros((dst, src))
    for i in range(dst):
        pos = i * (src - 1) / (dst - 1)
        i0 = min(int(math.floor(pos)), src - 2)
        r[i, i0] += 1.0 - (pos - i0)
        r[i, i0 + 1] += pos - i0
    return r


def _gaussian_blur_3x3_sigma4(m: np.ndarray) -> np.ndarray:
    """torchvision GaussianBlur(kernel_size=3, sigma=4) on one [H, W] map, as a full 3x3 kernel."""
    x = np.array([-1.0, 0.0, 1.0])
    k1 = np.exp(-0.5 * (x / 4.0) ** 2)
    k1 = k1 / k1.sum()
    kernel = np.outer(k1, k1)
    p = np.pad(m, 1, mode="reflect")
    h, w = m.shape
    return sum(kernel[i, j] * p[i:i + h, j:j + w] for i in range(3) for j in range(3))


def _released_reference(model: FiLoPlusPlus, images: torch.Tensor, region: np.ndarray | None) -> tuple:
    """The released test on the model's features: (final map [B, s, s], image score [B])."""
    cfg = model.cfg
    g, s = cfg.backbone.grid, cfg.backbone.image_size
    with torch.no_grad():
        feats = model.backbone(images)
        g_adapted = model.adapted_global(feats.global_embed)
        pair = model.text_pair(CLASS_NAME, torch.nn.functional.normalize(feats.global_embed, dim=-1), g_adapted,
                               torch.ones(images.shape[0], 9), filtering=True)
        linear, mdci = model.head_features(feats)
    tn, ta = pair.t_normal.double().numpy(), pair.t_abnormal.double().numpy()
    stage_feats = [f.double().numpy() for f in linear] + [sum(k.double().numpy() for k in ks) for ks in mdci]
    r = _interp(g, s)
    maps, scores = [], []
    for b in range(images.shape[0]):
        text = np.stack([tn[b], ta[b]])
        text = text / np.sqrt((text * text).sum())  # text_features /= text_features.norm(): rows 1/sqrt(2)
        stage_maps = []
        for f in stage_feats:
            logits = 100.0 * _n(f[b]) @ text.T  # [N, 2]
            up = np.stack([r @ logits[:, c].reshape(g, g) @ r.T for c in range(2)])  # logits upsampled first
            e = np.exp(up - up.max(axis=0))
            prob = e / e.sum(axis=0)
            stage_maps.append(_gaussian_blur_3x3_sigma4((prob[1] + 1.0 - prob[0]) / 2.0))
        m = np.mean(stage_maps, axis=0)
        raw = float(g_adapted[b].double().numpy() @ text[1])  # un-softmaxed image probability
        scores.append(0.5 * (raw + m.max()))  # max before the box suppression
        if region is not None:
            cp = m.copy()
            cp[region[b] == 1] = 1.0
            m = np.where(cp == 1, m, m * LAMBDA)
        maps.append(m)
    return np.stack(maps), np.array(scores)


@pytest.fixture(scope="module")
def pair_of_models(tiny_model: FiLoPlusPlus) -> tuple[FiLoPlusPlus, FiLoPlusPlus]:
    """The tiny model in the default mode and an identical copy in the released mode."""
    from tests.helpers.tiny import perturb_offsets

    default = perturb_offsets(copy.deepcopy(tiny_model), 0).eval()
    released = copy.deepcopy(default)
    released.set_reproduce("released")
    return default, released


@pytest.fixture(scope="module")
def half_region(tiny_cfg) -> torch.Tensor:  # noqa: ANN001
    s = tiny_cfg.backbone.image_size
    region = torch.zeros(2, 1, s, s)
    region[..., : s // 3, : s // 2] = 1.0
    return region


def _run(model: FiLoPlusPlus, images: torch.Tensor, region: torch.Tensor | None) -> FiloOutput:
    with torch.no_grad():
        return model(images, CLASS_NAME, region=region)


@pytest.mark.parametrize("with_region", [False, True])
def test_released_mode_is_the_released_test_written_out(pair_of_models, images, half_region, with_region) -> None:  # noqa: ANN001
    _, released = pair_of_models
    region = half_region if with_region else None
    out = _run(released, images, region)
    want_map, want_score = _released_reference(released, images, None if region is None else region[:, 0].numpy())
    map_dist = float(np.abs(out.anomaly_map.double().numpy() - want_map).max())
    score_dist = float(np.abs(out.image_score.double().numpy() - want_score).max())
    assert map_dist < 1e-5 and score_dist < 1e-5, f"released mode vs the literal released test: {map_dist:.2e}, " \
                                                  f"{score_dist:.2e}"


def test_default_and_released_differ_by_a_recorded_distance(pair_of_models, images, half_region) -> None:  # noqa: ANN001
    default, released = pair_of_models
    a, b = _run(default, images, half_region), _run(released, images, half_region)
    map_gap = float((a.anomaly_map - b.anomaly_map).abs().max())
    score_gap = float((a.image_score - b.image_score).abs().max())
    # measured on the tiny random model with the region: map 0.289, image score 0.079 (without a region: 0.303,
    # 0.119; the scoring alone, aliasing off: 0.306, 0.108)
    assert map_gap > 0.1 and score_gap > 0.03, (map_gap, score_gap)
    torch.testing.assert_close(a.stage_probs[0].sum(dim=1), b.stage_probs[0].sum(dim=1))  # both still probabilities


def test_released_few_shot_map_is_blurred_and_fused_before_the_score(pair_of_models, images) -> None:  # noqa: ANN001
    _, released = pair_of_models
    model = copy.deepcopy(released)
    model.set_reference_images(make_images(2, model.cfg.backbone.image_size, seed=11))
    out = _run(model, images, None)
    assert out.fewshot_map is not None
    unblurred = model.fewshot_map(model.encode_images(images))
    torch.testing.assert_close(out.fewshot_map, blur3(unblurred))
    torch.testing.assert_close(out.anomaly_map, (out.vl_map + out.fewshot_map) / 2.0)


def test_released_suppression_keeps_outside_pixels_of_score_exactly_one() -> None:
    maps = torch.tensor([[[0.5, 1.0], [0.25, 0.8]]])
    region = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    got = released_suppress(maps, region, LAMBDA)
    torch.testing.assert_close(got, torch.tensor([[[0.5, 1.0], [0.25 * LAMBDA, 0.8 * LAMBDA]]]))


def test_blur3_matches_the_full_3x3_kernel() -> None:
    m = torch.rand(1, 9, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(blur3(m)[0].numpy(), _gaussian_blur_3x3_sigma4(m[0].numpy()), atol=1e-12)


def test_export_refuses_the_released_mode(pair_of_models) -> None:  # noqa: ANN001
    from fgad.export.plan import ExportOptions
    from fgad.methods.filo.export import export_plan

    _, released = pair_of_models
    with pytest.raises(ValueError, match="reproduce='released'"):
        export_plan(released, CLASS_NAME, None, ExportOptions())
