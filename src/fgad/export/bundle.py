"""Write a bundle (docs/bundle.md): ``model.onnx``, ``references.npz`` and ``manifest.json`` for one class.

:func:`write_bundle` freezes the text side, wraps the model, exports the graph, checks it against
PyTorch in onnxruntime, computes the few-shot memory from the reference images with the graph
itself, measures how far the frozen text is from the exact per-image computation, and records all
of it in the manifest. Everything is written into a temporary folder next to ``out_dir`` and
renamed onto it only when every check has passed: a failed export leaves no bundle behind.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fgad import __version__
from fgad.bundle import file_sha256 as sha256_file
from fgad.bundle.staging import check_target, staged_bundle, utc_timestamp, write_references_npz
from fgad.config import BackboneConfig, ModelConfig, replace
from fgad.core.atomic import atomic_write_json
from fgad.export.deform_flavours import normalize_deform
from fgad.export.onnx_export import (
    DEFAULT_OPSET,
    ExportError,
    check_against_torch,
    export_onnx,
    onnx_output_shapes,
    run_onnx,
)
from fgad.methods.filo.export_module import INPUT_NAME, PRIOR_OUTPUTS, FiloExportModule, check_graph_box_prior
from fgad.methods.filo.frozen_text import TEXT_MODES, FrozenText, freeze_text, freeze_text_bank
from fgad.methods.filo.model import FiLoPlusPlus
from fgad.methods.filo.priors.base import build_box_prior

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_FILE",
    "MODEL_FILE",
    "REFERENCES_FILE",
    "frozen_text_error",
    "list_reference_images",
    "load_reference_images",
    "resize_model",
    "sha256_file",
    "write_bundle",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"
REFERENCES_FILE = "references.npz"
#: Without reference images, parity and the text approximation are measured on this many
#: seeded standard-normal images (the scale of normalised inputs).
SYNTHETIC_IMAGES = 3
SYNTHETIC_SEED = 0


# ---------------------------------------------------------------------------------- inputs


def list_reference_images(
    folder: str | os.PathLike[str], recursive: bool = False, what: str = "reference images"
) -> list[Path]:
    """Image files inside ``folder`` (and its subfolders with ``recursive``), sorted, hidden files skipped."""
    from fgad.core.io import IMAGE_EXTENSIONS

    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"folder of {what} {root} does not exist")
    candidates = root.rglob("*") if recursive else root.iterdir()
    files = sorted(p for p in candidates
                   if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise FileNotFoundError(f"{root}: no {what} ({', '.join(IMAGE_EXTENSIONS)})")
    return files


def load_reference_images(paths: Sequence[str | os.PathLike[str]], cfg: ModelConfig) -> torch.Tensor:
    """Preprocess images exactly as the runtime does (fgad.core.transforms.preprocess) -> [k, 3, s, s]."""
    from fgad.core.io import read_image
    from fgad.core.transforms import preprocess

    bb = cfg.backbone
    arrays = [preprocess(read_image(p), bb.image_size, bb.mean, bb.std) for p in paths]
    return torch.from_numpy(np.stack(arrays).astype(np.float32))


def _synthetic_images(cfg: ModelConfig, count: int = SYNTHETIC_IMAGES) -> torch.Tensor:
    gen = torch.Generator().manual_seed(SYNTHETIC_SEED)
    size = cfg.backbone.image_size
    return torch.randn(count, 3, size, size, generator=gen)


# ---------------------------------------------------------------------------------- image size


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
    from fgad.backbone.clip_loader import RANDOM_INIT, resize_position_embedding
    from fgad.methods.filo.build import build_model
    from fgad.methods.filo.checkpoint import CheckpointError

    cfg = model.cfg
    if image_size == cfg.backbone.image_size:
        return model, {}
    if getattr(cfg, "method", "filo") == "finegrained":
        raise ValueError("--image-size: a FineGrainedAD bundle is exported at the size it was trained at "
                         f"({cfg.backbone.image_size}); leave --image-size out")
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


# ---------------------------------------------------------------------------------- text approximation


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


# ---------------------------------------------------------------------------------- bundle


def _graph_references(
    onnx_path: Path, images: torch.Tensor, layers: Sequence[int], paths: Sequence[Path], target: Path
) -> None:
    """``references.npz`` at ``target`` from the graph's own ``tokens_<l>`` for the reference ``images``."""
    outputs = run_onnx(onnx_path, images.numpy())
    write_references_npz(target, {layer: outputs[f"tokens_{layer}"] for layer in layers}, paths)


def _approximation_inputs(
    paths: Sequence[str | os.PathLike[str]] | None, cfg: ModelConfig, default: torch.Tensor, default_label: str
) -> tuple[torch.Tensor, str]:
    """The images the text approximation is measured on (``paths``, else ``default``) and their manifest label."""
    if paths:
        images = load_reference_images([Path(p) for p in paths], cfg)
        return images, f"{len(images)} given images"
    return default, default_label


