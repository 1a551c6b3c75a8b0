"""fgad-eval: image/pixel AUROC, AUPRO and F1-max of a checkpoint, with overlays."""

from __future__ import annotations

from pathlib import Path

import click

from fgad.cli.common import check_outputs, friendly_errors, setup_logging, split_classes


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None, help="fgad-train output directory.")
@click.option("--config", "config_name", default=None,
              help="Evaluate an untrained model of this variant instead of a checkpoint.")
@click.option("--data", "data_root", required=True, type=click.Path(path_type=Path), help="Dataset root.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Output directory.")
@click.option("--shots", type=click.IntRange(0, 64), default=0, show_default=True,
              help="Normal reference images per class (0 = zero-shot).")
@click.option("--classes", multiple=True, help="Evaluate these classes only (comma-separated or repeated).")
@click.option("--pretrained", default=None, help="Override the weights source (tag, file, local-dir:DIR).")
@click.option("--bank", "banks", multiple=True, help="Extra description bank (JSON {class: [phrases]}).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the reference-image choice.")
@click.option("--box-prior", type=click.Choice(["none", "objectness", "grounding-dino"]), default="none",
              show_default=True,
              help="DefLoc box prior: none (whole image, all 9 position prompts); objectness (foreground prompts on "
                   "the model's own tokens, cheap, exportable); grounding-dino (a detector; needs --box-model and "
                   "pip install 'fgad[detect]').")
@click.option("--box-model", default=None, metavar="ID_OR_DIR",
              help="Grounding DINO weights: Hugging Face model id (cached) or a local folder in transformers format.")
@click.option("--combine-with", type=click.Path(path_type=Path), default=None,
              help="FineGrainedAD --checkpoint only: average its maps and scores with this FiLo++ checkpoint's.")
@click.option("--reproduce", type=click.Choice(["fgad", "released"]), default=None,
              help="FiLo++: score with the released code's numerics (model.reproduce); default: the model's own.")
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True,
              help="Test images per forward pass (lower it if memory runs out; results do not change).")
@click.option("--overlays", "num_overlays", type=int, default=8, show_default=True, help="Overlay PNGs per class.")
@click.option("--max-images", type=int, default=None, help="Evaluate at most this many test images per class.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show progress bars.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging (also the libraries' INFO lines).")
@friendly_errors
def main(checkpoint: Path | None, config_name: str | None, data_root: Path, out_dir: Path, shots: int,
         classes: tuple[str, ...], pretrained: str | None, banks: tuple[str, ...], seed: int, box_prior: str,
         box_model: str | None, combine_with: Path | None, reproduce: str | None,
         batch_size: int,
         num_overlays: int, max_images: int | None, progress: bool, verbose: bool) -> None:
    """Write metrics.json, metrics.md, predictions.jsonl and overlays/ to OUT."""
    if (checkpoint is None) == (config_name is None):
        raise click.UsageError("pass exactly one of --checkpoint or --config")
    check_outputs(("--out", out_dir, "dir"))  # before torch and the model load
    setup_logging(verbose)
    import torch

    from fgad.evaluation import EvalSettings, evaluate

    if checkpoint is not None:
        from fgad.methods.registry import load_any_checkpoint  # any method's, by the checkpoint

        model, _, _ = load_any_checkpoint(checkpoint, pretrained=pretrained, combine_with=combine_with)
        source = str(checkpoint)
    else:
        from fgad.config import load_config
        from fgad.methods.registry import get_method

        if combine_with is not None:
            raise click.UsageError("--combine-with needs a FineGrainedAD --checkpoint")
        model_cfg = load_config(config_name).model
        try:
            model = get_method(model_cfg.method).build(model_cfg, pretrained=pretrained)
        except ValueError as err:  # a per-class method needs a trained checkpoint
            raise click.UsageError(str(err)) from None
        source = f"untrained {config_name}"
    if banks:
        model.prompts.add_banks(banks)
    if reproduce is not None and reproduce != model.cfg.reproduce:
        if not hasattr(model, "set_reproduce"):
            raise click.UsageError(f"this model was trained with reproduce={model.cfg.reproduce!r}; a FineGrainedAD "
                                   "model's mode is fixed at training (its texts): train with fgad-train --reproduce")
        model.set_reproduce(reproduce)
    settings = EvalSettings(shots=shots, seed=seed, batch_size=batch_size, num_overlays=num_overlays,
                            box_prior=box_prior, box_model=box_model, max_images=max_images,
                            extra={"source": source, "reproduce": model.cfg.reproduce})
    with torch.no_grad():
        from fgad.methods.registry import get_method

        per_class = get_method(model.cfg.method).per_class
        own_class = [model.class_name] if per_class else None  # a per-class model knows its one class
        names = split_classes(classes) or own_class
        result = evaluate(model, data_root, out_dir, names, settings, progress=progress)
    click.echo((out_dir / "metrics.md").read_text())
    total = sum(v["seconds"] for v in result["classes"].values())
    images = sum(v["images"] for v in result["classes"].values())
    click.echo(f"{images} images in {total:.1f}s ({total / max(images, 1):.3f}s per image); results in {out_dir}")


if __name__ == "__main__":
    main()
