"""Anomaly-map visualisation: colour maps, heat-map overlays, side-by-side panels, image saving.

numpy + OpenCV only (torch-free runtime). All images here are RGB ``uint8``; conversion to OpenCV's
BGR happens only inside this module.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from fgad.core.atomic import atomic_write_bytes
from fgad.core.io import quiet_opencv

__all__ = ["MAX_TILE_ASPECT", "colorize", "display_overlay", "heatmap_overlay", "render_panel", "save_image_rgb"]

_FONT = cv2.FONT_HERSHEY_SIMPLEX
#: A panel tile is at most this many times wider than tall, or taller than wide: an image beyond (a line-scan
#: strip, a 1-pixel-high frame) is stretched to the bound, so the panel stays about ``3 * 4 * height`` wide.
MAX_TILE_ASPECT = 4


def _check_amap(amap: np.ndarray) -> np.ndarray:
    arr = np.asarray(amap)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"amap must be a non-empty 2-D array [H, W], got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"amap must be numeric, got dtype {arr.dtype}")
    return arr.astype(np.float32, copy=False)


def _to_rgb(image: np.ndarray) -> np.ndarray:
    """Accept uint8 [H, W], [H, W, 1] or [H, W, 3] and return a contiguous uint8 [H, W, 3] copy."""
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise ValueError(
            f"image must be uint8, got dtype {img.dtype} "
            "(convert e.g. with (img * 255).round().astype(np.uint8))"
        )
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.ndim == 3 and img.shape[-1] == 3:
        return np.ascontiguousarray(img).copy()
    raise ValueError(f"image must be [H, W] grayscale or [H, W, 3] RGB, got shape {img.shape}")


def _resize_map(amap: np.ndarray, height: int, width: int) -> np.ndarray:
    if amap.shape == (height, width):
        return amap
    return cv2.resize(amap, (width, height), interpolation=cv2.INTER_LINEAR)


def colorize(amap: np.ndarray, vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
    """Map a 2-D anomaly map to a JET-coloured uint8 RGB image [H, W, 3].

    Values are scaled linearly from ``[vmin, vmax]`` to the colour map and clipped outside it
    (blue = low, red = high). NaN is drawn as ``vmin``.
    """
    if not vmax > vmin:
        raise ValueError(f"colorize needs vmax > vmin, got vmin={vmin}, vmax={vmax}")
    arr = _check_amap(amap)
    norm = (np.nan_to_num(arr, nan=vmin) - vmin) / (vmax - vmin)
    u8 = np.rint(np.clip(norm, 0.0, 1.0) * 255.0).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(u8, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)


def _contour_thickness(height: int, width: int) -> int:
    return max(1, round(min(height, width) / 128))


def heatmap_overlay(
    image_rgb: np.ndarray,
    amap: np.ndarray,
    vmin: float = 0.0,
    vmax: float = 1.0,
    alpha: float = 0.5,
    gt_mask: np.ndarray | None = None,
    contour_color: tuple[int, int, int] = (0, 255, 0),
) -> np.ndarray:
    """Blend the colourised ``amap`` onto the image: ``(1 - alpha) * image + alpha * heat``.

    ``image_rgb`` is uint8 [H, W] or [H, W, 3]; the result is always RGB uint8 [H, W, 3]. ``amap`` is
    resized bilinearly to the image size when it differs (maps usually come at patch resolution).
    With ``gt_mask`` (any non-zero = anomalous; resized with nearest neighbour if needed), the
    outlines of the ground-truth regions are drawn in ``contour_color``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    img = _to_rgb(image_rgb)
    h, w = img.shape[:2]
    heat = colorize(_resize_map(_check_amap(amap), h, w), vmin, vmax)
    blended = img.astype(np.float32) * (1.0 - alpha) + heat.astype(np.float32) * alpha
    out = np.ascontiguousarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8))
    if gt_mask is not None:
        _draw_mask_contours(out, gt_mask, contour_color)
    return out