def _checkpoint_meta(checkpoint_meta: dict[str, Any] | None, model: Any) -> dict[str, Any]:
    """``checkpoint_meta`` with the backbone fingerprint computed from ``model`` where it is missing."""
    meta = dict(checkpoint_meta or {})
    if not meta.get("backbone_fingerprint"):
        from fgad.methods.filo.checkpoint import backbone_fingerprint

        meta["backbone_fingerprint"] = backbone_fingerprint(model)
    return meta


def _manifest_head(class_name: str, opset: int, files: Sequence[str], bb: BackboneConfig) -> dict[str, Any]:
    """The manifest's entries up to ``input`` for an fp32 ONNX bundle whose folder holds ``files``."""
    return {
        "format_version": FORMAT_VERSION,
        "fgad_version": __version__,
        "created": utc_timestamp(),
        "class_name": class_name,
        "engine": {
            "kind": "onnx",
            "file": MODEL_FILE,
            "opset": opset,
            "precision": "fp32",
            "tensorrt_version": None,
            "compute_capability": None,
            "external_data": [f for f in files if f.startswith(MODEL_FILE + ".")] or None,
        },
        "input": {
            "name": INPUT_NAME,
            "size": bb.image_size,
            "layout": "NCHW",
            "color": "RGB",
            "resize": "bicubic",
            "mean": list(bb.mean),
            "std": list(bb.std),
        },
    }


def _check_shapes(
    shapes: dict[str, list[int | None]], cfg: ModelConfig, box_prior: str = "none"
) -> dict[str, list[int | None]]:
    bb = cfg.backbone
    s, n, d = bb.image_size, bb.num_patches, bb.width
    expected: dict[str, list[int | None]] = {"vl_map": [None, s, s], "global_prob": [None], "best_description": [None]}
    for layer in cfg.fewshot.memory_layers:
        expected[f"tokens_{layer}"] = [None, n, d]
    if box_prior != "none":  # PRIOR_OUTPUTS of the wrapper
        expected.update({"position": [None], "region_weight": [None, s, s]})
    if list(shapes) != list(expected):
        raise ExportError(f"the graph's outputs are {list(shapes)}, expected {list(expected)}")
    for name, want in expected.items():
        got = shapes[name]
        static_ok = len(got) == len(want) and all(w is None or g == w for g, w in zip(got, want, strict=True))
        if not static_ok:
            raise ExportError(f"output {name} has shape {got}, expected {want}")
    return {name: [None, *shapes[name][1:]] for name in expected}


def _box_prior_entry(cfg: ModelConfig, prior: str) -> dict[str, Any]:
    """The manifest's ``box_prior``: which prior the graph holds and the outputs the runtime reads."""
    if prior == "none":
        return {"name": "none", "in_graph": False, "outputs": []}
    from fgad.config import to_dict

    return {"name": prior, "in_graph": True, "outputs": list(PRIOR_OUTPUTS), "suppression": cfg.post.suppression,
            "params": to_dict(cfg.post.objectness)}


