"""The images a benchmark runs on: timed frames, few-shot reference images, int8 calibration images.

Either folders the user gives (real frames, e.g. ``.../magnetic_tile/test``), or a synthetic
MVTec-layout class (:func:`fgad.data.synthetic.make_synthetic_dataset`, class ``tile``) generated at
the model's input size: test images (good and defective) as frames, ``train/good`` as references and
as the int8 calibration set (normal parts, the recipe of ARCHITECTURE decision 4).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["SYNTHETIC_CLASS", "Workload", "folder_workload", "synthetic_workload"]

#: class of the generated images (and of the description bank used for them)
SYNTHETIC_CLASS = "tile"


@dataclass(frozen=True)
class Workload:
    """Image files of one benchmark run and a description of where they come from."""

    frames: list[Path]
    refs: list[Path]  # enough for the largest shot count
    calib_dir: Path | None  # folder of normal images for int8 calibration
    synthetic: bool
    description: dict[str, Any] = field(default_factory=dict)


def _images(folder: str | os.PathLike[str], what: str, recursive: bool) -> list[Path]:
    """Image files of ``folder`` (torch-free: the runtime's own lister), hidden files skipped."""
    from fgad.runtime.sources import SourceError, expand_image_spec

    if not Path(folder).is_dir():
        raise FileNotFoundError(f"folder of {what} '{folder}' does not exist")
    try:
        files = expand_image_spec(folder, recursive=recursive)
    except SourceError as exc:
        raise FileNotFoundError(f"{what}: {exc}") from None
    return [p for p in files if not p.name.startswith(".")]


def _spread(paths: list[Path], count: int) -> list[Path]:
    """``count`` paths spread evenly over the sorted list (every defect type stays represented)."""
    if len(paths) <= count:
        return paths
    step = len(paths) / count
    return [paths[int(i * step)] for i in range(count)]


def synthetic_workload(root: str | os.PathLike[str], image_size: int, frames: int, refs: int,
                       calib: int = 16, seed: int = 0) -> Workload:
    """Generate a synthetic class under ``root``: ``frames`` test images, ``max(refs, calib)`` good ones."""
    from fgad.data.synthetic import SYNTHETIC_DEFECTS, make_synthetic_dataset

    n_good = max(1, frames // 2)
    n_defect = max(1, -(-(frames - n_good) // len(SYNTHETIC_DEFECTS)))
    n_train = max(refs, calib, 1)
    data = make_synthetic_dataset(Path(root), classes=(SYNTHETIC_CLASS,), n_train_good=n_train,
                                  n_test_good=n_good, n_test_defect=n_defect, image_size=max(image_size, 64),
                                  seed=seed)
    cls = data / SYNTHETIC_CLASS
    test = _images(cls / "test", "test images", recursive=True)
    good = _images(cls / "train" / "good", "good images", recursive=False)
    return Workload(
        frames=_spread(test, frames),
        refs=good[:refs],
        calib_dir=cls / "train" / "good",
        synthetic=True,
        description={
            "frames": f"synthetic '{SYNTHETIC_CLASS}' test images (good and defective), {max(image_size, 64)} px, "
                      f"seed {seed}",
            "references": f"the first {refs} synthetic train/good images",
            "calibration": f"{n_train} synthetic train/good images (normal parts)",
        },
    )


def folder_workload(images: str | os.PathLike[str], refs: str | os.PathLike[str] | None, frames: int,
                    shots: int, calib: str | os.PathLike[str] | None = None) -> Workload:
    """Frames from ``images`` (searched recursively), references and calibration from ``refs`` (or ``calib``)."""
    found = _spread(_images(images, "frames", recursive=True), frames)
    ref_paths: list[Path] = []
    if shots > 0:
        if refs is None:
            raise ValueError(f"--shots {shots} with --images needs --refs: a folder of good images of the class")
        ref_paths = _images(refs, "reference images", recursive=False)
        if len(ref_paths) < shots:
            raise ValueError(f"--refs {refs} holds {len(ref_paths)} images, fewer than --shots {shots}")
        ref_paths = ref_paths[:shots]
    calib_dir = Path(calib) if calib is not None else (Path(refs) if refs is not None else None)
    return Workload(
        frames=found,
        refs=ref_paths,
        calib_dir=calib_dir,
        synthetic=False,
        description={
            "frames": f"{len(found)} images from {images}",
            "references": f"the first {len(ref_paths)} images of {refs}" if ref_paths else "none",
            "calibration": str(calib_dir) if calib_dir is not None else "the quantizer's default",
        },
    )
