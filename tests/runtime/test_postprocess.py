"""Numpy post-processing against scipy (Gaussian) and PyTorch (align_corners upsampling, GaussianBlur)."""

from __future__ import annotations

import numpy as np
import pytest

from fgad.core.smoothing import gaussian_radius, gaussian_reflect, reflect_index, upsample_align_corners
from fgad.runtime.postprocess import finish
from tests.helpers.references import scipy_ndimage


@pytest.mark.parametrize("size", [1, 2, 7, 37, 112, 518])
@pytest.mark.parametrize(("sigma", "truncate"), [(4.0, 4.0), (0.7, 4.0), (2.5, 3.0)])
def test_gaussian_equals_scipy_reflect(size: int, sigma: float, truncate: float) -> None:
    maps = np.random.default_rng(size).random((2, size, size), dtype=np.float32)
    ours = gaussian_reflect(maps, sigma, truncate)
    for m, o in zip(maps, ours, strict=True):
        ref = scipy_ndimage().gaussian_filter(m, sigma, mode="reflect", truncate=truncate)
        np.testing.assert_allclose(o, ref, atol=1e-6, rtol=0)
    assert ours.dtype == np.float32 and ours.shape == maps.shape


def test_gaussian_radius_larger_than_the_map() -> None:
    assert gaussian_radius(4.0, 4.0) == 16 > 7
    m = np.random.default_rng(0).random((7, 5), dtype=np.float32)  # non-square, single map
    ref = scipy_ndimage().gaussian_filter(m, 4.0, mode="reflect", truncate=4.0)
    np.testing.assert_allclose(gaussian_reflect(m, 4.0, 4.0), ref, atol=1e-6)
    # c c b a | a b c | c b a a: reflected twice on the left and right
    assert list(reflect_index(3, 4)) == [2, 2, 1, 0, 0, 1, 2, 2, 1, 0, 0]


def test_gaussian_matches_the_pytorch_module() -> None:
    torch = pytest.importorskip("torch", reason="the PyTorch reference needs the train extra (torch)")
    from fgad.backbone.postprocess import GaussianBlur

    maps = np.random.default_rng(1).random((2, 37, 37), dtype=np.float32)
    ref = GaussianBlur(37, 4.0, 4.0)(torch.from_numpy(maps)[:, None])[:, 0].numpy()
    np.testing.assert_allclose(gaussian_reflect(maps, 4.0, 4.0), ref, atol=1e-6)


@pytest.mark.parametrize(("h", "s"), [(1, 5), (4, 32), (7, 112), (37, 518), (24, 336), (5, 1), (16, 16), (3, 7)])
def test_upsample_equals_torch_align_corners(h: int, s: int) -> None:
    torch = pytest.importorskip("torch", reason="the PyTorch reference needs the train extra (torch)")
    maps = np.random.default_rng(h * s).random((3, h, h), dtype=np.float32)
    ref = torch.nn.functional.interpolate(torch.from_numpy(maps)[:, None], size=(s, s), mode="bilinear",
                                          align_corners=True)[:, 0].numpy()
    out = upsample_align_corners(maps, s)
    assert out.shape == (3, s, s) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=1e-6, rtol=0)


def test_upsample_equals_scipy_linear_interpolation() -> None:
    """Torch-free reference: align_corners=True samples the input at i * (h - 1) / (s - 1)."""
    m = np.random.default_rng(5).random((6, 9), dtype=np.float32)
    out = upsample_align_corners(m, (11, 20))
    yy, xx = np.meshgrid(np.linspace(0, 5, 11), np.linspace(0, 8, 20), indexing="ij")
    ref = scipy_ndimage().map_coordinates(m.astype(np.float64), [yy, xx], order=1)
    np.testing.assert_allclose(out, ref, atol=1e-6)
    # corners are kept exactly
    assert out[0, 0] == m[0, 0] and out[-1, -1] == m[-1, -1]


def test_finish_follows_the_contract() -> None:
    rng = np.random.default_rng(2)
    vl = rng.random((2, 32, 32), dtype=np.float32)
    few = rng.random((2, 32, 32), dtype=np.float32)
    prob = np.array([0.2, 0.9], np.float32)
    ndimage = scipy_ndimage()
    amap, score = finish(vl, prob, None, 4.0, 4.0)
    ref = np.stack([ndimage.gaussian_filter(v, 4.0, mode="reflect") for v in vl])
    np.testing.assert_allclose(amap, ref, atol=1e-6)
    np.testing.assert_allclose(score, 0.5 * (prob + ref.reshape(2, -1).max(1)), atol=1e-6)

    amap, score = finish(vl, prob, few, 4.0, 4.0)
    ref = np.stack([ndimage.gaussian_filter((v + f) / 2, 4.0, mode="reflect") for v, f in zip(vl, few, strict=True)])
    np.testing.assert_allclose(amap, ref, atol=1e-6)
    np.testing.assert_allclose(score, 0.5 * (prob + ref.reshape(2, -1).max(1)), atol=1e-6)
    with pytest.raises(ValueError, match="same shape"):
        finish(vl, prob, few[:, :16], 4.0, 4.0)
