"""The one bundle writer (docs/bundle.md): ``model.onnx``, ``references.npz`` and ``manifest.json`` for one class.

:func:`write_bundle` takes a method's :class:`~fgad.export.plan.ExportPlan`, exports its module to ONNX, checks
the graph's outputs and its agreement with PyTorch in onnxruntime, computes the few-shot references with the
graph itself, records how far the frozen graph is from the exact model, and writes the manifest. Everything is
written into a temporary folder next to ``out_dir`` and renamed onto it only when every check has passed: a
failed export leaves no bundle behind. :func:`export_bundle` is the front door: it asks the model's method
(``model.cfg.method``, :mod:`fgad.methods.registry`) for the plan and writes it.
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
from fgad.bundle.files import file_sha256 as sha256_file
from fgad.bundle.references import references_fingerprint
from fgad.bundle.spec import (
    FORMAT_VERSION,
    INPUT_NAME,
    MANIFEST_FILE,
    MODEL_FILE,
    REFERENCES_FILE,
    token_output,
)
from fgad.bundle.staging import (
    SigningKeySpec,
    check_target,
    signing_key,
    staged_bundle,
    utc_timestamp,
    write_manifest,
    write_references_npz,
)
from fgad.config import BackboneConfig, ModelConfig
from fgad.export.onnx_export import (
    DEFAULT_OPSET,
    ExportError,
    check_against_torch,
    export_onnx,
    onnx_output_shapes,
    run_onnx,
)
from fgad.export.plan import ExportOptions, ExportPlan
from fgad.methods.registry import DEFAULT_METHOD, get_method

__all__ = [
    "export_bundle",
    "list_reference_images",
    "load_reference_images",
    "resize_model",
    "sha256_file",
    "synthetic_images",
    "write_bundle",
]

log = logging.getLogger(__name__)

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


def load_reference_images(paths: Sequence[str | os.PathLike[str]], cfg: ModelConfig,
                          what: str = "reference images") -> torch.Tensor:
    """Preprocess images exactly as the runtime does (fgad.core.transforms.preprocess) -> [k, 3, s, s].

    Every file must be readable: :class:`fgad.core.io.UnreadableImagesError` (a ``ValueError``) names each one
    that is not, and nothing is exported (references define what the bundle calls normal).
    """
    from fgad.core.io import read_image_set
    from fgad.core.transforms import preprocess

    bb = cfg.backbone
    arrays = read_image_set(paths, what, lambda image: preprocess(image, bb.image_size, bb.mean, bb.std))
    return torch.from_numpy(np.stack(arrays).astype(np.float32))


def synthetic_images(cfg: ModelConfig, count: int = SYNTHETIC_IMAGES) -> torch.Tensor:
    """Seeded standard-normal images at the model's input size (parity inputs of a zero-shot bundle)."""
    gen = torch.Generator().manual_seed(SYNTHETIC_SEED)
    size = cfg.backbone.image_size
    return torch.randn(count, 3, size, size, generator=gen)


# ---------------------------------------------------------------------------------- manifest parts


def _check_shapes(shapes: dict[str, list[int | None]], expected: dict[str, list[int | None]]) -> None:
    if list(shapes) != list(expected):
        raise ExportError(f"the graph's outputs are {list(shapes)}, expected {list(expected)}")
    for name, want in expected.items():
        got = shapes[name]
        if len(got) != len(want) or any(w is not None and g != w for g, w in zip(got, want, strict=True)):
            raise ExportError(f"output {name} has shape {got}, expected {want}")


def _graph_references(
    onnx_path: Path, images: torch.Tensor, layers: Sequence[int], paths: Sequence[Path], target: Path,
    plan: ExportPlan, meta: dict[str, Any],
) -> str:
    """``references.npz`` at ``target`` from the graph's own ``tokens_<l>`` for the reference ``images``, with the
    fingerprint of the model entry :func:`_model_entry` will write (returned, checked against it later)."""
    outputs = run_onnx(onnx_path, images.numpy())
    tokens = {layer: outputs[token_output(layer)] for layer in layers}
    bb = plan.cfg.backbone
    model = {"config": plan.cfg.name, "backbone": bb.model_name, "backbone_fingerprint": meta["backbone_fingerprint"],
             "checkpoint_sha256": meta.get("checkpoint_sha256")}
    fingerprint = references_fingerprint(model, {layer: t.shape[-1] for layer, t in tokens.items()}, bb.grid,
                                         bb.image_size, bb.mean, bb.std)
    write_references_npz(target, tokens, paths, fingerprint)
    return fingerprint


