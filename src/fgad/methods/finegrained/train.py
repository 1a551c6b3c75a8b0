"""Per-class few-shot training of FineGrainedAD (METHOD.md §2.1, §2.5, §2.6).

One model per class and per k, from k normal images of the class's ``train/good`` folder:

* **Shot choice.** Indices into the sorted ``train/good`` listing (:func:`fgad.data.datasets.discover`
  order). With a seed file, the line ``#k: i1 i2 ...`` for this k gives them (PromptAD's format);
  otherwise ``numpy.random.default_rng(seed).choice(n, k, replace=False)``, sorted: the rule of
  :func:`fgad.evaluation.choose_shots`, so ``fgad-eval --shots k --seed S`` picks the same images.
* **Features once.** The CLIP towers are frozen and nothing is augmented, so the shots' patch
  features (240 px) and tile features (960 px) are computed once before the first epoch: exactly
  what every epoch would recompute. Each epoch then runs only the text side.
* **Regions once.** MLSA (a) runs once, with the just-initialised prompts (§2.5), before any step,
  also when a run resumes (the model is rebuilt from the same seed, so the prompts are the same).
* **Schedule.** One step per epoch on a batch of all k shots; SGD (lr 2e-3, momentum 0.9, weight
  decay 5e-4), cosine decay to 1e-5 over the epochs; the last epoch is kept (CHOICE, F5: no test
  images are looked at during training).

Every epoch appends a line to ``train_log.jsonl`` (loss, its parts, lr, wall time) and writes a
checkpoint in fgad's format (:mod:`fgad.methods.finegrained.checkpoint`), so ``--resume`` continues exactly.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from fgad.config import Config
from fgad.methods.finegrained.checkpoint import read_finegrained_meta, write_finegrained_meta
from fgad.methods.finegrained.losses import mlsa_loss
from fgad.methods.finegrained.model import FineGrainedAD
from fgad.methods.finegrained.regions import RegionResult, aggregate_regions

log = logging.getLogger(__name__)

__all__ = [
    "FgadTrainResult",
    "cli_train",
    "compute_regions",
    "load_shots",
    "parse_seed_file",
    "select_shots",
    "train_finegrained",
]

SHOT_RULE = "sorted train/good listing; seed file '#k: i1 i2 ...' or numpy default_rng(seed).choice, sorted"


@dataclass
class FgadTrainResult:
    out_dir: Path
    losses: list[dict[str, float]]  # one record per epoch: epoch, loss, v2t, eam, match, reg, lr, seconds
    shots: list[str]  # the k shot image paths
    setup_seconds: float  # feature caching and region aggregation, once
    regions: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------- shots


def parse_seed_file(path: str | Path, shots: int) -> list[int]:
    """The indices on the line ``#<shots>: i1 i2 ...`` of a seed file."""
    text = Path(path).read_text()
    for number, line in enumerate(text.splitlines(), start=1):
        match = re.fullmatch(r"\s*#\s*(\d+)\s*:\s*(.*?)\s*", line)
        if not match or int(match.group(1)) != shots:
            continue
        try:
            indices = [int(v) for v in match.group(2).replace(",", " ").split()]
        except ValueError:
            raise ValueError(f"{path}:{number}: '{line.strip()}' must list integer indices") from None
        if len(indices) != shots:
            raise ValueError(f"{path}:{number}: '#{shots}:' lists {len(indices)} indices, expected {shots}")
        return indices
    raise ValueError(f"{path}: no line '#{shots}: i1 i2 ...' for {shots} shots")


def select_shots(num_images: int, shots: int, seed: int, seed_file: str | Path | None = None) -> list[int]:
    """k indices into the sorted train/good list (see the module docstring)."""
    if shots < 1:
        raise ValueError(f"--shots must be >= 1, got {shots}")
    if seed_file is not None:
        indices = parse_seed_file(seed_file, shots)
        bad = [i for i in indices if not 0 <= i < num_images]
        if bad or len(set(indices)) != len(indices):
            raise ValueError(f"{seed_file}: indices {indices} must be distinct and in [0, {num_images})")
        return indices
    from fgad.evaluation import choose_shots

    return choose_shots(list(range(num_images)), shots, seed)  # type: ignore[arg-type]


