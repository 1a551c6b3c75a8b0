"""Draft an MFSC caption record from one normal image, without masks or models (numpy + OpenCV).

The draft is a starting point for a person (or a language model) to edit, not a description to
trust: it knows nothing of the product's parts, so it describes the whole foreground as one
entity. The measurements, in order:

1. **Foreground/background split.** The image border is taken as background: its pixels are
   clustered in CIELAB (a small deterministic k-means) and every pixel gets its distance to
   the nearest border colour. Otsu's threshold on that distance map separates the part; the
   biggest blob(s), with holes filled, are the foreground. When the two sides of the threshold
   are not well apart, or the border itself crosses the threshold nearly as often as the inside
   (a texture that fills the frame, such as carpet), the whole image is the foreground
   ("throughout").
2. **Colours.** Every foreground pixel is named by the nearest entry of :data:`COLOR_TABLE`
   (a few sRGB prototypes per vocabulary colour, compared in CIELAB); the names covering at
   least :data:`MIN_COLOR_SHARE` of the pixels, at most two, make the colour field. Only colours
   that a pixel value can show are in the table: "silver", "gold", "copper" and "transparent"
   need a person's eye.
3. **Texture.** From gradient statistics inside the (eroded) foreground after a light blur:
   weak gradients -> "smooth"; one dominant gradient orientation (structure-tensor coherence)
   -> "striated"; detail that vanishes under a stronger blur (fine scale) -> "granular";
   otherwise "rough".
4. **Shape.** From the largest blob's contour: long and thin -> "elongated"; filling its
   rotated bounding box -> "square"/"rectangular"; ellipse-like and compact -> "round"/"oval";
   three corners -> "triangular"; else "irregular"; a frame-filling foreground is "flat".
5. **Location.** The foreground centroid's cell of the 3x3 grid of FusDes
   (:func:`fgad.methods.filo.fusdes.position_bands`), named like :data:`fgad.methods.filo.fusdes.POSITIONS`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np

from fgad.core.cells import POSITIONS, position_bands
from fgad.data.descriptions import display_name

__all__ = [
    "COLOR_TABLE",
    "DRAFT_NOTE",
    "ImageAnalysis",
    "analyse_image",
    "color_names",
    "draft_caption",
    "split_foreground",
]

#: sRGB prototypes per vocabulary colour; a pixel takes the name of its nearest prototype in CIELAB.
COLOR_TABLE: dict[str, tuple[tuple[int, int, int], ...]] = {
    "black": ((0, 0, 0), (28, 28, 28)),
    "gray": ((72, 72, 72), (128, 128, 128), (180, 180, 180)),
    "white": ((230, 230, 230), (255, 255, 255)),
    "brown": ((80, 50, 30), (110, 70, 35), (140, 95, 50)),
    "beige": ((225, 205, 170), (200, 180, 140)),
    "yellow": ((240, 220, 40), (225, 200, 70)),
    "orange": ((245, 140, 30), (215, 120, 50)),
    "red": ((200, 30, 30), (140, 20, 20)),
    "pink": ((240, 160, 190), (220, 110, 150)),
    "purple": ((120, 50, 160), (85, 40, 115)),
    "blue": ((30, 80, 200), (35, 40, 110), (110, 160, 225)),
    "green": ((40, 160, 60), (30, 90, 40), (150, 200, 120)),
}
#: A colour names the foreground only if this share of its pixels has it.
MIN_COLOR_SHARE = 0.2
MAX_COLORS = 2
#: Written into every draft so nobody mistakes it for a reviewed record.
DRAFT_NOTE = (
    "Drafted automatically from one normal image by fgad-captions (mask-free heuristics). Check every "
    "field, split the foreground into its parts (up to 4 entities), then delete \"draft\"."
)

_WORK_SIDE = 256  # analysis runs on a copy whose longer side is at most this many pixels
_BORDER_FRACTION = 0.04
_BORDER_CLUSTERS = 3
_MIN_SEPARATION = 1.0  # (mean fg distance - mean bg distance) / (fg spread + bg spread)
_MIN_CONTRAST = 10.0  # CIELAB distance below which nothing counts as foreground
_BORDER_RATE = 0.6  # border pixels above the threshold / inside pixels above it, at which it is a texture
_FULL_FRAME = 0.85  # a foreground covering more of the image than this is the whole frame
_MIN_FOREGROUND = 0.005
_SMOOTH_GRADIENT = 6.0  # mean gradient magnitude (Sobel, after a sigma-1 blur) of a smooth surface
_STRIATED_COHERENCE = 0.5
_GRANULAR_RATIO = 2.0  # gradient at fine scale / gradient at coarse scale


@dataclass(frozen=True)
class ImageAnalysis:
    """What the heuristics measured on one image (all words are vocabulary words)."""

    full_frame: bool  # no background found: the foreground fills the image
    foreground_fraction: float  # share of the image's pixels in the foreground
    parts: int  # number of separate foreground blobs of similar size
    colors: tuple[str, ...]  # dominant foreground colours, most frequent first
    background_color: str  # dominant background colour ("" when full_frame and nothing else)
    background_uniform: bool  # the background has (nearly) one colour
    texture: str
    shape: str
    location: str
    direction: str  # "horizontal"/"vertical"/"diagonal" for elongated or striated parts, else ""
    measures: dict[str, float]  # the raw numbers behind the words, for the draft's notes


def _lab(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB [..., 3] -> float32 CIELAB (L in 0..100)."""
    arr = np.ascontiguousarray(rgb, dtype=np.uint8).reshape(-1, 1, 3)
    lab = cv2.cvtColor(arr.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)
    return lab.reshape(*rgb.shape[:-1], 3)


