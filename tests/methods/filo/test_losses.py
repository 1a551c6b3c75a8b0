"""Tests for fgad.methods.filo.losses against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from fgad.methods.filo.losses import dice_loss, focal_loss, segmentation_loss, two_way_ce

# One image, two pixels: (normal, anomalous) probabilities (0.8, 0.2) and (0.3, 0.7); labels 0 and 1.
PROBS = torch.tensor([[[[0.8, 0.3]], [[0.2, 0.7]]]])  # [1, 2, 1, 2]
TARGET = torch.tensor([[[[0.0, 1.0]]]])  # [1, 1, 1, 2]


def test_focal_loss_hand_computed_without_smoothing() -> None:
    # p_t = 0.8 and 0.7; loss = mean(0.2^2 * -ln 0.8, 0.3^2 * -ln 0.7)
    #     = (0.04 * 0.22314355 + 0.09 * 0.35667494) / 2 = 0.02051324
    got = focal_loss(PROBS, TARGET, gamma=2.0, smooth=0.0)
    assert got.shape == ()
    assert got.item() == pytest.approx(0.02051324, abs=1e-7)


def test_focal_loss_hand_computed_with_smoothing() -> None:
    # one-hot clamped to (1 - 1e-5, 1e-5) and (1e-5, 1 - 1e-5), plus 1e-5 on p_t:
    # p_t0 = 0.8 (1 - 1e-5) + 0.2e-5 + 1e-5 = 0.800004 ; p_t1 = 0.3e-5 + 0.7 (1 - 1e-5) + 1e-5 = 0.700006
    p0, p1 = 0.800004, 0.700006
    expected = ((1 - p0) ** 2 * -math.log(p0) + (1 - p1) ** 2 * -math.log(p1)) / 2
    assert focal_loss(PROBS, TARGET).item() == pytest.approx(expected, rel=1e-5)
    # gamma = 0 is plain NLL of p_t: (-ln 0.8 - ln 0.7) / 2 = 0.28990925
    assert focal_loss(PROBS, TARGET, gamma=0.0, smooth=0.0).item() == pytest.approx(0.28990925, abs=1e-7)


def test_focal_loss_accepts_3d_target_and_is_small_for_confident_correct() -> None:
    assert focal_loss(PROBS, TARGET[:, 0]).item() == pytest.approx(focal_loss(PROBS, TARGET).item())
    perfect = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])
    assert focal_loss(perfect, TARGET).item() < 1e-9
    wrong = perfect.flip(1)
    assert focal_loss(wrong, TARGET).item() > 5.0


def test_focal_loss_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError):
        focal_loss(torch.rand(1, 3, 2, 2), torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError):
        focal_loss(torch.rand(1, 2, 2, 2), torch.zeros(1, 1, 3, 2))


def test_dice_loss_hand_computed() -> None:
    # sum(p y) = 0.7, sum(p) = 0.9, sum(y) = 1 -> 1 - (1.4 + 1) / (0.9 + 1 + 1) = 0.5 / 2.9
    assert dice_loss(PROBS[:, 1], TARGET[:, 0]).item() == pytest.approx(0.5 / 2.9, abs=1e-7)
    assert dice_loss(PROBS[:, 1:], TARGET).item() == pytest.approx(0.5 / 2.9, abs=1e-7)
    # normal channel vs inverted mask: sum(p y) = 0.8, sum(p) = 1.1, sum(y) = 1 -> 1 - 2.6 / 3.1
    assert dice_loss(PROBS[:, 0], 1 - TARGET[:, 0]).item() == pytest.approx(0.5 / 3.1, abs=1e-7)


def test_dice_loss_is_per_image_not_per_row() -> None:
    # image 0: prob rows [1, 0] / [0, 0], target rows [0, 0] / [1, 0]:
    #          sum(p y) = 0, sum(p) = 1, sum(y) = 1 -> 1 - 1 / 3 = 2/3
    # image 1: all zeros, empty target -> 1 - 1 / 1 = 0
    prob = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    target = torch.tensor([[[0.0, 0.0], [1.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    # per-image mean = 1/3; a per-row dice would give mean(0.5, 0.5, 0, 0) = 0.25
    assert dice_loss(prob, target).item() == pytest.approx(1 / 3, abs=1e-7)
    assert dice_loss(prob.unsqueeze(1), target.unsqueeze(1)).item() == pytest.approx(1 / 3, abs=1e-7)


def test_dice_loss_perfect_prediction_is_near_zero() -> None:
    target = (torch.rand(3, 1, 16, 16) > 0.5).float()
    assert dice_loss(target.clone(), target).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError):
        dice_loss(torch.rand(2, 4, 4), torch.rand(2, 5, 4))


def test_two_way_ce_hand_computed() -> None:
    # label 0: ln(1 + e^-2) = 0.12692801 ; label 1: ln(1 + e^2) = 2.12692801 -> mean 1.12692801
    logits = torch.tensor([[2.0, 0.0], [2.0, 0.0]])
    assert two_way_ce(logits, torch.tensor([0, 1])).item() == pytest.approx(1.12692801, abs=1e-6)
    assert two_way_ce(logits[:1], torch.tensor([0])).item() == pytest.approx(0.12692801, abs=1e-6)


def test_segmentation_loss_sums_terms_over_stages() -> None:
    one = segmentation_loss([PROBS], TARGET)
    expected = focal_loss(PROBS, TARGET).item() + 0.5 / 2.9 + 0.5 / 3.1
    assert one.item() == pytest.approx(expected, rel=1e-6)
    other = torch.tensor([[[[0.5, 0.5]], [[0.5, 0.5]]]])
    both = segmentation_loss([PROBS, other], TARGET)
    assert both.item() == pytest.approx(one.item() + segmentation_loss([other], TARGET).item(), rel=1e-6)
    with pytest.raises(ValueError):
        segmentation_loss([], TARGET)


def test_gradients_flow_through_all_losses() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 8, 8, requires_grad=True)
    target = (torch.rand(2, 1, 8, 8) > 0.7).float()
    loss = segmentation_loss([logits.softmax(dim=1), (2 * logits).softmax(dim=1)], target)
    cls_logits = torch.randn(2, 2, requires_grad=True)
    (loss + two_way_ce(cls_logits, torch.tensor([0, 1]))).backward()
    for grad in (logits.grad, cls_logits.grad):
        assert grad is not None
        assert torch.isfinite(grad).all()
        assert grad.abs().sum() > 0
