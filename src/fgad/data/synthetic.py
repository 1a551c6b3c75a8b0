"""A small procedural MVTec-layout dataset for demos and tests (numpy + OpenCV only).

Each class has its own look and small random variations between normal images (shift,
rotation, brightness, noise):

* ``tile``: a square plate of small grouted tiles on a plain dark background;
* ``disc``: a round machined part with concentric rings and a darker hub;
* ``mesh``: a woven over/under grid filling the whole frame.

Defects are drawn on the part: ``scratch`` (thin bright or dark polyline), ``hole`` (dark
ellipse with a bright rim) and ``stain`` (soft-edged colour blob). Every defect is first drawn
into its mask and the image is then changed only where the mask is set, so masks match the
drawn pixels exactly.

Output is a pure function of the arguments: every image gets its own random generator keyed
by (seed, class, split, defect, index), so the same call writes the same bytes, and a class
looks the same whichever other classes are requested with it.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

SYNTHETIC_DEFECTS: tuple[str, ...] = ("scratch", "hole", "stain")
SYNTHETIC_STYLES: tuple[str, ...] = ("tile", "disc", "mesh")
MIN_IMAGE_SIZE = 32

_GOOD = "good"
_SPLIT_CODE = {"train": 0, "test": 1}
_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1]


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *keys]))


def _name_key(name: str) -> int:
    return zlib.crc32(name.encode("utf-8"))


# --------------------------------------------------------------------------- part rendering

# A renderer returns (float32 RGB image, where defects may be centred, where the part is).
# Parts are convex, so a straight segment between two points on the part stays on it.
_Part = tuple[np.ndarray, np.ndarray, np.ndarray]


def _frame(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel part coordinates (u, v): rotated by a small random angle about a jittered centre."""
    shift = 0.04 * size
    cx = size / 2.0 + rng.uniform(-shift, shift)
    cy = size / 2.0 + rng.uniform(-shift, shift)
    angle = math.radians(rng.uniform(-8.0, 8.0))
    c, s = math.cos(angle), math.sin(angle)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dx, dy = xx - cx, yy - cy
    u = c * dx + s * dy
    v = -s * dx + c * dy
    return u, v


def _paint(shape: tuple[int, int], colour: Sequence[float]) -> np.ndarray:
    return np.broadcast_to(np.asarray(colour, np.float32), (*shape, 3)).copy()


def _render_tile(size: int, rng: np.random.Generator) -> _Part:
    u, v = _frame(size, rng)
    half = 0.36 * size
    period = size / 8.0
    img = _paint(u.shape, (42, 46, 52))
    plate = (np.abs(u) < half) & (np.abs(v) < half)
    fu = (u + half) / period
    fv = (v + half) / period
    # Each small tile is slightly domed; grout lines sit at the cell borders.
    shade = 0.88 + 0.12 * np.sin(np.pi * (fu % 1.0)) * np.sin(np.pi * (fv % 1.0))
    grout_w = 0.09
    grout = ((fu % 1.0) < grout_w) | ((fv % 1.0) < grout_w)
    tile = _paint(u.shape, (200, 142, 100)) * shade[..., None]
    tile[grout] = (118, 96, 80)
    img[plate] = tile[plate]
    region = (np.abs(u) < 0.7 * half) & (np.abs(v) < 0.7 * half)
    return img, region, plate


def _render_disc(size: int, rng: np.random.Generator) -> _Part:
    u, v = _frame(size, rng)
    r = np.sqrt(u * u + v * v)
    radius = 0.40 * size
    img = _paint(u.shape, (34, 38, 60))
    rings = 0.86 + 0.14 * np.cos(2.0 * np.pi * r / (size / 14.0))
    steel = _paint(u.shape, (178, 182, 192)) * rings[..., None]
    hub = r < 0.12 * size
    steel[hub] *= 0.55
    disc = r < radius
    img[disc] = steel[disc]
    region = (r > 0.16 * size) & (r < 0.31 * size)
    return img, region, disc


def _render_mesh(size: int, rng: np.random.Generator) -> _Part:
    u, v = _frame(size, rng)
    period = size / 10.0
    fu, fv = u / period, v / period
    pu, pv = fu % 1.0, fv % 1.0
    # Thread cross-section profiles: 1 at a thread's centre, 0 in the gaps between threads.
    warp = np.clip(np.sin(np.pi * pu) * 1.4 - 0.2, 0.0, 1.0)  # vertical threads
    weft = np.clip(np.sin(np.pi * pv) * 1.4 - 0.2, 0.0, 1.0)  # horizontal threads
    warp_on_top = ((np.floor(fu) + np.floor(fv)) % 2) == 0
    top = np.where(warp_on_top, warp, weft)
    under = np.where(warp_on_top, weft, warp)
    lum = np.maximum(top, 0.7 * under)
    img = _paint(u.shape, (40, 40, 44)) + lum[..., None] * np.asarray((118, 134, 96), np.float32)
    margin = int(round(0.15 * size))
    region = np.zeros(u.shape, bool)
    region[margin : size - margin, margin : size - margin] = True
    inside = np.zeros(u.shape, bool)
    inside[2 : size - 2, 2 : size - 2] = True
    return img, region, inside


