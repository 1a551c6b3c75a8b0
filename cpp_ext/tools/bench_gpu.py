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
    batch: int, in_ch: int, out_ch: int, grid: int, kernel: tuple[int, int], seed: int = 0
) -> dict[str, Any]:
    """fp32 CUDA inputs of one MDCI kernel: 'same' padding, offsets ~ N(0, 1.5) px, mask in [0, 2]."""
    import torch

    gen = torch.Generator(device="cuda").manual_seed(seed)
    kh, kw = kernel
    taps = kh * kw

    def randn(*shape: int) -> Any:
        return torch.randn(*shape, generator=gen, device="cuda")

    return {
        "x": randn(batch, in_ch, grid, grid),
        "weight": randn(out_ch, in_ch, kh, kw) / (in_ch * taps) ** 0.5,
        "offset": randn(batch, 2 * taps, grid, grid) * 1.5,
        "bias": randn(out_ch),
        "mask": 2 * torch.rand(batch, taps, grid, grid, generator=gen, device="cuda"),
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


def time_ms(fn: Any, repeats: int, warmup: int = 3) -> float:
    """Median milliseconds of fn() measured with CUDA events."""
    import torch

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
) -> list[dict[str, Any]]:
    """One row per (kernel shape, precision, algorithm), plus the PyTorch op's row per kernel shape."""
    import torch

    rows: list[dict[str, Any]] = []
    for kernel in kernels:
        inputs = make_inputs(batch, in_ch, out_ch, grid, kernel)
        with torch.no_grad():
            reference = torch_reference(inputs)
            scale = reference.abs().max().item()
            rows.append(
                {
                    "kernel": f"{kernel[0]}x{kernel[1]}",
                    "impl": "torch op (grid_sample+matmul)",
                    "dtype": "fp32",
                    "max_rel_diff": 0.0,
                    "ms": time_ms(lambda inputs=inputs: torch_reference(inputs), repeats),
                }
            )
            for half in (False, True):
                for algo_name, algo in (("tiled", bindings.ALGO_TILED), ("direct", bindings.ALGO_DIRECT)):
                    out = run_kernel(lib, bindings, inputs, half, algo)
                    diff = (out.float() - reference).abs().max().item() / max(scale, 1e-12)
                    ms = time_ms(lambda h=half, a=algo, i=inputs: run_kernel(lib, bindings, i, h, a), repeats)
                    rows.append(
                        {
                            "kernel": f"{kernel[0]}x{kernel[1]}",
                            "impl": f"cuda {algo_name}",
                            "dtype": "fp16" if half else "fp32",
                            "max_rel_diff": diff,
                            "ms": ms,
                        }
                    )
    return rows


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
@click.option("--repeats", default=20, show_default=True)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the rows as JSON.",
)
def main(
    lib_path: Path | None, batch: int, in_ch: int, out_ch: int, grid: int, repeats: int, json_path: Path | None
) -> None:
    """Compare and time the CUDA kernels against torch.ops.fgad.deform_conv2d."""
    try:
        import torch
    except ImportError as err:
        raise click.ClickException("needs PyTorch with CUDA: pip install 'fgad[train]'") from err
    if not torch.cuda.is_available():
        raise click.ClickException("no CUDA device visible to PyTorch; run this on a GPU machine")
    bindings = load_bindings()
    with tempfile.TemporaryDirectory() as tmp:
        path = lib_path or bindings.build_cuda_library(Path(tmp), ("native",))
        lib = bindings.DeformLibrary(path)
        rows = benchmark(lib, bindings, batch, in_ch, out_ch, grid, repeats)
    device = torch.cuda.get_device_name()
    click.echo(f"{device}; x [{batch}, {in_ch}, {grid}, {grid}] -> {out_ch} channels; median of {repeats}")
    click.echo(f"{'kernel':>6}  {'implementation':<30} {'dtype':<5} {'max|diff|/max|ref|':>18} {'ms':>9}")
    for row in rows:
        click.echo(
            f"{row['kernel']:>6}  {row['impl']:<30} {row['dtype']:<5} {row['max_rel_diff']:>18.2e} {row['ms']:>9.3f}"
        )
    if json_path is not None:
        from fgad.core.atomic import atomic_write_json

        payload = {"device": device, "batch": batch, "in_ch": in_ch, "out_ch": out_ch, "grid": grid, "rows": rows}
        atomic_write_json(json_path, payload)


if __name__ == "__main__":
    main()
