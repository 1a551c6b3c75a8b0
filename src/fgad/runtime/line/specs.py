"""Source specifications of a line: ``NAME=SPEC`` as given to ``fgad-run --source``, and how each is opened.

A spec is one of

* a camera index (``cam0=0``): ``cv2.VideoCapture(index)``;
* a stream URL (``st2=rtsp://10.0.0.5/stream1``, ``http://...``): reconnected when it drops;
* a GStreamer pipeline, recognised by its ``!`` separators (``csi0=nvarguscamerasrc sensor-id=0 ! ... ! appsink``):
  needs an OpenCV built with GStreamer (docs/line.md);
* a video file (``st4=part.mp4``);
* images: a folder, a glob pattern or one image file (``st3='line3/*.png'``).

Cameras, streams and pipelines are *live*: their queue keeps the newest frames (older ones are dropped when the
detector falls behind) and they are reopened with backoff when they die. Files are never dropped from and end
the source when they end; a file source can be made live (``SourceSpec(..., live=True)``) to treat it as a
stream that is reopened at its end.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from fgad.core.io import IMAGE_EXTENSIONS

__all__ = ["SOURCE_KINDS", "SourceSpec", "parse_source", "parse_sources"]

#: the kinds of source a spec can name
SOURCE_KINDS = ("camera", "stream", "gstreamer", "video", "images")
_LIVE_KINDS = ("camera", "stream", "gstreamer")
#: names are used in MQTT topics, file names and URLs: no '/', '+', '#', spaces
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mpg", ".mpeg", ".ts", ".h264", ".h265")


@dataclass(frozen=True)
class SourceSpec:
    """One named source of a line.

    Args:
        name: unique within the line; letters, digits, ``_``, ``.``, ``-`` (it names MQTT topics and files).
        kind: one of :data:`SOURCE_KINDS`.
        target: the camera index as text, the URL, the pipeline, the file, folder or pattern.
        live: newest-wins queue and reconnect on end (default: cameras, streams and pipelines).
        loop: files: start again at the end (a video or the image list), never ending by itself.
    """

    name: str
    kind: str
    target: str
    live: bool | None = None
    loop: bool = False
    _live: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(
                f"source name {self.name!r} must start with a letter or digit and hold only letters, digits, "
                "'_', '.' or '-' (at most 64 characters): it names MQTT topics and files"
            )
        if self.kind not in SOURCE_KINDS:
            raise ValueError(f"source {self.name}: kind must be one of {', '.join(SOURCE_KINDS)}, got {self.kind!r}")
        if not self.target.strip():
            raise ValueError(f"source {self.name}: empty target")
        if self.kind == "camera" and not self.target.isdigit():
            raise ValueError(f"source {self.name}: a camera is a non-negative index, got {self.target!r}")
        object.__setattr__(self, "_live", self.kind in _LIVE_KINDS if self.live is None else bool(self.live))

    @property
    def is_live(self) -> bool:
        """Newest frames win in its queue, and it is reopened (with backoff) whenever it ends or fails."""
        return self._live

    def describe(self) -> str:
        return f"{self.name} ({self.kind} {self.target})"


def _kind_of(target: str) -> str:
    text = target.strip()
    if text.isdigit():
        return "camera"
    if "!" in text:
        return "gstreamer"
    if "://" in text:
        return "stream"
    if Path(text).suffix.lower() in _VIDEO_EXTENSIONS:
        return "video"
    if Path(text).suffix.lower() in IMAGE_EXTENSIONS or any(c in text for c in "*?[") or Path(text).is_dir():
        return "images"
    if Path(text).is_file():
        return "video"  # an existing file of another extension: let OpenCV try it
    raise ValueError(
        f"cannot tell what {target!r} is: give a camera index, a URL (rtsp://...), a GStreamer pipeline "
        f"(with '!'), a video file ({', '.join(_VIDEO_EXTENSIONS[:4])}...) or an existing image folder / glob"
    )


def parse_source(text: str, *, loop: bool = False) -> SourceSpec:
    """``NAME=SPEC`` as a :class:`SourceSpec`; ValueError naming the bad text otherwise."""
    name, sep, target = text.partition("=")
    if not sep or not name.strip() or not target.strip():
        raise ValueError(f"--source {text!r}: expected NAME=SPEC, e.g. cam0=0, st2=rtsp://host/stream, "
                         "st3='line3/*.png'")
    try:
        return SourceSpec(name=name.strip(), kind=_kind_of(target), target=target.strip(), loop=loop)
    except ValueError as exc:
        raise ValueError(f"--source {text!r}: {exc}") from None


def parse_sources(texts: list[str] | tuple[str, ...], *, loop: bool = False) -> list[SourceSpec]:
    """Several ``NAME=SPEC``; names must be unique."""
    specs = [parse_source(t, loop=loop) for t in texts]
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise ValueError(f"source name {spec.name!r} is given twice; every --source needs its own name")
        seen.add(spec.name)
    return specs
