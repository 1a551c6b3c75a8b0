"""MLSA (b) losses (METHOD.md §2.6) on hand-computed small inputs: 2-3 tokens, 2-d features."""

from __future__ import annotations

import math

import pytest
import torch

from fgad.methods.finegrained.losses import eam_loss, match_loss, mlsa_loss, reg_loss, v2t_loss
from fgad.methods.finegrained.mllp import PromptFeatures, _FamilyLayout


def test_v2t_is_token_wise_cross_entropy_with_target_normal() -> None:
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    normal = torch.tensor([1.0, 0.0])
    abnormal = torch.tensor([[0.0, 1.0]])
    # token 1: logits 2*[1, 0] -> -log(e^2 / (e^2 + 1)); token 2: 2*[0, 1] -> -log(1 / (1 + e^2))
    expected = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(2))) / 2
    assert v2t_loss(x, normal, abnormal, 2.0).item() == pytest.approx(expected, rel=1e-6)
    # two abnormal prompts: the normal logit competes with both
    abnormal2 = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    token1 = -math.log(math.exp(2) / (math.exp(2) + math.exp(0) + math.exp(-2)))
    token2 = -math.log(math.exp(0) / (math.exp(0) + math.exp(2) + math.exp(0)))
    assert v2t_loss(x, normal, abnormal2, 2.0).item() == pytest.approx((token1 + token2) / 2, rel=1e-6)


def test_eam_margin_norm_is_over_channels() -> None:
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    normal, abnormal = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    # |x-n|^2 - |x-a|^2 + 1 per token: 0 - 2 + 1 -> 0 (relu); 2 - 0 + 1 = 3; 0.8 - 0.4 + 1 = 1.4
    expected = (0.0 + 3.0 + 1.4) / 3
    assert eam_loss(x, normal, abnormal, margin=1.0).item() == pytest.approx(expected, rel=1e-6)
    # a [k, N, C] batch is the mean over all tokens, not a sum over the token axis (F2)
    assert eam_loss(x.unsqueeze(0), normal, abnormal, margin=1.0).item() == pytest.approx(expected, rel=1e-6)
    assert eam_loss(x, normal, abnormal, margin=0.0).item() == pytest.approx((0.0 + 2.0 + 0.4) / 3, rel=1e-6)


def test_match_is_squared_distance_of_normalised_means() -> None:
    handle = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # normalised: (1, 0), (0, 1) -> mean (0.5, 0.5)
    learned = torch.tensor([[1.0, 1.0]])  # (1/sqrt2, 1/sqrt2)
    r = 1 / math.sqrt(2)
    expected = 2 * (0.5 - r) ** 2
    assert match_loss(handle, learned).item() == pytest.approx(expected, rel=1e-6)


def test_reg_is_an_unsquared_norm() -> None:
    image = torch.tensor([[3.0, 0.0]])  # -> (1, 0)
    entities = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # summed per prompt: (1, 1) -> (r, r)
    background = torch.tensor([[0.0, -2.0]])  # -> (0, -1)
    r = 1 / math.sqrt(2)
    expected = math.hypot(1 - r - 0, 0 - r + 1)
    assert reg_loss(image, entities, background).item() == pytest.approx(expected, rel=1e-6)


def _features() -> PromptFeatures:
    """Families: entity (1 normal, 1 handle, 2 learned), image (1, 2, 2), background (1, 1, 2); C = 2."""
    gen = torch.Generator().manual_seed(0)
    rows = torch.randn(13, 2, generator=gen)
    layout = [
        _FamilyLayout("entity: e", slice(0, 1), slice(1, 2), slice(6, 8)),
        _FamilyLayout("image", slice(2, 3), slice(3, 5), slice(8, 10)),
        _FamilyLayout("background", slice(5, 6), slice(12, 13), slice(10, 12)),
    ]
    return PromptFeatures(rows, layout)


def test_total_assembles_the_levels() -> None:
    feats = _features()
    rows = feats.features
    n = torch.nn.functional.normalize
    gen = torch.Generator().manual_seed(1)
    patches = n(torch.randn(2, 3, 2, generator=gen), dim=-1)
    weights = 1 + 1.5 * (torch.rand(2, 2, 3, generator=gen) > 0.5).float()  # [E + 1, k, N]
    scale, margin, lam = 4.6, 1.0, 1e-3

    def level(x: torch.Tensor, normal: slice, abnormal: list[int]) -> torch.Tensor:
        anchor = n(rows[normal].mean(0), dim=0)
        ab = rows[abnormal]
        return v2t_loss(x, anchor, n(ab, dim=-1), scale) + eam_loss(x, anchor, n(ab.mean(0), dim=0), margin)

    expected = level(patches, slice(2, 3), [3, 4, 8, 9])  # image level on F
    expected = expected + lam * match_loss(rows[3:5], rows[8:10])
    expected = expected + level(patches * weights[0].unsqueeze(-1), slice(0, 1), [1, 6, 7])  # entity level
    expected = expected + lam * match_loss(rows[1:2], rows[6:8])
    expected = expected + level(patches * weights[1].unsqueeze(-1), slice(5, 6), [12, 10, 11])  # background
    expected = expected + reg_loss(rows[8:10], rows[6:8].unsqueeze(0), rows[5:6])
    total, parts = mlsa_loss(patches, weights, feats, image_family=1, background_family=2, scale=scale,
                             margin=margin, lambda_match=lam)
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    assert set(parts) == {"v2t", "eam", "match", "reg"}
    assert total.item() == pytest.approx(parts["v2t"] + parts["eam"] + lam * parts["match"] + parts["reg"], rel=1e-5)
    with pytest.raises(ValueError, match="levels"):
        mlsa_loss(patches, weights[:1], feats, 1, 2, scale)


def test_released_eam_sums_over_the_token_axis() -> None:
    """F2 (``model.reproduce: released``): the release's ``sum(dim=1)`` on ``[k, N, C]``, written out by hand."""
    n = torch.nn.functional.normalize
    gen = torch.Generator().manual_seed(3)
    x = n(torch.randn(2, 5, 4, generator=gen), dim=-1)
    normal, direction = n(torch.randn(4, generator=gen), dim=0), n(torch.randn(4, generator=gen), dim=0)
    by_hand = []
    for k in range(2):
        for c in range(4):
            to_n = sum(float(x[k, u, c] - normal[c]) ** 2 for u in range(5))
            to_a = sum(float(x[k, u, c] - direction[c]) ** 2 for u in range(5))
            by_hand.append(max(0.0, to_n - to_a + 1.0))
    got = eam_loss(x, normal, direction, 1.0, norm_dim=1)
    assert got.item() == pytest.approx(sum(by_hand) / len(by_hand), rel=1e-5)
    ours = eam_loss(x, normal, direction, 1.0)
    assert abs(got.item() - ours.item()) > 1e-3  # the two modes differ on the same inputs

    feats = _features()
    weights = 1 + 1.5 * (torch.rand(2, 2, 3, generator=gen) > 0.5).float()
    patches = n(torch.randn(2, 3, 2, generator=gen), dim=-1)
    default, _ = mlsa_loss(patches, weights, feats, 1, 2, 4.6)
    released, parts = mlsa_loss(patches, weights, feats, 1, 2, 4.6, released=True)
    assert parts["eam"] != pytest.approx(mlsa_loss(patches, weights, feats, 1, 2, 4.6)[1]["eam"], rel=1e-3)
    assert released.item() != pytest.approx(default.item(), rel=1e-4)
