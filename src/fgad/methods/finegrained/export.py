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
harmonic image score. :func:`write_fgad_bundle` is called by :func:`fgad.export.bundle.write_bundle`
for models whose config says ``method: finegrained``; the shots the model was trained with are the
default references.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from fgad.backbone.dual_path import ClipDualPath
from fgad.config import ModelConfig
from fgad.methods.finegrained.model import FineGrainedAD, choose_pairs, dual_path_features, fuse_and_score

__all__ = ["FgadExportModule", "fgad_output_names", "runtime_post", "write_fgad_bundle"]

log = logging.getLogger(__name__)


def fgad_output_names(gallery_layers: Sequence[int]) -> list[str]:
    return ["vl_map", "global_prob", "best_description", *(f"tokens_{layer}" for layer in gallery_layers)]


def runtime_post(cfg: ModelConfig) -> dict[str, Any]:
    """The manifest's ``post`` entry of a FineGrainedAD bundle (read by ``fgad.runtime.fusion``)."""
    fc = cfg.finegrained
    return {
        "sigma": fc.sigma,
        "truncate": fc.truncate,
        "fusion": "harmonic",
        "score": "harmonic",
        "fewshot_scale": fc.fewshot_scale,
        "map_size": cfg.backbone.grid,
        "output_size": fc.output_size,
    }


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
        self.grid = model.cfg.backbone.grid
        self.output_names = fgad_output_names(model.cfg.finegrained.gallery_layers)

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        visual = dual_path_features(self.backbone, image)
        tokens, _ = choose_pairs(visual.patches, self.t_normal, self.t_abnormal, self.logit_scale)
        prob, choice = choose_pairs(visual.global_normed, self.t_normal, self.t_abnormal, self.logit_scale)
        return (tokens.unflatten(1, (self.grid, self.grid)), prob, choice, *visual.gallery)


# ---------------------------------------------------------------------------------- checks


def _expected_shapes(cfg: ModelConfig) -> dict[str, list[int | None]]:
    bb = cfg.backbone
    out: dict[str, list[int | None]] = {"vl_map": [None, bb.grid, bb.grid], "global_prob": [None],
                                        "best_description": [None]}
    for layer in cfg.finegrained.gallery_layers:
        out[f"tokens_{layer}"] = [None, bb.num_patches, bb.width]
    return out


def _check_shapes(shapes: dict[str, list[int | None]], cfg: ModelConfig) -> dict[str, list[int | None]]:
    from fgad.export.onnx_export import ExportError

    expected = _expected_shapes(cfg)
    if list(shapes) != list(expected):
        raise ExportError(f"the graph's outputs are {list(shapes)}, expected {list(expected)}")
    for name, want in expected.items():
        got = shapes[name]
        if len(got) != len(want) or any(w is not None and g != w for g, w in zip(got, want, strict=True)):
            raise ExportError(f"output {name} has shape {got}, expected {want}")
    return expected


