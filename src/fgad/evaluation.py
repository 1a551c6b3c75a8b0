"""The evaluation harness every method shares: settings, shot choice, the scoring loop, overlays, the report.

:func:`evaluate` runs a model's method (``model.cfg.method``, :mod:`fgad.methods.registry`) over every class
of an MVTec/VisA-layout root and writes metrics, a table, overlays and predictions; the method's
``evaluate_class`` loads its references and calls :func:`score_samples`. k-shot references are k normal
images of the class's ``train/good`` folder, indices drawn with ``seed`` from the sorted list
(:func:`choose_shots`) and recorded in ``metrics.json``, so every run is reproducible.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from fgad.config import BackboneConfig
from fgad.core.atomic import atomic_write_json, atomic_write_text
from fgad.core.metrics import compute_metrics, markdown_table, mean_metrics
from fgad.core.transforms import preprocess, preprocess_mask, resize_image
from fgad.data.datasets import Sample, discover, load_sample_raw
from fgad.runtime.overlay import render_panel, save_image_rgb

log = logging.getLogger(__name__)


@dataclass
class EvalSettings:
    shots: int = 0
    seed: int = 0
    batch_size: int = 4
    num_overlays: int = 8  # overlay PNGs per class (spread over defect types and good images)
    box_prior: str = "none"  # none | objectness | grounding-dino (methods with box priors: FiLo++)
    box_model: str | None = None  # grounding-dino: Hugging Face model id or local folder (overrides the config)
    max_images: int | None = None  # per class, for quick looks; None = all
    extra: dict[str, Any] = field(default_factory=dict)


def choose_shots(train_good: Sequence[Sample], shots: int, seed: int) -> list[int]:
    """Indices into the sorted train/good list for the k reference images."""
    if shots <= 0:
        return []
    if len(train_good) < shots:
        raise ValueError(f"asked for {shots} shots but only {len(train_good)} train/good images exist")
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(len(train_good), size=shots, replace=False).tolist())


def _load_batch(
    samples: Sequence[Sample], size: int, mean, std, mask_size: int | None = None  # noqa: ANN001
) -> tuple[list[Sample], np.ndarray, np.ndarray]:
    """The readable samples, their images at ``size`` and their masks at ``mask_size`` (default ``size``)."""
    kept, images, masks = [], [], []
    for s in samples:
        raw = load_sample_raw(s)
        if raw is None:
            continue
        kept.append(s)
        images.append(preprocess(raw[0], size, mean, std))
        masks.append(preprocess_mask(raw[1], size if mask_size is None else mask_size))
    if not kept:
        return [], np.zeros((0,)), np.zeros((0,))
    return kept, np.stack(images), np.stack(masks)


def _overlay_picks(samples: Sequence[Sample], count: int) -> set[Path]:
    """Spread overlays over defect types: round-robin over types, good images included."""
    by_type: dict[str, list[Sample]] = {}
    for s in samples:
        by_type.setdefault(s.defect_type, []).append(s)
    picks: list[Path] = []
    depth = 0
    while len(picks) < count and any(depth < len(v) for v in by_type.values()):
        for t in sorted(by_type):
            if depth < len(by_type[t]) and len(picks) < count:
                picks.append(by_type[t][depth].image_path)
        depth += 1
    return set(picks)


def test_samples(root: str | Path, class_name: str, max_images: int | None) -> list[Sample]:
    """The class's test images, evenly subsampled to ``max_images`` when that is set."""
    samples = discover(root, "test", [class_name])
    return list(samples) if max_images is None else _subsample(samples, max_images)


