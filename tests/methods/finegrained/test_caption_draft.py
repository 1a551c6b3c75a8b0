"""The mask-free caption drafter on images built so that the right words are known in advance."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from fgad.core.cells import POSITIONS
from fgad.methods.finegrained.captions.draft import COLOR_TABLE, analyse_image, color_names, draft_caption
from fgad.methods.finegrained.captions.schema import COLORS, LOCATIONS, NUMBERS, SHAPES, TEXTURES, caption_from_dict

SIZE = 160
BLACK = (12, 12, 12)
WHITE = (245, 245, 245)
RED = (210, 30, 30)
BLUE = (30, 60, 190)
GREEN = (40, 160, 60)
YELLOW = (235, 215, 40)


def _canvas(colour: tuple[int, int, int], h: int = SIZE, w: int = SIZE) -> np.ndarray:
    return np.full((h, w, 3), colour, np.uint8)


def _noisy(img: np.ndarray, sigma: float = 2.0, seed: int = 0) -> np.ndarray:
    """Mild sensor-like noise, so the heuristics are not tested on perfectly flat colours only."""
    noise = np.random.default_rng(seed).normal(0.0, sigma, img.shape)
    return np.clip(img.astype(np.float64) + noise, 0, 255).astype(np.uint8)


def test_colour_table_and_draft_words_stay_inside_the_vocabularies() -> None:
    assert set(COLOR_TABLE) <= set(COLORS)
    assert set(POSITIONS) <= set(LOCATIONS) and "throughout" in LOCATIONS
    assert {"smooth", "striated", "granular", "rough"} <= set(TEXTURES)
    assert {"flat", "elongated", "square", "rectangular", "round", "oval", "triangular", "irregular"} <= set(SHAPES)
    assert {"one", "two", "three", "four", "several", "many"} <= set(NUMBERS)


@pytest.mark.parametrize(("rgb", "name"), [
    ((0, 0, 0), "black"), ((255, 255, 255), "white"), ((128, 128, 128), "gray"), (RED, "red"),
    (BLUE, "blue"), (GREEN, "green"), (YELLOW, "yellow"), ((250, 140, 20), "orange"), ((120, 75, 35), "brown"),
])
def test_colour_names_of_unmistakable_colours(rgb: tuple[int, int, int], name: str) -> None:
    assert color_names(np.asarray([rgb], np.uint8)) == [name]


def test_red_disc_in_the_top_left_third_on_black() -> None:
    img = _canvas(BLACK)
    # Centre (30, 30), radius 20: the disc lies entirely inside the top-left cell (x, y < SIZE / 3).
    cv2.circle(img, (30, 30), 20, RED, thickness=-1)
    info = analyse_image(_noisy(img))
    assert not info.full_frame
    assert info.colors == ("red",)
    assert info.background_color == "black" and info.background_uniform
    assert info.location == "top left"
    assert info.shape == "round"
    assert info.texture == "smooth"
    assert info.parts == 1


def test_blue_rectangle_in_the_bottom_right_on_white() -> None:
    img = _canvas(WHITE)
    cv2.rectangle(img, (112, 118), (156, 140), BLUE, thickness=-1)  # 45 x 23 px, all beyond 2/3 of the frame
    info = analyse_image(_noisy(img, seed=1))
    assert info.colors == ("blue",)
    assert info.background_color == "white"
    assert info.location == "bottom right"
    assert info.shape == "rectangular"


@pytest.mark.parametrize(("draw", "shape", "direction"), [
    (lambda im: cv2.rectangle(im, (55, 55), (104, 104), GREEN, -1), "square", ""),
    (lambda im: cv2.rectangle(im, (20, 75), (139, 84), GREEN, -1), "elongated", "horizontal"),
    (lambda im: cv2.rectangle(im, (75, 20), (84, 139), GREEN, -1), "elongated", "vertical"),
    (lambda im: cv2.ellipse(im, (80, 80), (50, 26), 0, 0, 360, GREEN, -1), "oval", ""),
    (lambda im: cv2.fillPoly(im, [np.asarray([[80, 30], [130, 125], [30, 125]], np.int32)], GREEN), "triangular", ""),
])
def test_shape_words_of_centred_shapes(draw, shape: str, direction: str) -> None:  # noqa: ANN001
    img = _canvas(BLACK)
    draw(img)
    info = analyse_image(_noisy(img, seed=2))
    assert info.shape == shape
    assert info.direction == direction
    assert info.location == "center"
    assert info.colors == ("green",)


def test_two_coloured_part_names_both_colours_largest_first() -> None:
    img = _canvas(BLACK)
    cv2.rectangle(img, (30, 40), (99, 119), RED, -1)  # 70 columns red
    cv2.rectangle(img, (100, 40), (129, 119), YELLOW, -1)  # 30 columns yellow
    info = analyse_image(_noisy(img, seed=3))
    assert info.colors == ("red", "yellow")


def test_separate_parts_are_counted() -> None:
    img = _canvas(WHITE)
    cv2.circle(img, (45, 80), 18, BLUE, -1)
    cv2.circle(img, (115, 80), 18, BLUE, -1)
    info = analyse_image(_noisy(img, seed=4))
    assert info.parts == 2
    assert info.location == "center"  # the centroid of both parts


def test_location_on_a_wide_image_uses_each_axis() -> None:
    img = _canvas(BLACK, h=100, w=240)
    cv2.circle(img, (200, 50), 15, RED, -1)  # right third of the width, middle third of the height
    assert analyse_image(_noisy(img, seed=5)).location == "right"


def _stripes(vertical: bool) -> np.ndarray:
    x = np.arange(SIZE)
    wave = 128 + 70 * np.sin(2 * np.pi * x / 10.0)
    plane = np.tile(wave, (SIZE, 1)) if vertical else np.tile(wave[:, None], (1, SIZE))
    return np.repeat(plane[:, :, None], 3, axis=2).astype(np.uint8)


def test_full_frame_textures() -> None:
    rng = np.random.default_rng(6)
    flat = _noisy(_canvas((150, 150, 150)), seed=6)
    granular = rng.integers(40, 220, (SIZE, SIZE, 1)).repeat(3, axis=2).astype(np.uint8)
    blobs = cv2.GaussianBlur(rng.normal(0, 1, (SIZE, SIZE)).astype(np.float32), (0, 0), 5.0)
    blobs = (blobs - blobs.min()) / (blobs.max() - blobs.min()) * 160 + 40
    rough = np.repeat(blobs[:, :, None], 3, axis=2).astype(np.uint8)
    expected = {"smooth": flat, "granular": granular, "rough": rough}
    for texture, img in expected.items():
        info = analyse_image(img)
        assert info.full_frame, texture
        assert (info.location, info.shape) == ("throughout", "flat"), texture
        assert info.texture == texture
    vertical = analyse_image(_stripes(vertical=True))
    horizontal = analyse_image(_stripes(vertical=False))
    assert (vertical.texture, vertical.direction) == ("striated", "vertical")
    assert (horizontal.texture, horizontal.direction) == ("striated", "horizontal")


def test_draft_is_a_valid_record_marked_as_draft() -> None:
    img = _canvas(BLACK)
    cv2.circle(img, (30, 30), 20, RED, -1)
    data = draft_caption(_noisy(img), "metal_nut", dataset="mvtec")
    assert data["draft"] is True and data["dataset"] == "mvtec"
    record = caption_from_dict(data, "draft")
    assert record.class_name == "metal_nut"
    assert record.foreground == "metal nut"  # the prompt spelling of the class
    assert record.colors == ("red",) and record.entities[0].location == "top left"
    assert record.background == "plain black"
    assert len(record.entities) == 1 and record.entities[0].number == "one"


def test_draft_of_a_frame_filling_texture_and_custom_noun() -> None:
    data = draft_caption(_stripes(vertical=True), "my_part", foreground="steel sheet")
    record = caption_from_dict(data, "draft")
    assert record.foreground == "steel sheet"
    entity = record.entities[0]
    assert (entity.location, entity.texture, entity.direction) == ("throughout", "striated", "vertical")


def test_grayscale_and_bad_inputs() -> None:
    gray = _canvas(WHITE)[:, :, 0].copy()
    cv2.circle(gray, (80, 80), 30, 20, -1)
    assert analyse_image(gray).colors == ("black",)
    with pytest.raises(ValueError, match="uint8"):
        analyse_image(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(ValueError, match="too small"):
        analyse_image(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="class name"):
        draft_caption(_canvas(BLACK), " ")
