"""Runtime prompt filtering, masked pooling and two-way scores (METHOD.md §0.3, §1.4).

Prompts are built with known cosines to the adapted global feature G_a, so every distance
1 - cos(G_a, t) is chosen by the test and the expected keep masks follow from the rule by hand.
"""

from __future__ import annotations

import math
import random

import pytest
import torch

from fgad.methods.filo.scoring import filter_masks, l2n, masked_direction, two_way_logits, two_way_probs

DIM = 8


def _ga(batch: int = 1) -> torch.Tensor:
    g = torch.zeros(batch, DIM, dtype=torch.float64)
    g[:, 0] = 1.0
    return g


def _at_distances(distances: list[float], seed: int = 0) -> torch.Tensor:
    """Unit vectors [1, P, DIM] with 1 - cos(e_0, v) equal to the given distances."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for d in distances:
        c = 1.0 - d
        other = torch.randn(DIM - 1, generator=gen, dtype=torch.float64)
        other = other / other.norm() * math.sqrt(max(0.0, 1.0 - c * c))
        rows.append(torch.cat([torch.tensor([c], dtype=torch.float64), other]))
    return torch.stack(rows).unsqueeze(0)


def _masks(dn: list[float], da: list[float], valid: list[int] | None = None) -> tuple[list[int], list[int]]:
    valid_t = torch.tensor([valid if valid is not None else [1] * len(da)], dtype=torch.bool)
    keep_n, keep_a = filter_masks(_ga(), _at_distances(dn), _at_distances(da, seed=1), valid_t)
    assert keep_n.dtype == torch.bool and keep_a.dtype == torch.bool
    return keep_n[0].int().tolist(), keep_a[0].int().tolist()


def test_distances_are_built_as_intended() -> None:
    v = _at_distances([0.1, 0.55, 1.3])
    torch.testing.assert_close(v.norm(dim=-1), torch.ones(1, 3, dtype=torch.float64))
    torch.testing.assert_close(1.0 - v[0] @ _ga()[0], torch.tensor([0.1, 0.55, 1.3], dtype=torch.float64))


def test_overlap_drops_exactly_the_prompts_inside_the_interval() -> None:
    # D_n = [0.1, 0.3, 0.5, 0.7], D_a = [0.4, 0.6, 0.9]: lo = max(0.1, 0.4) = 0.4, hi = min(0.7, 0.9) = 0.7.
    keep_n, keep_a = _masks([0.1, 0.3, 0.5, 0.7], [0.4, 0.6, 0.9])
    assert keep_n == [1, 1, 0, 0]  # 0.5 and 0.7 lie in [0.4, 0.7] (inclusive)
    assert keep_a == [0, 0, 1]  # 0.4 and 0.6 lie in it


def test_overlap_with_interleaved_order() -> None:
    # D_n = [0.5, 0.2, 0.35], D_a = [0.3, 0.8, 0.45]: lo = 0.3, hi = 0.5.
    keep_n, keep_a = _masks([0.5, 0.2, 0.35], [0.3, 0.8, 0.45])
    assert keep_n == [0, 1, 0]
    assert keep_a == [0, 1, 0]


@pytest.mark.parametrize(
    ("dn", "da"),
    [([0.1, 0.2, 0.25], [0.5, 0.6]), ([0.7, 0.9], [0.2, 0.3, 0.65])],
)
def test_disjoint_intervals_drop_nothing(dn: list[float], da: list[float]) -> None:
    keep_n, keep_a = _masks(dn, da)
    assert keep_n == [1] * len(dn)
    assert keep_a == [1] * len(da)


def test_a_normal_set_that_would_be_emptied_is_kept_whole() -> None:
    # D_n = [0.4, 0.5] inside [lo, hi] = [0.4, 0.5]; D_a = [0.3, 0.6] both outside.
    keep_n, keep_a = _masks([0.4, 0.5], [0.3, 0.6])
    assert keep_n == [1, 1]
    assert keep_a == [1, 1]


def test_an_abnormal_set_that_would_be_emptied_is_kept_whole() -> None:
    # D_a = [0.4, 0.5] inside [0.4, 0.5]; D_n = [0.2, 0.8] outside.
    keep_n, keep_a = _masks([0.2, 0.8], [0.4, 0.5])
    assert keep_n == [1, 1]
    assert keep_a == [1, 1]


def test_invalid_abnormal_prompts_never_count() -> None:
    # Valid D_a = [0.6, 0.9] is disjoint from D_n = [0.1, 0.5]. The invalid prompt at 0.2 would
    # make lo = 0.2 <= hi = 0.5 and drop the normal prompt at 0.5 if it counted.
    keep_n, keep_a = _masks([0.1, 0.5], [0.6, 0.2, 0.9], valid=[1, 0, 1])
    assert keep_n == [1, 1]
    assert keep_a == [1, 0, 1]


def test_invalid_abnormal_prompts_never_survive() -> None:
    # Valid D_a = [0.4, 0.45] is emptied by [lo, hi] = [0.4, 0.45]: the set falls back to the
    # valid prompts only, never to the invalid one at 0.9.
    keep_n, keep_a = _masks([0.2, 0.45, 0.47], [0.4, 0.9, 0.45], valid=[1, 0, 1])
    assert keep_n == [1, 0, 1]
    assert keep_a == [1, 0, 1]
    # Nothing to filter: still only valid prompts survive.
    keep_n, keep_a = _masks([0.1], [0.5, 0.05, 0.6], valid=[1, 0, 1])
    assert keep_a == [1, 0, 1]


def test_filtering_is_per_image() -> None:
    ga = torch.zeros(2, DIM, dtype=torch.float64)
    ga[0, 0] = 1.0
    ga[1, 1] = 1.0  # image 1 sees every prompt at distance 1 - 0 = 1 (up to the random tails)
    normal = _at_distances([0.1, 0.3, 0.5, 0.7]).expand(2, -1, -1)
    abnormal = _at_distances([0.4, 0.6, 0.9], seed=1).expand(2, -1, -1)
    valid = torch.ones(2, 3, dtype=torch.bool)
    keep_n, keep_a = filter_masks(ga, normal, abnormal, valid)
    assert keep_n[0].int().tolist() == [1, 1, 0, 0]
    assert keep_a[0].int().tolist() == [0, 0, 1]
    exp_n, exp_a = _reference_filter(ga[1], normal[1], abnormal[1], valid[1])
    assert keep_n[1].tolist() == exp_n and keep_a[1].tolist() == exp_a


def _reference_filter(
    ga: torch.Tensor, normal: torch.Tensor, abnormal: torch.Tensor, valid: torch.Tensor
) -> tuple[list[bool], list[bool]]:
    """METHOD.md §1.4 in plain Python: lists, min/max, a fallback for emptied sets."""
    dn = [1.0 - float(ga @ t) for t in normal]
    da_all = [1.0 - float(ga @ t) for t in abnormal]
    da = [d for d, v in zip(da_all, valid.tolist(), strict=True) if v]
    lo, hi = max(min(dn), min(da)), min(max(dn), max(da))
    keep_n = [not (lo <= d <= hi) for d in dn]
    keep_a = [bool(v) and not (lo <= d <= hi) for d, v in zip(da_all, valid.tolist(), strict=True)]
    if not any(keep_n):
        keep_n = [True] * len(dn)
    if not any(keep_a):
        keep_a = [bool(v) for v in valid.tolist()]
    return keep_n, keep_a


@pytest.mark.parametrize("seed", range(6))
def test_random_sets_match_a_plain_python_reference(seed: int) -> None:
    rng = random.Random(seed)
    pn, pa = rng.randint(1, 14), rng.randint(2, 40)
    dn = [rng.uniform(0.0, 1.2) for _ in range(pn)]
    da = [rng.uniform(0.0, 1.2) for _ in range(pa)]
    valid = [rng.random() < 0.6 for _ in range(pa)]
    valid[rng.randrange(pa)] = True
    normal, abnormal = _at_distances(dn, seed), _at_distances(da, seed + 100)
    valid_t = torch.tensor([valid])
    keep_n, keep_a = filter_masks(_ga(), normal, abnormal, valid_t)
    exp_n, exp_a = _reference_filter(_ga()[0], normal[0], abnormal[0], valid_t[0])
    assert keep_n[0].tolist() == exp_n
    assert keep_a[0].tolist() == exp_a


# ---------------------------------------------------------------- pooling and scores


def test_masked_direction_is_normalised_mean_of_kept_rows() -> None:
    gen = torch.Generator().manual_seed(4)
    feats = l2n(torch.randn(2, 5, DIM, generator=gen, dtype=torch.float64))
    mask = torch.tensor([[1, 0, 1, 1, 0], [0, 0, 0, 1, 0]], dtype=torch.bool)
    out = masked_direction(feats, mask)
    kept0 = (feats[0, 0] + feats[0, 2] + feats[0, 3]) / 3.0
    torch.testing.assert_close(out[0], kept0 / kept0.norm())
    torch.testing.assert_close(out[1], feats[1, 3])
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(2, dtype=torch.float64))
    # Dropped rows have no influence.
    changed = feats.clone()
    changed[0, 1] = -changed[0, 1]
    changed[1, 0] = 0.0
    torch.testing.assert_close(masked_direction(changed, mask), out)


def test_masked_direction_ensemble_is_mean_of_normalised_features() -> None:
    """T = n(mean_j n(t_j)): rows of very different norms weigh the same once normalised."""
    a, b = torch.tensor([3.0, 0.0, 0.0]), torch.tensor([0.0, 0.1, 0.0])
    out = masked_direction(l2n(torch.stack([a, b])).unsqueeze(0), torch.ones(1, 2, dtype=torch.bool))
    s = 1.0 / math.sqrt(2.0)
    torch.testing.assert_close(out[0], torch.tensor([s, s, 0.0]))


def _softmax2(x: float, y: float) -> tuple[float, float]:
    m = max(x, y)
    ex, ey = math.exp(x - m), math.exp(y - m)
    return ex / (ex + ey), ey / (ex + ey)


def test_two_way_probs_global_by_hand() -> None:
    gen = torch.Generator().manual_seed(8)
    f = l2n(torch.randn(3, DIM, generator=gen, dtype=torch.float64))
    tn = l2n(torch.randn(3, DIM, generator=gen, dtype=torch.float64))
    ta = l2n(torch.randn(3, DIM, generator=gen, dtype=torch.float64))
    tau = 1.0 / (0.07 * math.sqrt(2.0))
    probs = two_way_probs(f, tn, ta, tau)
    logits = two_way_logits(f, tn, ta, tau)
    assert probs.shape == logits.shape == (3, 2)
    for b in range(3):
        cn, ca = float(f[b] @ tn[b]), float(f[b] @ ta[b])
        assert logits[b].tolist() == pytest.approx([tau * cn, tau * ca], rel=1e-12)
        assert probs[b].tolist() == pytest.approx(list(_softmax2(tau * cn, tau * ca)), rel=1e-12)


def test_two_way_probs_tokens_by_hand() -> None:
    gen = torch.Generator().manual_seed(9)
    f = l2n(torch.randn(2, 5, DIM, generator=gen, dtype=torch.float64))
    tn = l2n(torch.randn(2, DIM, generator=gen, dtype=torch.float64))
    ta = l2n(torch.randn(2, DIM, generator=gen, dtype=torch.float64))
    tau = 100.0 / math.sqrt(2.0)
    probs = two_way_probs(f, tn, ta, tau)
    assert probs.shape == (2, 2, 5)  # [B, {normal, abnormal}, N]
    for b in range(2):
        for n in range(5):
            expected = _softmax2(tau * float(f[b, n] @ tn[b]), tau * float(f[b, n] @ ta[b]))
            assert probs[b, :, n].tolist() == pytest.approx(list(expected), rel=1e-9, abs=1e-12)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(2, 5, dtype=torch.float64))
