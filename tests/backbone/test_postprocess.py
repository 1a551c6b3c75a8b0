"""Tests for fgad.backbone.postprocess: blur parity with scipy, resizing, suppression, fusion, ONNX."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from fgad.backbone.postprocess import (
    GaussianBlur,
    gaussian_kernel1d,
    harmonic_fusion,
    mean_fusion,
    reflect_index,
    suppress_outside,
    upsample,
)
from tests.helpers.references import scipy_ndimage


def _scipy_blur(x: np.ndarray, sigma: float = 4.0, truncate: float = 4.0) -> np.ndarray:
    """Reference: scipy's filter applied to every 2-D map of a [B, C, H, W] array."""
    out = np.empty_like(x)
    for b in range(x.shape[0]):
        for c in range(x.shape[1]):
            out[b, c] = scipy_ndimage().gaussian_filter(x[b, c], sigma=sigma, mode="reflect", truncate=truncate)
    return out


def test_kernel_is_normalised_and_matches_scipy_taps() -> None:
    k = gaussian_kernel1d(4.0, 16)
    assert k.dtype == torch.float32
    assert k.shape == (33,)
    assert torch.isclose(k.sum(), torch.tensor(1.0), atol=1e-6)
    assert torch.equal(k, k.flip(0))
    # The taps, as scipy applies them: filter a unit impulse far from any border.
    impulse = np.zeros(101)
    impulse[50] = 1.0
    ref = scipy_ndimage().gaussian_filter(impulse, sigma=4.0, mode="reflect", truncate=4.0)[34:67]
    np.testing.assert_allclose(k.numpy(), ref, rtol=1e-6, atol=1e-9)


def test_radius_from_sigma_and_truncate() -> None:
    assert GaussianBlur(8).radius == 16
    assert GaussianBlur(8, sigma=1.5, truncate=3.0).radius == 5
    assert GaussianBlur((4, 6)).size == (4, 6)


def test_reflect_index_is_half_sample_symmetric_and_folds_repeatedly() -> None:
    # d c b a | a b c d | d c b a
    assert reflect_index(4, 4).tolist() == [3, 2, 1, 0, 0, 1, 2, 3, 3, 2, 1, 0]
    # radius larger than the line: keeps reflecting instead of running off the end
    assert reflect_index(2, 5).tolist() == [0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1]
    assert reflect_index(1, 3).tolist() == [0] * 7
    idx = reflect_index(3, 20)
    assert idx.min() >= 0 and idx.max() <= 2


