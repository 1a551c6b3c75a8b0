"""Image / mask reading (fgad.core.io) and preprocessing (fgad.core.transforms)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from fgad.core import io as fio
from fgad.core.io import IMAGE_EXTENSIONS, ImageReadError, read_image, read_mask
from fgad.core.transforms import (
    OPENAI_MEAN,
    OPENAI_STD,
    normalize,
    preprocess,
    preprocess_mask,
    resize_image,
)


def _write(path: Path, array: np.ndarray) -> Path:
    ok, buf = cv2.imencode(path.suffix, array)
    assert ok, path
    path.write_bytes(buf.tobytes())
    return path


def _rgb_pattern(h: int = 12, w: int = 16) -> np.ndarray:
    """RGB image with a distinct value in each channel so channel swaps show."""
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = 200  # R
    img[..., 1] = 100  # G
    img[..., 2] = np.arange(w, dtype=np.uint8)[None, :] * 3  # B varies
    return img


# --------------------------------------------------------------------------- read_image


@pytest.mark.parametrize("ext", [".png", ".bmp", ".tif"])
def test_read_lossless_colour_is_rgb(tmp_path: Path, ext: str) -> None:
    rgb = _rgb_pattern()
    path = _write(tmp_path / f"img{ext}", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    out = read_image(path)
    assert out.dtype == np.uint8 and out.shape == (12, 16, 3)
    np.testing.assert_array_equal(out, rgb)


def test_read_jpg_is_rgb(tmp_path: Path) -> None:
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 0] = 220  # pure-ish red: a BGR/RGB mix-up would put it in channel 2
    path = _write(tmp_path / "img.jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    out = read_image(path)
    assert out.shape == (16, 16, 3)
    assert abs(int(out[..., 0].mean()) - 220) < 6
    assert out[..., 2].mean() < 10


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_read_grayscale_expands_to_three_equal_channels(tmp_path: Path, ext: str) -> None:
    gray = np.tile(np.arange(0, 200, 10, dtype=np.uint8), (8, 1))
    path = _write(tmp_path / f"g{ext}", gray)
    assert cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED).ndim == 2
    out = read_image(path)
    assert out.shape == (8, 20, 3)
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    if ext == ".png":
        np.testing.assert_array_equal(out[..., 0], gray)


def test_read_rgba_drops_alpha(tmp_path: Path) -> None:
    rgb = _rgb_pattern()
    bgra = np.dstack([cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), np.full(rgb.shape[:2], 7, np.uint8)])
    out = read_image(_write(tmp_path / "a.png", bgra))
    np.testing.assert_array_equal(out, rgb)


def test_read_gray_alpha_drops_alpha(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # OpenCV cannot write 2-channel files, so feed the decoder's output directly.
    la = np.dstack([np.full((4, 5), 90, np.uint8), np.full((4, 5), 3, np.uint8)])
    path = tmp_path / "la.png"
    path.write_bytes(b"x")
    monkeypatch.setattr(fio.cv2, "imdecode", lambda buf, flags: la)
    out = read_image(path)
    assert out.shape == (4, 5, 3) and (out == 90).all()


def test_read_16bit_scales_to_8bit(tmp_path: Path) -> None:
    img16 = np.array([[0, 257 * 100, 65535, 32896]], dtype=np.uint16)
    out = read_image(_write(tmp_path / "d.png", img16))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, :, 0], [0, 100, 255, 128])


def test_read_non_ascii_path(tmp_path: Path) -> None:
    folder = tmp_path / "données_検査"
    folder.mkdir()
    path = folder / "bild_ä.png"
    _write(path, np.full((3, 3, 3), 50, np.uint8))
    assert read_image(path).shape == (3, 3, 3)


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"", "empty"), (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "decod"), (b"not an image at all", "decod")],
)
def test_corrupt_file_raises_with_path(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "broken.png"
    path.write_bytes(content)
    with pytest.raises(ImageReadError, match=reason) as info:
        read_image(path)
    assert info.value.path == path
    assert str(path) in str(info.value)


def test_truncated_png_raises(tmp_path: Path) -> None:
    good = _write(tmp_path / "ok.png", np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ImageReadError):
        read_image(cut)


def test_missing_and_directory_raise(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="does not exist"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(ImageReadError, match="not a regular file"):
        read_image(tmp_path)


def test_image_read_error_pickles() -> None:
    import pickle

    err = pickle.loads(pickle.dumps(ImageReadError("/x/y.png", "bad")))
    assert err.path == Path("/x/y.png") and err.reason == "bad"


def test_extensions_cover_common_formats() -> None:
    for ext in (".png", ".jpg", ".jpeg", ".bmp", ".tif"):
        assert ext in IMAGE_EXTENSIONS


# --------------------------------------------------------------------------- read_mask


def test_mask_threshold_is_half_range(tmp_path: Path) -> None:
    m = np.array([[0, 1, 127, 128, 200, 255]], np.uint8)
    out = read_mask(_write(tmp_path / "m.png", m))
    assert out.dtype == np.bool_
    np.testing.assert_array_equal(out[0], [False, False, False, True, True, True])


def test_mask_16bit_threshold(tmp_path: Path) -> None:
    m = np.array([[0, 32767, 32768, 65535]], np.uint16)
    np.testing.assert_array_equal(read_mask(_write(tmp_path / "m.png", m))[0], [False, False, True, True])


def test_mask_label_map_counts_nonzero(tmp_path: Path) -> None:
    # Raw VisA masks store class ids 1..N: thresholding at 127 would erase every defect.
    m = np.array([[0, 1, 2, 0]], np.uint8)
    path = _write(tmp_path / "ids.png", m)
    np.testing.assert_array_equal(read_mask(path)[0], [False, True, True, False])
    assert not read_mask(path, label_map=False).any()
    empty = _write(tmp_path / "zero.png", np.zeros((3, 3), np.uint8))
    assert not read_mask(empty).any()


def test_mask_colour_uses_brightest_channel(tmp_path: Path) -> None:
    m = np.zeros((2, 2, 3), np.uint8)
    m[0, 0, 2] = 255
    out = read_mask(_write(tmp_path / "c.png", m))
    np.testing.assert_array_equal(out, [[True, False], [False, False]])


def test_mask_resize_nearest(tmp_path: Path) -> None:
    m = np.array([[255, 0], [0, 255]], np.uint8)
    path = _write(tmp_path / "m.png", m)
    out = read_mask(path, shape=(4, 6))
    assert out.shape == (4, 6)
    expected = np.kron(np.array([[1, 0], [0, 1]]), np.ones((2, 3))).astype(bool)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(read_mask(path, shape=(2, 2)), m > 0)


def test_mask_missing_raises(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="nope_mask.png"):
        read_mask(tmp_path / "nope_mask.png")


# --------------------------------------------------------------------------- transforms


def test_preprocess_applies_mean_std_exactly() -> None:
    img = np.zeros((10, 7, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 255, 128, 0
    out = preprocess(img, 8)
    assert out.shape == (3, 8, 8) and out.dtype == np.float32 and out.flags.c_contiguous
    for c, value in enumerate((255, 128, 0)):
        expected = (value / 255.0 - OPENAI_MEAN[c]) / OPENAI_STD[c]
        np.testing.assert_allclose(out[c], expected, rtol=0, atol=1e-6)


def test_normalize_custom_stats_and_layout() -> None:
    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    out = normalize(img, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    assert out.shape == (3, 2, 3)
    np.testing.assert_allclose(out, img.transpose(2, 0, 1) / np.float32(255), atol=0)
    with pytest.raises(ValueError, match="std"):
        normalize(img, std=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="3 values"):
        normalize(img, mean=(0.5, 0.5))


def test_preprocess_is_deterministic() -> None:
    img = np.random.default_rng(1).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    a, b = preprocess(img, 32), preprocess(img, 32)
    assert a.tobytes() == b.tobytes()


def test_resize_image_bicubic_square() -> None:
    img = np.random.default_rng(2).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    out = resize_image(img, 24)
    assert out.shape == (24, 24, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, cv2.resize(img, (24, 24), interpolation=cv2.INTER_CUBIC))
    same = resize_image(img[:24, :24], 24)
    np.testing.assert_array_equal(same, img[:24, :24])


@pytest.mark.parametrize(
    ("image", "size", "match"),
    [
        (np.zeros((5, 5), np.uint8), 4, "HxWx3"),
        (np.zeros((5, 5, 3), np.float32), 4, "uint8"),
        (np.zeros((5, 5, 3), np.uint8), 0, "positive"),
    ],
)
def test_resize_image_rejects_bad_input(image: np.ndarray, size: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        resize_image(image, size)


def test_preprocess_mask_binary_and_aligned() -> None:
    m = np.zeros((4, 4), bool)
    m[1:3, 1:3] = True
    out = preprocess_mask(m, 8)
    assert out.shape == (8, 8) and out.dtype == np.float32
    assert set(np.unique(out)) <= {0.0, 1.0}
    np.testing.assert_array_equal(out[2:6, 2:6], 1.0)
    assert out.sum() == 16
    np.testing.assert_array_equal(preprocess_mask(np.zeros((9, 5), bool), 4), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="HxW"):
        preprocess_mask(np.zeros((3, 3, 3), bool), 4)


def test_read_image_set_names_every_unreadable_file(tmp_path: Path) -> None:
    import pickle

    from fgad.core.io import UnreadableImagesError, read_image_set

    good = tmp_path / "good.png"
    cv2.imwrite(str(good), np.full((4, 6, 3), 80, np.uint8))
    missing, empty = tmp_path / "missing.png", tmp_path / "empty.png"
    empty.write_bytes(b"")
    calls: list[tuple[int, ...]] = []
    assert [im.shape for im in read_image_set([good, good])] == [(4, 6, 3)] * 2
    with pytest.raises(UnreadableImagesError) as caught:
        read_image_set([good, missing, good, empty], "calibration images", lambda im: calls.append(im.shape))
    err = caught.value
    assert [f.path for f in err.failures] == [missing, empty] and err.path == missing
    message = str(err)
    assert message.startswith("2 of 4 calibration images cannot be read: ")
    assert f"'{missing}' (file does not exist" in message and f"'{empty}' (file is empty" in message
    assert "\n" not in message and calls == [(4, 6, 3)]  # convert stops after the first failure
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == message and [f.path for f in again.failures] == [missing, empty]
