"""fgad-train: train FiLo++ on an auxiliary MVTec/VisA-layout dataset (its test split, with masks)."""

from __future__ import annotations

from pathlib import Path

import click

from fgad.cli.common import check_outputs, friendly_errors, setup_logging, split_classes


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
@click.option("--reproduce", type=click.Choice(["fgad", "released"]), default=None,
              help="released: the released code's numerics on purpose, known bugs included (model.reproduce).")
@click.option("--resume/--no-resume", default=True, show_default=True, help="Continue from OUT's last checkpoint.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show progress bars.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging (also the libraries' INFO lines).")
@friendly_errors
def main(config_name: str, data_root: Path, out_dir: Path, pretrained: str | None, classes: tuple[str, ...],
         epochs_phase1: int | None, epochs_phase2: int | None, max_steps_per_epoch: int | None, seed: int | None,
         banks: tuple[str, ...], class_name: str | None, shots: int | None, epochs: int | None,
         seed_file: Path | None, captions: Path | None, reproduce: str | None, resume: bool, progress: bool,
         verbose: bool) -> None:
    """Train phase 1 (prompts, linear heads, MDCI) and phase 2 (adapter), checkpointing every epoch.

    With a FineGrainedAD config (method: finegrained): one class from k normal shots,
    e.g. --config fgad-vitb16p-240 --class-name bottle --shots 4."""
    check_outputs(("--out", out_dir, "dir"))
    setup_logging(verbose)
    from fgad.config import load_config
    from fgad.methods.base import TrainOptionError, TrainRequest
    from fgad.methods.registry import get_method

    method = get_method(load_config(config_name).model.method)
    request = TrainRequest(config=config_name, data_root=data_root, out_dir=out_dir, pretrained=pretrained,
                           classes=tuple(split_classes(classes) or ()), epochs_phase1=epochs_phase1,
                           epochs_phase2=epochs_phase2, max_steps_per_epoch=max_steps_per_epoch, seed=seed,
                           banks=banks, class_name=class_name, shots=shots, epochs=epochs, seed_file=seed_file,
                           captions=captions, reproduce=reproduce, resume=resume, progress=progress,
                           echo=click.echo)
    try:
        method.train(request)
    except TrainOptionError as err:
        raise click.UsageError(str(err)) from None

if __name__ == "__main__":
    main()
