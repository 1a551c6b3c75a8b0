"""FiLo++'s bundle: the export plan (frozen text, wrapper, box prior), the text approximation, resizing.

:func:`export_plan` freezes the text side for one class (CoCoOp conditioned on the references' mean global
feature, prompts filtered over them; docs/bundle.md) and wraps the model for export; the one writer
(:func:`fgad.export.bundle.write_bundle`) does the rest. :func:`frozen_text_error` measures how far the frozen
text moves the results from the exact per-image model.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from fgad.bundle.spec import BOX_PRIOR_OUTPUTS, token_output
from fgad.config import ModelConfig, replace
from fgad.export.deform_flavours import normalize_deform
from fgad.export.plan import ExportOptions, ExportPlan
from fgad.methods.filo.export_module import FiloExportModule, check_graph_box_prior
from fgad.methods.filo.frozen_text import TEXT_MODES, FrozenText, freeze_text, freeze_text_bank
from fgad.methods.filo.model import FiLoPlusPlus
from fgad.methods.filo.priors.registry import build_box_prior

__all__ = ["box_prior_entry", "expected_outputs", "export_plan", "frozen_text_error", "resize_model"]


def expected_outputs(cfg: ModelConfig, box_prior: str = "none") -> dict[str, list[int | None]]:
    """The FiLo++ graph's outputs and shapes (None: the dynamic batch), in order (docs/bundle.md)."""
    bb = cfg.backbone
    s, n, d = bb.image_size, bb.num_patches, bb.width
    expected: dict[str, list[int | None]] = {"vl_map": [None, s, s], "global_prob": [None], "best_description": [None]}
    for layer in cfg.fewshot.memory_layers:
        expected[token_output(layer)] = [None, n, d]
    if box_prior != "none":
        expected.update({"position": [None], "region_weight": [None, s, s]})
    return expected


def box_prior_entry(cfg: ModelConfig, prior: str) -> dict[str, Any]:
    """The manifest's ``box_prior``: which prior the graph holds and the outputs the runtime reads."""
    if prior == "none":
        return {"name": "none", "in_graph": False, "outputs": []}
    from fgad.config import to_dict

    return {"name": prior, "in_graph": True, "outputs": list(BOX_PRIOR_OUTPUTS), "suppression": cfg.post.suppression,
            "params": to_dict(cfg.post.objectness)}


def export_plan(model: FiLoPlusPlus, class_name: str, refs: Sequence[str | os.PathLike[str]] | None,
                options: ExportOptions) -> ExportPlan:
    """The FiLo++ bundle of ``class_name``: text frozen from the references (zero vector without), the box prior
    (``options.box_prior``, default ``post.box_prior``: ``none`` or ``objectness`` inside the graph;
    ``grounding-dino`` is refused: PyTorch path only) and the export wrapper."""
    from fgad.export.bundle import load_reference_images

    if options.text_mode not in TEXT_MODES:
        raise ValueError(f"text_mode={options.text_mode!r}: use one of {TEXT_MODES}")
    deform = normalize_deform(options.deform)
    if deform == "plugin":
        raise ValueError(
            "deform='plugin': the bundle's model.onnx must run in onnxruntime (the runtime's fallback), so it is "
            "exported with deform='onnx' (DeformConv) and the plugin nodes are made when the TensorRT engine is "
            "built (fgad.export.engine_bundle.add_engine(..., deform='plugin'); fgad-export --deform plugin does both)"
        )
    if model.cfg.reproduce == "released":
        raise ValueError("this FiLo++ model scores with reproduce='released' (the released code's numerics, PyTorch "
                         "path only); a bundle holds fgad's own numerics: load it with reproduce 'fgad' "
                         "(model.set_reproduce('fgad')) before exporting, or evaluate the released mode with fgad-eval")
    cfg = model.cfg
    model = model.eval()
    ref_paths = [Path(p) for p in refs] if refs else []
    ref_images = load_reference_images(ref_paths, cfg) if ref_paths else None
    prior = cfg.post.box_prior if options.box_prior is None else options.box_prior
    check_graph_box_prior(prior)
    freeze = freeze_text if options.text_mode == "frozen" else freeze_text_bank
    text = freeze(model, class_name, ref_images, per_position=prior != "none")
    module = FiloExportModule(model, text, box_prior=prior).eval()
    return ExportPlan(
        model=model,
        module=module,
        cfg=cfg,
        class_name=class_name,
        reference_paths=ref_paths,
        expected_outputs=expected_outputs(cfg, prior),
        fewshot_layers=tuple(cfg.fewshot.memory_layers),
        post={"sigma": cfg.post.sigma, "truncate": cfg.post.truncate},
        text=text.summary(),
        measure_approximation=lambda images: frozen_text_error(model, class_name, images, text=text, box_prior=prior),
        deform=deform,
        extra_entries={"box_prior": box_prior_entry(cfg, prior)},
    )


