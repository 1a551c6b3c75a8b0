"""Calibration images: normal parts, preprocessed exactly as the runtime does, fed to onnxruntime's calibrator.

The activation ranges of a Q/DQ model are measured on these images, so they must go through the same
:func:`fgad.core.transforms.preprocess` as every frame at run time (a different resize or normalisation
would calibrate ranges the engine never sees). Torch-free: numpy, OpenCV and the standard library.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fgad.core.io import IMAGE_EXTENSIONS, read_image_set
from fgad.core.transforms import preprocess

__all__ = [
    "ImageCalibrationReader",
    "list_calibration_images",
    "preprocess_images",
    "read_calibration_images",
    "seeded_subset",
]


def seeded_subset(paths: list[Path], limit: int | None, seed: int) -> list[Path]:
    """At most ``limit`` of ``paths``, drawn with ``seed`` and kept in their order (all of them without a limit)."""
    if limit is None or limit >= len(paths):
        return paths
    picked = np.random.default_rng(seed).choice(len(paths), size=int(limit), replace=False)
    return [paths[i] for i in sorted(picked.tolist())]


def list_calibration_images(
    folder: str | os.PathLike[str], limit: int | None = None, seed: int = 0
) -> list[Path]:
    """Image files directly inside ``folder`` (sorted, hidden files skipped); with ``limit``, a seeded subset.

    The subset is drawn with ``numpy.random.default_rng(seed)`` from the sorted list and returned in
    sorted order, so the same folder, limit and seed always give the same images.
    """
    root = Path(folder)
    if limit is not None and (isinstance(limit, bool) or int(limit) < 1):
        raise ValueError(f"limit must be a positive number of images, got {limit!r}")
    if not root.exists():
        raise FileNotFoundError(
            f"calibration folder {root} does not exist; pass a folder of normal (defect-free) images of the class"
        )
    if not root.is_dir():
        raise NotADirectoryError(f"calibration folder {root} is not a folder; pass a folder of normal images")
    files = sorted(
        p for p in root.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not files:
        raise FileNotFoundError(
            f"calibration folder {root} holds no images ({', '.join(IMAGE_EXTENSIONS)}); pass a folder of normal "
            "(defect-free) images of the class, e.g. <root>/<class>/train/good"
        )
    return seeded_subset(files, limit, seed)


def preprocess_images(
    paths: Sequence[str | os.PathLike[str]],
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    progress: bool = True,
    what: str = "calibration images",
) -> np.ndarray:
    """Read and preprocess ``paths`` like the runtime: float32 ``[N, 3, size, size]``.

    Every file must be readable: :class:`fgad.core.io.UnreadableImagesError` (a ``ValueError``) names each one
    that is not (``what`` says what they are in that message); none is skipped, since the images define the
    ranges the int8 graph is calibrated on (or, as references, what is normal).
    """
    from tqdm import tqdm

    if not paths:
        raise ValueError(f"no {what} given")
    out = np.empty((len(paths), 3, size, size), dtype=np.float32)
    filled = 0

    def put(image: np.ndarray) -> None:
        nonlocal filled
        out[filled] = preprocess(image, size, mean, std)
        filled += 1

    read_image_set(tqdm(paths, desc=what, unit="img", disable=not progress, leave=False), what, put)
    return out


def read_calibration_images(
    folder: str | os.PathLike[str],
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    limit: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """The images of ``folder`` (see :func:`list_calibration_images`) preprocessed: float32 ``[N, 3, S, S]``."""
    return preprocess_images(list_calibration_images(folder, limit, seed), size, mean, std)


class ImageCalibrationReader:
    """onnxruntime ``CalibrationDataReader`` over preprocessed images ``[N, 3, S, S]``.

    onnxruntime recognises any class with ``get_next`` as a reader (its ABC has a subclass hook), so this
    module does not import onnxruntime. ``set_range`` and ``len`` let the calibrator take the images in
    strides, which bounds the memory of the collected intermediate tensors.
    """

    def __init__(self, images: np.ndarray, input_name: str = "image", batch_size: int = 1) -> None:
        arr = np.asarray(images)
        if arr.ndim != 4 or arr.shape[0] < 1 or arr.shape[1] != 3:
            raise ValueError(f"calibration images must be a non-empty [N, 3, S, S] array, got shape {arr.shape}")
        if not np.issubdtype(arr.dtype, np.floating) or not np.isfinite(arr).all():
            raise ValueError("calibration images must be finite floats (preprocessed with fgad.core.transforms)")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.images = np.ascontiguousarray(arr, dtype=np.float32)
        self.input_name = input_name
        self.batch_size = int(batch_size)
        self._start, self._stop = 0, len(self.images)
        self._pos = 0

    def __len__(self) -> int:
        return len(self.images)

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._pos >= self._stop:
            return None
        end = min(self._pos + self.batch_size, self._stop)
        batch = self.images[self._pos : end]
        self._pos = end
        return {self.input_name: batch}

    def set_range(self, start_index: int, end_index: int) -> None:
        """Serve only images ``[start_index, end_index)`` from now on."""
        self._start = max(0, int(start_index))
        self._stop = min(len(self.images), int(end_index))
        self._pos = self._start

    def rewind(self) -> None:
        """Serve the current range again from its start."""
        self._pos = self._start

    def __iter__(self) -> ImageCalibrationReader:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item
