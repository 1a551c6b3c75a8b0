"""Frame sources for the runtime: iterators of ``(frame_id, rgb uint8 [H, W, 3])``.

* :class:`ImageSource`: a folder, a glob pattern or one file; unreadable files are skipped with a warning
  naming the path. ``frame_id`` is the file path.
* :class:`VideoSource`: a video file or stream URL via ``cv2.VideoCapture``, optionally looping. ``frame_id`` is
  the running frame number.
* :class:`CameraSource`: a camera index. ``frame_id`` is the running frame number.

Every source is a context manager and also closes itself when its iteration ends, is closed, or is interrupted
(``KeyboardInterrupt`` included), so capture devices are always released.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from fgad.core.io import IMAGE_EXTENSIONS, ImageReadError, quiet_opencv, read_image

__all__ = [
    "MAX_CAMERA_INDEX",
    "CameraSource",
    "FrameSource",
    "ImageSource",
    "SourceError",
    "VideoSource",
    "check_camera_index",
    "expand_image_spec",
    "open_source",
]

logger = logging.getLogger(__name__)

FrameId = str | int
Frame = tuple[FrameId, np.ndarray]

_GLOB_CHARS = set("*?[")

#: The largest camera index ``cv2.VideoCapture(index)`` treats as a device: from 100 on OpenCV reads the
#: hundreds as a capture API (200 is V4L2 device 0), and a negative index or one beyond a C int crashes it or
#: raises inside OpenCV. Indices are checked against ``0..MAX_CAMERA_INDEX`` before OpenCV sees them.
MAX_CAMERA_INDEX = 99

#: How to find the index of a camera, for the errors that name one.
LIST_CAMERAS_HINT = "list the cameras with `v4l2-ctl --list-devices` or `ls /dev/video*` (index N is /dev/videoN)"


class SourceError(Exception):
    """A frame source cannot be opened or stopped delivering frames."""


def expand_image_spec(spec: str | os.PathLike[str], recursive: bool = False) -> list[Path]:
    """Image files named by ``spec``: a folder (files with an image extension, sorted), a glob pattern, or a file."""
    text = os.fspath(spec)
    path = Path(text).expanduser()
    if path.is_dir():
        pattern = "**/*" if recursive else "*"
        files = sorted(p for p in path.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise SourceError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in folder '{path}'")
        return files
    if any(c in _GLOB_CHARS for c in text):
        files = sorted(Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True) if Path(p).is_file())
        if not files:
            raise SourceError(f"no files match '{text}'")
        return files
    if path.is_file():
        return [path]
    raise SourceError(f"'{text}' is neither a folder, a glob pattern nor an image file")


def _to_rgb(frame: np.ndarray) -> np.ndarray:
    """An OpenCV frame (BGR, BGRA or gray; uint8 or uint16) as contiguous RGB uint8."""
    if frame.dtype == np.uint16:
        frame = np.round(frame.astype(np.float32) / 257.0).astype(np.uint8)
    elif frame.dtype != np.uint8:
        raise ValueError(f"unsupported frame dtype {frame.dtype}")
    if frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 1):
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
    if frame.ndim == 3 and frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2RGB)
    if frame.ndim == 3 and frame.shape[2] == 3:
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    raise ValueError(f"unsupported frame shape {frame.shape}")


class FrameSource:
    """Base class: iterate for frames; ``close()`` (or leaving a ``with`` block) releases resources.

    Attributes ``frames`` (frames delivered) and ``skipped`` (unreadable frames or files passed over) count as the
    iteration goes.
    """

    description = "source"

    def __init__(self) -> None:
        self.frames = 0
        self.skipped = 0
        self._closed = False

    def _generate(self) -> Iterator[Frame]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __iter__(self) -> Iterator[Frame]:
        if self._closed:
            raise SourceError(f"{self.description} is closed")
        try:
            for item in self._generate():
                self.frames += 1
                yield item
        finally:
            self.close()

    def close(self) -> None:
        """Release the underlying resources (idempotent)."""
        self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # never raise from a finaliser
            pass


class ImageSource(FrameSource):
    """Image files from a folder, a glob pattern or a single file, in sorted order."""

    def __init__(self, spec: str | os.PathLike[str], recursive: bool = False) -> None:
        super().__init__()
        self.files = expand_image_spec(spec, recursive)
        self.description = f"images '{os.fspath(spec)}'"

    def __len__(self) -> int:
        return len(self.files)

    def _generate(self) -> Iterator[Frame]:
        for path in self.files:
            if self._closed:
                return
            try:
                image = read_image(path)
            except ImageReadError as exc:
                self.skipped += 1
                logger.warning("skipping unreadable image %s: %s", path, exc.reason)
                continue
            yield str(path), image


class _CaptureSource(FrameSource):
    """Shared ``cv2.VideoCapture`` handling."""

    #: consecutive failed reads tolerated before giving up
    max_failures = 25

    def __init__(self) -> None:
        super().__init__()
        self._cap: cv2.VideoCapture | None = None

    def _release(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()

    def close(self) -> None:
        self._release()
        super().close()


class VideoSource(_CaptureSource):
    """Frames of a video file or stream URL (anything ``cv2.VideoCapture`` opens).

    Args:
        path_or_url: file path, or a URL such as ``rtsp://...``.
        loop: start again at the first frame when the video ends (files; streams are reopened).
    """

    def __init__(self, path_or_url: str | os.PathLike[str], loop: bool = False) -> None:
        super().__init__()
        self.target = os.fspath(path_or_url)
        self.is_url = "://" in self.target
        self.loop = loop
        self.description = f"video '{self.target}'"
        if not self.is_url and not Path(self.target).is_file():
            raise SourceError(f"video '{self.target}' does not exist; check the path")
        self._cap = self._open()

    def _open(self) -> cv2.VideoCapture:
        cap = cv2.VideoCapture(self.target)
        if not cap.isOpened():
            cap.release()
            raise SourceError(
                f"video '{self.target}' could not be opened (unsupported format or codec, or the stream is down)"
            )
        return cap

    def _generate(self) -> Iterator[Frame]:
        frame_id = 0
        in_pass = 0
        failures = 0
        while not self._closed and self._cap is not None:
            ok, frame = self._cap.read()
            if ok and frame is not None and frame.size:
                failures = 0
                in_pass += 1
                yield frame_id, _to_rgb(frame)
                frame_id += 1
                continue
            if self._mid_file_failure() and failures < self.max_failures:
                failures += 1
                self.skipped += 1
                logger.warning("%s: frame %d unreadable, skipping it", self.description, frame_id)
                frame_id += 1
                continue
            # end of the video (or of a stream)
            if not self.loop:
                return
            if in_pass == 0:
                raise SourceError(f"{self.description} delivered no frames; cannot loop over it")
            in_pass, failures = 0, 0
            self._release()
            self._cap = self._open()

    def _mid_file_failure(self) -> bool:
        """True if a failed read happened before the last frame of a file (a damaged frame, not the end)."""
        if self.is_url or self._cap is None:
            return False
        count = self._cap.get(cv2.CAP_PROP_FRAME_COUNT)
        pos = self._cap.get(cv2.CAP_PROP_POS_FRAMES)
        return count > 0 and 0 <= pos < count - 1


class CameraSource(_CaptureSource):
    """Frames of camera ``index`` (``cv2.VideoCapture(index)``), optionally at a requested resolution."""

    def __init__(self, index: int, width: int | None = None, height: int | None = None) -> None:
        super().__init__()
        self.index = check_camera_index(index)
        self.description = f"camera {self.index}"
        with quiet_opencv():  # OpenCV's own warnings about the device would only repeat the error below
            cap = cv2.VideoCapture(self.index)
        if not cap.isOpened():
            cap.release()
            raise SourceError(
                f"camera {self.index} could not be opened; check that it is connected, that this user may use it "
                f"and that no other program holds it; {LIST_CAMERAS_HINT}"
            )
        if width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, int(width))
        if height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, int(height))
        self._cap = cap

    def _generate(self) -> Iterator[Frame]:
        frame_id = 0
        failures = 0
        while not self._closed and self._cap is not None:
            ok, frame = self._cap.read()
            if ok and frame is not None and frame.size:
                failures = 0
                yield frame_id, _to_rgb(frame)
                frame_id += 1
                continue
            failures += 1
            self.skipped += 1
            logger.warning("%s: frame %d could not be read, skipping it", self.description, frame_id)
            if failures >= self.max_failures:
                raise SourceError(f"{self.description} stopped delivering frames ({failures} failed reads in a row)")


def check_camera_index(index: object) -> int:
    """``index`` as a camera index OpenCV opens as a device (``0..MAX_CAMERA_INDEX``), or :class:`SourceError`."""
    if isinstance(index, bool) or not isinstance(index, int | np.integer):
        raise SourceError(f"camera index must be an integer 0..{MAX_CAMERA_INDEX}, got {index!r}; {LIST_CAMERAS_HINT}")
    if not 0 <= int(index) <= MAX_CAMERA_INDEX:
        raise SourceError(f"camera index {index} is out of range 0..{MAX_CAMERA_INDEX}; {LIST_CAMERAS_HINT}")
    return int(index)


def open_source(
    *,
    camera: int | None = None,
    video: str | os.PathLike[str] | None = None,
    images: str | os.PathLike[str] | None = None,
    loop: bool = False,
) -> FrameSource:
    """Open exactly one of ``camera``, ``video`` or ``images`` (``loop`` applies to videos)."""
    given = [name for name, value in (("camera", camera), ("video", video), ("images", images)) if value is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of camera, video or images (got {', '.join(given) or 'none'})")
    if camera is not None:
        return CameraSource(camera)
    if video is not None:
        return VideoSource(video, loop=loop)
    assert images is not None
    return ImageSource(images)