def _prototypes() -> tuple[list[str], np.ndarray]:
    names = [name for name, protos in COLOR_TABLE.items() for _ in protos]
    rgb = np.asarray([p for protos in COLOR_TABLE.values() for p in protos], np.uint8)
    return names, _lab(rgb)


def color_names(rgb: np.ndarray) -> list[str]:
    """The nearest :data:`COLOR_TABLE` name of each RGB pixel of ``rgb`` ([..., 3] uint8), flattened."""
    names, protos = _prototypes()
    lab = _lab(np.asarray(rgb, np.uint8).reshape(-1, 3))
    dist = ((lab[:, None, :] - protos[None, :, :]) ** 2).sum(-1)
    return [names[i] for i in dist.argmin(1)]


def _dominant(rgb_pixels: np.ndarray, max_colors: int = MAX_COLORS) -> tuple[tuple[str, ...], float]:
    """Colour names covering >= MIN_COLOR_SHARE of the pixels (most frequent first) and the top share."""
    if len(rgb_pixels) > 20000:  # an even subsample keeps the result deterministic
        rgb_pixels = rgb_pixels[:: math.ceil(len(rgb_pixels) / 20000)]
    labels = color_names(rgb_pixels)
    counts: dict[str, int] = {}
    for name in labels:
        counts[name] = counts.get(name, 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    total = float(len(labels))
    chosen = tuple(name for name, n in ranked if n / total >= MIN_COLOR_SHARE)[:max_colors]
    return (chosen or (ranked[0][0],)), ranked[0][1] / total


def _work_copy(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"caption drafting needs an HxWx3 uint8 RGB image, got shape {image.shape} and dtype {image.dtype}; "
            "read it with fgad.core.io.read_image."
        )
    h, w = image.shape[:2]
    if min(h, w) < 16:
        raise ValueError(f"image of {w}x{h} pixels is too small to describe; use a photo of at least 16x16.")
    scale = _WORK_SIDE / max(h, w)
    if scale < 1.0:
        image = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(image)


def _border(shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    b = max(2, round(_BORDER_FRACTION * min(h, w)))
    ring = np.zeros((h, w), bool)
    ring[:b], ring[-b:], ring[:, :b], ring[:, -b:] = True, True, True, True
    return ring


def _kmeans(samples: np.ndarray, k: int, iterations: int = 10) -> np.ndarray:
    """Centres of clusters holding at least 10% of ``samples`` ([N, 3]); deterministic.

    Starts from the samples at evenly spaced quantiles of lightness, so the same image always
    gives the same draft (and no global random state is touched). Small clusters are dropped:
    a few stray border pixels (a part touching the frame, dust) must not count as background.
    """
    order = np.argsort(samples[:, 0], kind="stable")
    picks = order[((np.arange(k) + 0.5) * len(samples) / k).astype(int)]
    centres = samples[picks].astype(np.float64)
    labels = np.zeros(len(samples), np.int64)
    for _ in range(iterations):
        dist = ((samples[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
        labels = dist.argmin(1)
        for j in range(k):
            members = samples[labels == j]
            if len(members):
                centres[j] = members.mean(0)
    share = np.bincount(labels, minlength=k) / len(samples)
    return centres[share >= 0.1]


def _border_distance(lab: np.ndarray, ring: np.ndarray) -> np.ndarray:
    """CIELAB distance of every pixel to the nearest of a few border colour clusters."""
    samples = lab[ring].astype(np.float32)
    centres = _kmeans(samples, _BORDER_CLUSTERS)
    flat = lab.reshape(-1, 3)
    dist = np.sqrt(((flat[:, None, :] - centres[None, :, :]) ** 2).sum(-1)).min(1)
    return dist.reshape(lab.shape[:2]).astype(np.float32)


def split_foreground(image: np.ndarray) -> tuple[np.ndarray, bool, dict[str, float]]:
    """Foreground mask of an RGB image (at the analysis resolution), whether it fills the frame, measures.

    The mask has the size of the working copy (longer side at most 256 pixels); when the image
    shows no separable background the mask is all True and the flag is True.
    """
    work = _work_copy(image)
    lab = _lab(work)
    ring = _border(work.shape[:2])
    dist = cv2.GaussianBlur(_border_distance(lab, ring), (5, 5), 0)
    scaled = np.clip(dist * (255.0 / 100.0), 0, 255).astype(np.uint8)
    otsu, _ = cv2.threshold(scaled, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    thr = max(float(otsu) * 100.0 / 255.0, _MIN_CONTRAST)
    above = dist > thr
    # A texture's border holds its own extremes as often as its inside; a part on a background does not.
    border_rate, inside_rate = float(above[ring].mean()), float(above[~ring].mean())
    side = max(3, (min(work.shape[:2]) // 64) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (side, side))
    opened = cv2.morphologyEx(above.astype(np.uint8), cv2.MORPH_OPEN, kernel)
    cleaned = cv2.morphologyEx(opened, cv2.MORPH_CLOSE, kernel)
    contours, _ = cv2.findContours(cleaned, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    mask = np.zeros(work.shape[:2], np.uint8)
    parts = 0
    if contours:
        areas = np.asarray([cv2.contourArea(c) for c in contours])
        keep = [c for c, a in zip(contours, areas, strict=True) if a >= 0.2 * areas.max() and a > 0]
        parts = len(keep)
        cv2.drawContours(mask, keep, -1, 1, thickness=cv2.FILLED)  # filled: holes belong to the part
    fg = mask.astype(bool)
    fraction = float(fg.mean())
    if 0 < fraction < 1:
        d_fg, d_bg = dist[fg], dist[~fg]
        separation = float((d_fg.mean() - d_bg.mean()) / (d_fg.std() + d_bg.std() + 1e-6))
    else:
        separation = 0.0
    textured = border_rate >= _BORDER_RATE * inside_rate
    full = not (_MIN_FOREGROUND <= fraction <= _FULL_FRAME) or separation < _MIN_SEPARATION or textured
    measures = {"raw_foreground_fraction": fraction, "separation": separation, "threshold_lab": thr,
                "border_rate": border_rate, "inside_rate": inside_rate, "parts": float(parts)}
    if full:
        return np.ones(work.shape[:2], bool), True, {**measures, "parts": 1.0}
    return fg, False, measures


def _orientation(angle_rad: float) -> str:
    """Direction word of a line at ``angle_rad`` from the x axis (image coordinates)."""
    deg = abs(math.degrees(angle_rad)) % 180.0
    deg = min(deg, 180.0 - deg)  # 0 = horizontal, 90 = vertical
    if deg <= 20.0:
        return "horizontal"
    if deg >= 70.0:
        return "vertical"
    return "diagonal"


def _texture(gray: np.ndarray, mask: np.ndarray) -> tuple[str, str, dict[str, float]]:
    """Texture word, stripe direction ("" unless striated) and the measures behind them."""
    side = max(3, (min(gray.shape) // 32) | 1)
    inner = cv2.erode(mask.astype(np.uint8), np.ones((side, side), np.uint8)).astype(bool)
    if inner.sum() < 64:
        inner = mask
    fine = cv2.GaussianBlur(gray, (0, 0), 1.0)
    coarse = cv2.GaussianBlur(gray, (0, 0), 3.0)
    gx = cv2.Sobel(fine, cv2.CV_32F, 1, 0, ksize=3)[inner]
    gy = cv2.Sobel(fine, cv2.CV_32F, 0, 1, ksize=3)[inner]
    mag_fine = float(np.sqrt(gx * gx + gy * gy).mean())
    cx = cv2.Sobel(coarse, cv2.CV_32F, 1, 0, ksize=3)[inner]
    cy = cv2.Sobel(coarse, cv2.CV_32F, 0, 1, ksize=3)[inner]
    mag_coarse = float(np.sqrt(cx * cx + cy * cy).mean())
    jxx, jyy, jxy = float((gx * gx).sum()), float((gy * gy).sum()), float((gx * gy).sum())
    coherence = math.sqrt((jxx - jyy) ** 2 + 4 * jxy * jxy) / (jxx + jyy + 1e-6)
    ratio = mag_fine / (mag_coarse + 1e-6)
    measures = {"gradient": mag_fine, "coherence": coherence, "fine_to_coarse": ratio}
    if mag_fine < _SMOOTH_GRADIENT:
        return "smooth", "", measures
    if coherence > _STRIATED_COHERENCE:
        # The dominant gradient is across the stripes; the stripes run at right angles to it.
        gradient_angle = 0.5 * math.atan2(2 * jxy, jxx - jyy)
        return "striated", _orientation(gradient_angle + math.pi / 2), measures
    if ratio > _GRANULAR_RATIO:
        return "granular", "", measures
    return "rough", "", measures


def _shape(mask: np.ndarray, full: bool) -> tuple[str, str, dict[str, float]]:
    """Shape word of the largest blob, its direction ("" unless elongated) and measures."""
    if full:
        return "flat", "", {}
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contour = max(contours, key=cv2.contourArea)
    area = float(cv2.contourArea(contour))
    perimeter = float(cv2.arcLength(contour, True))
    (_, _), (rw, rh), angle = cv2.minAreaRect(contour)
    long_side, short_side = max(rw, rh), max(min(rw, rh), 1e-6)
    aspect = long_side / short_side
    extent = area / max(rw * rh, 1e-6)
    circularity = 4 * math.pi * area / max(perimeter * perimeter, 1e-6)
    hull_area = float(cv2.contourArea(cv2.convexHull(contour)))
    solidity = area / max(hull_area, 1e-6)
    corners = len(cv2.approxPolyDP(contour, 0.04 * perimeter, True))
    measures = {"aspect": aspect, "extent": extent, "circularity": circularity, "solidity": solidity}
    # minAreaRect's angle belongs to the side of length rw; the long side is rotated 90 deg if rh is longer.
    long_angle = math.radians(angle if rw >= rh else angle + 90.0)
    if aspect >= 3.0:
        return "elongated", _orientation(long_angle), measures
    if extent >= 0.9:
        return ("square" if aspect < 1.2 else "rectangular"), "", measures
    if 0.72 <= extent <= 0.86 and circularity >= 0.75 and solidity >= 0.95:
        return ("round" if aspect < 1.2 else "oval"), "", measures
    if corners == 3 and solidity >= 0.9:
        return "triangular", "", measures
    return "irregular", "", measures


def _location(mask: np.ndarray, full: bool) -> str:
    if full:
        return "throughout"
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    col = _band(float(xs.mean()), position_bands(w))
    row = _band(float(ys.mean()), position_bands(h))
    return POSITIONS[row * 3 + col]


def _band(coord: float, bands: list[tuple[int, int]]) -> int:
    pixel = int(math.floor(coord))
    return next((i for i, (_, hi) in enumerate(bands) if pixel <= hi), len(bands) - 1)


def _number(parts: int) -> str:
    words = {1: "one", 2: "two", 3: "three", 4: "four"}
    return words.get(parts, "several" if parts < 10 else "many")


def analyse_image(image: np.ndarray) -> ImageAnalysis:
    """Run every heuristic on an HxWx3 uint8 RGB image (see the module docstring)."""
    work = _work_copy(image)
    mask, full, split_measures = split_foreground(work)
    pixels = work[mask]
    colors, _ = _dominant(pixels)
    if full:
        background, uniform = "", False
    else:
        bg_pixels = work[~mask]
        (background,), top_share = _dominant(bg_pixels, max_colors=1)
        uniform = top_share >= 0.9 and float(_lab(bg_pixels).std(0).max()) < 6.0
    gray = cv2.cvtColor(work, cv2.COLOR_RGB2GRAY).astype(np.float32)
    texture, stripes, texture_measures = _texture(gray, mask)
    shape, long_axis, shape_measures = _shape(mask, full)
    parts = int(split_measures["parts"])
    return ImageAnalysis(
        full_frame=full,
        foreground_fraction=float(mask.mean()),
        parts=parts,
        colors=colors,
        background_color=background,
        background_uniform=uniform,
        texture=texture,
        shape=shape,
        location=_location(mask, full),
        direction=long_axis or stripes,
        measures={k: round(float(v), 4) for k, v in {**split_measures, **texture_measures,
                                                      **shape_measures}.items()},
    )


def _where(location: str) -> str:
    return "across the whole image" if location == "throughout" else f"in the {location} of the image"


def draft_caption(
    image: np.ndarray,
    class_name: str,
    foreground: str | None = None,
    dataset: str | None = None,
) -> dict[str, Any]:
    """A draft record (METHOD.md 2.2 layout, marked ``"draft": true``) for a normal image of a class.

    Args:
        image: HxWx3 uint8 RGB (``fgad.core.io.read_image``).
        class_name: dataset class id; stored as ``class_name``.
        foreground: noun phrase for the product; default :func:`fgad.data.descriptions.display_name`.
        dataset: stored as ``dataset`` when given (the description bank of the class).

    The result passes :func:`fgad.methods.finegrained.captions.schema.caption_from_dict`; its ``_heuristics``
    entry keeps the measurements the words were chosen from.
    """
    if not isinstance(class_name, str) or not class_name.strip():
        raise ValueError(f"draft_caption() needs a class name such as 'bottle', got {class_name!r}.")
    noun = " ".join((foreground or display_name(class_name)).split())
    if not noun:
        raise ValueError("draft_caption(): the foreground noun is empty; pass a product name such as 'bracket'.")
    info = analyse_image(image)
    color = " and ".join(info.colors)
    where = _where(info.location)
    if info.full_frame:
        name = f"{noun} surface"
        background = f"uniform {info.colors[0]}"
        number = "one"
        entity_caption = f"A {color} {name} with a {info.texture} look fills the image."
        relation = f"The {name} covers the frame from edge to edge, with no separate background."
        caption = f"A close-up photo of {noun} filling the whole frame, {color} with a {info.texture} surface."
    else:
        name = noun
        background = f"plain {info.background_color}" if info.background_uniform else info.background_color
        number = _number(info.parts)
        if info.parts == 1:
            entity_caption = (f"One {color} {name} with a {info.texture} surface and a {info.shape} outline "
                              f"lies {where}.")
            relation = f"The {name} stands alone {where}, against the {background} background."
        else:
            entity_caption = (f"The {name} shows as {number} separate {color} parts with a {info.texture} "
                              f"surface {where}.")
            relation = f"The {name} parts lie apart from each other, grouped {where}."
        count = "one" if info.parts == 1 else number
        caption = f"A photo of {count} {color} {noun} {where}, on a {background} background."
    record: dict[str, Any] = {
        "class_name": class_name.strip(),
        **({"dataset": dataset} if dataset else {}),
        "draft": True,
        "_note": DRAFT_NOTE,
        "Level_1": [{"foreground": noun, "background": background}],
        "Level_2": [{"entity": [name], "number": [number], "location": [info.location], "relation": relation}],
        "Level_3": [{
            "direction": [info.direction],
            "color": [color],
            "texture": [info.texture],
            "shape": [info.shape],
            "entity_caption": [entity_caption],
        }],
        "caption": caption,
        "_heuristics": asdict(info),
    }
    return record

