"""Export a FineGrainedAD model of one class to a bundle (docs/bundle.md), the same path as FiLo++'s.

:class:`FgadExportModule` restates :meth:`FineGrainedAD.forward` for deployment: the text pairs are
encoded once into constants (the MLLP context is CoOp, independent of the image, so freezing is
exact), the pair choice is an ``argmax`` + ``gather``, and the graph stops where the few-shot part
begins. Its outputs, in order:

* ``vl_map`` ``[B, g, g]``: the textual map ``T_map`` on the token grid (before fusion);
* ``global_prob`` ``[B]``: ``s_t``, the global feature's score against the pair it chose;
* ``best_description`` ``[B]`` int64: that pair (index into ``manifest.text.descriptions``, the pair names);
* ``tokens_<l>`` ``[B, N, D]``: normalised original-path patch tokens of each gallery layer.

The runtime finishes with the manifest's ``post`` entry (``fgad.runtime.fusion``): visual map
``½ · mean min distance``, harmonic fusion on the grid, upsampling to ``output_size``, smoothing, and the
harmonic image score. :func:`export_plan` gives the one bundle writer (:func:`fgad.export.bundle.write_bundle`)
what it needs; the shots the model was trained with are the default references.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fgad.backbone.dual_path import ClipDualPath
from fgad.bundle.spec import REQUIRED_OUTPUTS, token_output
from fgad.config import ModelConfig
from fgad.export.plan import ExportOptions, ExportPlan
from fgad.methods.finegrained.model import FineGrainedAD, choose_pairs, dual_path_features, fuse_and_score

__all__ = ["FgadExportModule", "expected_outputs", "export_plan", "fgad_output_names", "frozen_pairs_error",
           "resize_model", "runtime_post"]

log = logging.getLogger(__name__)


def fgad_output_names(gallery_layers: Sequence[int]) -> list[str]:
    return [*REQUIRED_OUTPUTS, *(token_output(layer) for layer in gallery_layers)]


def runtime_post(cfg: ModelConfig) -> dict[str, Any]:
    """The manifest's ``post`` entry of a FineGrainedAD bundle (read by ``fgad.runtime.fusion``)."""
    fc = cfg.finegrained
    post: dict[str, Any] = {
        "sigma": fc.sigma,
        "truncate": fc.truncate,
        "fusion": "harmonic",
        "score": "harmonic",
        "fewshot_scale": fc.fewshot_scale,
        "map_size": cfg.backbone.grid,
        "output_size": fc.output_size,
    }
    if not fc.align_corners:  # true is what a bundle without the field means (bundles written before it)
        post["align_corners"] = False
    return post


class FgadExportModule(nn.Module):
    """image ``[B, 3, s, s]`` -> (vl_map, global_prob, best_description, tokens_<l>...) (module docstring)."""

    t_normal: Tensor
    t_abnormal: Tensor
    logit_scale: Tensor
    backbone: ClipDualPath

    def __init__(self, model: FineGrainedAD) -> None:
        super().__init__()
        self.cfg = model.cfg
        self.class_name = model.class_name
        self.backbone = model.backbone  # shared with the model; the text side stays out
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                t_normal, t_abnormal = model.text_pairs()
        finally:
            model.train(was_training)
        self.register_buffer("t_normal", t_normal.detach().clone())
        self.register_buffer("t_abnormal", t_abnormal.detach().clone())
        self.register_buffer("logit_scale", model.logit_scale.detach().clone())
        route = model.routing_keys((t_normal, t_abnormal))  # released mode: the untrained QueryFormer's keys (F1)
        self.route: Tensor | None
        if route is None:
            self.route = None
        else:
            self.register_buffer("route", route.detach().clone())
        self.grid = model.cfg.backbone.grid
        self.output_names = fgad_output_names(model.cfg.finegrained.gallery_layers)

    def description_ties(self, images: Tensor, got: np.ndarray, want: np.ndarray) -> np.ndarray:
        """For each image, whether the two chosen pairs' normal features are equally close to its global feature."""
        from fgad.export.onnx_export import TIE_TOLERANCE

        with torch.no_grad():
            g = dual_path_features(self.backbone, images).global_normed
            sims = (g @ (self.t_normal if self.route is None else self.route).T).cpu().numpy()
        rows = np.arange(sims.shape[0])
        return np.abs(sims[rows, got] - sims[rows, want]) <= TIE_TOLERANCE

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        visual = dual_path_features(self.backbone, image)
        tokens, _ = choose_pairs(visual.patches, self.t_normal, self.t_abnormal, self.logit_scale, self.route)
        prob, choice = choose_pairs(visual.global_normed, self.t_normal, self.t_abnormal, self.logit_scale, self.route)
        return (tokens.unflatten(1, (self.grid, self.grid)), prob, choice, *visual.gallery)


# ---------------------------------------------------------------------------------- checks


def expected_outputs(cfg: ModelConfig) -> dict[str, list[int | None]]:
    """The graph's outputs and shapes (None: the dynamic batch), in order."""
    bb = cfg.backbone
    out: dict[str, list[int | None]] = {"vl_map": [None, bb.grid, bb.grid], "global_prob": [None],
                                        "best_description": [None]}
    for layer in cfg.finegrained.gallery_layers:
        out[token_output(layer)] = [None, bb.num_patches, bb.width]
    return out