def load_shots(
    paths: Sequence[str | Path], image_size: int, tiles: int, mean: Sequence[float], std: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Preprocessed shots at ``s`` ``[k, 3, s, s]`` and at ``tiles * s`` ``[k, 3, tiles*s, tiles*s]``."""
    from fgad.core.io import read_image_set
    from fgad.core.transforms import preprocess

    pairs = read_image_set(paths, "shot images", lambda image: (preprocess(image, image_size, mean, std),
                                                                preprocess(image, image_size * tiles, mean, std)))
    return torch.from_numpy(np.stack([s for s, _ in pairs])), torch.from_numpy(np.stack([b for _, b in pairs]))


# ---------------------------------------------------------------------------------- regions


@torch.no_grad()
def compute_regions(model: FineGrainedAD, big_images: torch.Tensor) -> RegionResult:
    """MLSA (a) with the model's current prompts (call before training: the just-initialised ones)."""
    fc, bb = model.cfg.finegrained, model.cfg.backbone
    z = model.tile_features(big_images)
    was_training = model.training
    model.eval()
    try:
        feats = model.prompt_features()
    finally:
        model.train(was_training)
    entities = [i for i in range(model.prompts.num_families) if i not in (model.image_family, model.background_family)]
    normal = torch.stack([torch.nn.functional.normalize(feats.normal(i).mean(0), dim=-1) for i in entities]) \
        if entities else z.new_zeros(0, z.shape[-1])
    background = torch.nn.functional.normalize(feats.normal(model.background_family).mean(0), dim=-1)
    return aggregate_regions(z, normal, background, fc.tiles, bb.grid, knn=fc.knn, boost=fc.omega_boost)


def _region_summary(regions: RegionResult, names: Sequence[str]) -> dict[str, Any]:
    return {
        "background_fraction": [round(float(v), 4) for v in regions.background.float().mean(dim=1)],
        "matched_region": {n: [int(v) for v in regions.matched[:, i]] for i, n in enumerate(names)},
        "mean_weight": {n: round(float(regions.weights[i].mean()), 4) for i, n in enumerate(names)},
    }


# ---------------------------------------------------------------------------------- training


def _check_resume(out: Path, class_name: str, shots: list[str]) -> None:
    previous = read_finegrained_meta(out)
    if previous.get("class_name") != class_name or previous.get("shots", {}).get("paths") != shots:
        raise ValueError(
            f"{out} holds a FineGrainedAD checkpoint of class {previous.get('class_name')!r} with other shots; "
            "use --no-resume to start over or another --out"
        )


def train_finegrained(
    model: FineGrainedAD,
    config: Config,
    data_root: str | Path,
    shots: int,
    out_dir: str | Path,
    pretrained: str | None = None,
    seed_file: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> FgadTrainResult:
    """Train ``model`` (its class is ``model.class_name``) on k shots; checkpoint to ``out_dir`` every epoch."""
    from fgad.backbone.checkpoint import (
        TrainState,
        backbone_fingerprint,
        load_train_state,
        load_trainable,
        save_checkpoint,
    )
    from fgad.data.datasets import discover

    fc, bb = config.model.finegrained, config.model.backbone
    class_name = model.class_name
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    good = [s for s in discover(data_root, "train", [class_name]) if s.label == 0]
    if not good:
        raise ValueError(f"{data_root}: class {class_name!r} has no train/good images to take shots from")
    indices = select_shots(len(good), shots, fc.seed, seed_file)
    paths = [str(good[i].image_path) for i in indices]
    shot_info = {"k": shots, "indices": indices, "paths": paths, "root": str(data_root), "rule": SHOT_RULE,
                 "seed": fc.seed, "seed_file": None if seed_file is None else str(seed_file)}

    started = time.perf_counter()
    images, big = load_shots(paths, bb.image_size, fc.tiles, bb.mean, bb.std)
    model.eval()
    patches = model.visual_features(images).patches  # cached: the backbone is frozen, no augmentation
    regions = compute_regions(model, big)  # with the initial prompts, also on resume
    setup_seconds = time.perf_counter() - started
    names = [n for i, n in enumerate(model.pair_names) if i != model.image_family]
    summary = _region_summary(regions, names)
    log.info("class %s, %d shots %s: features and regions in %.1fs; %s", class_name, shots, indices,
             setup_seconds, summary)

    state = load_train_state(out) if resume else None
    log_path = out / "train_log.jsonl"
    if state is not None:
        _check_resume(out, class_name, paths)
        load_trainable(model, out / "weights.safetensors")  # type: ignore[arg-type]
        log.info("resuming from %s: %d epochs done", out, state.epoch)
    else:
        state = TrainState(phase=1)
        log_path.unlink(missing_ok=True)
    write_finegrained_meta(out, model.texts, {**shot_info, "regions": summary})
    fingerprint = backbone_fingerprint(model)  # type: ignore[arg-type]

    params = [p for p in model.prompts.parameters()]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.SGD(params, lr=fc.lr, momentum=fc.momentum, weight_decay=fc.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=fc.epochs, eta_min=fc.lr_min)
    if state.optimizer is not None:
        optimizer.load_state_dict(state.optimizer["optimizer"])
        scheduler.load_state_dict(state.optimizer["scheduler"])

    history: list[dict[str, float]] = []
    bar = tqdm(range(state.epoch, fc.epochs), total=fc.epochs, initial=state.epoch,
               desc=f"fgad {class_name} {shots}-shot", disable=not progress, leave=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(fc.seed)
        for epoch in bar:
            t0 = time.perf_counter()
            lr = float(optimizer.param_groups[0]["lr"])
            loss, parts = mlsa_loss(
                patches, regions.weights, model.prompt_features(), model.image_family, model.background_family,
                model.logit_scale, margin=fc.margin, lambda_match=fc.lambda_match,
                released=model.cfg.reproduce == "released",
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            value = float(loss.detach())
            if not np.isfinite(value):
                raise FloatingPointError(f"epoch {epoch + 1}: loss became {value}; lower finegrained.lr")
            step_seconds = time.perf_counter() - t0
            state.epoch = epoch + 1
            state.step = epoch + 1
            state.optimizer = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
            save_checkpoint(out, model, config, pretrained, state, fingerprint)  # type: ignore[arg-type]
            record = {"epoch": epoch + 1, "loss": value, **parts, "lr": lr, "seconds": step_seconds,
                      "seconds_with_save": time.perf_counter() - t0}
            with log_path.open("a") as fh:
                fh.write(json.dumps(record) + "\n")
            history.append(record)
            bar.set_postfix(loss=f"{value:.4f}")
            if on_epoch is not None:
                on_epoch(record)
    for p in params:
        p.requires_grad_(False)
    state.phase = 3
    save_checkpoint(out, model, config, pretrained, state, fingerprint)  # type: ignore[arg-type]
    model.set_reference_images(images, paths)
    return FgadTrainResult(out_dir=out, losses=history, shots=paths, setup_seconds=setup_seconds, regions=summary)


# ---------------------------------------------------------------------------------- CLI


def cli_train(
    config_name: str,
    data_root: Path,
    out_dir: Path,
    class_name: str | None,
    shots: int | None,
    pretrained: str | None = None,
    epochs: int | None = None,
    seed: int | None = None,
    seed_file: Path | None = None,
    captions: Path | None = None,
    bank: Path | None = None,
    resume: bool = True,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    reproduce: str | None = None,
) -> FgadTrainResult:
    """``fgad-train`` for a config with ``method: finegrained`` (the CLI's options, already parsed)."""
    from fgad.config import load_config
    from fgad.methods.finegrained.mllp import class_texts
    from fgad.methods.finegrained.model import build_finegrained

    if not class_name:
        raise ValueError("a FineGrainedAD config trains one class: pass --class-name NAME (and --shots K)")
    if shots is None:
        raise ValueError("a FineGrainedAD config trains from k normal shots: pass --shots K (1, 2 or 4 in the paper)")
    fgad_over: dict[str, Any] = {}
    if epochs is not None:
        fgad_over["epochs"] = epochs
    if seed is not None:
        fgad_over["seed"] = seed
    if captions is not None:
        fgad_over["captions"] = str(captions)
    if bank is not None:
        fgad_over["bank"] = str(bank)
    overrides: dict[str, Any] = {"model": {"finegrained": fgad_over}}
    if pretrained is not None:
        overrides["model"]["backbone"] = {"pretrained": pretrained}
    if reproduce is not None:
        overrides["model"]["reproduce"] = reproduce
    config = load_config(config_name, overrides)
    texts = class_texts(config.model.finegrained, class_name, released=config.model.reproduce == "released")
    model = build_finegrained(config.model, texts)
    echo(f"{class_name}: {len(texts.pair_names)} prompt pairs ({', '.join(texts.pair_names)}), "
         f"{model.prompts.num_encoded} prompts, {sum(p.numel() for p in model.prompts.parameters())} trainable numbers")
    result = train_finegrained(model, config, data_root, shots, out_dir, pretrained=config.model.backbone.pretrained,
                               seed_file=seed_file, resume=resume, progress=progress)
    echo(f"shots: {', '.join(Path(p).name for p in result.shots)}; features and regions {result.setup_seconds:.1f}s")
    for rec in result.losses:
        echo(f"epoch {int(rec['epoch'])}: loss {rec['loss']:.4f} (v2t {rec['v2t']:.4f}, eam {rec['eam']:.4f}, "
             f"match {rec['match']:.4f}, reg {rec['reg']:.4f}; lr {rec['lr']:.2e}; {rec['seconds']:.2f}s)")
    echo(f"checkpoint: {result.out_dir}")
    return result