_RENDERERS = {"tile": _render_tile, "disc": _render_disc, "mesh": _render_mesh}


# --------------------------------------------------------------------------- defects


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.asarray((0.299, 0.587, 0.114), np.float32)


def _pick_centre(region: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
    ys, xs = np.nonzero(region)
    k = int(rng.integers(len(ys)))
    return int(xs[k]), int(ys[k])


def _draw_scratch(
    img: np.ndarray, region: np.ndarray, part: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    size = img.shape[0]
    x, y = _pick_centre(region, rng)
    heading = rng.uniform(0.0, 2.0 * np.pi)
    points = [(x, y)]
    for _ in range(int(rng.integers(3, 5))):
        heading += rng.uniform(-0.5, 0.5)
        step = rng.uniform(0.08, 0.13) * size
        # Turn back onto the part when the next vertex would leave it.
        for _turn in range(8):
            nx = int(round(x + step * math.cos(heading)))
            ny = int(round(y + step * math.sin(heading)))
            if 0 <= nx < size and 0 <= ny < size and part[ny, nx]:
                break
            heading += np.pi / 4.0
        else:
            break
        x, y = nx, ny
        points.append((x, y))
    mask = np.zeros(img.shape[:2], np.uint8)
    thickness = max(1, round(size / 64))
    cv2.polylines(mask, [np.asarray(points, np.int32)], False, 255, thickness, cv2.LINE_8)
    m = (mask > 0) & part
    bright = float(_luma(img[m]).mean()) < 120.0
    img[m] = (248, 246, 236) if bright else (18, 16, 20)
    return m


def _draw_hole(
    img: np.ndarray, region: np.ndarray, part: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    size = img.shape[0]
    centre = _pick_centre(region, rng)
    a = max(2, round(rng.uniform(0.035, 0.06) * size))
    b = max(2, round(a * rng.uniform(0.6, 1.0)))
    rim = max(1, round(size / 64))
    angle = float(rng.uniform(0.0, 180.0))
    outer = np.zeros(img.shape[:2], np.uint8)
    inner = np.zeros(img.shape[:2], np.uint8)
    cv2.ellipse(outer, centre, (a + rim, b + rim), angle, 0, 360, 255, -1, cv2.LINE_8)
    cv2.ellipse(inner, centre, (a, b), angle, 0, 360, 255, -1, cv2.LINE_8)
    m = (outer > 0) & part
    dark = m & (inner > 0)
    img[m & ~dark] = (236, 230, 214)
    img[dark] = (14, 12, 10)
    return m


def _draw_stain(
    img: np.ndarray, region: np.ndarray, part: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    size = img.shape[0]
    cx, cy = _pick_centre(region, rng)
    mask = np.zeros(img.shape[:2], np.uint8)
    for k in range(int(rng.integers(2, 4))):
        jitter = 0.0 if k == 0 else 0.05 * size
        ox, oy = rng.uniform(-jitter, jitter, size=2)
        centre = (int(round(cx + ox)), int(round(cy + oy)))
        a = max(2, round(rng.uniform(0.05, 0.09) * size))
        b = max(2, round(a * rng.uniform(0.5, 1.0)))
        cv2.ellipse(mask, centre, (a, b), float(rng.uniform(0, 180)), 0, 360, 255, -1, cv2.LINE_8)
    mask[~part] = 0
    m = mask > 0
    # Opacity ramps up from the blob's edge towards its inside: a soft edge that stays in the mask.
    dist = cv2.distanceTransform(mask, cv2.DIST_L2, 3)
    alpha = np.where(m, 0.5 + 0.4 * np.clip(dist / (size / 32.0), 0.0, 1.0), 0.0).astype(np.float32)
    dark_tints = ((112, 58, 18), (36, 92, 40), (60, 44, 126))
    light_tints = ((236, 206, 110), (150, 230, 150), (240, 170, 200))
    tints = light_tints if float(_luma(img[m]).mean()) < 110.0 else dark_tints
    colour = np.asarray(tints[int(rng.integers(len(tints)))], np.float32)
    img[:] = img * (1.0 - alpha[..., None]) + colour * alpha[..., None]
    return m


_DEFECT_DRAWERS = {"scratch": _draw_scratch, "hole": _draw_hole, "stain": _draw_stain}


def _render(
    style: str,
    size: int,
    defect: str,
    part_rng: np.random.Generator,
    defect_rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """One uint8 RGB image and its bool defect mask.

    The part (pose, brightness, noise) comes only from ``part_rng`` and the defect only from
    ``defect_rng``: the same part rendered with and without a defect differs only in the mask.
    """
    img, region, part = _RENDERERS[style](size, part_rng)
    img *= np.float32(part_rng.uniform(0.9, 1.1))
    noise = part_rng.normal(0.0, 3.0, size=img.shape).astype(np.float32)
    if defect == _GOOD:
        mask = np.zeros((size, size), bool)
    else:
        mask = _DEFECT_DRAWERS[defect](img, region, part, defect_rng)
    out = np.clip(np.round(img + noise), 0, 255).astype(np.uint8)
    return out, mask


# --------------------------------------------------------------------------- writing


def _write_png(path: Path, array: np.ndarray) -> None:
    data = cv2.cvtColor(array, cv2.COLOR_RGB2BGR) if array.ndim == 3 else array
    ok, buf = cv2.imencode(".png", data, _PNG_PARAMS)
    if not ok:
        raise OSError(f"PNG encoding failed for '{path}'")
    path.write_bytes(buf.tobytes())


def _check_args(
    classes: Sequence[str],
    counts: dict[str, int],
    image_size: int,
    grayscale_classes: Sequence[str],
) -> tuple[list[str], set[str]]:
    names = [classes] if isinstance(classes, str) else list(classes)
    if not names:
        raise ValueError(f"classes must name at least one of {SYNTHETIC_STYLES}")
    unknown = [c for c in names if c not in SYNTHETIC_STYLES]
    if unknown:
        raise ValueError(f"unknown synthetic class(es) {unknown}; available: {', '.join(SYNTHETIC_STYLES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"classes contains duplicates: {names}")
    gray = [grayscale_classes] if isinstance(grayscale_classes, str) else list(grayscale_classes)
    stray = [c for c in gray if c not in names]
    if stray:
        raise ValueError(f"grayscale_classes {stray} are not among the generated classes {names}")
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if counts["n_train_good"] < 1:
        raise ValueError("n_train_good must be at least 1 (training needs normal images)")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be an integer >= {MIN_IMAGE_SIZE}, got {image_size!r}")
    return names, set(gray)


def _generate(
    out: Path,
    classes: list[str],
    counts: dict[str, int],
    image_size: int,
    seed: int,
    gray: set[str],
) -> None:
    plan = [("train", _GOOD, counts["n_train_good"]), ("test", _GOOD, counts["n_test_good"])]
    plan += [("test", d, counts["n_test_defect"]) for d in SYNTHETIC_DEFECTS]
    for cls in classes:
        for split, defect, n in plan:
            img_dir = out / cls / split / defect
            img_dir.mkdir(parents=True, exist_ok=True)
            gt_dir = out / cls / "ground_truth" / defect
            if defect != _GOOD and n:
                gt_dir.mkdir(parents=True, exist_ok=True)
            defect_code = 0 if defect == _GOOD else 1 + SYNTHETIC_DEFECTS.index(defect)
            for i in range(n):
                keys = (_name_key(cls), _SPLIT_CODE[split], defect_code, i)
                image, mask = _render(cls, image_size, defect, _rng(seed, *keys, 0), _rng(seed, *keys, 1))
                if cls in gray:
                    image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
                stem = f"{i:03d}"
                _write_png(img_dir / f"{stem}.png", image)
                if defect != _GOOD:
                    _write_png(gt_dir / f"{stem}_mask.png", mask.astype(np.uint8) * 255)


def make_synthetic_dataset(
    root: str | os.PathLike[str],
    classes: Sequence[str] = ("tile", "disc"),
    n_train_good: int = 8,
    n_test_good: int = 6,
    n_test_defect: int = 4,
    image_size: int = 128,
    seed: int = 0,
    grayscale_classes: Sequence[str] = (),
    *,
    overwrite: bool = False,
) -> Path:
    """Write a complete MVTec-layout dataset under ``root`` and return ``root``.

    Per class: ``n_train_good`` train images, ``n_test_good`` normal test images and
    ``n_test_defect`` images *per defect type* in :data:`SYNTHETIC_DEFECTS`, with 0/255 masks
    at ``ground_truth/<defect>/<stem>_mask.png``. Classes in ``grayscale_classes`` are written
    as single-channel PNGs. The dataset is built in a temporary folder beside ``root`` and
    renamed into place, so an error never leaves a partial dataset. An existing non-empty
    ``root`` raises FileExistsError unless ``overwrite=True`` (then it is replaced).
    """
    counts = {"n_train_good": n_train_good, "n_test_good": n_test_good, "n_test_defect": n_test_defect}
    names, gray = _check_args(classes, counts, image_size, grayscale_classes)
    root = Path(root).expanduser().absolute()
    if root.exists():
        if not root.is_dir():
            raise FileExistsError(f"'{root}' exists and is not a folder; choose another dataset root")
        if any(root.iterdir()) and not overwrite:
            raise FileExistsError(
                f"'{root}' already exists and is not empty; pass overwrite=True or choose a new folder"
            )
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".partial", dir=root.parent))
    try:
        os.chmod(tmp, 0o755)
        _generate(tmp, names, counts, image_size, seed, gray)
        if root.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".old", dir=root.parent))
            old.rmdir()
            root.rename(old)
            tmp.rename(root)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root
