"""fgad-export: a checkpoint + one class (+ good reference images) -> a bundle for fgad-run."""

from __future__ import annotations

from pathlib import Path

import click

from fgad.cli.common import friendly_errors, setup_logging

ENGINES = ("onnx", "fp32", "fp16", "int8")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--checkpoint", "checkpoint", required=True, type=click.Path(path_type=Path),
              help="fgad-train output directory.")
@click.option("--class-name", required=True, help="Product class the bundle is for (its prompts are frozen in).")
@click.option("--refs", "refs_dir", type=click.Path(path_type=Path), default=None,
              help="Folder of good images of the class: CoCoOp conditioning, prompt filtering and few-shot memory. "
                   "Without it the bundle is zero-shot.")
@click.option("--engine", type=click.Choice(ENGINES), default="onnx", show_default=True,
              help="onnx; fp32/fp16/int8 are TensorRT engines (built by a later release, on the target machine).")
@click.option("--deform", type=click.Choice(["decomposed", "onnx"]), default="decomposed", show_default=True,
              help="Deformable conv as GridSample+MatMul (decomposed) or the ONNX DeformConv op (opset 19).")
@click.option("--text", "text_mode", type=click.Choice(["frozen", "bank"]), default="frozen", show_default=True,
              help="frozen: one filtered text pair; bank: all prompt embeddings, filtered per image in the graph.")
@click.option("--image-size", type=click.IntRange(min=1), default=None,
              help="Input size of the bundle (default: the checkpoint's); the position grid is resized.")
@click.option("--measure-on", "measure_dir", type=click.Path(path_type=Path), default=None,
              help="Folder (searched recursively) of images, good and defective, not the references, on which the "
                   "frozen-text approximation recorded in the manifest is measured. Default: the references.")
@click.option("--bank", "banks", multiple=True, help="Extra description bank (JSON {class: [phrases]}).")
@click.option("--opset", type=click.IntRange(16, None), default=19, show_default=True)
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Bundle directory to write.")
@click.option("-v", "--verbose", is_flag=True)
@friendly_errors
def main(checkpoint: Path, class_name: str, refs_dir: Path | None, engine: str, deform: str, text_mode: str,
         image_size: int | None, measure_dir: Path | None, banks: tuple[str, ...], opset: int, out_dir: Path,
         verbose: bool) -> None:
    """Write model.onnx, references.npz and manifest.json to OUT (docs/bundle.md)."""
    if engine != "onnx":
        raise click.ClickException(
            f"--engine {engine}: TensorRT engines are built by a later release of fgad-export (they need "
            "TensorRT on the target machine, for its GPU). Export --engine onnx now; fgad-run runs the ONNX "
            "bundle with onnxruntime."
        )
    setup_logging(verbose)
    import logging

    for noisy in ("onnxscript", "onnx_ir", "torch.onnx", "torch.export", "torch._export"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)
    import torch

    from fgad.export.bundle import list_reference_images, resize_model, sha256_file, write_bundle
    from fgad.export.onnx_export import ExportError
    from fgad.train.checkpoint import WEIGHTS_FILE, load_checkpoint

    refs = list_reference_images(refs_dir) if refs_dir is not None else None
    measure_on = (list_reference_images(measure_dir, recursive=True, what="images to measure on")
                  if measure_dir is not None else None)
    with torch.no_grad():
        model, _, meta = load_checkpoint(checkpoint)
        if banks:
            model.prompts.add_banks(banks)
        checkpoint_meta = {
            "checkpoint": str(checkpoint),
            "checkpoint_sha256": sha256_file(checkpoint / WEIGHTS_FILE),
            "pretrained": meta.get("pretrained"),
            "backbone_fingerprint": meta.get("backbone_fingerprint"),
        }
        if image_size is not None and image_size != model.cfg.backbone.image_size:
            model, note = resize_model(model, image_size, meta.get("pretrained"))
            checkpoint_meta["image_size_override"] = note
            checkpoint_meta["backbone_fingerprint"] = None  # the resized backbone has its own fingerprint
            click.echo(f"image size {note['trained']} -> {note['exported']}: position grid {note['position_grid']}")
    try:
        bundle = write_bundle(out_dir, model, model.cfg, class_name, refs, text_mode=text_mode, deform=deform,
                              checkpoint_meta=checkpoint_meta, opset=opset, approximation_images=measure_on)
    except (ExportError, FileExistsError) as err:
        raise click.ClickException(str(err)) from err

    import json

    manifest = json.loads((bundle / "manifest.json").read_text())
    parity = manifest["parity"]
    click.echo(f"parity onnxruntime vs torch on {parity['images']} {parity['inputs']}:")
    for key, value in parity.items():
        if key.startswith("max_abs_diff_"):
            click.echo(f"  {key[len('max_abs_diff_'):]}: max |diff| {value:.3g}")
    click.echo(f"  best_description: {parity['best_description_mismatches']} mismatches")
    approx = manifest["text"]["approximation"]
    click.echo(f"frozen text ({manifest['text']['mode']}, {manifest['text']['conditioning']}) vs the exact model: "
               f"anomaly map max {approx['max_abs_diff_anomaly_map']:.3g} "
               f"(mean {approx['mean_abs_diff_anomaly_map']:.3g}), "
               f"image score max {approx['max_abs_diff_image_score']:.3g} "
               f"(mean {approx['mean_abs_diff_image_score']:.3g})")
    click.echo(f"bundle: {bundle}")


if __name__ == "__main__":
    main()