def write_bundle(
    out_dir: str | os.PathLike[str],
    model: FiLoPlusPlus,
    model_cfg: ModelConfig,
    class_name: str,
    refs: Sequence[str | os.PathLike[str]] | None,
    text_mode: str = "frozen",
    deform: str = "decomposed",
    checkpoint_meta: dict[str, Any] | None = None,
    opset: int = DEFAULT_OPSET,
    thresholds: dict[str, Any] | None = None,
    tolerances: dict[str, float] | None = None,
    external_data: bool | None = None,
    approximation_images: Sequence[str | os.PathLike[str]] | None = None,
    box_prior: str | None = None,
) -> Path:
    """Export ``model`` for ``class_name`` into the bundle folder ``out_dir`` and return it.

    ``refs``: normal reference images of the class (CoCoOp conditioning, reference-set filtering,
    parity inputs and ``references.npz``); ``None`` or empty: zero-shot bundle, conditioned on the
    zero vector, checked on seeded synthetic inputs. ``checkpoint_meta`` may carry ``pretrained``,
    ``backbone_fingerprint``, ``checkpoint_sha256`` and ``checkpoint`` (recorded under ``model``).
    ``approximation_images``: images (best: good and defective ones not among the references) on
    which the frozen-text approximation is measured; default the parity inputs (the references,
    whose mean conditions CoCoOp, so the recorded difference is then an optimistic one).
    ``external_data``: see :func:`~fgad.export.onnx_export.export_onnx` (``None``: only above 2 GB;
    the weights file is then listed in ``engine.external_data`` and ``sha256``). Raises
    :class:`~fgad.export.onnx_export.ExportParityError` (nothing written) when onnxruntime and
    PyTorch disagree beyond ``tolerances``. ``box_prior`` (default ``post.box_prior`` of the config):
    ``none``, or ``objectness`` computed inside the graph; ``grounding-dino`` is refused (PyTorch path only).
    """
    if getattr(model_cfg, "method", "filo") == "finegrained":  # FineGrainedAD: its own graph, same bundle format
        from fgad.methods.finegrained.export import write_fgad_bundle

        if box_prior not in (None, "none"):
            raise ValueError(f"box_prior={box_prior!r}: box priors are FiLo++'s (DefLoc); a FineGrainedAD model is "
                             "exported without one (drop --box-prior)")
        return write_fgad_bundle(out_dir, model, model_cfg, class_name, refs, text_mode=text_mode,  # type: ignore[arg-type]
                                 deform=deform, checkpoint_meta=checkpoint_meta, opset=opset, thresholds=thresholds,
                                 tolerances=tolerances, external_data=external_data,
                                 approximation_images=approximation_images)
    if text_mode not in TEXT_MODES:
        raise ValueError(f"text_mode={text_mode!r}: use one of {TEXT_MODES}")
    deform = normalize_deform(deform)
    if deform == "plugin":
        raise ValueError(
            "deform='plugin': the bundle's model.onnx must run in onnxruntime (the runtime's fallback), so it is "
            "exported with deform='onnx' (DeformConv) and the plugin nodes are made when the TensorRT engine is "
            "built (fgad.export.engine_bundle.add_engine(..., deform='plugin'); fgad-export --deform plugin does both)"
        )
    if model_cfg != model.cfg:
        raise ValueError("model_cfg differs from the model's own config; pass model.cfg (or rebuild the model)")
    out = Path(out_dir)
    check_target(out, MANIFEST_FILE)
    cfg = model_cfg
    bb = cfg.backbone
    model = model.eval()
    ref_paths = [Path(p) for p in refs] if refs else []
    ref_images = load_reference_images(ref_paths, cfg) if ref_paths else None
    check_images = ref_images if ref_images is not None else _synthetic_images(cfg)
    device = next(model.parameters()).device

    prior = cfg.post.box_prior if box_prior is None else box_prior
    check_graph_box_prior(prior)
    freeze = freeze_text if text_mode == "frozen" else freeze_text_bank
    text = freeze(model, class_name, ref_images, per_position=prior != "none")
    module = FiloExportModule(model, text, box_prior=prior).eval()

    with staged_bundle(out) as tmp:
        onnx_path = export_onnx(module, check_images[:2].to(device), tmp / MODEL_FILE, opset=opset, deform=deform,
                                external_data=external_data)
        shapes = _check_shapes(onnx_output_shapes(onnx_path), cfg, prior)
        parity = check_against_torch(module, onnx_path, check_images.to(device), tolerances)
        parity["inputs"] = "reference images" if ref_images is not None else f"{len(check_images)} synthetic images"
        log.info("parity: %s", {k: v for k, v in parity.items() if k.startswith(("max_", "best_"))})

        fewshot: dict[str, Any] = {"layers": list(cfg.fewshot.memory_layers), "file": None, "num_references": 0}
        if ref_images is not None:
            _graph_references(onnx_path, ref_images, cfg.fewshot.memory_layers, ref_paths, tmp / REFERENCES_FILE)
            fewshot.update(file=REFERENCES_FILE, num_references=len(ref_paths))

        measure_on, measured = _approximation_inputs(approximation_images, cfg, check_images, parity["inputs"])
        approximation = frozen_text_error(model, class_name, measure_on.to(device), text=text, box_prior=prior)
        approximation["inputs"] = measured
        log.info("frozen text vs exact model: %s", approximation)

        files = sorted(p.name for p in tmp.iterdir() if p.is_file())
        meta = _checkpoint_meta(checkpoint_meta, model)
        manifest: dict[str, Any] = {
            **_manifest_head(class_name, opset, files, bb),
            "outputs": shapes,
            "grid": bb.grid,
            "fewshot": fewshot,
            "post": {"sigma": cfg.post.sigma, "truncate": cfg.post.truncate},
            "text": {**text.summary(), "approximation": approximation},
            "box_prior": _box_prior_entry(cfg, prior),
            "deform": deform,
            "model": {
                "config": cfg.name,
                "backbone": bb.model_name,
                "pretrained": meta.get("pretrained", bb.pretrained),
                "backbone_fingerprint": meta["backbone_fingerprint"],
                "checkpoint_sha256": meta.get("checkpoint_sha256"),
                **({"checkpoint": str(meta["checkpoint"])} if meta.get("checkpoint") else {}),
                **({"image_size_override": meta["image_size_override"]} if meta.get("image_size_override") else {}),
            },
            "thresholds": {"image": None, "rule": None, **(thresholds or {})},
            "parity": parity,
            "sha256": {name: sha256_file(tmp / name) for name in files},
        }
        atomic_write_json(tmp / MANIFEST_FILE, manifest)
    return out