def check_fgad_parity(
    module: FgadExportModule, onnx_path: Path, images: Tensor, tolerances: dict[str, float] | None = None
) -> dict[str, Any]:
    """onnxruntime vs PyTorch on ``images``: max |diff| per float output, pair-choice mismatches (ties excluded,
    :meth:`FgadExportModule.description_ties`); raises :class:`fgad.export.onnx_export.ExportParityError`."""
    from fgad.export.onnx_export import check_against_torch

    return check_against_torch(module, onnx_path, images, tolerances)


@torch.no_grad()
def frozen_pairs_error(model: FineGrainedAD, module: FgadExportModule, images: Tensor) -> dict[str, Any]:
    """The export graph + the runtime's steps (in PyTorch) vs :meth:`FineGrainedAD.forward`, with the same
    galleries: the frozen pairs are the model's own, so the differences are rounding only."""
    out = model(images)
    maps, probs, choice, *tokens = module(images)
    visual_map = None
    if model.memory.has_memory:
        g = model.cfg.backbone.grid
        visual_map = (model.cfg.finegrained.fewshot_scale * model.memory(tokens)).unflatten(1, (g, g))
    amap, score = fuse_and_score(
        maps, visual_map, probs, model.cfg.finegrained.output_size, model.blur, model.cfg.finegrained.align_corners
    )
    return {
        "max_abs_diff_anomaly_map": float((amap - out.anomaly_map).abs().max()),
        "mean_abs_diff_anomaly_map": float((amap - out.anomaly_map).abs().mean()),
        "max_abs_diff_image_score": float((score - out.image_score).abs().max()),
        "mean_abs_diff_image_score": float((score - out.image_score).abs().mean()),
        "max_abs_diff_global_prob": float((probs - out.global_prob).abs().max()),
        "mean_abs_diff_global_prob": float((probs - out.global_prob).abs().mean()),
        "best_description_agreement": float((choice == out.best_description).float().mean()),
        "images": int(images.shape[0]),
        "exact": "FineGrainedAD.forward with the same galleries (CoOp text: freezing is exact)",
    }


# ---------------------------------------------------------------------------------- bundle


def export_plan(model: FineGrainedAD, class_name: str, refs: Sequence[str | os.PathLike[str]] | None,
                options: ExportOptions) -> ExportPlan:
    """The bundle of the class the model was trained for (:func:`fgad.export.bundle.write_bundle` writes it).

    ``refs``: normal reference images (the galleries, ``references.npz``); ``None``/empty: the shots the
    model was trained with (``model.reference_paths``), or none (the runtime then uses the textual map
    alone). ``text_mode`` must be ``frozen`` (the pairs are exact constants); ``deform`` is recorded only
    (the model has no deformable convolution); a box prior is refused (FiLo++'s DefLoc).
    """
    if options.box_prior not in (None, "none"):
        raise ValueError(f"box_prior={options.box_prior!r}: box priors are FiLo++'s (DefLoc); a FineGrainedAD model "
                         "is exported without one (drop --box-prior)")
    if options.text_mode != "frozen":
        raise ValueError(f"text_mode={options.text_mode!r}: a FineGrainedAD bundle holds its (exact) text pairs; "
                         "use 'frozen'")
    if class_name != model.class_name:
        raise ValueError(
            f"this FineGrainedAD model was trained for class {model.class_name!r}; export it with "
            f"--class-name {model.class_name} (train another model for {class_name!r})"
        )
    cfg = model.cfg
    model = model.eval()
    ref_paths = [Path(p) for p in refs] if refs else [Path(p) for p in model.reference_paths]
    references_from = "given" if refs else ("training shots" if ref_paths else "none")
    module = FgadExportModule(model).eval()
    names = list(model.pair_names)

    def use_references(images: Tensor | None, paths: list[Path]) -> None:
        if images is None:
            model.clear_memory()
        else:
            model.set_reference_images(images, [str(p) for p in paths])

    return ExportPlan(
        model=model,
        module=module,
        cfg=cfg,
        class_name=class_name,
        reference_paths=ref_paths,
        expected_outputs=expected_outputs(cfg),
        fewshot_layers=tuple(cfg.finegrained.gallery_layers),
        fewshot_entry={"references_from": references_from},
        post=runtime_post(cfg),
        text={
            "mode": "frozen",
            "conditioning": "coop",
            "filtering": "none",
            "positions": "all",
            "descriptions": names,
            "num_normal": len(names),
            "num_abnormal": len(names),
            "pairs": "token-wise choice: argmax over the pairs' normal features",
            "num_prompts": model.prompts.num_encoded,
        },
        measure_approximation=lambda images: frozen_pairs_error(model, module, images),
        deform=options.deform,
        model_entry_first={"method": "finegrained"},
        model_entry=lambda: {"shots": [str(p) for p in model.reference_paths]},
        use_references=use_references,
    )


def resize_model(model: FineGrainedAD, image_size: int, pretrained: str | None) -> tuple[FineGrainedAD, dict[str, Any]]:
    """A FineGrainedAD model is exported at the size it was trained at."""
    raise ValueError("--image-size: a FineGrainedAD bundle is exported at the size it was trained at "
                     f"({model.cfg.backbone.image_size}); leave --image-size out")