def _pair_ties(module: nn.Module, images: Tensor, got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """For each image, whether the two chosen pairs' normal features are equally close to its global feature."""
    from fgad.export.onnx_export import TIE_TOLERANCE

    graph = cast(FgadExportModule, module)
    with torch.no_grad():
        g = dual_path_features(graph.backbone, images).global_normed
        sims = (g @ graph.t_normal.T).cpu().numpy()
    rows = np.arange(sims.shape[0])
    return np.abs(sims[rows, got] - sims[rows, want]) <= TIE_TOLERANCE


def check_fgad_parity(
    module: FgadExportModule, onnx_path: Path, images: Tensor, tolerances: dict[str, float] | None = None
) -> dict[str, Any]:
    """onnxruntime vs PyTorch on ``images``: max |diff| per float output, pair-choice mismatches (ties excluded).

    :func:`fgad.export.onnx_export.check_against_torch` with the pairs' tie rule; raises
    :class:`fgad.export.onnx_export.ExportParityError` naming the first output beyond tolerance.
    """
    from fgad.export.onnx_export import check_against_torch

    return check_against_torch(module, onnx_path, images, tolerances, description_ties=_pair_ties)


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
    amap, score = fuse_and_score(maps, visual_map, probs, model.cfg.finegrained.output_size, model.blur)
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


def write_fgad_bundle(
    out_dir: str | os.PathLike[str],
    model: FineGrainedAD,
    model_cfg: ModelConfig,
    class_name: str,
    refs: Sequence[str | os.PathLike[str]] | None,
    text_mode: str = "frozen",
    deform: str = "decomposed",
    checkpoint_meta: dict[str, Any] | None = None,
    opset: int | None = None,
    thresholds: dict[str, Any] | None = None,
    tolerances: dict[str, float] | None = None,
    external_data: bool | None = None,
    approximation_images: Sequence[str | os.PathLike[str]] | None = None,
) -> Path:
    """Export ``model`` into the bundle folder ``out_dir`` (arguments as :func:`fgad.export.bundle.write_bundle`).

    ``refs``: normal reference images (the galleries, ``references.npz``); ``None``/empty: the shots the
    model was trained with (``model.reference_paths``), or none (the runtime then uses the textual map
    alone). ``text_mode`` must be ``frozen`` (the pairs are exact constants); ``deform`` is recorded only
    (the model has no deformable convolution).
    """
    from fgad.bundle.staging import check_target, staged_bundle
    from fgad.export import bundle as B
    from fgad.export.onnx_export import DEFAULT_OPSET, export_onnx, onnx_output_shapes

    if text_mode != "frozen":
        raise ValueError(f"text_mode={text_mode!r}: a FineGrainedAD bundle holds its (exact) text pairs; use 'frozen'")
    if model_cfg != model.cfg:
        raise ValueError("model_cfg differs from the model's own config; pass model.cfg")
    if class_name != model.class_name:
        raise ValueError(
            f"this FineGrainedAD model was trained for class {model.class_name!r}; export it with "
            f"--class-name {model.class_name} (train another model for {class_name!r})"
        )
    opset = DEFAULT_OPSET if opset is None else opset
    out = Path(out_dir)
    check_target(out, B.MANIFEST_FILE)
    cfg = model_cfg
    bb, fc = cfg.backbone, cfg.finegrained
    model = model.eval()
    ref_paths = [Path(p) for p in refs] if refs else [Path(p) for p in model.reference_paths]
    references_from = "given" if refs else ("training shots" if ref_paths else "none")
    ref_images = B.load_reference_images(ref_paths, cfg) if ref_paths else None
    check_images = ref_images if ref_images is not None else B._synthetic_images(cfg)
    device = next(model.parameters()).device
    module = FgadExportModule(model).eval()

    with staged_bundle(out) as tmp:
        onnx_path = export_onnx(module, check_images[:2].to(device), tmp / B.MODEL_FILE, opset=opset, deform=deform,
                                external_data=external_data)
        shapes = _check_shapes(onnx_output_shapes(onnx_path), cfg)
        parity = check_fgad_parity(module, onnx_path, check_images.to(device), tolerances)
        parity["inputs"] = "reference images" if ref_images is not None else f"{len(check_images)} synthetic images"
        log.info("parity: %s", {k: v for k, v in parity.items() if k.startswith(("max_", "best_"))})

        fewshot: dict[str, Any] = {"layers": list(fc.gallery_layers), "file": None, "num_references": 0,
                                   "references_from": references_from}
        if ref_images is not None:
            B._graph_references(onnx_path, ref_images, fc.gallery_layers, ref_paths, tmp / B.REFERENCES_FILE)
            fewshot.update(file=B.REFERENCES_FILE, num_references=len(ref_paths))
            model.set_reference_images(ref_images.to(device), [str(p) for p in ref_paths])
        else:
            model.clear_memory()

        measure_on, measured = B._approximation_inputs(approximation_images, cfg, check_images, parity["inputs"])
        approximation = frozen_pairs_error(model, module, measure_on.to(device))
        approximation["inputs"] = measured

        files = sorted(p.name for p in tmp.iterdir() if p.is_file())
        meta = B._checkpoint_meta(checkpoint_meta, model)
        names = list(model.pair_names)
        manifest: dict[str, Any] = {
            **B._manifest_head(class_name, opset, files, bb),
            "outputs": shapes,
            "grid": bb.grid,
            "fewshot": fewshot,
            "post": runtime_post(cfg),
            "text": {
                "mode": "frozen",
                "conditioning": "coop",
                "filtering": "none",
                "positions": "all",
                "descriptions": names,
                "num_normal": len(names),
                "num_abnormal": len(names),
                "pairs": "token-wise choice: argmax over the pairs' normal features",
                "num_prompts": model.prompts.num_encoded,
                "approximation": approximation,
            },
            "deform": deform,
            "model": {
                "method": "finegrained",
                "config": cfg.name,
                "backbone": bb.model_name,
                "pretrained": meta.get("pretrained", bb.pretrained),
                "backbone_fingerprint": meta["backbone_fingerprint"],
                "checkpoint_sha256": meta.get("checkpoint_sha256"),
                "shots": [str(p) for p in model.reference_paths],
                **({"checkpoint": str(meta["checkpoint"])} if meta.get("checkpoint") else {}),
            },
            "thresholds": {"image": None, "rule": None, **(thresholds or {})},
            "parity": parity,
            "sha256": {name: B.sha256_file(tmp / name) for name in files},
        }
        from fgad.core.atomic import atomic_write_json

        atomic_write_json(tmp / B.MANIFEST_FILE, manifest)
    return out
