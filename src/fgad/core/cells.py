"""The 3x3 grid of position cells over a square image: names, pixel bands and the cell of a coordinate.

FiLo++'s position prompts, its box priors, FineGrainedAD's caption locations and the runtime's reported
cell all use this one grid. Torch-free.
"""

from __future__ import annotations

import math

__all__ = ["GRID", "NUM_POSITIONS", "POSITIONS", "position_bands", "position_index"]

#: cells per side
GRID = 3

POSITIONS: tuple[str, ...] = (
    "top left",
    "top",
    "top right",
    "left",
    "center",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)
NUM_POSITIONS = 9


def position_bands(size: int) -> list[tuple[int, int]]:
    """Split pixel coordinates ``[0, size)`` of one axis into 3 inclusive bands.

    Rule: the band edges are ``e_k = round(k * size / 3)`` for ``k = 1, 2``
    (``k * size / 3`` never has a fractional part of exactly 0.5, so the
    rounding mode does not matter; it is computed exactly in integers as
    ``(2 * k * size + 3) // 6``). The bands are ``[0, e1 - 1]``,
    ``[e1, e2 - 1]`` and ``[e2, size - 1]``; their widths differ by at most 1.
    For ``size = 518`` this gives ``[0, 172], [173, 344], [345, 517]``.
    """
    if isinstance(size, bool) or not isinstance(size, int):
        raise TypeError(f"position_bands() needs an integer image size in pixels, got {size!r}.")
    if size < GRID:
        raise ValueError(f"Image size {size} is too small for a 3x3 position grid; use a size of at least 3.")
    e1 = (2 * size + 3) // 6
    e2 = (4 * size + 3) // 6
    return [(0, e1 - 1), (e1, e2 - 1), (e2, size - 1)]


def _band_of(coord: float, size: int, bands: list[tuple[int, int]]) -> int:
    if math.isnan(coord):
        raise ValueError("position_index() got a NaN coordinate; pass finite pixel coordinates.")
    # Clamp to the image, then locate the pixel containing the coordinate.
    pixel = min(max(coord, 0.0), float(size - 1))
    pixel_i = int(math.floor(pixel))
    for i, (_, hi) in enumerate(bands):
        if pixel_i <= hi:
            return i
    return len(bands) - 1  # unreachable after clamping; keeps the type checker happy


def position_index(x: float, y: float, size: int) -> int:
    """Grid cell (``0..8``, row-major) of pixel coordinate ``(x, y)``.

    ``x`` is the column and ``y`` the row in an image of ``size x size``
    pixels; a fractional coordinate belongs to the pixel ``floor(coord)``.
    Coordinates outside ``[0, size)`` are clamped to the nearest edge cell.
    """
    bands = position_bands(size)
    col = _band_of(float(x), size, bands)
    row = _band_of(float(y), size, bands)
    return row * GRID + col