def _checkpoint_meta(checkpoint_meta: dict[str, Any] | None, model: Any) -> dict[str, Any]:
    """``checkpoint_meta`` with the backbone fingerprint computed from ``model`` where it is missing."""
    meta = dict(checkpoint_meta or {})
    if not meta.get("backbone_fingerprint"):
        from fgad.backbone.checkpoint import backbone_fingerprint

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


def _model_entry(plan: ExportPlan, meta: dict[str, Any]) -> dict[str, Any]:
    bb = plan.cfg.backbone
    return {
        **plan.model_entry_first,
        "config": plan.cfg.name,
        "backbone": bb.model_name,
        "pretrained": meta.get("pretrained", bb.pretrained),
        "backbone_fingerprint": meta["backbone_fingerprint"],
        "checkpoint_sha256": meta.get("checkpoint_sha256"),
        **plan.model_entry(),
        **({"checkpoint": str(meta["checkpoint"])} if meta.get("checkpoint") else {}),
        **({"image_size_override": meta["image_size_override"]} if meta.get("image_size_override") else {}),
    }


# ---------------------------------------------------------------------------------- the writer


def write_bundle(
    out_dir: str | os.PathLike[str],
    plan: ExportPlan,
    *,
    checkpoint_meta: dict[str, Any] | None = None,
    opset: int | None = None,
    thresholds: dict[str, Any] | None = None,
    tolerances: dict[str, float] | None = None,
    external_data: bool | None = None,
    approximation_images: Sequence[str | os.PathLike[str]] | None = None,
    sign: SigningKeySpec = None,
    fewshot_search: str = "runtime",
) -> Path:
    """Write ``plan`` into the bundle folder ``out_dir`` and return it.

    ``checkpoint_meta`` may carry ``pretrained``, ``backbone_fingerprint``, ``checkpoint_sha256``, ``checkpoint``
    and ``image_size_override`` (recorded under ``model``). ``approximation_images``: images (best: good and
    defective ones not among the references) on which the frozen graph's approximation is measured; default the
    parity inputs. ``external_data``: see :func:`~fgad.export.onnx_export.export_onnx` (``None``: only above
    2 GB). ``sign``: an Ed25519 private key (PEM file or :class:`~fgad.bundle.signing.SigningKey`) that signs the
    manifest digest (``manifest.sig``). ``fewshot_search="graph"``: the reference memory becomes a constant of
    the graph, which then searches it itself (:mod:`fgad.export.knn_graph`; needs reference images).
    Raises :class:`~fgad.export.onnx_export.ExportParityError` (nothing
    written) when onnxruntime and PyTorch disagree beyond ``tolerances``.
    """
    opset = DEFAULT_OPSET if opset is None else opset
    if fewshot_search not in ("runtime", "graph"):
        raise ValueError(f"fewshot_search must be 'runtime' or 'graph', got {fewshot_search!r}")
    if fewshot_search == "graph" and not plan.reference_paths:
        raise ExportError("--knn graph puts the reference memory into the graph: it needs reference images "
                          "(--refs DIR)")
    out = Path(out_dir)
    check_target(out, MANIFEST_FILE)
    key = signing_key(sign)  # a bad key fails before the export
    cfg = plan.cfg
    bb = cfg.backbone
    module = plan.module.eval()
    ref_paths = list(plan.reference_paths)
    ref_images = load_reference_images(ref_paths, cfg) if ref_paths else None
    check_images = ref_images if ref_images is not None else synthetic_images(cfg)
    device = next(module.parameters()).device

    with staged_bundle(out) as tmp:
        onnx_path = export_onnx(module, check_images[:2].to(device), tmp / MODEL_FILE, opset=opset,
                                deform=plan.deform, external_data=external_data)
        _check_shapes(onnx_output_shapes(onnx_path), plan.expected_outputs)
        parity = check_against_torch(module, onnx_path, check_images.to(device), tolerances)
        parity["inputs"] = "reference images" if ref_images is not None else f"{len(check_images)} synthetic images"
        log.info("parity: %s", {k: v for k, v in parity.items() if k.startswith(("max_", "best_"))})

        fewshot: dict[str, Any] = {"layers": list(plan.fewshot_layers), "file": None, "num_references": 0,
                                   **plan.fewshot_entry}
        meta = _checkpoint_meta(checkpoint_meta, plan.model)
        fingerprint = None
        if ref_images is not None:
            fingerprint = _graph_references(onnx_path, ref_images, plan.fewshot_layers, ref_paths,
                                            tmp / REFERENCES_FILE, plan, meta)
            fewshot.update(file=REFERENCES_FILE, num_references=len(ref_paths))
        if plan.use_references is not None:
            plan.use_references(None if ref_images is None else ref_images.to(device), ref_paths)

        if approximation_images:
            measure_on = load_reference_images([Path(p) for p in approximation_images], cfg,
                                               what="images to measure on")
            measured = f"{len(measure_on)} given images"
        else:
            measure_on, measured = check_images, parity["inputs"]
        approximation = plan.measure_approximation(measure_on.to(device))
        approximation["inputs"] = measured
        log.info("frozen graph vs exact model: %s", approximation)

        files = sorted(p.name for p in tmp.iterdir() if p.is_file())
        manifest: dict[str, Any] = {
            **_manifest_head(plan.class_name, opset, files, bb),
            "outputs": plan.expected_outputs,
            "grid": bb.grid,
            "fewshot": fewshot,
            "post": plan.post,
            "text": {**plan.text, "approximation": approximation},
            **plan.extra_entries,
            "deform": plan.deform,
            "model": _model_entry(plan, meta),
            "thresholds": {"image": None, "rule": None, **(thresholds or {})},
            "parity": parity,
            "sha256": {name: sha256_file(tmp / name) for name in files},
        }
        if fingerprint is not None:
            _check_fingerprint(manifest, fingerprint)
        write_manifest(tmp, manifest, key)
        if fewshot_search == "graph":
            from fgad.export.knn_graph import search_in_graph

            search_in_graph(tmp, ref_paths, approximation_images, key)
    return out