def score_samples(
    samples: Sequence[Sample],
    infer: Callable[[torch.Tensor], Any],
    describe: Callable[[Any, int], dict[str, Any]],
    *,
    root: str | Path,
    class_name: str,
    settings: EvalSettings,
    backbone: BackboneConfig,
    map_size: int,
    out_dir: Path | None,
    desc: str,
    progress: bool,
) -> tuple[dict[str, float], list[dict[str, Any]], float]:
    """Run ``infer`` over ``samples`` in batches and score its maps: (metrics, per-image predictions, seconds).

    Shared by every method's evaluation. ``infer`` maps a batch of images preprocessed for ``backbone`` to an
    output with ``anomaly_map`` ``[B, map_size, map_size]``, ``image_score``, ``global_prob`` and ``best_description``;
    ``describe(out, j)`` gives the method's own prediction fields of image ``j`` (its best description first).
    The masks are resized to ``map_size`` (bilinear, threshold 0.5), overlays are drawn at it.
    """
    overlay_paths = _overlay_picks(samples, settings.num_overlays)
    labels: list[int] = []
    scores: list[float] = []
    maps: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    predictions: list[dict[str, Any]] = []
    started = time.perf_counter()
    chunks = [samples[i : i + settings.batch_size] for i in range(0, len(samples), settings.batch_size)]
    for chunk in tqdm(chunks, desc=desc, disable=not progress, leave=False):
        kept, images, gts = _load_batch(chunk, backbone.image_size, backbone.mean, backbone.std, map_size)
        if not kept:
            continue
        out = infer(torch.from_numpy(images))
        amap = out.anomaly_map.float().numpy()
        for j, s in enumerate(kept):
            labels.append(s.label)
            scores.append(float(out.image_score[j]))
            maps.append(amap[j].astype(np.float32))
            masks.append(gts[j] > 0.5)
            predictions.append(
                {
                    "path": str(s.image_path),
                    "class": class_name,
                    "defect_type": s.defect_type,
                    "label": s.label,
                    "score": float(out.image_score[j]),
                    "global_prob": float(out.global_prob[j]),
                    "map_max": float(amap[j].max()),
                    **describe(out, j),
                }
            )
            if out_dir is not None and s.image_path in overlay_paths:
                _write_overlay(out_dir, class_name, s, amap[j], map_size, float(out.image_score[j]))
    seconds = time.perf_counter() - started
    if not labels:
        raise ValueError(f"class {class_name!r}: no readable test images under {root}")
    metrics = compute_metrics(np.array(labels), np.array(scores), np.stack(masks), np.stack(maps))
    return metrics, predictions, seconds


def _subsample(samples: Sequence[Sample], limit: int) -> list[Sample]:
    """An even spread over the (sorted) list, so every defect type stays represented."""
    if len(samples) <= limit:
        return list(samples)
    idx = np.linspace(0, len(samples) - 1, limit).round().astype(int)
    return [samples[i] for i in sorted(set(idx.tolist()))]


def _write_overlay(out_dir: Path, class_name: str, sample: Sample, amap: np.ndarray, size: int, score: float) -> None:
    raw = load_sample_raw(sample)
    if raw is None:
        return
    image, mask = raw
    image = resize_image(image, size)
    import cv2

    mask = cv2.resize(mask.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) > 0
    panel = render_panel(image, amap, gt_mask=mask if mask.any() else None, score=score, label=sample.defect_type)
    path = out_dir / "overlays" / class_name / f"{sample.defect_type}_{sample.image_path.stem}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image_rgb(path, panel)


def evaluate(
    model: Any,
    root: str | Path,
    out_dir: str | Path | None,
    classes: Sequence[str] | None = None,
    settings: EvalSettings | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate every class; write metrics.json, metrics.md, predictions.jsonl and overlays."""
    settings = settings or EvalSettings()
    from fgad.data.datasets import list_classes
    from fgad.methods.registry import get_method

    method = get_method(model.cfg.method)
    names = list(classes) if classes else list_classes(root)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    per_class: dict[str, dict[str, float]] = {}
    info: dict[str, Any] = {}
    all_predictions: list[dict[str, Any]] = []
    for name in names:
        metrics, predictions, class_info = method.evaluate_class(model, root, name, settings, out, progress)
        per_class[name] = metrics
        info[name] = class_info
        all_predictions.extend(predictions)
        log.info("%s: %s", name, {k: round(v, 4) for k, v in metrics.items()})
    mean = mean_metrics(per_class)
    used = {len(ci.get("reference_images") or []) for ci in info.values()}
    shots_used = used.pop() if len(used) == 1 else settings.shots  # FineGrainedAD: its training shots by default
    result = {
        "per_class": per_class,
        "mean": mean,
        "settings": {
            "root": str(root),
            "shots": settings.shots,
            "shots_used": shots_used,
            "seed": settings.seed,
            "box_prior": settings.box_prior,
            **({"box_model": settings.box_model} if settings.box_model else {}),
            "max_images": settings.max_images,
            "model": model.cfg.name,
            "image_size": model.cfg.backbone.image_size,
            **settings.extra,
        },
        "classes": info,
    }
    if out is not None:
        atomic_write_json(out / "metrics.json", result)
        title = f"# {model.cfg.name}, {shots_used}-shot, {root}\n\n"
        atomic_write_text(out / "metrics.md", title + markdown_table(per_class, mean) + "\n")
        atomic_write_text(out / "predictions.jsonl", "".join(json.dumps(p) + "\n" for p in all_predictions))
    return result
