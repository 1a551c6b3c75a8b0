"""Write the FgadDeformConv2d golden files, ``cpp_ext/deformConv2dPlugin/golden/<case>.npz``.

Each file is one small geometry (:data:`GEOMETRIES`): seeded float32 inputs and the output of
``torch.ops.fgad.deform_conv2d`` evaluated in float64 on them (``Y``) and on the same inputs rounded to
fp16 (``Y_fp16``); the format is :mod:`golden_io`'s. The committed files are what ``check_golden.py``
compares a plugin build with on a device without torch, and what ``tests/cpp_ext/test_golden.py``
compares the CPU build with; that test also regenerates them and expects the same values, so rerun
this script only when the op or :data:`GEOMETRIES` change on purpose.

Run from the repository root with the training extra installed (torch)::

    python cpp_ext/tools/make_golden.py                   # rewrite the committed files
    python cpp_ext/tools/make_golden.py --out /tmp/gold   # somewhere else
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

import fgad.backbone.deform  # noqa: F401  (registers torch.ops.fgad.deform_conv2d)


def _load_sibling(stem: str) -> ModuleType:
    """A module of this folder by path (the folder is not a package), once per process."""
    name = f"fgad_cpp_ext_{stem}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{stem}.py"))
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {stem}.py next to {Path(__file__).name}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


golden_io = _load_sibling("golden_io")

#: Offsets pushed this far move a tap's whole bilinear footprint outside any of these images.
FAR = 1e4


@dataclass(frozen=True)
class Geometry:
    """One golden case; padding is symmetric (the torch op's), written to the file as ONNX pads."""

    name: str
    description: str
    seed: int
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
    integer_fraction: float = 0.25  #: share of offsets rounded to integers (bilinear weights exactly 0 / 1)
    far_every: int = 11  #: every n-th offset value is +-FAR

    @property
    def fields(self) -> dict[str, object]:
        (ph, pw) = self.padding
        return {
            "strides": list(self.stride),
            "pads": [ph, pw, ph, pw],
            "dilations": list(self.dilation),
            "group": self.groups,
            "offset_group": self.offset_groups,
        }


# Tiny on purpose (each file a few KB): together they move every field away from its default, with and
# without mask and bias, fractional and integer offsets, taps partly and wholly outside the image.
GEOMETRIES = (
    Geometry("stride_pad_mask", "3x3, stride (2, 1), pads 1, mask and bias, fractional offsets", seed=1,
             batch=1, in_ch=2, out_ch=2, height=4, width=5, kernel=(3, 3), stride=(2, 1), padding=(1, 1)),
    Geometry("dilation_groups_nomask", "2x2, dilation (2, 1), pads (1, 0), group 2, no mask", seed=2,
             batch=1, in_ch=4, out_ch=2, height=4, width=4, kernel=(2, 2), padding=(1, 0), dilation=(2, 1),
             groups=2, mask=False),
    Geometry("offset_groups_batch2", "1x3, pads (0, 1), group 2, offset_group 2, batch 2, mask, no bias", seed=3,
             batch=2, in_ch=4, out_ch=2, height=3, width=3, kernel=(1, 3), padding=(0, 1), groups=2,
             offset_groups=2, bias=False),
    Geometry("stride3_outside_integer", "3x3, stride 3, pads 2, integer offsets, many taps outside the image",
             seed=4, batch=1, in_ch=2, out_ch=2, height=3, width=3, kernel=(3, 3), stride=(3, 3), padding=(2, 2),
             integer_fraction=1.0, far_every=5),
)


def make_inputs(geometry: Geometry) -> dict[str, np.ndarray | None]:
    """Seeded float32 inputs: offsets ~ N(0, 1.5) px (on these small images many taps fall partly outside),
    a share rounded to integers, every ``far_every``-th value at +-FAR; mask in [0, 2)."""
    rng = np.random.default_rng(geometry.seed)
    kh, kw = geometry.kernel
    taps = geometry.offset_groups * kh * kw
    ho, wo = golden_io.output_size(
        (geometry.batch, geometry.in_ch, geometry.height, geometry.width), (geometry.out_ch, 1, kh, kw),
        geometry.fields,
    )
    offset = rng.normal(0.0, 1.5, (geometry.batch, 2 * taps, ho, wo))
    offset = np.where(rng.random(offset.shape) < geometry.integer_fraction, np.round(offset), offset)
    far = offset.flat[:: geometry.far_every]
    offset.flat[:: geometry.far_every] = np.where(np.arange(far.size) % 2 == 0, FAR, -FAR)
    arrays: dict[str, np.ndarray | None] = {
        "X": rng.normal(size=(geometry.batch, geometry.in_ch, geometry.height, geometry.width)),
        "W": rng.normal(size=(geometry.out_ch, geometry.in_ch // geometry.groups, kh, kw)),
        "offset": offset,
        "B": rng.normal(size=(geometry.out_ch,)) if geometry.bias else None,
        "mask": rng.uniform(0.0, 2.0, (geometry.batch, taps, ho, wo)) if geometry.mask else None,
    }
    return {k: None if v is None else np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()}


def reference(geometry: Geometry, inputs: dict[str, np.ndarray | None]) -> np.ndarray:
    """torch.ops.fgad.deform_conv2d in float64 on ``inputs`` (any float dtype)."""
    t = {k: None if v is None else torch.from_numpy(v.astype(np.float64)) for k, v in inputs.items()}
    return torch.ops.fgad.deform_conv2d(
        t["X"], t["offset"], t["W"], t["B"], t["mask"], list(geometry.stride), list(geometry.padding),
        list(geometry.dilation), geometry.groups, geometry.offset_groups,
    ).numpy()  # fmt: skip


def build_case(geometry: Geometry) -> golden_io.GoldenCase:
    inputs = make_inputs(geometry)
    rounded = {k: None if v is None else v.astype(np.float16) for k, v in inputs.items()}
    return golden_io.GoldenCase(
        name=geometry.name,
        description=geometry.description,
        seed=geometry.seed,
        inputs=inputs,
        fields=geometry.fields,
        expected=reference(geometry, inputs),
        expected_fp16=reference(geometry, rounded),
    )


def write_all(out_dir: Path) -> list[Path]:
    """Write every geometry's file into ``out_dir`` (created if needed); returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [golden_io.save_golden(build_case(g), out_dir / f"{g.name}.npz") for g in GEOMETRIES]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=golden_io.GOLDEN_DIR, help="output folder (default: %(default)s)")
    args = parser.parse_args(argv)
    paths = write_all(args.out)
    for path in paths:
        print(f"{path}  {path.stat().st_size} bytes")
    print(f"{len(paths)} files, {sum(p.stat().st_size for p in paths)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
