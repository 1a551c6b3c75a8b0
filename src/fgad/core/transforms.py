"""Deterministic image / mask preprocessing (numpy + OpenCV only).

Training, evaluation and the torch-free runtime all call these functions, so the arithmetic is
spelled out in float32 step by step: changing the order of operations here changes the model's
inputs everywhere at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

OPENAI_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


def _check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size <= 0:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    return int(size)


def _check_rgb_uint8(image: np.ndarray, name: str) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", type(image).__name__)
        raise ValueError(
            f"{name}: expected an HxWx3 RGB array, got shape {shape}; "
            "read files with fgad.core.io.read_image"
        )
    if image.dtype != np.uint8:
        raise ValueError(f"{name}: expected dtype uint8, got {image.dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{name}: image is empty (shape {image.shape})")


def _check_stats(values: Sequence[float], name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float32).reshape(-1)
    if arr.shape != (3,):
        raise ValueError(f"{name} must have 3 values (one per RGB channel), got {values!r}")
    return arr


def resize_image(image_rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize straight to ``size x size`` with bicubic interpolation (aspect ratio not kept)."""
    _check_rgb_uint8(image_rgb, "resize_image")
    size = _check_size(size)
    if image_rgb.shape[:2] == (size, size):
        return np.ascontiguousarray(image_rgb).copy()
    out = cv2.resize(image_rgb, (size, size), interpolation=cv2.INTER_CUBIC)
    return np.ascontiguousarray(out)


def normalize(
    image_rgb_uint8: np.ndarray,
    mean: Sequence[float] = OPENAI_MEAN,
    std: Sequence[float] = OPENAI_STD,
) -> np.ndarray:
    """Return float32 CHW ``(pixel / 255 - mean) / std``, computed in float32."""
    _check_rgb_uint8(image_rgb_uint8, "normalize")
    mean_arr = _check_stats(mean, "mean")
    std_arr = _check_stats(std, "std")
    if np.any(std_arr <= 0):
        raise ValueError(f"std values must be > 0, got {std!r}")
    x = image_rgb_uint8.astype(np.float32) / np.float32(255.0)
    x = (x - mean_arr) / std_arr
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def preprocess(
    image_rgb: np.ndarray,
    size: int,
    mean: Sequence[float] = OPENAI_MEAN,
    std: Sequence[float] = OPENAI_STD,
) -> np.ndarray:
    """Model input for one image: float32 ``[3, size, size]`` = normalize(resize_image(...))."""
    return normalize(resize_image(image_rgb, size), mean, std)


def preprocess_mask(mask_bool: np.ndarray, size: int) -> np.ndarray:
    """Resize a bool ``HxW`` mask to float32 ``[size, size]`` in {0, 1}.

    The mask is resized as float with bilinear interpolation and thresholded at 0.5 (values
    strictly above count), so it stays aligned with the bicubically resized image.
    """
    if not isinstance(mask_bool, np.ndarray) or mask_bool.ndim != 2 or 0 in mask_bool.shape:
        shape = getattr(mask_bool, "shape", type(mask_bool).__name__)
        raise ValueError(
            f"preprocess_mask: expected a non-empty HxW mask, got shape {shape}; "
            "read masks with fgad.core.io.read_mask"
        )
    size = _check_size(size)
    m = (mask_bool != 0).astype(np.float32)
    if m.shape != (size, size):
        m = cv2.resize(m, (size, size), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray((m > 0.5).astype(np.float32))
