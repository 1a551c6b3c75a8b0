"""--source NAME=SPEC: what each spec is, and the errors for bad ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from fgad.runtime.line import SourceSpec, parse_source, parse_sources


def test_kinds_are_told_apart(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    (tmp_path / "clip.mp4").write_bytes(b"")
    cases = {
        "cam0=0": ("camera", True),
        "st2=rtsp://10.0.0.5:554/stream1": ("stream", True),
        "csi0=nvarguscamerasrc sensor-id=0 ! nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! appsink":
            ("gstreamer", True),
        f"v={tmp_path / 'clip.mp4'}": ("video", False),
        "st3=line3/*.png": ("images", False),
        f"d={tmp_path / 'imgs'}": ("images", False),
    }
    for text, (kind, live) in cases.items():
        spec = parse_source(text)
        assert (spec.kind, spec.is_live) == (kind, live), text
        assert spec.target == text.split("=", 1)[1]


def test_a_file_can_be_made_live_and_names_are_checked() -> None:
    assert SourceSpec("v", "video", "a.mp4", live=True).is_live
    with pytest.raises(ValueError, match="MQTT topics"):
        SourceSpec("a/b", "camera", "0")
    with pytest.raises(ValueError, match="non-negative index"):
        SourceSpec("c", "camera", "-1")


@pytest.mark.parametrize("text", ["cam0", "=0", "cam0=", "x=not-a-thing-that-exists"])
def test_bad_specs_name_the_text(text: str) -> None:
    with pytest.raises(ValueError, match="--source"):
        parse_source(text)


def test_names_must_be_unique() -> None:
    with pytest.raises(ValueError, match="given twice"):
        parse_sources(["a=0", "a=1"])


def test_a_pipeline_without_gstreamer_in_opencv_says_how_to_fix_it() -> None:
    from fgad.runtime.line import gstreamer_available, open_spec
    from fgad.runtime.sources import SourceError

    spec = parse_source("csi0=videotestsrc num-buffers=3 ! videoconvert ! appsink")
    if gstreamer_available():
        with open_spec(spec) as source:
            assert len(list(source)) == 3
    else:
        with pytest.raises(SourceError, match="JetPack's OpenCV"):
            open_spec(spec)
