"""fgad-bench: latency per stage across backends and precisions, FLOPs and peak fraction, charts.

    fgad-bench --config tiny-test --backends torch,ort --precisions fp32,int8 --shots 0,4 --frames 20 \\
        --out benchmarks/results/cpu/tiny
    fgad-bench --bundle bundle/ --backends ort,trt --precisions fp32,fp16,int8 --images frames/ --out results/

Writes bench.json (everything), bench.md (tables) and bench.png (latency by stage) to --out.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from fgad.cli.common import check_outputs, friendly_errors, setup_logging


def _split(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, ...]:
    items = tuple(v.strip().lower() for v in value.split(",") if v.strip())
    if not items:
        raise click.BadParameter("give a comma-separated list")
    return items


#: options always written into the recorded command, even at their defaults (they define the table)
_ALWAYS = ("backends", "precisions", "shots", "frames", "batch")


def _command(ctx: click.Context) -> str:
    """The command line that reproduces this run: the defining options and every one not at its default."""
    parts = ["fgad-bench"]
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or param.name in ("progress", "verbose"):
            continue
        value = ctx.params.get(param.name or "")
        default = param.get_default(ctx)
        if param.callback is not None and isinstance(default, str):
            default = param.callback(ctx, param, default)  # compare parsed with parsed
        if value is None or (value == default and param.name not in _ALWAYS):
            continue
        if param.is_flag:
            names = param.opts if value else param.secondary_opts
            parts.append(names[0])
        else:
            text = ",".join(str(v) for v in value) if isinstance(value, tuple) else str(value)
            parts += [param.opts[0], shlex.quote(text)]
    return " ".join(parts)


def _shots(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, ...]:
    try:
        shots = tuple(sorted({int(v) for v in value.split(",") if v.strip()}))
    except ValueError:
        raise click.BadParameter(f"must be comma-separated counts like 0,4, got {value!r}") from None
    if not shots or min(shots) < 0:
        raise click.BadParameter(f"must be counts >= 0, got {value!r}")
    return shots


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--bundle", "bundle_dir", type=click.Path(path_type=Path, exists=True, file_okay=False), default=None,
              help="Time this bundle (torch rows are skipped: a bundle holds no PyTorch model).")
@click.option("--config", "config_name", default=None,
              help="Build this variant with random weights and export a bundle from it, so every backend runs the "
                   "same weights (name like tiny-test, or a YAML/JSON path).")
@click.option("--backends", default="torch,ort", show_default=True, callback=_split,
              help="Comma-separated: torch, ort, trt.")
@click.option("--precisions", default="fp32", show_default=True, callback=_split,
              help="Comma-separated: fp32, fp16, bf16, int8 (torch fp16/bf16: torch.autocast; bf16 is torch-only).")
@click.option("--image-size", type=click.IntRange(min=1), default=None,
              help="Input size (--config: overrides the variant's; --bundle: must match it).")
@click.option("--shots", default="0,4", show_default=True, callback=_shots,
              help="Reference images in the few-shot memory; comma-separated counts are timed one after another.")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True, help="Frames per call.")
@click.option("--frames", type=click.IntRange(min=1), default=20, show_default=True, help="Timed frames per row.")
@click.option("--warmup", type=click.IntRange(min=0), default=3, show_default=True, help="Untimed calls per row.")
@click.option("--images", type=click.Path(path_type=Path, exists=True, file_okay=False), default=None,
              help="Folder of frames (searched recursively); default: synthetic images at the input size.")
@click.option("--refs", type=click.Path(path_type=Path, exists=True, file_okay=False), default=None,
              help="Folder of good images for the few-shot memory (with --images).")
@click.option("--calib", type=click.Path(path_type=Path, exists=True, file_okay=False), default=None,
              help="Folder of normal images for int8 calibration (default: --refs, or the synthetic good images).")
@click.option("--calib-limit", type=click.IntRange(min=1), default=32, show_default=True,
              help="Calibration images to use (entropy calibration holds every activation of every image in memory: "
                   "about 12 GB for 400 images at ViT-B-16 size).")
@click.option("--calib-method", type=click.Choice(["entropy", "percentile", "minmax"]), default="entropy",
              show_default=True, help="int8 calibration method (minmax needs the least memory).")
@click.option("--class-name", default=None, help="Class of the --images frames (--config mode).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where the torch and onnxruntime rows run (auto: cuda when available).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads of torch and onnxruntime.")
@click.option("--compile/--no-compile", "use_compile", default=True, show_default=True,
              help="Also time torch.compile of the graph (the first call compiles; failures are recorded).")
@click.option("--compile-precisions", default=None, callback=lambda c, p, v: None if v is None else _split(c, p, v),
              help="torch.compile only these of --precisions (default: all; compiling takes a minute per row at "
                   "ViT-L size).")
@click.option("--torch-model/--no-torch-model", default=True, show_default=True,
              help="Also time FiLoPlusPlus.forward as trained (CoCoOp text encoded per image).")
@click.option("--deform", type=click.Choice(["decomposed", "onnx"]), default="decomposed", show_default=True,
              help="Deformable-conv flavour of the exported bundle (--config mode): decomposed (GridSample + MatMul) "
                   "or onnx (the ONNX DeformConv op, opset 19; what fgad-export --deform native writes).")
@click.option("--peak-tflops", type=float, default=None,
              help="Use this peak (TFLOP/s) instead of the built-in assumption for the peak fraction.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random heads and images.")
@click.option("--chart/--no-chart", default=True, show_default=True, help="Write bench.png (needs fgad[plot]).")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Results folder.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show progress bars.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging (also the libraries' INFO lines).")
@friendly_errors
def main(bundle_dir: Path | None, config_name: str | None, backends: tuple[str, ...], precisions: tuple[str, ...],
         image_size: int | None, shots: tuple[int, ...], batch: int, frames: int, warmup: int, images: Path | None,
         refs: Path | None, calib: Path | None, calib_limit: int | None, calib_method: str, class_name: str | None,
         device: str,
         threads: int | None, use_compile: bool, compile_precisions: tuple[str, ...] | None, torch_model: bool,
         deform: str, peak_tflops: float | None,
         seed: int, chart: bool, out_dir: Path, progress: bool, verbose: bool) -> None:
    """Time every backend x precision x shots configuration; write bench.json, bench.md, bench.png to OUT."""
    setup_logging(verbose)
    import logging

    logging.getLogger("fgad.export").setLevel(logging.DEBUG if verbose else logging.WARNING)  # its bundles' logs
    if (bundle_dir is None) == (config_name is None):
        raise click.UsageError("pass exactly one of --bundle or --config")
    if images is None and (refs is not None or class_name is not None):
        raise click.UsageError("--refs and --class-name go with --images")
    check_outputs(("--out", out_dir, "dir"))  # before the minutes of timing

    from fgad.bench.benchmark import BenchSpec, run_benchmark
    from fgad.bench.report import PLOT_EXTRA_MESSAGE, write_results

    if chart:
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            raise click.ClickException(f"--chart: {PLOT_EXTRA_MESSAGE} (or pass --no-chart)")
    spec = BenchSpec(
        bundle=bundle_dir, config=config_name, backends=backends, precisions=precisions, shots=shots,
        image_size=image_size, batch=batch, frames=frames, warmup=warmup, images=images, refs=refs, calib=calib,
        calib_limit=calib_limit, calib_method=calib_method, class_name=class_name, device=device, threads=threads,
        compile=use_compile, compile_precisions=compile_precisions,
        torch_model=torch_model, deform=deform, seed=seed, peak_tflops=peak_tflops, progress=progress,
        command=_command(click.get_current_context()),
    )
    result = run_benchmark(spec)
    paths = write_results(result, out_dir, chart=chart)
    click.echo(paths["markdown"].read_text())
    click.echo("wrote " + ", ".join(str(p) for p in paths.values()))


if __name__ == "__main__":
    main()