@pytest.mark.parametrize(
    ("size", "batch", "channels"),
    [(37, 2, 1), (64, 1, 3), (518, 1, 1), (12, 3, 2), ((12, 40), 2, 2), ((50, 9), 1, 2), (1, 1, 1)],
)
def test_blur_matches_scipy_float64(size: int | tuple[int, int], batch: int, channels: int) -> None:
    blur = GaussianBlur(size)
    h, w = blur.size
    x = np.random.default_rng(0).random((batch, channels, h, w))
    out = blur(torch.from_numpy(x))
    assert out.dtype == torch.float64 and out.shape == (batch, channels, h, w)
    np.testing.assert_allclose(out.numpy(), _scipy_blur(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("size", [37, 12, (20, 33)])
def test_blur_matches_scipy_float32(size: int | tuple[int, int]) -> None:
    blur = GaussianBlur(size)
    h, w = blur.size
    x = np.random.default_rng(1).random((2, 3, h, w)).astype(np.float32)
    out = blur(torch.from_numpy(x)).numpy()
    ref = _scipy_blur(x.astype(np.float64))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-7)


def test_blur_other_sigma_and_structured_input() -> None:
    # A single hot pixel at a corner exercises the reflection hardest.
    blur = GaussianBlur((10, 14), sigma=2.5, truncate=3.0)
    x = np.zeros((1, 1, 10, 14))
    x[0, 0, 0, 0] = 1.0
    x[0, 0, 7, 13] = 5.0
    np.testing.assert_allclose(
        blur(torch.from_numpy(x)).numpy(), _scipy_blur(x, sigma=2.5, truncate=3.0), rtol=0, atol=1e-6
    )


def test_blur_preserves_constant_maps_and_buffers_are_registered() -> None:
    blur = GaussianBlur(12)
    x = torch.full((1, 2, 12, 12), 3.0)
    torch.testing.assert_close(blur(x), x)
    names = set(dict(blur.named_buffers()))
    assert {"kernel_w", "kernel_h", "index_w", "index_h"} <= names
    assert not list(blur.parameters())


def test_blur_rejects_wrong_size() -> None:
    with pytest.raises(RuntimeError):
        GaussianBlur(12)(torch.zeros(1, 1, 13, 13))


def test_upsample_shapes_and_corner_alignment() -> None:
    maps = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    up = upsample(maps, 17)
    assert up.shape == (2, 3, 17, 17)
    for (i, j), (k, m) in [((0, 0), (0, 0)), ((0, -1), (0, -1)), ((-1, 0), (-1, 0)), ((-1, -1), (-1, -1))]:
        torch.testing.assert_close(up[..., i, j], maps[..., k, m])
    assert upsample(maps, (8, 11), align_corners=False).shape == (2, 3, 8, 11)
    # align_corners=True places output pixel i at input coordinate i * (h - 1) / (H - 1): 4 -> 7 rows
    # puts row 2 of the output at input row 1.
    torch.testing.assert_close(upsample(maps, (7, 9))[..., 2, 2], maps[..., 1, 1])


def test_suppress_outside() -> None:
    maps = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]], [[[5.0, 6.0], [7.0, 8.0]]]]).repeat(1, 2, 1, 1)
    region = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]], [[[0.0, 0.0], [1.0, 1.0]]]])
    out = suppress_outside(maps, region, lam=0.5)
    expected = torch.tensor([[[[1.0, 1.0], [1.5, 4.0]]], [[[2.5, 3.0], [7.0, 8.0]]]]).repeat(1, 2, 1, 1)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(suppress_outside(maps, torch.zeros_like(region)), maps * 0.7)
    torch.testing.assert_close(suppress_outside(maps, torch.ones_like(region)), maps)


def test_fusions() -> None:
    a = torch.tensor([1.0, 2.0, 0.0, 3.0])
    b = torch.tensor([1.0, 6.0, 4.0, 0.0])
    torch.testing.assert_close(harmonic_fusion(a, b), torch.tensor([0.5, 1.5, 0.0, 0.0]))
    torch.testing.assert_close(mean_fusion(a, b), torch.tensor([1.0, 4.0, 2.0, 1.5]))
    torch.testing.assert_close(mean_fusion(a), a)
    torch.testing.assert_close(mean_fusion(a, b, 3 * a), torch.tensor([5 / 3, 14 / 3, 4 / 3, 4.0]))
    with pytest.raises(ValueError):
        mean_fusion()


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_blur_onnx_export_matches_eager(tmp_path, dynamo: bool) -> None:
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    blur = GaussianBlur((24, 20)).eval()
    x = torch.rand(2, 3, 24, 20)
    path = tmp_path / "blur.onnx"
    if dynamo:
        pytest.importorskip("onnxscript")
        dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("channels")}
        kwargs = {"dynamic_shapes": (dims,), "verbose": False}
    else:
        axes = {0: "batch", 1: "channels"}
        kwargs = {"dynamic_axes": {"maps": axes, "smoothed": axes}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        torch.onnx.export(
            blur, (x,), str(path), input_names=["maps"], output_names=["smoothed"], dynamo=dynamo, **kwargs
        )
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(2, 3, 24, 20), (1, 5, 24, 20)]:
        xi = torch.rand(*shape)
        (got,) = sess.run(None, {"maps": xi.numpy()})
        np.testing.assert_allclose(got, blur(xi).numpy(), rtol=0, atol=1e-5)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "Conv" in ops
