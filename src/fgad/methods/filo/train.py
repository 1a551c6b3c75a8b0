"""FiLo++ training: phase 1 (prompts, linear heads, MDCI; focal + dice) and phase 2 (adapter; CE).

Trained on an auxiliary dataset's *test* split (it has masks), batches of one class each.
Everything random (shuffling, mosaics) derives from ``train.seed`` and the epoch, so a run
resumed from its last checkpoint continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from fgad.backbone.checkpoint import TrainState, backbone_fingerprint, load_train_state, load_trainable, save_checkpoint
from fgad.backbone.postprocess import upsample
from fgad.config import Config
from fgad.data.datasets import Sample, discover
from fgad.methods.filo.losses import segmentation_loss, two_way_ce
from fgad.methods.filo.model import FiLoPlusPlus
from fgad.methods.filo.priors.base import all_positions, positions_from_masks
from fgad.methods.filo.scoring import l2n, two_way_logits

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    out_dir: Path
    losses: list[dict[str, float]]  # one record per epoch: phase, epoch, mean loss, seconds
    steps: int


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def class_batches(samples: Sequence[Sample], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Shuffled batches of sample indices, each batch from a single class."""
    rng = np.random.default_rng([seed, epoch])
    by_class: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        by_class.setdefault(s.class_name, []).append(i)
    batches: list[list[int]] = []
    for cls in sorted(by_class):
        idx = rng.permutation(by_class[cls]).tolist()
        batches.extend(idx[i : i + batch_size] for i in range(0, len(idx), batch_size))
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


def _batches(dataset, batches: list[list[int]]) -> Iterator[dict]:  # noqa: ANN001
    from fgad.data.torch_dataset import collate

    for idx in batches:
        batch = collate([dataset[i] for i in idx])
        valid = torch.as_tensor(batch["valid"], dtype=torch.bool)
        if not bool(valid.any()):
            continue
        if not bool(valid.all()):
            keep = valid.nonzero().flatten().tolist()
            batch = {
                k: (v[valid] if isinstance(v, torch.Tensor) and v.shape[:1] == valid.shape else [v[i] for i in keep])
                for k, v in batch.items()
            }
        yield batch


def phase1_loss(model: FiLoPlusPlus, batch: dict, positions_from_mask: bool) -> torch.Tensor:
    images, masks = batch["image"], batch["mask"]
    labels = batch["label"]
    positions = positions_from_masks(masks, labels) if positions_from_mask else all_positions(images.shape[0])
    out = model(images, batch["class_name"][0], positions=positions, filtering=False, use_memory=False)
    size = model.cfg.backbone.image_size
    stage_maps = [upsample(p, size, align_corners=True) for p in out.stage_probs]
    return segmentation_loss(stage_maps, masks)


def phase2_loss(model: FiLoPlusPlus, batch: dict) -> torch.Tensor:
    images, labels = batch["image"], batch["label"]
    feats = model.encode_images(images)
    with torch.no_grad():
        g_normed = l2n(feats.global_embed)
        pair = model.text_pair(batch["class_name"][0], g_normed, g_normed, all_positions(images.shape[0]), False)
    g_adapted = model.adapted_global(feats.global_embed)
    logits = two_way_logits(g_adapted, pair.t_normal, pair.t_abnormal, model.cfg.heads.tau_global)
    return two_way_ce(logits, labels)


def _make_optimizer(model: FiLoPlusPlus, config: Config, phase: int) -> torch.optim.Optimizer:
    tc = config.train
    if phase == 1:
        prompt_params, head_params = model.phase1_parameters()
        groups = [{"params": prompt_params, "lr": tc.lr_prompts}, {"params": head_params, "lr": tc.lr_heads}]
    else:
        groups = [{"params": model.adapter_parameters(), "lr": tc.lr_adapter}]
    return torch.optim.AdamW(groups, betas=tc.betas, weight_decay=tc.weight_decay)


def _set_trainable(model: FiLoPlusPlus, phase: int) -> None:
    prompt_params, head_params = model.phase1_parameters()
    for p in prompt_params + head_params:
        p.requires_grad_(phase == 1)
    for p in model.adapter_parameters():
        p.requires_grad_(phase == 2)


