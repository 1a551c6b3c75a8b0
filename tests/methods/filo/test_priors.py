"""Box-prior geometry (position cells at any input size, regions, best box), the registry, and what a
prior does inside FiLoPlusPlus: position selection of the abnormal prompts and λ-suppression."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fgad.config import ConfigError, load_config
from fgad.core.cells import NUM_POSITIONS, position_index
from fgad.methods.filo.model import FiLoPlusPlus
from fgad.methods.filo.priors.base import (
    BoxPriorResult,
    best_box_position,
    cell_index,
    one_hot_positions,
    region_from_boxes,
    result_from_boxes,
)
from fgad.methods.filo.priors.registry import available_box_priors, build_box_prior
from fgad.methods.filo.scoring import l2n
from tests.helpers.tiny import CLASS_NAME

SIZES = [3, 4, 97, 101, 112, 224, 240, 336, 518, 1001]


def _band_reference(coord: float, size: int) -> int:
    """Independent rule: edges round(k * size / 3) (exact halves never occur), pixel = floor(clamped coord)."""
    edges = [math.floor(k * size / 3 + 0.5) for k in (1, 2)]
    pixel = math.floor(min(max(coord, 0.0), size - 1))
    return sum(pixel >= e for e in edges)


@pytest.mark.parametrize("size", SIZES)
def test_cell_index_matches_the_band_rule_at_any_size(size: int) -> None:
    coords = np.concatenate([np.arange(size, dtype=np.float64), np.arange(size) + 0.5, np.arange(size) + 0.999,
                             [-7.0, -0.5, size - 0.001, float(size), size + 12.5]])
    xs, ys = np.meshgrid(coords, coords[:: max(1, len(coords) // 40)])
    got = cell_index(torch.from_numpy(xs), torch.from_numpy(ys), size).numpy()
    want = np.vectorize(lambda x, y: _band_reference(y, size) * 3 + _band_reference(x, size))(xs, ys)
    np.testing.assert_array_equal(got, want)
    # and the spec's own scalar function (fusdes.position_index) agrees everywhere
    spec = np.vectorize(lambda x, y: position_index(x, y, size))(xs, ys)
    np.testing.assert_array_equal(got, spec)


def test_cell_index_at_518_uses_the_method_bounds() -> None:
    # METHOD.md §1.2: per-axis bounds [0, 172], [173, 344], [345, 517] at 518
    xs = torch.tensor([0.0, 172.0, 172.9, 173.0, 344.0, 345.0, 517.0])
    cols = cell_index(xs, torch.zeros_like(xs), 518).tolist()
    assert cols == [0, 0, 0, 1, 1, 2, 2]
    rows = cell_index(torch.zeros_like(xs), xs, 518).tolist()
    assert rows == [0, 0, 0, 3, 3, 6, 6]


def test_one_hot_positions() -> None:
    out = one_hot_positions(torch.tensor([0, 4, 8]))
    assert out.shape == (3, NUM_POSITIONS)
    assert out.sum(dim=1).tolist() == [1.0, 1.0, 1.0]
    assert [int(r.argmax()) for r in out] == [0, 4, 8]


@pytest.mark.parametrize("size", [112, 224, 518, 101])
def test_best_box_position_takes_the_best_valid_box_centre(size: int) -> None:
    s = float(size)
    boxes = torch.tensor([
        [[0.0, 0.0, 0.2 * s, 0.2 * s], [0.7 * s, 0.7 * s, s, s], [0.4 * s, 0.0, 0.6 * s, 0.2 * s]],
        [[0.0, 0.0, 0.2 * s, 0.2 * s], [0.7 * s, 0.7 * s, s, s], [0.4 * s, 0.0, 0.6 * s, 0.2 * s]],
        [[0.0, 0.0, 0.2 * s, 0.2 * s], [0.7 * s, 0.7 * s, s, s], [0.4 * s, 0.0, 0.6 * s, 0.2 * s]],
    ])
    scores = torch.tensor([[0.3, 0.9, 0.5], [0.3, 0.9, 0.5], [0.3, 0.9, 0.5]])
    valid = torch.tensor([[True, True, True], [True, False, True], [False, False, False]])
    got = best_box_position(boxes, valid, scores, size).tolist()
    expected = []
    for b in range(3):
        ok = [k for k in range(3) if valid[b, k]]
        if not ok:
            expected.append(position_index(size / 2, size / 2, size))  # no box: the centre cell
            continue
        k = max(ok, key=lambda i: float(scores[b, i]))
        x0, y0, x1, y1 = boxes[b, k].tolist()
        expected.append(position_index((x0 + x1) / 2, (y0 + y1) / 2, size))
    assert got == expected
    assert got == [8, 1, 4]


def _region_loop(boxes: np.ndarray, valid: np.ndarray, size: int) -> np.ndarray:
    out = np.zeros((boxes.shape[0], size, size), dtype=np.float32)
    for b in range(boxes.shape[0]):
        if not valid[b].any():
            out[b] = 1.0
        for k in range(boxes.shape[1]):
            if not valid[b, k]:
                continue
            x0, y0, x1, y1 = boxes[b, k]
            for v in range(size):
                for u in range(size):
                    if x0 <= u + 0.5 <= x1 and y0 <= v + 0.5 <= y1:
                        out[b, v, u] = 1.0
    return out


def test_region_from_boxes_is_the_union_of_valid_boxes() -> None:
    size = 23
    boxes = np.array([
        [[2.0, 3.0, 10.4, 8.0], [15.0, 15.0, 23.0, 23.0], [0.0, 0.0, 23.0, 23.0]],
        [[5.5, 0.0, 6.5, 23.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]],
        [[0.0, 0.0, 4.0, 4.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]],
    ], dtype=np.float32)
    valid = np.array([[True, True, False], [True, True, False], [False, False, False]])
    got = region_from_boxes(torch.from_numpy(boxes), torch.from_numpy(valid), size)
    assert got.shape == (3, 1, size, size)
    np.testing.assert_array_equal(got[:, 0].numpy(), _region_loop(boxes, valid, size))
    assert float(got[2].min()) == 1.0  # no valid box: the whole image
    assert 0 < float(got[0].mean()) < 1


def test_result_from_boxes_bundles_region_and_one_position() -> None:
    boxes = torch.tensor([[[60.0, 70.0, 100.0, 110.0]]])
    res = result_from_boxes(boxes, torch.tensor([[True]]), torch.tensor([[0.5]]), 112)
    assert isinstance(res, BoxPriorResult)
    assert res.position.tolist() == [position_index(80.0, 90.0, 112)] == [8]
    assert res.positions.tolist() == [[0.0] * 8 + [1.0]]
    assert res.region is not None and float(res.region[0, 0, 90, 80]) == 1.0 and float(res.region[0, 0, 10, 10]) == 0.0


def test_registry_names_and_errors(tiny_model: FiLoPlusPlus) -> None:
    assert {"grounding-dino", "none", "objectness"} <= set(available_box_priors())
    with pytest.raises(ValueError, match="available"):
        build_box_prior("yolo")
    with pytest.raises(ValueError, match="pass model="):
        build_box_prior("objectness")
    with pytest.raises(ValueError, match="--box-model"):
        build_box_prior("grounding-dino", model=tiny_model)
    assert build_box_prior("objectness", model=tiny_model).name == "objectness"


def test_config_refuses_an_unknown_prior_and_bad_thresholds() -> None:
    with pytest.raises(ConfigError, match="post.box_prior"):
        load_config("tiny-test", {"model": {"post": {"box_prior": "yolo"}}})
    with pytest.raises(ConfigError, match="post.grounding.text_threshold"):
        load_config("tiny-test", {"model": {"post": {"grounding": {"text_threshold": 1.5}}}})
    cfg = load_config("tiny-test", {"model": {"post": {"box_prior": "grounding-dino",
                                                       "grounding": {"model": "some/id", "box_threshold": 0.3}}}})
    assert cfg.model.post.grounding.box_threshold == 0.3 and cfg.model.post.grounding.text_threshold == 0.25


# ---------------------------------------------------------------------------------- inside the model


class FixedPrior:
    """A prior that returns the same boxes for every image (what a detector would have found)."""

    name = "fixed"

    def __init__(self, boxes: torch.Tensor, valid: torch.Tensor, size: int) -> None:
        self.boxes, self.valid, self.size = boxes, valid, size
        self.saw_features = False

    def __call__(self, images, class_name, features=None) -> BoxPriorResult:  # noqa: ANN001
        self.saw_features = features is not None
        batch = images.shape[0]
        valid = self.valid[:batch]
        return result_from_boxes(self.boxes[:batch], valid, torch.ones(valid.shape), self.size)


@torch.no_grad()
def test_prior_selects_the_prompts_of_its_position(tiny_model: FiLoPlusPlus, images: torch.Tensor) -> None:
    s = tiny_model.cfg.backbone.image_size
    boxes = torch.tensor([[[0.0, 0.0, 30.0, 30.0]], [[80.0, 40.0, 112.0, 70.0]]])  # top left; right
    prior = FixedPrior(boxes, torch.ones(2, 1, dtype=torch.bool), s)
    out = tiny_model(images, CLASS_NAME, box_prior=prior, filtering=False, use_memory=False)
    assert prior.saw_features  # the prior reuses the forward's backbone pass
    assert out.prior is not None and out.prior.position.tolist() == [0, 5]
    # independent: T_a from the prompts at that position only, T_n from every normal prompt
    feats = tiny_model.encode_images(images)
    normal, abnormal = tiny_model.prompts(CLASS_NAME, l2n(feats.global_embed))  # [B, Pn, C], [B, 9, K, C]
    g_a = tiny_model.adapted_global(feats.global_embed)
    per_position = abnormal.shape[2]
    for b, cell in enumerate([0, 5]):
        t_n = l2n(l2n(normal[b]).mean(dim=0))
        t_a = l2n(l2n(abnormal[b, cell]).mean(dim=0))
        logits = tiny_model.cfg.heads.tau_global * torch.stack([g_a[b] @ t_n, g_a[b] @ t_a])
        torch.testing.assert_close(out.global_prob[b], logits.softmax(0)[1], atol=1e-5, rtol=0)
        best = int(out.best_description[b])
        assert cell * per_position <= best < (cell + 1) * per_position  # the best description is at that cell


@torch.no_grad()
def test_prior_suppresses_outside_its_boxes_by_lambda(tiny_model: FiLoPlusPlus, images: torch.Tensor) -> None:
    s = tiny_model.cfg.backbone.image_size
    lam = tiny_model.cfg.post.suppression
    boxes = torch.tensor([[[10.0, 20.0, 60.0, 90.0]], [[0.0, 0.0, 0.0, 0.0]]])
    valid = torch.tensor([[True], [False]])
    prior = FixedPrior(boxes, valid, s)
    out = tiny_model(images, CLASS_NAME, box_prior=prior, use_memory=False)
    same_positions = tiny_model(images, CLASS_NAME, positions=out.prior.positions, use_memory=False)
    inside = _region_loop(boxes.numpy(), valid.numpy(), s)  # image 1 has no box: nothing is suppressed
    want = same_positions.vl_map.numpy() * np.where(inside > 0, 1.0, lam)
    np.testing.assert_allclose(out.vl_map.numpy(), want, atol=1e-6, rtol=0)
    assert out.prior.position.tolist()[1] == 4  # no box: centre cell
    with pytest.raises(ValueError, match="not both"):
        tiny_model(images, CLASS_NAME, box_prior=prior, positions=out.prior.positions)


@torch.no_grad()
def test_none_prior_changes_nothing(tiny_model: FiLoPlusPlus, images: torch.Tensor) -> None:
    plain = tiny_model(images, CLASS_NAME, use_memory=False)
    with_none = tiny_model(images, CLASS_NAME, use_memory=False, box_prior=build_box_prior("none"))
    assert torch.equal(plain.anomaly_map, with_none.anomaly_map) and torch.equal(plain.image_score,
                                                                                  with_none.image_score)
    assert with_none.prior is not None and with_none.prior.region is None and with_none.prior.position is None


def test_box_corners_pixel_centre_rule_and_the_released_truncation() -> None:
    """Ours: a pixel is inside when its centre is; released: ``[int(y0):int(y1), int(x0):int(x1)]``.

    Integer corners give the same pixels; a fractional corner moves one edge pixel (issue 13, item 7).
    """
    from fgad.methods.filo.priors.base import region_from_boxes

    valid = torch.tensor([[True]])
    whole = torch.tensor([[[2.0, 3.0, 7.0, 9.0]]])
    ours = region_from_boxes(whole, valid, 12)[0, 0]
    released = region_from_boxes(whole, valid, 12, released=True)[0, 0]
    assert torch.equal(ours, released)
    assert ours.sum() == 5 * 6 and ours[3, 2] == 1 and ours[9, 7] == 0
    frac = torch.tensor([[[2.7, 3.0, 7.6, 9.0]]])
    ours = region_from_boxes(frac, valid, 12)[0, 0]
    released = region_from_boxes(frac, valid, 12, released=True)[0, 0]
    ref = torch.zeros(12, 12)
    ref[int(3.0):int(9.0), int(2.7):int(7.6)] = 1  # the released slice
    assert torch.equal(released, ref)
    assert ours[3:9].sum(dim=0).nonzero().flatten().tolist() == [3, 4, 5, 6, 7]  # centres 3.5 .. 7.5
    assert released[3:9].sum(dim=0).nonzero().flatten().tolist() == [2, 3, 4, 5, 6]
