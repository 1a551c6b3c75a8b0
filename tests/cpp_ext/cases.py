"""Geometries and random inputs shared by the CPU-build and GPU tests of ``cpp_ext``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

import fgad.backbone.deform  # noqa: F401  (registers torch.ops.fgad.deform_conv2d)

#: Largest accepted |native - reference| for fp32 outputs (reference: the torch op in float64).
FP32_ATOL = 1e-5


@dataclass(frozen=True)
class Case:
    """One geometry; kernel = (kh, kw), padding symmetric (ph, pw)."""

    batch: int
    in_ch: int
    out_ch: int
    height: int
    width: int
    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    offset_groups: int = 1
    mask: bool = True
    bias: bool = True

    @property
    def pads(self) -> tuple[int, int, int, int]:
        return (self.padding[0], self.padding[1], self.padding[0], self.padding[1])


# Partial tiles everywhere (tile = 64 channels x 64 pixels x 16 column rows), one case with several
# tiles along both axes, non-square images, every attribute away from its default at least once.
CASES = [
    Case(2, 4, 6, 7, 8, (3, 3), padding=(1, 1)),
    Case(1, 3, 5, 6, 5, (1, 1), mask=False, bias=False),
    Case(2, 4, 6, 9, 7, (3, 2), stride=(2, 1), padding=(1, 0)),
    Case(1, 6, 4, 8, 9, (3, 3), padding=(2, 2), dilation=(2, 2), groups=2),
    Case(2, 8, 6, 7, 7, (1, 5), padding=(0, 2), groups=2, offset_groups=4, mask=False),
    Case(1, 6, 9, 6, 8, (5, 1), padding=(2, 0), groups=3, offset_groups=2, bias=False),
    Case(1, 4, 4, 5, 5, (7, 7), padding=(3, 3), offset_groups=2),
    Case(3, 2, 3, 4, 6, (2, 3), stride=(2, 2), padding=(1, 1), dilation=(1, 2)),
    Case(1, 5, 70, 9, 9, (3, 3), padding=(1, 1)),  # 2 channel tiles x 2 pixel tiles, 45 rows
    Case(2, 2, 2, 3, 3, (3, 3), padding=(2, 2), stride=(3, 3)),
]


def case_id(case: Case) -> str:
    return (
        f"n{case.batch}c{case.in_ch}o{case.out_ch}_{case.height}x{case.width}_k{case.kernel[0]}x{case.kernel[1]}"
        f"_s{case.stride[0]}{case.stride[1]}_p{case.padding[0]}{case.padding[1]}_d{case.dilation[0]}{case.dilation[1]}"
        f"_g{case.groups}og{case.offset_groups}{'_m' if case.mask else ''}{'_b' if case.bias else ''}"
    )


def out_size(case: Case) -> tuple[int, int]:
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = case.kernel, case.stride, case.padding, case.dilation
    return (
        (case.height + 2 * ph - dh * (kh - 1) - 1) // sh + 1,
        (case.width + 2 * pw - dw * (kw - 1) - 1) // sw + 1,
    )


def make_inputs(case: Case, seed: int = 0) -> dict[str, np.ndarray | None]:
    """float32 inputs; offsets ~ N(0, 2.5) so many samples fall partly or wholly outside the image,
    about a quarter rounded to integers (bilinear weights exactly 0/1), a few far outside."""
    rng = np.random.default_rng(seed)
    kh, kw = case.kernel
    taps = kh * kw
    h_out, w_out = out_size(case)
    offset = rng.normal(0.0, 2.5, (case.batch, 2 * case.offset_groups * taps, h_out, w_out))
    offset = np.where(rng.random(offset.shape) < 0.25, np.round(offset), offset)
    offset.flat[:: max(1, offset.size // 7)] = 1e4  # whole bilinear footprint outside
    arrays: dict[str, np.ndarray | None] = {
        "x": rng.normal(size=(case.batch, case.in_ch, case.height, case.width)),
        "weight": rng.normal(size=(case.out_ch, case.in_ch // case.groups, kh, kw)),
        "offset": offset,
        "bias": rng.normal(size=(case.out_ch,)) if case.bias else None,
        "mask": rng.uniform(0.0, 2.0, (case.batch, case.offset_groups * taps, h_out, w_out)) if case.mask else None,
    }
    return {k: None if v is None else np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()}


def torch_reference(case: Case, arrays: dict[str, np.ndarray | None]) -> np.ndarray:
    """torch.ops.fgad.deform_conv2d in float64 on the given (float32 or float16) values."""
    return reference_tensor(case, arrays).numpy()


def reference_tensor(case: Case, arrays: dict[str, np.ndarray | None], device: str = "cpu") -> torch.Tensor:
    """:func:`torch_reference` as a float64 tensor on ``device``."""
    t = {k: None if v is None else torch.from_numpy(v.astype(np.float64)).to(device) for k, v in arrays.items()}
    return torch.ops.fgad.deform_conv2d(
        t["x"],
        t["offset"],
        t["weight"],
        t["bias"],
        t["mask"],
        list(case.stride),
        list(case.padding),
        list(case.dilation),
        case.groups,
        case.offset_groups,
    )
