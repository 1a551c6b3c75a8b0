"""Evaluation of a FiLo++ model on one class (the method's ``evaluate_class``, run by :func:`fgad.evaluation.evaluate`).

Zero-shot uses no target images. k-shot fills the patch memory with k normal images of the class's
``train/good`` folder (:func:`fgad.evaluation.choose_shots`). Maps are scored at the model's input
resolution (masks resized to it and thresholded at 0.5).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from fgad.core.cells import POSITIONS
from fgad.core.io import read_image_set
from fgad.core.transforms import preprocess
from fgad.data.datasets import discover
from fgad.evaluation import EvalSettings, choose_shots, score_samples, test_samples
from fgad.methods.filo.model import FiLoPlusPlus
from fgad.methods.filo.priors.base import BoxPrior, BoxPriorResult
from fgad.methods.filo.priors.registry import build_box_prior

__all__ = ["evaluate_class"]


@torch.no_grad()
def evaluate_class(
    model: FiLoPlusPlus,
    root: str | Path,
    class_name: str,
    settings: EvalSettings,
    out_dir: Path | None,
    progress: bool = True,
) -> tuple[dict[str, float], list[dict[str, Any]], dict[str, Any]]:
    if getattr(model, "method", "filo") in ("finegrained", "combined"):  # per-class few-shot model (+ FiLo++)
        from fgad.methods.finegrained.evaluate import evaluate_class_fgad

        return evaluate_class_fgad(model, root, class_name, settings, out_dir, progress)  # type: ignore[arg-type]
    bb = model.cfg.backbone
    size = bb.image_size
    model.eval()
    info: dict[str, Any] = {}
    model.clear_memory()
    if settings.shots > 0:
        train_good = discover(root, "train", [class_name])
        idx = choose_shots(train_good, settings.shots, settings.seed)
        refs = read_image_set([train_good[i].image_path for i in idx], "reference images",
                              lambda image: preprocess(image, size, bb.mean, bb.std))
        model.set_reference_images(torch.from_numpy(np.stack(refs)))
        info["reference_images"] = [str(train_good[i].image_path) for i in idx]
    samples = test_samples(root, class_name, settings.max_images)
    prior = _box_prior(model, settings)
    prompts = model.prompts.prepare(class_name)
    descriptions = prompts.abnormal_descriptions()
    metrics, predictions, seconds = score_samples(
        samples,
        lambda x: model(x, class_name, box_prior=prior),
        lambda out, j: {
            "best_description": descriptions[int(out.best_description[j])],
            **_prior_prediction(out.prior, j),
        },
        root=root,
        class_name=class_name,
        settings=settings,
        backbone=bb,
        map_size=size,
        out_dir=out_dir,
        desc=f"eval {class_name} ({settings.shots}-shot)",
        progress=progress,
    )
    info.update({"images": len(predictions), "seconds": seconds, "seconds_per_image": seconds / len(predictions)})
    return metrics, predictions, info


def _box_prior(model: FiLoPlusPlus, settings: EvalSettings) -> BoxPrior:
    """The prior named in the settings, with ``box_model`` replacing the config's detector."""
    post = model.cfg.post
    if settings.box_model:
        from fgad.config import replace

        post = replace(post, grounding=replace(post.grounding, model=settings.box_model))
    return build_box_prior(settings.box_prior, model=model, post=post)


def _prior_prediction(prior: BoxPriorResult | None, j: int) -> dict[str, Any]:
    """What a box prior chose for image ``j``: its position cell and kept boxes (xyxy pixels at input size)."""
    if prior is None or prior.position is None:
        return {}
    out: dict[str, Any] = {"position": POSITIONS[int(prior.position[j])]}
    if prior.boxes is not None and prior.valid is not None:
        kept = prior.valid[j].tolist()
        out["boxes"] = [[round(float(v), 1) for v in box] for box, ok in zip(prior.boxes[j].tolist(), kept,
                                                                               strict=True) if ok]
    if prior.phrases is not None:
        out["phrases"] = list(prior.phrases[j])
    return out
