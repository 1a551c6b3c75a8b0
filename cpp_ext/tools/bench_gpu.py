"""Check and time the CUDA deformable-convolution kernels against the project's PyTorch op on a GPU.

Run from the repository root on a machine with a CUDA GPU and the training extra installed::

    python cpp_ext/tools/bench_gpu.py                       # MDCI stage of FiLo++ ViT-L (1024 -> 768, 37x37)
    python cpp_ext/tools/bench_gpu.py --batch 8 --in-ch 768 --out-ch 512 --grid 24 --json out.json
    python cpp_ext/tools/bench_gpu.py --lib cpp_ext/build/libfgad_deform_cuda.so   # a CMake build

Without ``--lib`` it compiles ``deformConv2dKernel.cu`` for this GPU (``nvcc -arch=native``) into a
temporary folder. For each MDCI kernel shape it reports, for fp32 and fp16 and both algorithms
(tiled implicit GEMM, direct), the largest difference from ``torch.ops.fgad.deform_conv2d`` in fp32
(relative to the largest output) and the median time over ``--repeats`` runs, next to the PyTorch
op's own time (``grid_sample`` + matmul, fp32).
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

import click

MDCI_KERNELS = ((1, 1), (3, 3), (5, 5), (7, 7), (1, 5), (5, 1))
#: The MDCI deformable convolutions of the shipped variants: (name, encoder width D -> embedding C, token grid)
MDCI_SHAPES = (("vitb16-224", 768, 512, 14), ("vitl14-336", 1024, 768, 24), ("vitl14-518", 1024, 768, 37))
#: the dry run's shape (CPU, seconds)
TINY_SHAPE = ("tiny", 8, 6, 5)
#: largest accepted max|out - torch op| / max|torch op|: fp32 differs in summation order and in the fp32
#: rounding of sampling positions; fp16 rounds inputs and output to 11 bits (the reference sees fp32 inputs)
BOUNDS = {"fp32": 1e-4, "fp16": 1e-2}


def load_bindings() -> ModuleType:
    """deform_ctypes.py from this folder (the script is not part of an installed package)."""
    name = "fgad_cpp_ext_deform_ctypes"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("deform_ctypes.py"))
    if spec is None or spec.loader is None:
        raise ImportError("cannot load deform_ctypes.py next to bench_gpu.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def make_inputs(
    batch: int, in_ch: int, out_ch: int, grid: int, kernel: tuple[int, int], seed: int = 0, device: str = "cuda"
) -> dict[str, Any]:
    """fp32 inputs of one MDCI kernel: 'same' padding, offsets ~ N(0, 1.5) px, mask in [0, 2]."""
    import torch

    gen = torch.Generator(device=device).manual_seed(seed)
    kh, kw = kernel
    taps = kh * kw

    def randn(*shape: int) -> Any:
        return torch.randn(*shape, generator=gen, device=device)

    return {
        "x": randn(batch, in_ch, grid, grid),
        "weight": randn(out_ch, in_ch, kh, kw) / (in_ch * taps) ** 0.5,
        "offset": randn(batch, 2 * taps, grid, grid) * 1.5,
        "bias": randn(out_ch),
        "mask": 2 * torch.rand(batch, taps, grid, grid, generator=gen, device=device),
        "padding": (kh // 2, kw // 2),
    }


def torch_reference(inputs: dict[str, Any]) -> Any:
    import torch

    import fgad.backbone.deform  # noqa: F401  (registers torch.ops.fgad.deform_conv2d)

    return torch.ops.fgad.deform_conv2d(
        inputs["x"],
        inputs["offset"],
        inputs["weight"],
        inputs["bias"],
        inputs["mask"],
        [1, 1],
        list(inputs["padding"]),
        [1, 1],
        1,
        1,
    )


def torchvision_op(inputs: dict[str, Any]) -> Any:
    """``torchvision.ops.deform_conv2d`` (DCNv2 with mask; same offset layout as the project's op)."""
    from torchvision.ops import deform_conv2d

    return deform_conv2d(inputs["x"], inputs["offset"], inputs["weight"], inputs["bias"],
                         padding=inputs["padding"], mask=inputs["mask"])


def torchvision_status(device: str) -> str | None:
    """None when torchvision's deform_conv2d runs on ``device`` here, else why not."""
    try:
        import torch

        inputs = make_inputs(1, 2, 2, 3, (3, 3), device=device)
        torchvision_op(inputs)
        if device == "cuda":
            torch.cuda.synchronize()
    except Exception as exc:  # an ImportError, or C++ ops that cannot load
        return f"torchvision.ops.deform_conv2d cannot run on {device} here: {type(exc).__name__}: {str(exc)[:200]}"
    return None


def run_kernel(lib: Any, bindings: ModuleType, inputs: dict[str, Any], half: bool, algo: int) -> Any:
    """One call of the CUDA kernels on the current stream; returns the output tensor."""
    import torch

    dtype = torch.float16 if half else torch.float32
    tensors = [inputs[k].to(dtype).contiguous() for k in ("x", "weight", "offset", "bias", "mask")]
    ph, pw = inputs["padding"]
    shape = lib.make_shape(tensors[0].shape, tensors[1].shape, (1, 1), (ph, pw, ph, pw), (1, 1))
    out = torch.empty(shape.batch, shape.outChannels, shape.outH, shape.outW, device="cuda", dtype=dtype)
    lib.run_cuda(
        shape,
        bindings.FLOAT16 if half else bindings.FLOAT32,
        algo,
        [t.data_ptr() for t in tensors],
        out.data_ptr(),
        torch.cuda.current_stream().cuda_stream,
    )
    return out


def time_ms(fn: Any, repeats: int, warmup: int = 3, device: str = "cuda") -> float:
    """Median milliseconds of fn(), measured with CUDA events (wall clock on the CPU)."""
    import time

    import torch

    if device != "cuda":
        for _ in range(warmup):
            fn()
        wall = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            wall.append((time.perf_counter() - t0) * 1000.0)
        return statistics.median(wall)
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def benchmark(
    lib: Any,
    bindings: ModuleType,
    batch: int,
    in_ch: int,
    out_ch: int,
    grid: int,
    repeats: int,
    kernels: tuple[tuple[int, int], ...] = MDCI_KERNELS,
    shape_name: str = "",
    device: str = "cuda",
    torchvision: bool = True,
) -> list[dict[str, Any]]:
    """One row per (kernel shape, precision, algorithm), plus the PyTorch op's and torchvision's rows per kernel.

    ``lib`` None: no CUDA kernels (the CPU dry run); ``torchvision`` False: no torchvision anchor row.
    Every row has ``label``, ``dtype``, ``ms`` and, where it is compared with the torch op, ``error``
    (max |diff| / max |ref|) and its ``bound``.
    """
    import torch

    rows: list[dict[str, Any]] = []
    where = f"{shape_name} " if shape_name else ""
    for kernel in kernels:
        inputs = make_inputs(batch, in_ch, out_ch, grid, kernel, device=device)
        name = f"{kernel[0]}x{kernel[1]}"

        def row(impl: str, dtype: str, ms: float, error: float | None, name: str = name) -> dict[str, Any]:
            return {"shape": shape_name, "kernel": name, "impl": impl, "dtype": dtype, "label": f"{where}{name} {impl}",
                    "batch": batch, "in_ch": in_ch, "out_ch": out_ch, "grid": grid, "ms": ms,
                    "max_rel_diff": error, "error": error, "bound": None if error is None else BOUNDS[dtype]}

        with torch.no_grad():
            reference = torch_reference(inputs)
            scale = max(reference.abs().max().item(), 1e-12)
            rows.append(row("torch op (grid_sample+matmul)", "fp32",
                            time_ms(lambda inputs=inputs: torch_reference(inputs), repeats, device=device), None))
            if torchvision:
                out = torchvision_op(inputs)
                diff = (out.float() - reference).abs().max().item() / scale
                rows.append(row("torchvision deform_conv2d", "fp32",
                                time_ms(lambda inputs=inputs: torchvision_op(inputs), repeats, device=device), diff))
            if lib is None:
                continue
            for half in (False, True):
                for algo_name, algo in (("tiled", bindings.ALGO_TILED), ("direct", bindings.ALGO_DIRECT)):
                    out = run_kernel(lib, bindings, inputs, half, algo)
                    diff = (out.float() - reference).abs().max().item() / scale
                    if not torch.isfinite(out).all():
                        diff = float("inf")
                    ms = time_ms(lambda h=half, a=algo, i=inputs: run_kernel(lib, bindings, i, h, a), repeats)
                    rows.append(row(f"cuda {algo_name}", "fp16" if half else "fp32", ms, diff))
    return rows


def run_shapes(lib: Any, bindings: ModuleType, shapes: Any, repeats: int, device: str = "cuda"
               ) -> dict[str, Any]:
    """:func:`benchmark` over ``shapes`` ((name, in_ch, out_ch, grid), batch 1), with what was skipped and why."""
    import torch

    skipped = []
    tv_reason = torchvision_status(device)
    if tv_reason:
        skipped.append(tv_reason)
    if lib is None:
        skipped.append("CUDA kernels (tiled, direct; fp32, fp16): no CUDA device in this run")
    rows = []
    for name, in_ch, out_ch, grid in shapes:
        rows += benchmark(lib, bindings, 1, in_ch, out_ch, grid, repeats, shape_name=name, device=device,
                          torchvision=tv_reason is None)
    return {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "repeats": repeats,
            "bounds": BOUNDS, "rows": rows, "skipped": skipped,
            "timing": "median of CUDA-event times" if device == "cuda" else "median wall time"}


@click.command()
@click.option(
    "--lib",
    "lib_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A built libfgad_deform_cuda.so (default: compile one for this GPU into a temp folder).",
)
@click.option("--batch", default=1, show_default=True)
@click.option("--in-ch", default=1024, show_default=True, help="Input channels (ViT-L width).")
@click.option("--out-ch", default=768, show_default=True, help="Output channels (CLIP embedding).")
@click.option("--grid", default=37, show_default=True, help="Token grid side (518 / 14).")
@click.option("--mdci-shapes", is_flag=True, help="Every MDCI shape of ViT-B/16@224 and ViT-L/14@336/518 (batch 1).")
@click.option("--repeats", default=20, show_default=True)
@click.option("--build", "build_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Only compile the CUDA library for this GPU into this folder and print its path.")
@click.option("--dry", is_flag=True, help="CPU only: the torch op and torchvision at a tiny shape, CUDA skipped.")
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the rows as JSON.",
)
def main(
    lib_path: Path | None, batch: int, in_ch: int, out_ch: int, grid: int, mdci_shapes: bool, repeats: int,
    build_dir: Path | None, dry: bool, json_path: Path | None
) -> None:
    """Compare and time the CUDA kernels against torch.ops.fgad.deform_conv2d and torchvision."""
    try:
        import torch
    except ImportError as err:
        raise click.ClickException("needs PyTorch with CUDA: pip install 'fgad[train]'") from err
    bindings = load_bindings()
    if build_dir is not None:
        if bindings.find_nvcc() is None:
            raise click.ClickException("nvcc not found: put the CUDA toolkit's bin/ on PATH")
        build_dir.mkdir(parents=True, exist_ok=True)
        click.echo(bindings.build_cuda_library(build_dir, ("native",)))
        return
    if not dry and not torch.cuda.is_available():
        raise click.ClickException("no CUDA device visible to PyTorch; run this on a GPU machine (or pass --dry)")
    shapes = (TINY_SHAPE,) if dry else MDCI_SHAPES if mdci_shapes else (("", in_ch, out_ch, grid),)
    with tempfile.TemporaryDirectory() as tmp:
        lib = None
        if not dry:
            lib = bindings.DeformLibrary(lib_path or bindings.build_cuda_library(Path(tmp), ("native",)))
        if mdci_shapes or dry:
            result = run_shapes(lib, bindings, shapes, repeats, device="cpu" if dry else "cuda")
        else:
            result = {"device": torch.cuda.get_device_name(), "batch": batch, "in_ch": in_ch, "out_ch": out_ch,
                      "grid": grid, "rows": benchmark(lib, bindings, batch, in_ch, out_ch, grid, repeats,
                                                      torchvision=torchvision_status("cuda") is None)}
    click.echo(f"{result['device']}; median of {repeats}")
    click.echo(f"{'shape':<11} {'kernel':>6}  {'implementation':<30} {'dtype':<5} {'max|diff|/max|ref|':>18} {'ms':>9}")
    for row in result["rows"]:
        err = "-" if row["error"] is None else f"{row['error']:.2e}"
        click.echo(f"{row['shape']:<11} {row['kernel']:>6}  {row['impl']:<30} {row['dtype']:<5} {err:>18} "
                   f"{row['ms']:>9.3f}")
    for reason in result.get("skipped", []):
        click.echo(f"skipped: {reason}")
    if json_path is not None:
        from fgad.core.atomic import atomic_write_json

        atomic_write_json(json_path, result)
    over = [r["label"] + f" {r['dtype']}" for r in result["rows"]
            if r["error"] is not None and not r["error"] <= r["bound"]]
    if over:
        raise click.ClickException(f"over the bound: {', '.join(over)}")


if __name__ == "__main__":
    main()
