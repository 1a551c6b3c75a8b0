"""Dataset discovery for the MVTec-AD and VisA layouts, and per-sample loading (no torch).

Discovery only lists files; it never decodes them. Decoding happens in
:func:`load_sample_raw` / :func:`load_sample_arrays`, which turn an unreadable file into a
logged warning and ``None`` so that one broken file cannot end a long run.

MVTec layout::

    <root>/<class>/train/good/*.png
    <root>/<class>/test/good/*.png
    <root>/<class>/test/<defect>/*.png
    <root>/<class>/ground_truth/<defect>/<stem>_mask.png   (or <stem>.png)

VisA layout: ``<root>/split_csv/1cls.csv`` with columns ``object,split,label,image,mask``,
labels ``normal`` / ``anomaly`` and paths relative to ``<root>``.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fgad.core.io import IMAGE_EXTENSIONS, ImageReadError, read_image, read_mask
from fgad.core.transforms import OPENAI_MEAN, OPENAI_STD, preprocess, preprocess_mask

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
SPLITS: tuple[str, ...] = ("train", "test")
GOOD = "good"
VISA_CSV = Path("split_csv") / "1cls.csv"
VISA_COLUMNS: tuple[str, ...] = ("object", "split", "label", "image", "mask")
VISA_LABELS: dict[str, int] = {"normal": 0, "anomaly": 1}
# VisA has no per-image defect names in its split file, so anomalies get this defect_type.
VISA_DEFECT = "anomaly"

_LAYOUT_HELP = (
    "expected either the MVTec layout <root>/<class>/{train/good,test/<defect>,ground_truth/<defect>} "
    "or the VisA layout <root>/split_csv/1cls.csv"
)


@dataclass(frozen=True)
class Sample:
    """One image of a dataset: where it is, its ground truth and where it belongs."""

    image_path: Path
    mask_path: Path | None
    label: int  # 0 good, 1 defect
    defect_type: str  # "good" for normal images
    class_name: str
    split: str  # "train" / "test"

    def __post_init__(self) -> None:
        # Accept str paths from callers building samples by hand; store them as Path.
        object.__setattr__(self, "image_path", Path(self.image_path))
        if self.mask_path is not None:
            object.__setattr__(self, "mask_path", Path(self.mask_path))
        if self.label not in (0, 1):
            raise ValueError(f"Sample label must be 0 (good) or 1 (defect), got {self.label!r}")


def _sort_key(s: Sample) -> tuple[str, int, str, str]:
    # Good images first inside a class, then defects alphabetically, then by file name.
    return (s.class_name, 0 if s.defect_type == GOOD else 1, s.defect_type, str(s.image_path))


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


def _is_image(p: Path) -> bool:
    return p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS


def _images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _is_image(p))


def _subdirs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _visa_csv(root: Path) -> Path:
    return root / VISA_CSV


def _is_visa(root: Path) -> bool:
    return _visa_csv(root).is_file()


def _check_root(root: PathLike) -> Path:
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"dataset root '{path}' does not exist or is not a folder; {_LAYOUT_HELP}")
    return path


def _mvtec_classes(root: Path) -> list[str]:
    return [d.name for d in _subdirs(root) if (d / "train").is_dir() or (d / "test").is_dir()]


def _no_classes_error(root: Path) -> FileNotFoundError:
    hint = ""
    if (root / "train").is_dir() or (root / "test").is_dir():
        hint = f" ('{root}' looks like a single class folder: pass its parent '{root.parent}' as root)"
    return FileNotFoundError(f"no dataset classes found under '{root}'{hint}; {_LAYOUT_HELP}")


def list_classes(root: PathLike) -> list[str]:
    """Sorted class names under ``root`` (MVTec class folders, or the VisA ``object`` column)."""
    path = _check_root(root)
    if _is_visa(path):
        classes = sorted({row["object"] for row in _read_visa_rows(_visa_csv(path))})
    else:
        classes = _mvtec_classes(path)
    if not classes:
        raise _no_classes_error(path)
    return classes


def _select_classes(available: list[str], classes: Sequence[str] | str | None, root: Path) -> list[str]:
    if classes is None:
        return list(available)
    wanted = [classes] if isinstance(classes, str) else list(classes)
    unknown = [c for c in wanted if c not in available]
    if unknown:
        raise ValueError(
            f"unknown class name(s) {unknown} for dataset '{root}'; available: {', '.join(available)}"
        )
    return sorted(dict.fromkeys(wanted))


def _warn_missing_masks(missing: list[Path]) -> None:
    if missing:
        logger.warning(
            "%d defect image(s) have no ground-truth mask (e.g. '%s'); they count as defective at "
            "image level and get an empty mask",
            len(missing),
            missing[0],
        )


def _find_mask(gt_dir: Path, stem: str) -> Path | None:
    for name in (f"{stem}_mask", stem):
        for ext in (".png", *(e for e in IMAGE_EXTENSIONS if e != ".png")):
            candidate = gt_dir / f"{name}{ext}"
            if candidate.is_file():
                return candidate
    return None


def discover_mvtec(root: PathLike, split: str, classes: Sequence[str] | str | None = None) -> list[Sample]:
    """List the samples of an MVTec-layout dataset.

    ``train`` is ``train/good`` only; ``test`` is ``test/good`` plus every ``test/<defect>``
    folder, paired with ``ground_truth/<defect>/<stem>_mask.png`` (or ``<stem>.png``). A defect
    image without a mask keeps label 1 with ``mask_path=None`` (one warning per call).
    """
    _check_split(split)
    path = _check_root(root)
    available = _mvtec_classes(path)
    if not available:
        raise _no_classes_error(path)
    samples: list[Sample] = []
    missing: list[Path] = []
    for cls in _select_classes(available, classes, path):
        split_dir = path / cls / split
        if not split_dir.is_dir():
            logger.warning("class '%s' has no '%s' folder at '%s'; skipping it", cls, split, split_dir)
            continue
        folders = [split_dir / GOOD] if split == "train" else _subdirs(split_dir)
        for folder in folders:
            defect = folder.name
            for img in _images_in(folder):
                if defect == GOOD:
                    samples.append(Sample(img, None, 0, GOOD, cls, split))
                    continue
                mask = _find_mask(path / cls / "ground_truth" / defect, img.stem)
                if mask is None:
                    missing.append(img)
                samples.append(Sample(img, mask, 1, defect, cls, split))
    _warn_missing_masks(missing)
    return sorted(samples, key=_sort_key)


def _read_visa_rows(csv_path: Path) -> list[dict[str, str]]:
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        absent = [c for c in VISA_COLUMNS if c not in header]
        if absent:
            raise ValueError(
                f"VisA split file '{csv_path}' lacks column(s) {absent}; found {header}, "
                f"expected {list(VISA_COLUMNS)}"
            )
        rows = []
        for row in reader:
            rows.append({k.strip(): (v or "").strip() for k, v in row.items() if k is not None})
    return rows


def discover_visa(
    root: PathLike,
    split: str,
    classes: Sequence[str] | str | None = None,
    split_csv: PathLike | None = None,
) -> list[Sample]:
    """List the samples of a VisA-layout dataset from its split file.

    ``split_csv`` defaults to ``<root>/split_csv/1cls.csv``; a relative path is tried as given
    and then relative to ``root``. Image and mask paths in the file are relative to ``root``.
    """
    _check_split(split)
    path = _check_root(root)
    if split_csv is None:
        csv_path = _visa_csv(path)
    else:
        csv_path = Path(split_csv)
        if not csv_path.is_absolute() and not csv_path.is_file():
            csv_path = path / csv_path
    if not csv_path.is_file():
        raise FileNotFoundError(f"VisA split file '{csv_path}' not found; {_LAYOUT_HELP}")
    rows = _read_visa_rows(csv_path)
    available = sorted({r["object"] for r in rows})
    if not available:
        raise FileNotFoundError(f"VisA split file '{csv_path}' has no rows")
    selected = set(_select_classes(available, classes, path))
    samples: list[Sample] = []
    missing: list[Path] = []
    for line, row in enumerate(rows, start=2):
        if row["object"] not in selected or row["split"] != split:
            continue
        label_text = row["label"].lower()
        if label_text not in VISA_LABELS:
            raise ValueError(
                f"'{csv_path}' line {line}: label {row['label']!r} is not one of {sorted(VISA_LABELS)}"
            )
        if not row["image"]:
            raise ValueError(f"'{csv_path}' line {line}: empty 'image' column")
        label = VISA_LABELS[label_text]
        image = path / row["image"]
        mask = path / row["mask"] if (label and row["mask"]) else None
        if label and mask is None:
            missing.append(image)
        defect = VISA_DEFECT if label else GOOD
        samples.append(Sample(image, mask, label, defect, row["object"], split))
    _warn_missing_masks(missing)
    return sorted(samples, key=_sort_key)


def discover(root: PathLike, split: str, classes: Sequence[str] | str | None = None) -> list[Sample]:
    """List the samples of ``split`` for ``classes`` (all when None), detecting the layout.

    A root with ``split_csv/1cls.csv`` is VisA, anything else MVTec. Raises FileNotFoundError
    when the root is missing, empty or holds no image for the request, and ValueError for an
    unknown class name (the message lists the available ones).
    """
    path = _check_root(root)
    if _is_visa(path):
        samples = discover_visa(path, split, classes)
    else:
        samples = discover_mvtec(path, split, classes)
    if not samples:
        which = "all classes" if classes is None else f"class(es) {classes!r}"
        raise FileNotFoundError(f"no '{split}' images found for {which} under '{path}'; {_LAYOUT_HELP}")
    return samples


def count_by(samples: Iterable[Sample], field: str = "defect_type") -> dict[str, int]:
    """Count samples per value of ``field`` (e.g. ``defect_type`` or ``class_name``)."""
    counts: dict[str, int] = {}
    for s in samples:
        key = str(getattr(s, field))
        counts[key] = counts.get(key, 0) + 1
    return counts


def read_sample(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """Strict loader: (uint8 RGB image, bool mask of the same HxW); raises ImageReadError.

    Good images, and defect images without a mask file, get an all-zero mask. A mask whose size
    differs from its image is resized to it with nearest neighbour.
    """
    image = read_image(sample.image_path)
    hw = (int(image.shape[0]), int(image.shape[1]))
    if sample.mask_path is None or sample.label == 0:
        mask = np.zeros(hw, dtype=bool)
    else:
        mask = read_mask(sample.mask_path, shape=hw)
    return image, mask


def load_sample_raw(sample: Sample) -> tuple[np.ndarray, np.ndarray] | None:
    """(uint8 RGB image, bool mask) at native resolution, or None (with a warning) if unreadable."""
    try:
        return read_sample(sample)
    except ImageReadError as exc:
        logger.warning("skipping unreadable sample '%s': %s", sample.image_path, exc)
        return None


def load_sample_arrays(
    sample: Sample,
    size: int,
    mean: Sequence[float] = OPENAI_MEAN,
    std: Sequence[float] = OPENAI_STD,
) -> tuple[np.ndarray, np.ndarray] | None:
    """(float32 image ``[3,size,size]``, float32 mask ``[size,size]``), or None if unreadable."""
    raw = load_sample_raw(sample)
    if raw is None:
        return None
    image, mask = raw
    return preprocess(image, size, mean, std), preprocess_mask(mask, size)