def display_overlay(image_rgb: np.ndarray, amap: np.ndarray, max_side: int = 1280, **kwargs: object) -> np.ndarray:
    """:func:`heatmap_overlay` for a window: the image is first shrunk (aspect kept) so that its longer side is at
    most ``max_side`` pixels, so a huge frame costs a window-sized blend, not a frame-sized one."""
    img = _as_rgb_u8(image_rgb)
    h, w = img.shape[:2]
    if max(h, w) > max_side:
        new_h, new_w = _fit_size(h, w, max_side, max_side)
        img = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_AREA)
    return heatmap_overlay(img, amap, **kwargs)  # type: ignore[arg-type]


def _draw_mask_contours(canvas: np.ndarray, gt_mask: np.ndarray, color: tuple[int, int, int]) -> None:
    mask = np.asarray(gt_mask)
    if mask.ndim == 3 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise ValueError(f"gt_mask must be 2-D [H, W], got shape {mask.shape}")
    h, w = canvas.shape[:2]
    mask_u8 = (mask != 0).astype(np.uint8)
    if mask_u8.shape != (h, w):
        mask_u8 = cv2.resize(mask_u8, (w, h), interpolation=cv2.INTER_NEAREST)
    # RETR_LIST also outlines holes inside a region.
    contours, _ = cv2.findContours(mask_u8, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    if len(color) != 3:
        raise ValueError(f"contour_color must be an (R, G, B) triple, got {color!r}")
    rgb = tuple(int(c) for c in color)  # the canvas is RGB, so no channel swap
    cv2.drawContours(canvas, contours, -1, rgb, _contour_thickness(h, w))


def _as_rgb_u8(image: np.ndarray) -> np.ndarray:
    """``image`` as uint8 [H, W, 3] or [H, W] without copying (the panel resizes before it converts)."""
    img = np.asarray(image)
    if img.dtype != np.uint8:
        return _to_rgb(img)  # raises the explanatory error
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim == 2 or (img.ndim == 3 and img.shape[-1] == 3):
        return np.ascontiguousarray(img)
    return _to_rgb(img)  # raises the explanatory error


def _fit_size(h: int, w: int, box_h: int, box_w: int) -> tuple[int, int]:
    """The largest ``(height, width)`` of aspect ``h:w`` (each at least 1 pixel) inside ``box_h x box_w``."""
    scale = min(box_h / h, box_w / w)
    return min(box_h, max(1, round(h * scale))), min(box_w, max(1, round(w * scale)))


def _letterbox(tile: np.ndarray, box_h: int, box_w: int) -> np.ndarray:
    """``tile`` centred on a black ``box_h x box_w`` canvas."""
    if tile.shape[:2] == (box_h, box_w):
        return tile
    canvas = np.zeros((box_h, box_w, 3), dtype=np.uint8)
    top, left = (box_h - tile.shape[0]) // 2, (box_w - tile.shape[1]) // 2
    canvas[top:top + tile.shape[0], left:left + tile.shape[1]] = tile
    return canvas


def _caption(score: float | None, label: str | None) -> str:
    parts = []
    if score is not None:
        parts.append(f"score {float(score):.3f}")
    if label is not None:
        parts.append(str(label))
    return "   ".join(parts)


def render_panel(
    image_rgb: np.ndarray,
    amap: np.ndarray,
    gt_mask: np.ndarray | None = None,
    score: float | None = None,
    label: str | None = None,
    vmin: float = 0.0,
    vmax: float = 1.0,
    height: int = 256,
) -> np.ndarray:
    """Side-by-side panel ``[input | overlay | heatmap]`` with a text strip on top.

    Every tile is ``height`` pixels tall and as wide as the input image's aspect ratio asks, up to
    :data:`MAX_TILE_ASPECT` (4:1 either way). A more extreme image (a line-scan strip, down to 1 pixel high or
    wide) is letterboxed: shown undistorted, centred on black bars inside a tile of that ratio, so the panel is
    at most ``3 * 4 * height`` pixels wide and always encodable. The image is resized to the tile before the
    heat map is blended in, so a panel never allocates more than the input frame plus the panel itself. The strip
    (black, ``max(16, height // 10)`` pixels) shows the score and label when given (shrunk to fit a narrow panel)
    and is present either way, so panels of one run all have the same size and can be stacked into a grid.
    Returns RGB uint8 ``[strip + height, 3 * tile_width, 3]``.
    """
    if int(height) != height or height < 8:
        raise ValueError(f"height must be an integer >= 8, got {height}")
    height = int(height)
    img = _as_rgb_u8(image_rgb)
    h, w = img.shape[:2]
    tile_w = min(max(round(w * height / h), max(1, height // MAX_TILE_ASPECT)), height * MAX_TILE_ASPECT)
    amap_f = _check_amap(amap)

    content_h, content_w = _fit_size(h, w, height, tile_w)
    small = img if (h, w) == (content_h, content_w) else cv2.resize(img, (content_w, content_h),
                                                                    interpolation=cv2.INTER_AREA)
    small = _to_rgb(small)
    small_mask = None
    if gt_mask is not None:
        mask = np.asarray(gt_mask)
        if mask.ndim == 3 and mask.shape[-1] == 1:
            mask = mask[..., 0]
        if mask.ndim != 2:
            raise ValueError(f"gt_mask must be 2-D [H, W], got shape {mask.shape}")
        small_mask = cv2.resize((mask != 0).astype(np.uint8), (content_w, content_h), interpolation=cv2.INTER_NEAREST)
    small_map = _resize_map(amap_f, content_h, content_w)
    overlay = heatmap_overlay(small, small_map, vmin=vmin, vmax=vmax, gt_mask=small_mask)
    tiles = [_letterbox(t, height, tile_w) for t in (small, overlay, colorize(small_map, vmin, vmax))]
    body = np.concatenate(tiles, axis=1)

    strip_h = max(16, height // 10)
    strip = np.zeros((strip_h, body.shape[1], 3), dtype=np.uint8)
    text = _caption(score, label)
    if text:
        thickness = 1
        scale = cv2.getFontScaleFromHeight(_FONT, max(1, round(strip_h * 0.6)), thickness)
        (text_w, _), _ = cv2.getTextSize(text, _FONT, scale, thickness)
        if text_w > body.shape[1] - 8:  # a narrow panel (a tall, thin image): smaller text rather than cut off
            scale *= max(body.shape[1] - 8, 1) / text_w
        (_, text_h), _ = cv2.getTextSize(text, _FONT, scale, thickness)
        baseline_y = (strip_h + text_h) // 2
        cv2.putText(strip, text, (4, baseline_y), _FONT, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return np.concatenate([strip, body], axis=0)


def save_image_rgb(path: str | os.PathLike[str], image_rgb: np.ndarray) -> None:
    """Encode an RGB (or grayscale) uint8 image by the path's extension and write it atomically.

    The image is encoded in memory first, so an unsupported extension or a failed encode raises
    before anything touches the disk; the write itself goes through
    :func:`fgad.core.atomic.atomic_write_bytes`.
    """
    target = Path(path)
    suffix = target.suffix.lower()
    if not suffix:
        raise ValueError(
            f"cannot save image to {target}: no file extension to choose the format (.png, .jpg)"
        )
    img = np.asarray(image_rgb)
    if img.dtype != np.uint8:
        raise ValueError(f"cannot save image to {target}: expected uint8, got dtype {img.dtype}")
    if img.ndim == 3 and img.shape[-1] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    elif not (img.ndim == 2 or (img.ndim == 3 and img.shape[-1] == 1)):
        raise ValueError(
            f"cannot save image to {target}: expected [H, W] or [H, W, 3], got shape {img.shape}"
        )
    try:
        with quiet_opencv():
            ok, buf = cv2.imencode(suffix, img)
    except cv2.error as exc:
        raise ValueError(f"cannot save image to {target}: OpenCV cannot encode '{suffix}' ({exc})") from exc
    if not ok:
        raise OSError(f"cannot save image to {target}: OpenCV failed to encode the {img.shape[1]}x{img.shape[0]} "
                      f"image as '{suffix}'")
    atomic_write_bytes(target, buf.tobytes())
