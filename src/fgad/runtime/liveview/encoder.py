"""JPEG encoding of an overlay for the browser (OpenCV, imported on first use)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

__all__ = ["jpeg_encoder"]


def jpeg_encoder(quality: int, max_width: int) -> Callable[[np.ndarray], bytes]:
    """A function RGB/gray uint8 image -> JPEG bytes, scaled down to ``max_width`` when wider."""

    def encode(image: np.ndarray) -> bytes:
        try:
            import cv2
        except ImportError as err:  # pragma: no cover - a base dependency
            raise ImportError("the live view encodes JPEG with OpenCV: pip install opencv-python-headless") from err
        img = image
        if img.ndim == 3 and img.shape[-1] == 1:
            img = img[..., 0]
        if img.shape[1] > max_width:
            height = max(1, round(img.shape[0] * max_width / img.shape[1]))
            img = cv2.resize(img, (max_width, height), interpolation=cv2.INTER_AREA)
        if img.ndim == 3:
            img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:  # pragma: no cover - imencode of a valid uint8 image does not fail
            raise RuntimeError(f"JPEG encoding failed for an image of shape {image.shape}")
        return buf.tobytes()

    return encode
