"""fgad-train: train FiLo++ on an auxiliary MVTec/VisA-layout dataset (its test split, with masks)."""

from __future__ import annotations

from pathlib import Path

import click

from fgad.cli.common import friendly_errors, setup_logging, split_classes


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_name", default="filo-vitl14-336", show_default=True,
              help="Built-in variant name or a YAML/JSON file.")
@click.option("--data", "data_root", required=True, type=click.Path(path_type=Path),
              help="Dataset root (MVTec layout, or VisA with split_csv/1cls.csv).")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Checkpoint directory.")
@click.option("--pretrained", default=None, help="Open_clip tag, weights file or local-dir:DIR (overrides the config).")
@click.option("--classes", multiple=True, help="Train on these classes only (comma-separated or repeated).")
@click.option("--epochs-phase1", type=int, default=None, help="Override train.epochs_phase1.")
@click.option("--epochs-phase2", type=int, default=None, help="Override train.epochs_phase2.")
@click.option("--max-steps-per-epoch", type=int, default=None, help="Cap steps per epoch (quick runs).")
@click.option("--seed", type=int, default=None, help="Override train.seed.")
@click.option("--bank", "banks", multiple=True, help="Extra description bank (JSON {class: [phrases]}).")
@click.option("--class-name", default=None, help="FineGrainedAD configs: the one class to train (per-class model).")
@click.option("--shots", type=click.IntRange(1, 64), default=None,
              help="FineGrainedAD configs: k normal train/good images to train on (1, 2 or 4 in the paper).")
@click.option("--epochs", type=int, default=None, help="FineGrainedAD configs: override finegrained.epochs.")
@click.option("--seed-file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="FineGrainedAD configs: shot indices from lines '#k: i1 i2 ...' (default: seeded choice).")
@click.option("--captions", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="FineGrainedAD configs: caption record JSON of the class (default: the shipped record).")
@click.option("--resume/--no-resume", default=True, show_default=True, help="Continue from OUT's last checkpoint.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.option("-v", "--verbose", is_flag=True)
@friendly_errors
def main(config_name: str, data_root: Path, out_dir: Path, pretrained: str | None, classes: tuple[str, ...],
         epochs_phase1: int | None, epochs_phase2: int | None, max_steps_per_epoch: int | None, seed: int | None,
         banks: tuple[str, ...], class_name: str | None, shots: int | None, epochs: int | None,
         seed_file: Path | None, captions: Path | None, resume: bool, progress: bool, verbose: bool) -> None:
    """Train phase 1 (prompts, linear heads, MDCI) and phase 2 (adapter), checkpointing every epoch.

    With a FineGrainedAD config (method: finegrained): one class from k normal shots,
    e.g. --config fgad-vitb16p-240 --class-name bottle --shots 4."""
    setup_logging(verbose)
    from fgad.config import load_config

    if load_config(config_name).model.method == "finegrained":
        from fgad.methods.finegrained.train import cli_train

        if classes or len(banks) > 1 or epochs_phase1 is not None or epochs_phase2 is not None or max_steps_per_epoch:
            raise click.UsageError("--classes/--epochs-phase1/2/--max-steps-per-epoch are FiLo++ options; a "
                                   "FineGrainedAD config takes --class-name, --shots, --epochs and at most one --bank")
        cli_train(config_name, data_root, out_dir, class_name, shots, pretrained=pretrained, epochs=epochs, seed=seed,
                  seed_file=seed_file, captions=captions, bank=Path(banks[0]) if banks else None, resume=resume,
                  progress=progress, echo=click.echo)
        return
    if class_name or shots is not None or epochs is not None or seed_file or captions:
        raise click.UsageError("--class-name/--shots/--epochs/--seed-file/--captions need a FineGrainedAD config "
                               "(e.g. --config fgad-vitb16p-240)")
    from fgad.methods.filo.build import build_model
    from fgad.methods.filo.train import train

    overrides: dict = {"train": {}, "model": {}}
    for key, value in (("epochs_phase1", epochs_phase1), ("epochs_phase2", epochs_phase2),
                       ("max_steps_per_epoch", max_steps_per_epoch), ("seed", seed)):
        if value is not None:
            overrides["train"][key] = value
    if banks:
        overrides["model"]["prompts"] = {"banks": list(banks)}
    if pretrained is not None:
        overrides["model"]["backbone"] = {"pretrained": pretrained}
    config = load_config(config_name, overrides)
    model = build_model(config.model, seed=config.train.seed)
    result = train(model, config, data_root, out_dir, pretrained=config.model.backbone.pretrained,
                   classes=split_classes(classes), resume=resume, progress=progress)
    for rec in result.losses:
        click.echo(f"phase {rec['phase']} epoch {rec['epoch']}: loss {rec['loss']:.4f} "
                   f"({rec['steps']} steps, {rec['seconds']:.1f}s)")
    click.echo(f"checkpoint: {result.out_dir}")


if __name__ == "__main__":
    main()
