"""Opening a :class:`~fgad.runtime.line.specs.SourceSpec` as a frame source (``fgad.runtime.sources``)."""

from __future__ import annotations

from collections.abc import Iterator

from fgad.runtime.line.specs import SourceSpec
from fgad.runtime.sources import FrameSource, SourceError, open_source

__all__ = ["GStreamerSource", "gstreamer_available", "open_spec"]


def gstreamer_available() -> bool:
    """True when this OpenCV was built with GStreamer (JetPack's OpenCV is; the PyPI wheels are not)."""
    import cv2

    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GStreamer:"):
            return line.split(":", 1)[1].strip().upper().startswith("YES")
    return False


class GStreamerSource(FrameSource):
    """Frames of a GStreamer pipeline ending in ``appsink`` (``cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER)``)."""

    def __init__(self, pipeline: str) -> None:
        import cv2

        super().__init__()
        self.pipeline = pipeline
        self.description = f"GStreamer pipeline '{pipeline}'"
        if not gstreamer_available():
            raise SourceError(
                "this OpenCV has no GStreamer support, so the pipeline cannot be opened; on a Jetson use JetPack's "
                "OpenCV (python3-opencv, not opencv-python from PyPI; see docs/line.md)"
            )
        if "appsink" not in pipeline:
            raise SourceError(f"{self.description} must end in '! appsink' for OpenCV to read it")
        self._cap = cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER)
        if not self._cap.isOpened():
            self._cap.release()
            self._cap = None
            raise SourceError(f"{self.description} could not be started (check it with gst-launch-1.0)")

    def _generate(self) -> Iterator[tuple[int, object]]:
        from fgad.runtime.sources import _to_rgb

        frame_id = 0
        while not self._closed and self._cap is not None:
            ok, frame = self._cap.read()
            if not ok or frame is None or not frame.size:
                return  # end of stream (or the camera stopped): a live source is reopened by its reader
            yield frame_id, _to_rgb(frame)
            frame_id += 1

    def close(self) -> None:
        cap, self._cap = getattr(self, "_cap", None), None
        if cap is not None:
            cap.release()
        super().close()


def open_spec(spec: SourceSpec) -> FrameSource:
    """The frame source of ``spec``; raises :class:`~fgad.runtime.sources.SourceError` when it cannot be opened."""
    if spec.kind == "camera":
        return open_source(camera=int(spec.target))
    if spec.kind in ("stream", "video"):
        return open_source(video=spec.target, loop=spec.loop)
    if spec.kind == "gstreamer":
        return GStreamerSource(spec.target)
    return open_source(images=spec.target)
