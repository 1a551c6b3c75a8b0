"""The paper-style accuracy table: per class and mean, 0/1/2/4 shots, image AUROC / pixel AUROC / AUPRO.

    # with real weights (reproduces our claims on any MVTec-layout root)
    python benchmarks/accuracy.py --checkpoint runs/filo-visa --data /data/mvtec --out results/accuracy_mvtec
    # the released code's numerics on purpose, to set beside the papers' tables (docs/filo.md, "as released")
    python benchmarks/accuracy.py --checkpoint runs/filo-visa --data /data/mvtec --reproduce released \
        --out results/accuracy_mvtec_released
    # a quick look on the real magnetic-tile images with the tiny random model (chance-level numbers)
    python benchmarks/accuracy.py --config tiny-test --data ../shared/data/magnetic_tile --limit 40 \\
        --out benchmarks/results/cpu/accuracy_tiny_magnetic_tile

For each shot count, every class is evaluated with :func:`fgad.evaluation.evaluate` (the code behind
``fgad-eval``: k normal references drawn with ``--seed`` from ``train/good``, maps scored at the model's
input size). Writes ``accuracy.md`` (the table), ``accuracy.json`` (numbers, weights, git commit,
settings, date, library versions) and, per shot count, ``<k>shot/`` with fgad-eval's own files.
"""

from __future__ import annotations

import hashlib
import logging
import math
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from fgad.cli.common import friendly_errors, setup_logging, split_classes

METRICS = (("image_auroc", "I-AUROC"), ("pixel_auroc", "P-AUROC"), ("aupro", "AUPRO"))


def _pct(value: float | None) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def accuracy_table(per_shot: dict[int, dict[str, Any]], metrics: tuple[tuple[str, str], ...] = METRICS) -> str:
    """Rows: classes then the mean; columns: shot counts; cells: the metrics in percent, joined by " / "."""
    shots = sorted(per_shot)
    classes: list[str] = []
    for k in shots:
        classes += [c for c in per_shot[k]["per_class"] if c not in classes]
    names = " / ".join(label for _, label in metrics)
    lines = [f"| class ({names}, %) | " + " | ".join(f"{k}-shot" for k in shots) + " |",
             "|:---|" + "---:|" * len(shots)]

    def cells(get: Any) -> str:
        return " | ".join(" / ".join(_pct(get(k).get(key)) for key, _ in metrics) for k in shots)

    for name in classes:
        lines.append(f"| {name} | " + cells(lambda k, n=name: per_shot[k]["per_class"].get(n, {})) + " |")
    lines.append("| **mean** | " + cells(lambda k: per_shot[k]["mean"]) + " |")
    return "\n".join(lines) + "\n"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _load_model(checkpoint: Path | None, config_name: str | None, pretrained: str | None,
                reproduce: str | None = None) -> tuple[Any, dict]:
    """The model and a record of its weights; ``reproduce`` overrides the model's ``model.reproduce``."""
    model, weights = _load_weights(checkpoint, config_name, pretrained)
    if reproduce is not None:
        model.set_reproduce(reproduce)
    return model, weights


def _load_weights(checkpoint: Path | None, config_name: str | None, pretrained: str | None) -> tuple[Any, dict]:
    if checkpoint is not None:
        from fgad.backbone.checkpoint import WEIGHTS_FILE
        from fgad.methods.filo.checkpoint import load_checkpoint

        model, _, meta = load_checkpoint(checkpoint, pretrained=pretrained)
        weights = {"checkpoint": str(checkpoint), "checkpoint_sha256": _sha256(checkpoint / WEIGHTS_FILE),
                   "pretrained": pretrained or meta.get("pretrained"),
                   "backbone_fingerprint": meta.get("backbone_fingerprint")}
        return model, weights
    from fgad.config import load_config
    from fgad.methods.filo.build import build_model

    cfg = load_config(str(config_name)).model
    model = build_model(cfg, pretrained=pretrained)
    source = pretrained if pretrained is not None else cfg.backbone.pretrained
    random = source is None or str(source).lower() in ("none", "random")
    weights = {"checkpoint": None, "config": config_name,
               "pretrained": f"random init (init_seed {cfg.backbone.init_seed})" if random else source,
               "heads": "untrained (seed 0)"}
    return model, weights


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--checkpoint", type=click.Path(path_type=Path, exists=True, file_okay=False), default=None,
              help="fgad-train output directory (the weights whose accuracy is claimed).")
