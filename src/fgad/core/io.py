"""Reading images and ground-truth masks from disk (numpy + OpenCV only).

Every reader in the project goes through these two functions so that training, evaluation and
the torch-free runtime see exactly the same pixels.

Decoding notes:

* Files are read with ``np.fromfile`` + ``cv2.imdecode`` instead of ``cv2.imread`` because
  ``cv2.imread`` cannot open non-ASCII paths on Windows.
* ``cv2.IMREAD_UNCHANGED`` is used so that bit depth and alpha are visible to us. As a side
  effect the EXIF orientation tag is *not* applied. That is deliberate: PIL (the reference CLIP
  pipeline) does not apply it either, and ground-truth masks are aligned with the stored pixels.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

PathLike = str | os.PathLike[str]
T = TypeVar("T")


class ImageReadError(Exception):
    """An image or mask file could not be read; carries the offending ``path`` and a ``reason``."""

    def __init__(self, path: PathLike, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot read image '{self.path}': {reason}")

    def __reduce__(self) -> tuple[type, tuple[Path, str]]:
        # Keeps the exception picklable, so it survives DataLoader worker processes.
        return (type(self), (self.path, self.reason))


class UnreadableImagesError(ImageReadError, ValueError):
    """Some images of a set the result depends on (reference, shot or calibration images)
    cannot be read. Raised by :func:`read_image_set` after trying every file; names every failure in one line.

    ``failures`` holds each :class:`ImageReadError`; ``path`` and ``reason`` are the first one's. It is an
    ``ImageReadError`` (callers that catch those keep working) and a ``ValueError`` (the CLIs print it as one
    line).
    """

    def __init__(self, failures: Sequence[ImageReadError], total: int, what: str = "images") -> None:
        if not failures:
            raise ValueError("UnreadableImagesError needs at least one failure")
        self.failures = list(failures)
        self.total = int(total)
        self.what = what
        listed = "; ".join(f"'{f.path}' ({f.reason})" for f in self.failures)
        self.path = self.failures[0].path
        self.reason = self.failures[0].reason
        Exception.__init__(
            self,
            f"{len(self.failures)} of {self.total} {what} cannot be read: {listed}. fgad refuses rather than skip "
            "them, since a skipped one would silently change the result: fix, replace or remove these files and "
            "run again",
        )

    def __reduce__(self) -> tuple[type, tuple[list[ImageReadError], int, str]]:  # type: ignore[override]
        return (type(self), (self.failures, self.total, self.what))


def read_image_set(
    paths: Iterable[PathLike],
    what: str = "reference images",
    convert: Callable[[np.ndarray], T] | None = None,
) -> list[T]:
    """Read every one of ``paths`` (``read_image``), or refuse them all.

    Every file is tried; if any cannot be read, :class:`UnreadableImagesError` names each of them (this is
    the rule for reference and calibration images: they define "normal", so none is dropped silently).
    ``convert`` is applied to each image as it is read (e.g. preprocessing, so only its result is kept in
    memory); it is not called once a failure was seen. Any size the decoder returns is accepted: the model's
    preprocessing resizes to its input, so a tiny image is upsampled, not refused.
    """
    results: list[T] = []
    failures: list[ImageReadError] = []
    total = 0
    for path in paths:
        total += 1
        try:
            image = read_image(path)
        except ImageReadError as exc:
            failures.append(exc)
            continue
        if not failures:
            results.append(convert(image) if convert is not None else image)  # type: ignore[arg-type]
    if failures:
        raise UnreadableImagesError(failures, total, what)
    return results


_QUIET_LOCK = threading.Lock()
_quiet_depth = 0
_saved_level: int | None = None


@contextlib.contextmanager
def quiet_opencv() -> Iterator[None]:
    """Silence OpenCV's own log lines (``[ERROR:0@..] global grfmt_png.cpp ...``) inside the block (a decode or
    an encode): a broken file is reported once, by the error naming it, not also by OpenCV on stderr."""
    global _quiet_depth, _saved_level
    logging_api = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging_api is None:
        yield
        return
    with _QUIET_LOCK:
        if _quiet_depth == 0:
            _saved_level = logging_api.getLogLevel()
            logging_api.setLogLevel(logging_api.LOG_LEVEL_SILENT)
        _quiet_depth += 1
    try:
        yield
    finally:
        with _QUIET_LOCK:
            _quiet_depth -= 1
            if _quiet_depth == 0 and _saved_level is not None:
                logging_api.setLogLevel(_saved_level)


def _decode(path: PathLike) -> np.ndarray:
    """Decode ``path`` with all channels and the native bit depth, or raise ImageReadError."""
    p = Path(path)
    if not p.exists():
        raise ImageReadError(p, "file does not exist; check the path and the dataset layout")
    if not p.is_file():
        raise ImageReadError(p, "path is not a regular file")
    try:
        buf = np.fromfile(p, dtype=np.uint8)
    except OSError as exc:
        raise ImageReadError(p, f"file could not be opened ({exc})") from exc
    if buf.size == 0:
        raise ImageReadError(p, "file is empty (0 bytes); re-copy or delete it")
    try:
        with quiet_opencv():
            arr = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise ImageReadError(p, f"decoder failed ({exc}); the file is probably corrupt") from exc
    if arr is None or arr.size == 0:
        raise ImageReadError(
            p,
            "not a decodable image (corrupt, truncated or unsupported format; "
            f"supported: {', '.join(IMAGE_EXTENSIONS)})",
        )
    return arr


def _to_uint8(arr: np.ndarray, path: PathLike) -> np.ndarray:
    """Scale a decoded array of any supported depth to uint8."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.uint16:
        # 65535 / 257 == 255 exactly, so the full range maps onto the full range.
        return np.round(arr.astype(np.float32) / 257.0).astype(np.uint8)
    if arr.dtype in (np.float32, np.float64):
        # Float images are taken to be in [0, 1]; anything brighter is assumed to be in [0, 255].
        f = np.nan_to_num(arr.astype(np.float32))
        scale = 255.0 if float(f.max(initial=0.0)) <= 1.0 else 1.0
        return np.clip(np.round(f * scale), 0, 255).astype(np.uint8)
    raise ImageReadError(path, f"unsupported pixel type {arr.dtype}; convert it to 8- or 16-bit")


