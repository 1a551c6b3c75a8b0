"""A long run over a looping video keeps memory flat (no per-frame leak in source, engine, kNN or post)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from fgad.runtime.pipeline import Detector
from fgad.runtime.sources import VideoSource
from tests.helpers.fake_bundle import FakeBundle

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")


def rss_bytes() -> int:
    """Resident set size of this process from /proc/self/statm (second field, in pages)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _run(bundle: FakeBundle, refs: list[np.ndarray], video: Path, frames: int, probe: int) -> tuple[int, int, int]:
    detector = Detector.from_bundle(bundle.path, refs=refs, threshold="auto")
    at_probe = 0
    count = 0
    with VideoSource(video, loop=True) as source:
        for _, frame in source:
            result = detector(frame)
            assert np.isfinite(result.score)
            count += 1
            if count == probe:
                at_probe = rss_bytes()
            if count == frames:
                break
    return at_probe, rss_bytes(), count


def _check_flat(at_probe: int, at_end: int, frames: int, probe: int, slack_mib: float) -> None:
    growth = (at_end - at_probe) / 2**20
    assert growth < slack_mib, (
        f"RSS grew by {growth:.1f} MiB between frame {probe} and frame {frames} "
        f"({at_probe / 2**20:.1f} -> {at_end / 2**20:.1f} MiB)"
    )


def test_memory_flat_over_300_frames(shared_bundle: FakeBundle, good_images: list[np.ndarray],
                                     video_path: Path) -> None:
    at_probe, at_end, count = _run(shared_bundle, good_images[:2], video_path, frames=300, probe=100)
    assert count == 300
    _check_flat(at_probe, at_end, 300, 100, slack_mib=2)


def test_memory_flat_over_2000_frames(shared_bundle: FakeBundle, good_images: list[np.ndarray],
                                      video_path: Path) -> None:
    at_probe, at_end, count = _run(shared_bundle, good_images[:2], video_path, frames=2000, probe=200)
    assert count == 2000
    _check_flat(at_probe, at_end, 2000, 200, slack_mib=4)  # a 4 KiB/frame leak would add 7 MiB