def resize_model(
    model: FiLoPlusPlus, image_size: int, pretrained: str | None
) -> tuple[FiLoPlusPlus, dict[str, Any]]:
    """The same trained model at another input size; only the position grid changes.

    With pretrained weights the model is rebuilt at ``image_size`` from the same source (the
    loader resizes the original position grid, as training at that size would) and every other
    backbone tensor is checked to equal ``model``'s. A randomly initialised backbone has no
    original grid: its trained-size table is resized (bicubic, CLS row kept). All other weights,
    learned ones included, are copied from ``model``.
    """
    from fgad.backbone.checkpoint import CheckpointError
    from fgad.backbone.clip_loader import RANDOM_INIT, resize_position_embedding
    from fgad.methods.filo.build import build_model

    cfg = model.cfg
    if image_size == cfg.backbone.image_size:
        return model, {}
    new_cfg = replace(cfg, backbone=replace(cfg.backbone, image_size=image_size))  # validates the size
    random_init = pretrained is None or pretrained.lower() in RANDOM_INIT
    new_model = build_model(new_cfg, pretrained="none" if random_init else pretrained).eval()
    pos_key = "backbone.positional_embedding"
    old_state = model.state_dict()
    new_state = new_model.state_dict()
    if random_init:
        resized = resize_position_embedding(old_state[pos_key].detach().float(), new_cfg.backbone.grid)
        how = f"resized (bicubic) from the checkpoint's {cfg.backbone.grid}x{cfg.backbone.grid} table"
    else:
        resized = new_state[pos_key]
        how = f"resized by the loader from {pretrained}"
        for key, value in old_state.items():
            if key.startswith("backbone.") and key != pos_key and not torch.equal(value, new_state[key]):
                raise CheckpointError(
                    f"rebuilding the backbone at {image_size} px from {pretrained!r} changed {key}: "
                    "not the backbone this checkpoint was trained with"
                )
    state = {k: v for k, v in old_state.items() if not k.startswith("blur.") and k != pos_key}
    state[pos_key] = resized.to(old_state[pos_key].dtype)
    missing, unexpected = new_model.load_state_dict(state, strict=False)
    leftover = [k for k in missing if not k.startswith("blur.")]
    if leftover or unexpected:
        raise RuntimeError(f"resizing the model left keys unset {leftover[:5]} / unexpected {unexpected[:5]}")
    new_model.prompts.extra_banks = model.prompts.extra_banks
    note = {"trained": cfg.backbone.image_size, "exported": image_size, "position_grid": how}
    return new_model, note


def _runtime_finish(model: FiLoPlusPlus, vl_map: torch.Tensor, global_prob: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """docs/bundle.md steps 2-4 in zero-shot: smooth (the model's own GaussianBlur), then the image score."""
    anomaly_map = model.blur(vl_map.unsqueeze(1))[:, 0]
    score = 0.5 * (global_prob + anomaly_map.flatten(1).amax(dim=1))
    return anomaly_map, score


@torch.no_grad()
def frozen_text_error(
    model: FiLoPlusPlus,
    class_name: str,
    images: torch.Tensor,
    text: FrozenText | None = None,
    ref_images: torch.Tensor | None = None,
    text_mode: str = "frozen",
    batch_size: int = 4,
    box_prior: str = "none",
) -> dict[str, Any]:
    """How far the bundle's frozen text moves the results from the exact per-image model.

    Exact: ``FiLoPlusPlus.forward`` (per-image CoCoOp conditioning and prompt filtering),
    zero-shot. Frozen: the export wrapper with ``text`` (or the text frozen from ``ref_images``
    in ``text_mode``), finished with the runtime steps of docs/bundle.md in PyTorch. Returns max
    and mean absolute differences of the final anomaly maps, image scores and global
    probabilities, and how often the best description agrees. With references loaded the runtime
    averages ``vl_map`` with the few-shot map, which halves the map differences reported here.
    """
    if text is None:
        freeze = freeze_text if text_mode == "frozen" else freeze_text_bank
        text = freeze(model, class_name, ref_images, per_position=box_prior != "none")
    was_training = model.training
    model.eval()
    module = FiloExportModule(model, text, box_prior=box_prior).eval()
    prior = build_box_prior(box_prior, model=model) if box_prior != "none" else None
    diffs: dict[str, list[torch.Tensor]] = {"anomaly_map": [], "image_score": [], "global_prob": []}
    agree: list[torch.Tensor] = []
    try:
        for start in range(0, images.shape[0], batch_size):
            batch = images[start : start + batch_size]
            exact = model(batch, class_name, use_memory=False, box_prior=prior)
            vl, prob, best, *_ = module(batch)
            amap, score = _runtime_finish(model, vl, prob)
            diffs["anomaly_map"].append((amap - exact.anomaly_map).abs().flatten(1))
            diffs["image_score"].append((score - exact.image_score).abs())
            diffs["global_prob"].append((prob - exact.global_prob).abs())
            agree.append((best == exact.best_description).float())
    finally:
        model.train(was_training)
    out: dict[str, Any] = {}
    for name, parts in diffs.items():
        values = torch.cat(parts)
        out[f"max_abs_diff_{name}"] = float(values.max())
        out[f"mean_abs_diff_{name}"] = float(values.mean())
    out["best_description_agreement"] = float(torch.cat(agree).mean())
    out["images"] = int(images.shape[0])
    out["exact"] = "FiLoPlusPlus.forward, per-image conditioning and filtering, zero-shot"
    out["box_prior"] = box_prior
    return out
