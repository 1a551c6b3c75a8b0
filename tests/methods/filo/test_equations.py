"""FiLo++ equations (METHOD.md §1.4-1.7, Eq. 1-7) re-derived on the tiny model.

Each expected value is rebuilt from the pieces the spec names (backbone features, head weights,
prompt features) with explicit arithmetic: hand-written softmax, bilinear interpolation matrices,
brute-force nearest neighbours and ``scipy.ndimage.gaussian_filter``. The model runs in eval mode
under ``torch.no_grad``. Float tolerances are stated per comparison.
"""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fgad.config import ModelConfig, replace
from fgad.core.cells import POSITIONS
from fgad.methods.filo.model import FiloOutput, FiLoPlusPlus
from fgad.methods.filo.priors.base import positions_from_masks
from fgad.methods.filo.priors.registry import build_box_prior
from tests.helpers.references import scipy_ndimage
from tests.helpers.tiny import CLASS_NAME, make_images

ATOL = 1e-5  # float32 model vs float64 re-derivation
LAMBDA = 0.7  # METHOD.md §1.5
SIGMA = 4.0  # METHOD.md §0.4
TAU_LOCAL = 100.0 / math.sqrt(2.0)  # METHOD.md §1.6, tau_l
TAU_GLOBAL = 1.0 / (0.07 * math.sqrt(2.0))  # METHOD.md §1.4, tau_g
NUM_POSITIONS = 9


# ---------------------------------------------------------------- helpers (independent arithmetic)