@click.option("--config", "config_name", default=None, help="Or: an untrained model of this variant.")
@click.option("--data", "data_root", required=True, type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="MVTec-layout root (class/train/good, class/test/<type>, class/ground_truth/<type>).")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--shots", default="0,1,2,4", show_default=True, help="Comma-separated shot counts.")
@click.option("--classes", multiple=True, help="Only these classes (comma-separated or repeated).")
@click.option("--pretrained", default=None, help="Override the weights source (tag, file, local-dir:DIR, none).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the reference-image choice.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="At most this many test images per class, spread over defect types (a quick subset).")
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--overlays", type=click.IntRange(min=0), default=0, show_default=True, help="Overlay PNGs per class.")
@click.option("--reproduce", type=click.Choice(["fgad", "released"]), default=None,
              help="released: the released code's numerics on purpose (model.reproduce; default: the model's own).")
@click.option("--f1/--no-f1", "with_f1", default=False, show_default=True, help="Also tabulate image/pixel F1-max.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.option("-v", "--verbose", is_flag=True)
@friendly_errors
def main(checkpoint: Path | None, config_name: str | None, data_root: Path, out_dir: Path, shots: str,
         classes: tuple[str, ...], pretrained: str | None, seed: int, limit: int | None, batch_size: int,
         overlays: int, reproduce: str | None, with_f1: bool, progress: bool, verbose: bool) -> None:
    """Evaluate every class at every shot count; write accuracy.md and accuracy.json to OUT."""
    setup_logging(verbose)
    logging.getLogger("fgad.evaluation").setLevel(logging.WARNING)
    if (checkpoint is None) == (config_name is None):
        raise click.UsageError("pass exactly one of --checkpoint or --config")
    try:
        shot_counts = sorted({int(s) for s in shots.split(",") if s.strip()})
    except ValueError:
        raise click.BadParameter(f"must be comma-separated counts like 0,1,2,4, got {shots!r}",
                                 param_hint="--shots") from None
    if not shot_counts or min(shot_counts) < 0:
        raise click.BadParameter(f"must be counts >= 0, got {shots!r}", param_hint="--shots")

    import torch

    from fgad.bench.device import git_commit, library_versions
    from fgad.core.atomic import atomic_write_json, atomic_write_text
    from fgad.evaluation import EvalSettings, evaluate

    model, weights = _load_model(checkpoint, config_name, pretrained, reproduce)
    names = split_classes(classes)
    per_shot: dict[int, dict[str, Any]] = {}
    started = time.perf_counter()
    for k in shot_counts:
        settings = EvalSettings(shots=k, seed=seed, batch_size=batch_size, num_overlays=overlays, max_images=limit,
                                extra={"weights": weights})
        with torch.no_grad():
            per_shot[k] = evaluate(model, data_root, out_dir / f"{k}shot", names, settings, progress=progress)
        click.echo(f"{k}-shot: " + ", ".join(f"{key} {_pct(per_shot[k]['mean'].get(key))}" for key, _ in METRICS))

    table = accuracy_table(per_shot)
    if with_f1:
        table += "\n" + accuracy_table(per_shot, (("image_f1_max", "image F1-max"), ("pixel_f1_max", "pixel F1-max")))
    git = git_commit(Path(__file__).resolve().parent)
    created = datetime.now(timezone.utc).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")
    cfg = model.cfg
    settings_record = {"data": str(data_root), "classes": names or "all", "shots": shot_counts, "seed": seed,
                       "limit_per_class": limit, "batch_size": batch_size, "model": cfg.name,
                       "backbone": cfg.backbone.model_name, "image_size": cfg.backbone.image_size, "box_prior": "none",
                       "reproduce": cfg.reproduce}
    images = {k: sum(v["images"] for v in r["classes"].values()) for k, r in per_shot.items()}
    shown = [a for a in sys.argv[1:] if a not in ("--progress", "--no-progress", "-v", "--verbose")]
    command = " ".join(["python benchmarks/accuracy.py", *(shlex.quote(a) for a in shown)])
    result = {
        "command": command,
        "created": created,
        "git": git,
        "weights": weights,
        "settings": settings_record,
        "per_shot": {str(k): {"per_class": r["per_class"], "mean": r["mean"], "classes": r["classes"]}
                     for k, r in per_shot.items()},
        "images": {str(k): v for k, v in images.items()},
        "seconds": time.perf_counter() - started,
        "libraries": library_versions(),
    }
    commit = (git.get("commit") or "unknown")[:10] + (" (uncommitted changes)" if git.get("dirty") else "")
    limit_text = f", at most {limit} test images per class" if limit else ""
    counts = ", ".join(f"{k}-shot {n} images" for k, n in images.items())
    weights_text = weights.get("checkpoint") or f"{weights.get('config')} with {weights.get('pretrained')}"
    mode = ", as released" if cfg.reproduce == "released" else ""
    header = (f"# Accuracy: {cfg.name} ({cfg.backbone.model_name}, {cfg.backbone.image_size} px{mode}) on "
              f"{data_root}\n\n"
              f"    {command}\n\n{created}, commit {commit}. Weights: {weights_text}. References drawn with seed "
              f"{seed} from train/good{limit_text}; {counts}.\n\n")
    atomic_write_json(out_dir / "accuracy.json", result)
    atomic_write_text(out_dir / "accuracy.md", header + table)
    click.echo(header + table)
    click.echo(f"wrote {out_dir / 'accuracy.md'} and {out_dir / 'accuracy.json'}")


if __name__ == "__main__":
    main()