def _check_fingerprint(manifest: dict[str, Any], fingerprint: str) -> None:
    """The references' fingerprint is the one the runtime will compute from this manifest."""
    bb_input = manifest["input"]
    dims = {layer: manifest["outputs"][token_output(layer)][-1] for layer in manifest["fewshot"]["layers"]}
    expected = references_fingerprint(manifest["model"], dims, manifest["grid"], bb_input["size"], bb_input["mean"],
                                      bb_input["std"])
    if expected != fingerprint:
        raise ExportError("references.npz was fingerprinted with other model fields than the manifest records "
                          "(a bug in the writer); nothing was written")


def export_bundle(
    out_dir: str | os.PathLike[str],
    model: Any,
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
    sign: SigningKeySpec = None,
    fewshot_search: str = "runtime",
) -> Path:
    """Export ``model`` for ``class_name`` into ``out_dir``: its method's plan, written by :func:`write_bundle`.

    ``refs``: normal reference images of the class (``None`` or empty: the method's default, e.g. zero-shot for
    FiLo++, the training shots for FineGrainedAD). ``text_mode``, ``deform`` and ``box_prior`` go to the method's
    ``export_plan`` (:class:`~fgad.export.plan.ExportOptions`); the rest to :func:`write_bundle`.
    """
    if model is not None and model_cfg != model.cfg:
        raise ValueError("model_cfg differs from the model's own config; pass model.cfg (or rebuild the model)")
    method = get_method(getattr(model_cfg, "method", DEFAULT_METHOD))  # the plan checks its options first
    options = ExportOptions(text_mode=text_mode, box_prior=box_prior, deform=deform)
    plan = method.export_plan(model, class_name, refs, options)
    return write_bundle(out_dir, plan, checkpoint_meta=checkpoint_meta, opset=opset, thresholds=thresholds,
                        tolerances=tolerances, external_data=external_data, approximation_images=approximation_images,
                        sign=sign, fewshot_search=fewshot_search)


def resize_model(model: Any, image_size: int, pretrained: str | None) -> tuple[Any, dict[str, Any]]:
    """The same trained model at another input size, by its method (refused where the method cannot)."""
    if image_size == model.cfg.backbone.image_size:
        return model, {}
    return get_method(model.cfg.method).module().resize_model(model, image_size, pretrained)