def _n(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    return x / torch.sqrt((x * x).sum(dim=-1, keepdim=True))


def _softmax_last(x: torch.Tensor) -> torch.Tensor:
    e = torch.exp(x - x.amax(dim=-1, keepdim=True))
    return e / e.sum(dim=-1, keepdim=True)


def _two_way(f: torch.Tensor, tn: torch.Tensor, ta: torch.Tensor, tau: float) -> torch.Tensor:
    """softmax(tau [cos(f, T_n), cos(f, T_a)]) for f [B, N, C] -> [B, N, 2]."""
    f, tn, ta = _n(f), _n(tn), _n(ta)
    logits = tau * torch.stack([(f * tn[:, None]).sum(-1), (f * ta[:, None]).sum(-1)], dim=-1)
    return _softmax_last(logits)


def _interp_matrix(src: int, dst: int) -> torch.Tensor:
    """[dst, src] weights of 1-D linear interpolation with aligned corners (float64)."""
    r = torch.zeros(dst, src, dtype=torch.float64)
    for i in range(dst):
        pos = i * (src - 1) / (dst - 1)
        i0 = min(int(math.floor(pos)), src - 2)
        w = pos - i0
        r[i, i0] += 1.0 - w
        r[i, i0 + 1] += w
    return r


def _up(maps: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear, align_corners=True: [B, g, g] -> [B, s, s], as R M R^T."""
    r = _interp_matrix(maps.shape[-1], size)
    return r @ maps.double() @ r.T


def _blur(maps: torch.Tensor) -> torch.Tensor:
    arr = maps.double().numpy()
    return torch.from_numpy(np.stack([scipy_ndimage().gaussian_filter(m, sigma=SIGMA, mode="reflect") for m in arr]))


def _grid(tokens: torch.Tensor, g: int) -> torch.Tensor:
    """Patch tokens [B, 1+g*g, D] (row-major) -> [B, D, g, g]."""
    b, _, d = tokens.shape
    return tokens[:, 1:].reshape(b, g, g, d).permute(0, 3, 1, 2)


def _close(actual: torch.Tensor, expected: torch.Tensor, atol: float = ATOL) -> None:
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol, rtol=0.0)


def _reference_keep(dn: list[float], da: list[float], valid: list[bool]) -> tuple[list[bool], list[bool]]:
    """METHOD.md §1.4 filtering in plain Python."""
    da_valid = [d for d, v in zip(da, valid, strict=True) if v]
    lo, hi = max(min(dn), min(da_valid)), min(max(dn), max(da_valid))
    keep_n = [not (lo <= d <= hi) for d in dn]
    keep_a = [v and not (lo <= d <= hi) for d, v in zip(da, valid, strict=True)]
    if not any(keep_n):
        keep_n = [True] * len(dn)
    if not any(keep_a):
        keep_a = list(valid)
    return keep_n, keep_a


class Pieces:
    """Backbone features and the text pair rebuilt from raw prompt features, for one batch.

    ``raw_text`` (normal, abnormal) prompt features of an earlier Pieces of the same images can be
    reused: they depend on the image only through n(G), not on the positions.
    """

    def __init__(
        self,
        model: FiLoPlusPlus,
        images: torch.Tensor,
        positions: torch.Tensor | None = None,
        raw_text: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        cfg = model.cfg
        batch = images.shape[0]
        self.positions = positions if positions is not None else torch.ones(batch, NUM_POSITIONS)
        with torch.no_grad():
            self.feats = model.backbone(images)
            g = self.feats.global_embed
            self.g_normed = _n(g)
            self.g_adapted = _n(_adapter_by_hand(model, g.double()))
            if raw_text is None:
                raw_text = model.prompts(CLASS_NAME, self.g_normed.float())
        self.raw_text = raw_text
        normal, abnormal = _n(raw_text[0]), _n(raw_text[1])  # [B, Pn, C], [B, 9, K_pos, C]
        k_pos = abnormal.shape[2]
        self.abnormal = abnormal.flatten(1, 2)
        self.valid = self.positions.bool()[:, :, None].expand(-1, -1, k_pos).flatten(1)
        self.keep_n, self.keep_a, tn, ta = [], [], [], []
        for b in range(batch):
            dn = (1.0 - normal[b] @ self.g_adapted[b]).tolist()
            da = (1.0 - self.abnormal[b] @ self.g_adapted[b]).tolist()
            kn, ka = _reference_keep(dn, da, self.valid[b].tolist())
            self.keep_n.append(kn)
            self.keep_a.append(ka)
            tn.append(_n(normal[b][torch.tensor(kn)].mean(dim=0)))
            ta.append(_n(self.abnormal[b][torch.tensor(ka)].mean(dim=0)))
        self.t_normal, self.t_abnormal = torch.stack(tn), torch.stack(ta)
        self.tau_l, self.tau_g = TAU_LOCAL, TAU_GLOBAL
        self.grid, self.size = cfg.backbone.grid, cfg.backbone.image_size


def _adapter_by_hand(model: FiLoPlusPlus, x: torch.Tensor) -> torch.Tensor:
    """a(x) = x + SiLU(W2 ReLU(W1 x)), no biases."""
    w1 = model.adapter.fc1.weight.detach().double()
    w2 = model.adapter.fc2.weight.detach().double()
    h = torch.clamp(x @ w1.T, min=0.0) @ w2.T
    return x + h / (1.0 + torch.exp(-h))


def _linear_stage(model: FiLoPlusPlus, p: Pieces, k: int) -> torch.Tensor:
    """[B, 2, g, g] of linear stage k: softmax at g x g of F = W ori[l][:, 1:] + b."""
    layer = model.cfg.heads.linear_layers[k]
    tokens = p.feats.ori[model.cfg.feature_layers.index(layer)][:, 1:].double()
    head = model.linear_heads.maps[k]
    f = tokens @ head.weight.detach().double().T + head.bias.detach().double()
    probs = _two_way(f, p.t_normal, p.t_abnormal, p.tau_l)  # [B, N, 2]
    return probs.permute(0, 2, 1).reshape(-1, 2, p.grid, p.grid)


def _mdci_kernel_outputs(model: FiLoPlusPlus, p: Pieces, j: int) -> list[torch.Tensor]:
    """Per-kernel features [B, N, C] of MDCI stage j, from the stage's own kernel modules."""
    grid = _grid(p.feats.vv[j], model.cfg.backbone.grid)
    with torch.no_grad():
        outs = [k(grid) for k in model.mdci.stages[j].kernels]
    return [o.flatten(2).transpose(1, 2) for o in outs]


def _mdci_stage(model: FiLoPlusPlus, p: Pieces, j: int) -> torch.Tensor:
    """Eq. 2: mean over kernels of per-kernel softmax probabilities, [B, 2, g, g]."""
    probs = [_two_way(f, p.t_normal, p.t_abnormal, p.tau_l) for f in _mdci_kernel_outputs(model, p, j)]
    mean = sum(probs) / len(probs)
    return mean.permute(0, 2, 1).reshape(-1, 2, p.grid, p.grid)


def _stage_maps(model: FiLoPlusPlus, p: Pieces) -> list[torch.Tensor]:
    linear = [_linear_stage(model, p, k) for k in range(len(model.cfg.heads.linear_layers))]
    return linear + [_mdci_stage(model, p, j) for j in range(len(model.cfg.heads.mdci_layers))]


def _vl_map(model: FiLoPlusPlus, p: Pieces) -> torch.Tensor:
    """Eq. 3-4: M^vl = Up(mean of the 7 stage maps)[abnormal]."""
    maps = _stage_maps(model, p)
    return _up(sum(m[:, 1] for m in maps) / len(maps), p.size)


def _fewshot_map(model: FiLoPlusPlus, p: Pieces, refs: torch.Tensor) -> torch.Tensor:
    """Eq. 5-6: Up(mean over stages of min over memory rows of 1 - cos), brute force."""
    with torch.no_grad():
        ref_feats = model.backbone(refs)
    per_stage = []
    for layer in model.cfg.fewshot.memory_layers:
        i = model.cfg.feature_layers.index(layer)
        memory = _n(ref_feats.ori[i][:, 1:]).reshape(-1, ref_feats.ori[i].shape[-1])  # [k*N, D]
        query = _n(p.feats.ori[i][:, 1:])  # [B, N, D]
        per_stage.append((1.0 - query @ memory.T).amin(dim=-1))
    dist = sum(per_stage) / len(per_stage)
    return _up(dist.reshape(-1, p.grid, p.grid), p.size)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def model(tiny_model: FiLoPlusPlus) -> FiLoPlusPlus:
    """The tiny model with non-zero deformable offsets and modulation (as after some training)."""
    m = copy.deepcopy(tiny_model)
    gen = torch.Generator().manual_seed(21)
    with torch.no_grad():
        for stage in m.mdci.stages:
            for kernel in stage.kernels:
                w = kernel.offset_conv.weight
                w.copy_(torch.randn(w.shape, generator=gen) * 0.02)
                kernel.offset_conv.bias.copy_(torch.randn(kernel.offset_conv.bias.shape, generator=gen) * 0.3)
    return m.eval()


@pytest.fixture(scope="module")
def refs(tiny_cfg: ModelConfig) -> torch.Tensor:
    return make_images(2, tiny_cfg.backbone.image_size, seed=99)


@pytest.fixture(scope="module")
def fewshot_model(model: FiLoPlusPlus, refs: torch.Tensor) -> FiLoPlusPlus:
    m = copy.deepcopy(model)
    m.set_reference_images(refs)
    return m


@pytest.fixture(scope="module")
def pieces(model: FiLoPlusPlus, images: torch.Tensor) -> Pieces:
    return Pieces(model, images)


@pytest.fixture(scope="module")
def zero_shot_run(model: FiLoPlusPlus, images: torch.Tensor) -> tuple[FiloOutput, list[torch.Tensor]]:
    """The default eval forward, with the inputs the CoCoOp meta-net received."""
    seen: list[torch.Tensor] = []
    handle = model.prompts.meta_normal.register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
    try:
        with torch.no_grad():
            out = model(images, CLASS_NAME)
    finally:
        handle.remove()
    return out, seen


@pytest.fixture(scope="module")
def zero_shot(zero_shot_run: tuple[FiloOutput, list[torch.Tensor]]) -> FiloOutput:
    return zero_shot_run[0]


@pytest.fixture(scope="module")
def unfiltered(model: FiLoPlusPlus, images: torch.Tensor) -> FiloOutput:
    with torch.no_grad():
        return model(images, CLASS_NAME, filtering=False)


@pytest.fixture(scope="module")
def few_shot(fewshot_model: FiLoPlusPlus, images: torch.Tensor) -> FiloOutput:
    with torch.no_grad():
        return fewshot_model(images, CLASS_NAME)


# ---------------------------------------------------------------- Eq. 1, adapter, text pair


def test_adapter_formula_without_biases(model: FiLoPlusPlus, tiny_cfg: ModelConfig, pieces: Pieces) -> None:
    c = tiny_cfg.backbone.embed_dim
    assert model.adapter.fc1.bias is None and model.adapter.fc2.bias is None
    assert model.adapter.fc1.weight.shape == (c // 2, c)
    assert model.adapter.fc2.weight.shape == (c, c // 2)
    with torch.no_grad():
        adapted = model.adapted_global(pieces.feats.global_embed)
    _close(adapted, pieces.g_adapted, atol=1e-6)
    # The residual matters: without it the direction changes.
    h = _adapter_by_hand(model, pieces.feats.global_embed.double()) - pieces.feats.global_embed.double()
    assert (_n(h) - pieces.g_adapted).abs().max() > 1e-2


def test_text_pair_matches_hand_filtering(model: FiLoPlusPlus, pieces: Pieces, zero_shot: FiloOutput) -> None:
    """T_n, T_a from model.text_pair equal the hand-filtered means; p_a from those pieces is the output's."""
    with torch.no_grad():
        ga = model.adapted_global(pieces.feats.global_embed)
        pair = model.text_pair(CLASS_NAME, pieces.g_normed.float(), ga, pieces.positions, filtering=True)
    _close(pair.t_normal, pieces.t_normal)
    _close(pair.t_abnormal, pieces.t_abnormal)
    assert pair.keep_abnormal.tolist() == pieces.keep_a
    # The rule actually removed prompts for these images, so the other tests see filtering at work.
    assert not all(all(k) for k in pieces.keep_a)
    # Eq. 1's p_a composed from model.backbone / model.adapted_global / model.text_pair.
    logits = model.cfg.heads.tau_global * torch.stack(
        [(ga * pair.t_normal).sum(-1), (ga * pair.t_abnormal).sum(-1)], dim=-1
    )
    _close(zero_shot.global_prob, _softmax_last(logits.double())[:, 1])


def test_global_prob_eq1(model: FiLoPlusPlus, pieces: Pieces, zero_shot: FiloOutput) -> None:
    """p_a = softmax(tau_g [cos(G_a, T_n), cos(G_a, T_a)])_2 from the filtered text pair."""
    ga = pieces.g_adapted
    cn = (ga * pieces.t_normal).sum(-1)
    ca = (ga * pieces.t_abnormal).sum(-1)
    tau = TAU_GLOBAL
    expected = 1.0 / (1.0 + torch.exp(-tau * (ca - cn)))
    _close(zero_shot.global_prob, expected)
    _close(zero_shot.global_logits, tau * torch.stack([cn, ca], dim=1), atol=1e-4)


def test_image_score_eq1(zero_shot: FiloOutput, few_shot: FiloOutput) -> None:
    for out in (zero_shot, few_shot):
        expected = 0.5 * (out.global_prob.double() + out.anomaly_map.double().flatten(1).amax(dim=1))
        _close(out.image_score, expected, atol=1e-6)


def test_meta_net_gets_the_unadapted_global_feature(
    zero_shot_run: tuple[FiloOutput, list[torch.Tensor]], pieces: Pieces
) -> None:
    """CHOICE §1.4 / P9: the meta-nets get n(G), not G_a."""
    _, seen = zero_shot_run
    assert len(seen) == 1
    _close(seen[0], pieces.g_normed, atol=1e-6)
    assert (pieces.g_normed - pieces.g_adapted).abs().max() > 1e-3  # the two are distinguishable


# ---------------------------------------------------------------- Eq. 2-4


def test_linear_stage_maps(model: FiLoPlusPlus, pieces: Pieces, zero_shot: FiloOutput) -> None:
    n_linear = len(model.cfg.heads.linear_layers)
    assert len(zero_shot.stage_probs) == n_linear + len(model.cfg.heads.mdci_layers) == 7
    for k in range(n_linear):
        assert zero_shot.stage_probs[k].shape == (2, 2, pieces.grid, pieces.grid)
        _close(zero_shot.stage_probs[k], _linear_stage(model, pieces, k))


def test_mdci_kernels_start_as_plain_convolutions(tiny_model: FiLoPlusPlus, images: torch.Tensor) -> None:
    """CHOICE §1.6b: offsets 0 and modulation 2 sigmoid(0) = 1 at init, so D_ij = Conv2d, padding k//2."""
    with torch.no_grad():
        p = SimpleNamespace(feats=tiny_model.backbone(images[:1]))  # no text needed here
    grid = _grid(p.feats.vv[0], tiny_model.cfg.backbone.grid).double()
    outs = _mdci_kernel_outputs(tiny_model, p, 0)
    shapes = [tuple(k.weight.shape[-2:]) for k in tiny_model.mdci.stages[0].kernels]
    assert sorted(shapes) == sorted([(1, 1), (3, 3), (5, 5), (7, 7), (1, 5), (5, 1)])
    for kernel, out in zip(tiny_model.mdci.stages[0].kernels, outs, strict=True):
        kh, kw = kernel.weight.shape[-2:]
        ref = torch.nn.functional.conv2d(grid, kernel.weight.double(), kernel.bias.double(), padding=(kh // 2, kw // 2))
        _close(out, ref.flatten(2).transpose(1, 2))


def test_mdci_kernel_geometry(tiny_model: FiLoPlusPlus, tiny_cfg: ModelConfig) -> None:
    """§1.6b: each D_ij maps D -> C; a plain conv of the same shape predicts 2 offsets + 1 logit per tap."""
    bb = tiny_cfg.backbone
    assert len(tiny_model.mdci.stages) == len(tiny_cfg.heads.mdci_layers)
    for stage in tiny_model.mdci.stages:
        for kernel in stage.kernels:
            kh, kw = kernel.weight.shape[-2:]
            assert kernel.weight.shape == (bb.embed_dim, bb.width, kh, kw)
            conv = kernel.offset_conv
            assert conv.out_channels == 3 * kh * kw and conv.in_channels == bb.width
            assert tuple(conv.kernel_size) == (kh, kw)
            assert tuple(conv.padding) == (kh // 2, kw // 2)


def test_mdci_stage_is_mean_of_per_kernel_probabilities_eq2(
    model: FiLoPlusPlus, pieces: Pieces, zero_shot: FiloOutput
) -> None:
    n_linear = len(model.cfg.heads.linear_layers)
    for j in range(len(model.cfg.heads.mdci_layers)):
        expected = _mdci_stage(model, pieces, j)
        _close(zero_shot.stage_probs[n_linear + j], expected)
        # Not CODE-FiLo's softmax of the summed kernel outputs: that gives visibly different maps.
        summed = sum(_mdci_kernel_outputs(model, pieces, j))
        alt = _two_way(summed, pieces.t_normal, pieces.t_abnormal, pieces.tau_l)
        alt = alt.permute(0, 2, 1).reshape(expected.shape)
        assert (alt - expected).abs().max() > 1e-2


def test_mdci_offsets_are_active(model: FiLoPlusPlus, tiny_model: FiLoPlusPlus, pieces: Pieces) -> None:
    """The perturbed kernels really deform: their outputs differ from the zero-offset ones."""
    fresh = _mdci_kernel_outputs(tiny_model, pieces, 0)
    moved = _mdci_kernel_outputs(model, pieces, 0)
    assert max((a - b).abs().max().item() for a, b in zip(fresh, moved, strict=True)) > 1e-3


def test_vl_map_eq3_eq4(model: FiLoPlusPlus, pieces: Pieces, zero_shot: FiloOutput) -> None:
    expected = _vl_map(model, pieces)
    assert zero_shot.vl_map.shape == (2, pieces.size, pieces.size)
    _close(zero_shot.vl_map, expected)
    # align_corners matters: the other convention gives different values.
    mean = sum(m[:, 1] for m in zero_shot.stage_probs) / 7
    other = torch.nn.functional.interpolate(
        mean[:, None], size=(pieces.size,) * 2, mode="bilinear", align_corners=False
    )[:, 0]
    assert (other.double() - expected).abs().max() > 1e-3


def test_vl_map_symmetric_variant_is_equal(
    model: FiLoPlusPlus, images: torch.Tensor, zero_shot: FiloOutput, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(M^a + 1 - M^n) / 2 == M^a because each two-way softmax sums to 1."""
    symmetric = replace(model.cfg, heads=replace(model.cfg.heads, vl_map="symmetric"))
    monkeypatch.setattr(model, "cfg", symmetric)
    with torch.no_grad():
        out = model(images, CLASS_NAME)
    maps = zero_shot.stage_probs
    m_a = _up(sum(m[:, 1] for m in maps) / len(maps), images.shape[-1])
    m_n = _up(sum(m[:, 0] for m in maps) / len(maps), images.shape[-1])
    _close(out.vl_map, (m_a + 1.0 - m_n) / 2.0)
    _close(out.vl_map, zero_shot.vl_map)
    _close(out.anomaly_map, zero_shot.anomaly_map)


def test_stage_probabilities_sum_to_one(zero_shot: FiloOutput) -> None:
    for m in zero_shot.stage_probs:
        _close(m.sum(dim=1), torch.ones_like(m[:, 0]), atol=1e-6)


# ---------------------------------------------------------------- Eq. 5-7


def test_fewshot_map_eq5_eq6(
    fewshot_model: FiLoPlusPlus, refs: torch.Tensor, pieces: Pieces, few_shot: FiloOutput
) -> None:
    assert few_shot.fewshot_map is not None
    _close(few_shot.fewshot_map, _fewshot_map(fewshot_model, pieces, refs))


def test_fewshot_memory_rows(fewshot_model: FiLoPlusPlus, refs: torch.Tensor, tiny_cfg: ModelConfig) -> None:
    """Mem_i = n(ori[i]) patch tokens of all k shots: [k * N, D] per memory stage."""
    bb = tiny_cfg.backbone
    with torch.no_grad():
        ref_feats = fewshot_model.backbone(refs)
    for stage, layer in enumerate(tiny_cfg.fewshot.memory_layers):
        rows = fewshot_model.memory.memory(stage)
        assert rows.shape == (refs.shape[0] * bb.num_patches, bb.width)
        tokens = ref_feats.ori[tiny_cfg.feature_layers.index(layer)][:, 1:]
        _close(rows, _n(tokens).reshape(-1, bb.width), atol=1e-6)


def test_reference_image_has_zero_fewshot_map(fewshot_model: FiLoPlusPlus, refs: torch.Tensor) -> None:
    unseen = make_images(1, refs.shape[-1], seed=5)
    with torch.no_grad():
        out = fewshot_model(torch.cat([refs[1:2], unseen]), CLASS_NAME)
    assert out.fewshot_map is not None
    assert out.fewshot_map[0].abs().max().item() < 1e-5
    # ... while an unseen image is far from the memory somewhere.
    assert out.fewshot_map[1].amax().item() > 1e-2


def test_anomaly_map_eq7_few_shot(few_shot: FiloOutput) -> None:
    fused = (few_shot.vl_map.double() + few_shot.fewshot_map.double()) / 2.0
    _close(few_shot.anomaly_map, _blur(fused))


def test_anomaly_map_eq7_zero_shot(model: FiLoPlusPlus, pieces: Pieces, zero_shot: FiloOutput) -> None:
    assert zero_shot.fewshot_map is None
    _close(zero_shot.anomaly_map, _blur(zero_shot.vl_map))
    # End to end from the pieces: G_sigma(Up(mean stage maps)).
    _close(zero_shot.anomaly_map, _blur(_vl_map(model, pieces)))


def test_use_memory_false_is_zero_shot(
    fewshot_model: FiLoPlusPlus, images: torch.Tensor, zero_shot: FiloOutput
) -> None:
    with torch.no_grad():
        out = fewshot_model(images, CLASS_NAME, use_memory=False)
    assert out.fewshot_map is None
    _close(out.anomaly_map, zero_shot.anomaly_map, atol=1e-6)


def test_blur_radius_reaches_16_pixels(model: FiLoPlusPlus, tiny_cfg: ModelConfig) -> None:
    """A single hot pixel spreads exactly as scipy's sigma=4 filter (radius 16, reflect)."""
    s = tiny_cfg.backbone.image_size
    impulse = torch.zeros(1, 1, s, s)
    impulse[0, 0, 3, 50] = 1.0  # near the top border: reflection matters
    with torch.no_grad():
        out = model.blur(impulse)[:, 0]
    _close(out, _blur(impulse[:, 0]), atol=1e-7)


# ---------------------------------------------------------------- λ-suppression


def test_lambda_suppression_outside_region(
    fewshot_model: FiLoPlusPlus, images: torch.Tensor, few_shot: FiloOutput
) -> None:
    s = images.shape[-1]
    region = torch.zeros(2, 1, s, s)
    region[..., : s // 2] = 1.0  # left half is R
    with torch.no_grad():
        out = fewshot_model(images, CLASS_NAME, region=region)
    for got, plain in ((out.vl_map, few_shot.vl_map), (out.fewshot_map, few_shot.fewshot_map)):
        torch.testing.assert_close(got[..., : s // 2], plain[..., : s // 2], atol=0.0, rtol=0.0)
        torch.testing.assert_close(got[..., s // 2 :], plain[..., s // 2 :] * LAMBDA, atol=1e-7, rtol=1e-6)
    # Suppression comes before fusion and smoothing; the image score uses the suppressed map.
    _close(out.anomaly_map, _blur((out.vl_map.double() + out.fewshot_map.double()) / 2.0))
    _close(out.image_score, 0.5 * (out.global_prob.double() + out.anomaly_map.double().flatten(1).amax(1)), atol=1e-6)
    _close(out.global_prob, few_shot.global_prob, atol=0.0)


# ---------------------------------------------------------------- filtering switch, positions


def test_filtering_on_by_default_in_eval(pieces: Pieces, zero_shot: FiloOutput, unfiltered: FiloOutput) -> None:
    """The default eval forward uses the hand-filtered pair; switching filtering off changes p_a."""
    ga = pieces.g_adapted
    filtered = 1.0 / (
        1.0 + torch.exp(-pieces.tau_g * ((ga * pieces.t_abnormal).sum(-1) - (ga * pieces.t_normal).sum(-1)))
    )
    _close(zero_shot.global_prob, filtered)
    assert (unfiltered.global_prob - zero_shot.global_prob).abs().max() > 1e-4
    # Unfiltered: T_n, T_a are the means over every prompt of each set.
    t_n = _n(_n(pieces.raw_text[0]).mean(dim=1))
    t_a = _n(_n(pieces.raw_text[1]).flatten(1, 2).mean(dim=1))
    plain = 1.0 / (1.0 + torch.exp(-pieces.tau_g * ((ga * t_a).sum(-1) - (ga * t_n).sum(-1))))
    _close(unfiltered.global_prob, plain)


def test_filtering_off_in_train_mode(model: FiLoPlusPlus, images: torch.Tensor, unfiltered: FiloOutput) -> None:
    with torch.no_grad():
        model.train()
        try:
            train = model(images, CLASS_NAME)
        finally:
            model.eval()
    _close(train.global_prob, unfiltered.global_prob, atol=1e-6)
    _close(train.anomaly_map, unfiltered.anomaly_map, atol=1e-6)


def test_filtering_disabled_in_config(
    model: FiLoPlusPlus, images: torch.Tensor, unfiltered: FiloOutput, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(model, "cfg", replace(model.cfg, prompts=replace(model.cfg.prompts, filtering=False)))
    with torch.no_grad():
        default = model(images, CLASS_NAME)
    _close(default.global_prob, unfiltered.global_prob, atol=0.0)


def test_single_position_keeps_only_its_prompts(model: FiLoPlusPlus, images: torch.Tensor, pieces: Pieces) -> None:
    """Image 0 uses "top left" only, image 1 "right" only (positions are per image)."""
    chosen = [0, 5]
    positions = torch.zeros(2, NUM_POSITIONS)
    for b, position in enumerate(chosen):
        positions[b, position] = 1.0
    p = Pieces(model, images, positions, raw_text=pieces.raw_text)
    with torch.no_grad():
        out = model(images, CLASS_NAME, positions=positions)
    per_position = p.abnormal.shape[1] // NUM_POSITIONS
    descriptions = model.prompts.prepare(CLASS_NAME).abnormal_descriptions()
    for b, position in enumerate(chosen):
        block = range(position * per_position, (position + 1) * per_position)
        kept = [i for i, k in enumerate(p.keep_a[b]) if k]
        assert kept and all(i in block for i in kept)
        best = int(out.best_description[b])
        assert best in block
        assert descriptions[best].endswith(f" at {POSITIONS[position]}.")
        # The reported prompt is the one at the selected position closest to G_a (filtered or not).
        sims = p.abnormal[b] @ p.g_adapted[b]
        assert best == max(block, key=lambda i: float(sims[i]))
    ga = p.g_adapted
    expected = 1.0 / (1.0 + torch.exp(-p.tau_g * ((ga * p.t_abnormal).sum(-1) - (ga * p.t_normal).sum(-1))))
    _close(out.global_prob, expected)
    _close(out.stage_probs[-1], _mdci_stage(model, p, len(model.mdci.stages) - 1))


def test_all_positions_best_description_is_closest_prompt(pieces: Pieces, zero_shot: FiloOutput) -> None:
    for b in range(2):
        sims = pieces.abnormal[b] @ pieces.g_adapted[b]
        assert int(zero_shot.best_description[b]) == int(sims.argmax())


# ---------------------------------------------------------------- batching, parameters, masks


def _fields(out: FiloOutput) -> dict[str, torch.Tensor]:
    d = {k: v for k, v in out._asdict().items() if isinstance(v, torch.Tensor)}
    for i, m in enumerate(out.stage_probs):
        d[f"stage{i}"] = m
    return d


def test_batch_of_two_equals_two_batches_of_one(
    fewshot_model: FiLoPlusPlus, images: torch.Tensor, few_shot: FiloOutput
) -> None:
    with torch.no_grad():
        singles = [fewshot_model(images[i : i + 1], CLASS_NAME) for i in range(2)]
    batched = _fields(few_shot)
    for i, single in enumerate(singles):
        for name, value in _fields(single).items():
            torch.testing.assert_close(batched[name][i : i + 1].double(), value.double(), atol=1e-5, rtol=0.0, msg=name)


def test_trainable_state_dict_keys(model: FiLoPlusPlus) -> None:
    keys = set(model.trainable_state_dict())
    frozen_prefixes = ("backbone.", "text_encoder.", "prompts.text_encoder.", "memory.", "blur.")
    assert not [k for k in keys if k.startswith(frozen_prefixes)]
    for prefix in (
        "prompts.ctx_normal",
        "prompts.ctx_abnormal",
        "prompts.meta_normal.",
        "prompts.meta_abnormal.",
        "linear_heads.",
        "mdci.",
        "adapter.",
    ):
        assert any(k.startswith(prefix) for k in keys), prefix
    # Exactly the parameters that require gradients.
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert keys == trainable


def test_no_box_prior_is_whole_image_and_all_positions(images: torch.Tensor) -> None:
    prior = build_box_prior("none")
    result = prior(images, CLASS_NAME)
    assert result.region is None
    torch.testing.assert_close(result.positions, torch.ones(images.shape[0], NUM_POSITIONS))
    with pytest.raises(ValueError, match="none"):
        build_box_prior("grounding-dino-missing")


def test_positions_from_masks_uses_bbox_centre_cell() -> None:
    s = 112
    centres = [19, 56, 93]  # the middles of the three bands of a 112-px axis
    masks, labels, expected = [], [], []
    for row, cy in enumerate(centres):
        for col, cx in enumerate(centres):
            m = torch.zeros(1, s, s)
            m[0, cy - 4 : cy + 5, cx - 3 : cx + 4] = 1.0
            masks.append(m)
            labels.append(1)
            expected.append(row * 3 + col)
    out = positions_from_masks(torch.stack(masks), torch.tensor(labels))
    assert out.shape == (9, NUM_POSITIONS)
    for b, cell in enumerate(expected):
        one_hot = torch.zeros(NUM_POSITIONS)
        one_hot[cell] = 1.0
        torch.testing.assert_close(out[b], one_hot)


def test_positions_from_masks_bbox_not_centroid() -> None:
    """A blob at top left plus one pixel at top right: bbox centre is "top", the centroid "top left"."""
    s = 112
    m = torch.zeros(1, 1, s, s)
    m[0, 0, 0:30, 0:30] = 1.0
    m[0, 0, 0, s - 1] = 1.0
    out = positions_from_masks(m, torch.tensor([1]))
    assert out[0].tolist() == [0.0, 1.0] + [0.0] * 7


def test_positions_from_masks_normal_or_empty_use_all_positions() -> None:
    s = 112
    masks = torch.zeros(3, 1, s, s)
    masks[0, 0, 10:20, 10:20] = 1.0  # labelled normal: ignored
    out = positions_from_masks(masks, torch.tensor([0, 1, 0]))  # 1: anomalous with an empty mask
    torch.testing.assert_close(out, torch.ones(3, NUM_POSITIONS))