def read_image(path: PathLike) -> np.ndarray:
    """Read an image file as a uint8 ``HxWx3`` RGB array.

    Grayscale is expanded to three channels, alpha (RGBA / LA) is dropped and 16-bit or float
    images are scaled to 8 bit. Raises :class:`ImageReadError` naming ``path`` when the file is
    missing, empty or cannot be decoded.
    """
    arr = _to_uint8(_decode(path), path)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise ImageReadError(path, f"unexpected decoded shape {arr.shape}")
    channels = arr.shape[2]
    if channels in (1, 2):  # gray or gray + alpha
        rgb = np.repeat(arr[:, :, :1], 3, axis=2)
    elif channels == 3:
        rgb = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
    elif channels == 4:
        rgb = cv2.cvtColor(arr, cv2.COLOR_BGRA2RGB)
    else:
        raise ImageReadError(path, f"unsupported channel count {channels}")
    return np.ascontiguousarray(rgb)


def _mask_threshold(dtype: np.dtype) -> float:
    """Values strictly above this count as defect: half of the dtype's range."""
    if np.issubdtype(dtype, np.integer):
        return float(np.iinfo(dtype).max) / 2.0
    return 0.5


def read_mask(
    path: PathLike,
    shape: tuple[int, int] | None = None,
    *,
    label_map: bool | None = None,
) -> np.ndarray:
    """Read a ground-truth mask as a bool ``HxW`` array.

    A pixel is a defect when its value is above half of the dtype range (``> 127`` for uint8,
    ``> 32767`` for uint16, ``> 0.5`` for float). Colour masks use the brightest channel.

    ``label_map`` handles masks that store small class ids instead of 0/255 (the raw VisA
    masks do: values 1..N look black). ``True`` makes every nonzero pixel a defect, ``False``
    forces the half-range threshold, and ``None`` (default) decides per file: an integer mask
    whose maximum is nonzero but below the threshold is treated as a label map, because a 0/255
    mask never looks like that and thresholding it would silently erase every defect.

    If ``shape`` (``(H, W)``) is given and differs, the mask is resized with nearest neighbour.
    Raises :class:`ImageReadError` naming ``path`` when it is missing or unreadable.
    """
    arr = _decode(path)
    if arr.ndim == 3:
        colour = arr[:, :, :3] if arr.shape[2] >= 3 else arr[:, :, :1]
        arr = colour.max(axis=2)
    if arr.ndim != 2:
        raise ImageReadError(path, f"unexpected decoded mask shape {arr.shape}")
    if arr.dtype == np.bool_:
        mask = arr.copy()
    else:
        threshold = _mask_threshold(arr.dtype)
        peak = float(arr.max(initial=0))
        if label_map is None:
            label_map = np.issubdtype(arr.dtype, np.integer) and 0 < peak <= threshold
        mask = arr > 0 if label_map else arr > threshold
    if shape is not None:
        h, w = int(shape[0]), int(shape[1])
        if h <= 0 or w <= 0:
            raise ValueError(f"read_mask: shape must be positive (H, W), got {shape!r}")
        if mask.shape != (h, w):
            resized = cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
            mask = resized.astype(bool)
    return np.ascontiguousarray(mask)
