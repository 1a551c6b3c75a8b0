"""Tests for fgad.runtime.overlay: colour mapping, overlays, panels and atomic image saving."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from fgad.runtime.overlay import colorize, heatmap_overlay, render_panel, save_image_rgb


def _gray_image(h: int = 64, w: int = 80) -> np.ndarray:
    return np.full((h, w, 3), 128, dtype=np.uint8)


def test_colorize_shape_dtype_and_jet_ends() -> None:
    amap = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    rgb = colorize(amap)
    assert rgb.shape == (1, 3, 3)
    assert rgb.dtype == np.uint8
    low, high = rgb[0, 0].astype(int), rgb[0, 2].astype(int)
    assert low[2] > low[0]  # low values are blue
    assert high[0] > high[2]  # high values are red
    # Same as OpenCV's JET with the channels swapped to RGB.
    jet = cv2.applyColorMap(np.array([[0, 128, 255]], dtype=np.uint8), cv2.COLORMAP_JET)
    np.testing.assert_array_equal(rgb, jet[..., ::-1])


def test_colorize_scales_and_clips_to_vmin_vmax() -> None:
    amap = np.array([[-5.0, 2.0, 4.0, 10.0]])
    rgb = colorize(amap, vmin=2.0, vmax=4.0)
    np.testing.assert_array_equal(rgb[0, 0], rgb[0, 1])  # below vmin clips to vmin
    np.testing.assert_array_equal(rgb[0, 2], rgb[0, 3])  # above vmax clips to vmax
    assert not np.array_equal(rgb[0, 1], rgb[0, 2])


@pytest.mark.parametrize(
    ("amap", "kwargs", "match"),
    [
        (np.zeros((2, 2)), {"vmin": 1.0, "vmax": 1.0}, "vmax > vmin"),
        (np.zeros((2, 2, 3)), {}, "2-D"),
    ],
)
def test_colorize_rejects_bad_input(amap: np.ndarray, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        colorize(amap, **kwargs)


def test_overlay_resizes_map_and_is_redder_where_map_is_hot() -> None:
    image = _gray_image(64, 80)
    amap = np.zeros((16, 20), dtype=np.float32)
    amap[:4, :5] = 1.0  # hot top-left corner, at patch resolution
    out = heatmap_overlay(image, amap)
    assert out.shape == (64, 80, 3)
    assert out.dtype == np.uint8
    hot = out[:8, :10].astype(int).mean(axis=(0, 1))
    cold = out[40:, 40:].astype(int).mean(axis=(0, 1))
    assert hot[0] > cold[0] + 50  # more red
    assert hot[2] < cold[2] - 50  # less blue


def test_overlay_alpha_extremes_and_grayscale_input() -> None:
    gray = (np.arange(48 * 40) % 251).astype(np.uint8).reshape(48, 40)
    amap = np.random.default_rng(0).random((48, 40))
    np.testing.assert_array_equal(heatmap_overlay(gray, amap, alpha=0.0), np.stack([gray] * 3, axis=-1))
    np.testing.assert_array_equal(heatmap_overlay(gray, amap, alpha=1.0), colorize(amap))
    with pytest.raises(ValueError, match="alpha"):
        heatmap_overlay(gray, amap, alpha=1.5)
    with pytest.raises(ValueError, match="uint8"):
        heatmap_overlay(gray.astype(np.float32), amap)


def test_overlay_draws_gt_contour_on_mask_boundary() -> None:
    image = _gray_image(64, 64)
    amap = np.zeros((64, 64))
    mask = np.zeros((32, 32), dtype=bool)  # half resolution: resized with nearest neighbour
    mask[8:24, 8:24] = True
    color = (255, 0, 255)
    plain = heatmap_overlay(image, amap)
    with_gt = heatmap_overlay(image, amap, gt_mask=mask, contour_color=color)

    changed = np.any(with_gt != plain, axis=-1)
    assert changed.any()
    assert np.all(with_gt[changed] == color)
    # Drawn on the region's outline (rows/cols 16..47 in image pixels), not deep inside or far out.
    ys, xs = np.nonzero(changed)
    assert ys.min() >= 14 and ys.max() <= 49 and xs.min() >= 14 and xs.max() <= 49
    assert not changed[24:40, 24:40].any()
    assert changed[16:48, 16].all() or changed[16:48, 15].all()


def test_render_panel_layout_and_caption() -> None:
    image = _gray_image(100, 200)  # aspect 2:1 -> tiles 64 x 128
    amap = np.zeros((25, 50), dtype=np.float32)
    amap[-5:, -5:] = 1.0
    panel = render_panel(image, amap, height=64)
    strip_h = panel.shape[0] - 64
    assert panel.dtype == np.uint8
    assert panel.shape[1:] == (3 * 128, 3)
    assert strip_h > 0
    assert not panel[:strip_h].any()  # no score/label -> empty strip

    captioned = render_panel(image, amap, score=0.87, label="anomalous", height=64)
    assert captioned.shape == panel.shape
    assert captioned[:strip_h].any()
    np.testing.assert_array_equal(captioned[strip_h:], panel[strip_h:])

    body = panel[strip_h:]
    np.testing.assert_array_equal(body[:, :128], cv2.resize(image, (128, 64), interpolation=cv2.INTER_AREA))
    heat_tile = body[:, 256:].astype(int)
    assert heat_tile[-4:, -4:, 0].mean() > heat_tile[:10, :10, 0].mean() + 100  # hot corner is red


def test_save_image_rgb_png_roundtrip(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    target = tmp_path / "sub" / "panel.png"
    save_image_rgb(target, rgb)
    back = cv2.imread(str(target), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(back[..., ::-1], rgb)

    gray = rng.integers(0, 256, size=(7, 9), dtype=np.uint8)
    save_image_rgb(tmp_path / "gray.png", gray)
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "gray.png"), cv2.IMREAD_UNCHANGED), gray)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gray.png", "sub"]
    assert [p.name for p in target.parent.iterdir()] == ["panel.png"]


def test_save_image_rgb_jpg_is_close(tmp_path: Path) -> None:
    rgb = np.zeros((32, 32, 3), dtype=np.uint8)
    rgb[..., 0] = 200  # flat red survives JPEG almost exactly
    save_image_rgb(tmp_path / "x.jpg", rgb)
    back = cv2.imread(str(tmp_path / "x.jpg"))[..., ::-1].astype(int)
    assert np.abs(back - rgb).max() <= 3


@pytest.mark.parametrize(
    ("name", "image", "match"),
    [
        ("noext", np.zeros((4, 4, 3), np.uint8), "no file extension"),
        ("x.notaformat", np.zeros((4, 4, 3), np.uint8), "cannot encode"),
        ("x.png", np.zeros((4, 4, 3), np.float32), "uint8"),
        ("x.png", np.zeros((4, 4, 5), np.uint8), "shape"),
    ],
)
def test_save_image_rgb_errors_leave_nothing_behind(
    tmp_path: Path, name: str, image: np.ndarray, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        save_image_rgb(tmp_path / name, image)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("shape", "tile_w"), [((1, 1), 256), ((1, 300), 1024), ((1, 10000), 1024),
                                               ((10000, 1), 64), ((3, 7), 597), ((300, 400), 341)])
def test_render_panel_of_extreme_shapes_is_bounded_and_saves(tmp_path: Path, shape: tuple[int, int],
                                                             tile_w: int) -> None:
    """A 1-pixel-high (or wide) input gives a working panel, at most 4:1 per tile, that encodes as PNG."""
    from fgad.runtime.overlay import MAX_TILE_ASPECT

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    panel = render_panel(image, rng.random((8, 8)), gt_mask=np.ones(shape, bool), score=0.5, label="anomalous")
    assert panel.shape == (256 + 25, 3 * tile_w, 3)
    assert 256 // MAX_TILE_ASPECT <= tile_w <= 256 * MAX_TILE_ASPECT
    path = tmp_path / "panel.png"
    save_image_rgb(path, panel)
    np.testing.assert_array_equal(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB), panel)
    overlay = heatmap_overlay(image, rng.random((8, 8)))
    assert overlay.shape == (*shape, 3)


@pytest.mark.parametrize(("shape", "content"), [((1, 10000), (1, 1024)), ((10000, 1), (256, 1)),
                                                ((100, 2000), (51, 1024)), ((2000, 100), (256, 13))])
def test_render_panel_letterboxes_extreme_aspect_ratios(shape: tuple[int, int], content: tuple[int, int]) -> None:
    """Beyond 4:1 the image is shown undistorted on black bars, not stretched to the tile."""
    image = np.full((*shape, 3), 200, dtype=np.uint8)
    panel = render_panel(image, np.zeros((4, 4)), height=256)
    body = panel[panel.shape[0] - 256:]
    tile = body[:, : body.shape[1] // 3]
    lit_rows, lit_cols = np.nonzero(tile.max(axis=2))
    assert (lit_rows.max() - lit_rows.min() + 1, lit_cols.max() - lit_cols.min() + 1) == content
    assert (tile == 0).all(axis=2).any()  # black bars where the image does not reach
    assert tile[lit_rows, lit_cols].min() == 200  # the image itself, not blended with the bars


def test_render_panel_memory_is_bounded_by_the_panel_not_the_frame() -> None:
    """A large frame is resized before the heat map is blended: no full-size float copies of it."""
    import tracemalloc

    frame = np.random.default_rng(0).integers(0, 256, (3000, 4000, 3), dtype=np.uint8)  # 36 MB
    amap = np.random.default_rng(1).random((3000, 4000)).astype(np.float32)  # 48 MB, at frame size
    tracemalloc.start()
    try:
        render_panel(frame, amap, gt_mask=amap > 0.99, score=0.5, label="x")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 40e6, f"render_panel allocated {peak / 1e6:.0f} MB for a 36 MB frame"


def test_display_overlay_is_bounded_and_keeps_the_aspect_ratio() -> None:
    from fgad.runtime.overlay import display_overlay

    rng = np.random.default_rng(0)
    assert display_overlay(rng.integers(0, 256, (3000, 4000, 3), dtype=np.uint8), rng.random((8, 8))).shape == \
        (960, 1280, 3)
    assert display_overlay(rng.integers(0, 256, (1, 10000, 3), dtype=np.uint8), rng.random((8, 8))).shape == \
        (1, 1280, 3)
    small = rng.integers(0, 256, (100, 50, 3), dtype=np.uint8)
    amap = rng.random((8, 8))
    np.testing.assert_array_equal(display_overlay(small, amap), heatmap_overlay(small, amap))
