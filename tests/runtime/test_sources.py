"""Frame sources: images (dir, glob, file), video files with looping, cameras; resources are released."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import numpy as np
import pytest

from fgad.runtime.sources import CameraSource, ImageSource, SourceError, VideoSource, expand_image_spec, open_source


@pytest.fixture()
def image_dir(tmp_path: Path, good_dir: Path) -> Path:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in sorted(good_dir.glob("*.png"))[:3]:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "broken.png").write_bytes(b"not a png")
    (folder / "notes.txt").write_text("ignored")
    return folder


def test_image_folder_skips_unreadable_files_with_a_warning(image_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="fgad.runtime.sources"):
        source = ImageSource(image_dir)
        frames = list(source)
    assert [Path(f).name for f, _ in frames] == ["000.png", "001.png", "002.png"]
    assert all(img.dtype == np.uint8 and img.shape == (64, 64, 3) for _, img in frames)
    assert source.skipped == 1 and source.frames == 3 and source.closed
    assert any(str(image_dir / "broken.png") in r.getMessage() for r in caplog.records)


def test_image_glob_and_single_file(image_dir: Path) -> None:
    assert [p.name for p in expand_image_spec(str(image_dir / "00[12].png"))] == ["001.png", "002.png"]
    assert len(list(ImageSource(image_dir / "000.png"))) == 1
    with pytest.raises(SourceError, match="no files match"):
        ImageSource(str(image_dir / "*.jpg"))
    with pytest.raises(SourceError, match="neither a folder"):
        ImageSource(image_dir / "missing.png")
    empty = image_dir / "empty"
    empty.mkdir()
    with pytest.raises(SourceError, match="no images"):
        ImageSource(empty)


def test_video_frames_and_loop(video_path: Path) -> None:
    with VideoSource(video_path) as source:
        frames = list(source)
    assert len(frames) == 10 and [f for f, _ in frames] == list(range(10))
    assert frames[0][1].shape == (64, 64, 3) and frames[0][1].dtype == np.uint8
    assert source.closed and source._cap is None

    source = VideoSource(video_path, loop=True)
    looped = list(itertools.islice(source, 25))
    assert [f for f, _ in looped] == list(range(25))
    np.testing.assert_array_equal(looped[0][1], looped[10][1])  # the second pass starts at the first frame again
    source.close()
    assert source._cap is None


def test_video_released_on_keyboard_interrupt(video_path: Path) -> None:
    source = VideoSource(video_path, loop=True)
    with pytest.raises(KeyboardInterrupt), source:
        for frame_id, _ in source:
            if frame_id == 3:
                raise KeyboardInterrupt
    assert source.closed and source._cap is None


def test_video_released_when_the_read_is_interrupted(video_path: Path) -> None:
    source = VideoSource(video_path)
    real = source._cap

    class Interrupting:
        def read(self) -> tuple[bool, None]:
            raise KeyboardInterrupt

        def release(self) -> None:
            real.release()
            self.released = True

    fake = Interrupting()
    source._cap = fake
    with pytest.raises(KeyboardInterrupt):
        list(source)
    assert source.closed and getattr(fake, "released", False)


def test_video_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        VideoSource(tmp_path / "missing.avi")
    bad = tmp_path / "bad.avi"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(SourceError, match="could not be opened"):
        VideoSource(bad)


def test_missing_camera() -> None:
    with pytest.raises(SourceError, match="camera 57 could not be opened"):
        CameraSource(57)


def test_open_source_needs_exactly_one(image_dir: Path, video_path: Path) -> None:
    assert isinstance(open_source(images=image_dir), ImageSource)
    src = open_source(video=video_path, loop=True)
    assert isinstance(src, VideoSource) and src.loop
    src.close()
    with pytest.raises(ValueError, match="exactly one"):
        open_source()
    with pytest.raises(ValueError, match="exactly one"):
        open_source(images=image_dir, video=video_path)
