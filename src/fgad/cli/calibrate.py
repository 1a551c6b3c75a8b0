"""fgad-calibrate: an fp32 ONNX bundle + normal images -> an int8 (Q/DQ) bundle (docs/int8.md)."""

from __future__ import annotations

from pathlib import Path

import click

from fgad.cli.common import check_outputs, friendly_errors, setup_logging

METHODS = ("entropy", "percentile", "minmax")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--bundle", "bundle_dir", required=True, type=click.Path(path_type=Path),
              help="fp32 ONNX bundle written by fgad-export.")
@click.option("--calib-dir", type=click.Path(path_type=Path), default=None,
              help="Folder of normal (defect-free) images of the class to calibrate on. Default: the bundle's "
                   "reference images, if at least 8 of them still exist where they were exported from. An unreadable "
                   "image is refused by name, not skipped.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Folder of the int8 bundle to write (a new folder, or an earlier bundle to replace).")
@click.option("--method", type=click.Choice(METHODS), default="entropy", show_default=True,
              help="How activation ranges are chosen from the calibration histograms.")
@click.option("--percentile", type=click.FloatRange(0, 100, min_open=True), default=99.999, show_default=True,
              help="Percentile of |activation| for --method percentile.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Use at most N calibration images (a seeded random subset).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the --limit subset.")
@click.option("--sign", "sign_key", type=click.Path(path_type=Path), default=None,
              help="Ed25519 private key (PEM; fgad-sign keygen) that signs the int8 bundle's manifest digest, for "
                   "fgad-run --trust. Needs fgad[sign].")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging (also the libraries' INFO lines).")
@friendly_errors
def main(bundle_dir: Path, calib_dir: Path | None, out_dir: Path, method: str, percentile: float,
         limit: int | None, seed: int, sign_key: Path | None, verbose: bool) -> None:
    """Write OUT: a copy of BUNDLE whose model.onnx is the Q/DQ int8 graph (runs in onnxruntime; TensorRT builds
    an int8 engine from it)."""
    check_outputs(("--out", out_dir, "bundle"))
    setup_logging(verbose)
    import json

    from fgad.bundle import QUANTIZATION_REPORT_FILE
    from fgad.bundle.staging import signing_key
    from fgad.calibration.bundle import quantize_bundle
    from fgad.calibration.qdq import QuantizationError

    key = signing_key(sign_key)  # a bad key fails before calibration
    try:
        out = quantize_bundle(bundle_dir, out_dir, calib_dir, method=method, limit=limit, percentile=percentile,
                              seed=seed, sign=key)
    except (QuantizationError, FileExistsError, NotADirectoryError, ImportError) as err:
        raise click.ClickException(str(err)) from err
    info = json.loads((out / "manifest.json").read_text())["quantization"]
    check = info["check"]
    click.echo(f"calibrated ({info['method']}) on {info['images']} images from {info['image_source']}")
    click.echo("int8 nodes: " + ", ".join(f"{op} {n}" for op, n in info["quantized_nodes"].items()))
    click.echo("kept float: " + ", ".join(f"{fam} ({v['nodes']})" for fam, v in info["kept_float"].items()))
    click.echo(f"model: {info['fp32_bytes'] / 2**20:.1f} MiB fp32 -> {info['int8_bytes'] / 2**20:.1f} MiB int8")
    click.echo(f"int8 vs fp32 on the calibration images: vl_map correlation min {check['vl_map_corr_min']:.4f}, "
               f"global_prob max |diff| {check['global_prob_max_abs_diff']:.3g}")
    click.echo(f"references: {info['references']}")
    click.echo(f"bundle: {out} (every kept-float node: {out / QUANTIZATION_REPORT_FILE})")


if __name__ == "__main__":
    main()
