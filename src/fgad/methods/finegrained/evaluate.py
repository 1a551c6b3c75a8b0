"""Evaluation of a FineGrainedAD model on its class (the method's ``evaluate_class``, run by
:func:`fgad.evaluation.evaluate`).

The same function evaluates the combined mode (:class:`fgad.methods.finegrained.combined.CombinedModel`), at
FiLo++'s input size.

The galleries hold the k shots the model was trained with (``model.reference_paths``, from the
checkpoint) unless ``settings.shots > 0`` asks for other references (then chosen as fgad-eval always
does, :func:`fgad.evaluation.choose_shots`). Maps are scored at ``finegrained.output_size`` (400 px for
the paper's config): the masks are resized to it (bilinear, threshold 0.5), the images to the
model's input size. Only the model's own class can be evaluated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from fgad.methods.finegrained.combined import CombinedModel
from fgad.methods.finegrained.model import FineGrainedAD

__all__ = ["evaluate_class_fgad", "load_references", "released_bgr"]


def released_bgr(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """F4 (``model.reproduce: released``): the release fed its test images as BGR through the RGB
    normalisation. From images normalised as RGB ``[B, 3, H, W]``: ``(raw[2 - c] - mean[c]) / std[c]``."""
    m = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    sd = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    raw = images * sd + m
    return (raw.flip(1) - m) / sd


def load_references(model: FineGrainedAD | CombinedModel, paths: list[str]) -> None:
    """Fill the galleries from image files (preprocessed as training and the runtime do)."""
    from fgad.core.io import read_image_set
    from fgad.core.transforms import preprocess

    bb = model.cfg.backbone
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(
            f"shot image(s) {missing[:3]} of the checkpoint are missing; pass --shots K to choose references "
            "from --data instead"
        )
    images = np.stack(read_image_set(paths, "reference images",
                                     lambda image: preprocess(image, bb.image_size, bb.mean, bb.std)))
    model.set_reference_images(torch.from_numpy(images), list(paths))


@torch.no_grad()
def evaluate_class_fgad(
    model: FineGrainedAD | CombinedModel,
    root: str | Path,
    class_name: str,
    settings: Any,
    out_dir: Path | None,
    progress: bool = True,
) -> tuple[dict[str, float], list[dict[str, Any]], dict[str, Any]]:
    """Metrics, per-image predictions and run info, as :func:`fgad.evaluation.evaluate_class` returns them."""
    from fgad.data.datasets import discover
    from fgad.evaluation import choose_shots, score_samples, test_samples

    if class_name != model.class_name:
        raise ValueError(
            f"this FineGrainedAD model was trained for class {model.class_name!r}; it cannot evaluate "
            f"{class_name!r} (pass --classes {model.class_name})"
        )
    if getattr(settings, "box_prior", "none") != "none":
        raise ValueError(f"--box-prior {settings.box_prior}: FineGrainedAD has no box prior; leave it at 'none'")
    out_size = model.output_size
    model.eval()
    info: dict[str, Any] = {}
    if settings.shots > 0:
        train_good = [s for s in discover(root, "train", [class_name]) if s.label == 0]
        idx = choose_shots(train_good, settings.shots, settings.seed)
        load_references(model, [str(train_good[i].image_path) for i in idx])
        info["references_from"] = f"{settings.shots} train/good images chosen with seed {settings.seed}"
    else:
        if not model.reference_paths:
            raise ValueError("the model holds no shots; load a checkpoint (its shots are recorded) or pass --shots K")
        load_references(model, list(model.reference_paths))
        info["references_from"] = "the checkpoint's training shots"
    info["reference_images"] = list(model.reference_paths)
    label = "FiLo++ + FineGrainedAD" if model.method == "combined" else "FineGrainedAD"
    names = model.pair_names
    bgr = model.method == "finegrained" and model.cfg.reproduce == "released"  # F4: test images fed as BGR
    metrics, predictions, seconds = score_samples(
        test_samples(root, class_name, settings.max_images),
        lambda x: model(released_bgr(x, model.cfg.backbone.mean, model.cfg.backbone.std) if bgr else x, class_name),
        lambda out, j: {"best_description": names[int(out.best_description[j])]},
        root=root,
        class_name=class_name,
        settings=settings,
        backbone=model.cfg.backbone,
        map_size=out_size,
        out_dir=out_dir,
        desc=f"eval {class_name} ({label})",
        progress=progress,
    )
    info.update({"images": len(predictions), "seconds": seconds, "seconds_per_image": seconds / len(predictions),
                 "output_size": out_size, "method": model.method})
    return metrics, predictions, info