def train(
    model: FiLoPlusPlus,
    config: Config,
    data_root: str | Path,
    out_dir: str | Path,
    pretrained: str | None = None,
    classes: Sequence[str] | None = None,
    resume: bool = True,
    progress: bool = True,
    on_step: Callable[[int, int, float], None] | None = None,
) -> TrainResult:
    """Train ``model`` in place and write checkpoints to ``out_dir`` after every epoch."""
    from fgad.data.torch_dataset import AnomalyDataset

    tc = config.train
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    samples = discover(data_root, "test", classes)
    if not samples:
        raise ValueError(f"{data_root}: no test images to train on (training uses the auxiliary test split)")
    dataset = AnomalyDataset(
        samples,
        config.model.backbone.image_size,
        mean=config.model.backbone.mean,
        std=config.model.backbone.std,
        mosaic_prob=tc.mosaic_prob,
        seed=tc.seed,
    )
    seed_everything(tc.seed)
    fingerprint = backbone_fingerprint(model)
    state = load_train_state(out) if resume else None
    if state is not None:
        load_trainable(model, out / "weights.safetensors")
        log.info("resuming from %s: phase %d, %d epochs done", out, state.phase, state.epoch)
    else:
        state = TrainState()
    log_path = out / "train_log.jsonl"
    history: list[dict[str, float]] = []
    epochs = {1: tc.epochs_phase1, 2: tc.epochs_phase2 if model.adapter is not None else 0}

    for phase in (1, 2):
        if state.phase > phase:
            continue
        _set_trainable(model, phase)
        optimizer = _make_optimizer(model, config, phase)
        if state.phase == phase and state.optimizer is not None:
            optimizer.load_state_dict(state.optimizer)
        while state.epoch < epochs[phase]:
            epoch = state.epoch
            torch.manual_seed(tc.seed * 1000 + phase * 100 + epoch)
            dataset.set_epoch(epoch + 1000 * phase)
            batches = class_batches(samples, tc.batch_size, tc.seed, epoch + 1000 * phase)
            if tc.max_steps_per_epoch is not None:
                batches = batches[: tc.max_steps_per_epoch]
            model.train()
            total, count, started = 0.0, 0, time.perf_counter()
            bar = tqdm(
                _batches(dataset, batches),
                total=len(batches),
                desc=f"phase {phase} epoch {epoch + 1}/{epochs[phase]}",
                disable=not progress,
                leave=False,
            )
            with log_path.open("a") as log_file:  # one line per step, flushed: a crash loses nothing
                for batch in bar:
                    if phase == 1:
                        loss = phase1_loss(model, batch, tc.positions_from_mask)
                    else:
                        loss = phase2_loss(model, batch)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    value = float(loss.detach())
                    if not np.isfinite(value):
                        raise FloatingPointError(f"phase {phase} epoch {epoch + 1}: loss became {value}; lower the lr")
                    total += value
                    count += 1
                    state.step += 1
                    bar.set_postfix(loss=f"{value:.4f}")
                    if on_step is not None:
                        on_step(phase, state.step, value)
                    record_line = {"phase": phase, "epoch": epoch + 1, "step": state.step, "loss": value}
                    log_file.write(json.dumps(record_line) + "\n")
                    log_file.flush()
            record = {
                "phase": phase,
                "epoch": epoch + 1,
                "loss": total / max(count, 1),
                "steps": count,
                "seconds": time.perf_counter() - started,
            }
            history.append(record)
            state.epoch += 1
            state.optimizer = optimizer.state_dict()
            save_checkpoint(out, model, config, pretrained, state, fingerprint)
            log.info(
                "phase %d epoch %d: loss %.4f (%d steps, %.1fs)",
                phase, epoch + 1, record["loss"], count, record["seconds"],
            )
        state = TrainState(phase=phase + 1, epoch=0, step=state.step, optimizer=None)
    state.phase = 3
    save_checkpoint(out, model, config, pretrained, state, fingerprint)
    return TrainResult(out_dir=out, losses=history, steps=state.step)
