"""Hand-made bundles that follow docs/bundle.md, for runtime tests that must not depend on the exporter.

The graph (built with ``onnx.helper``, opset 19) is small but behaves like the real one where the runtime can
tell:

* ``tokens_<l>``: the image cut into ``grid x grid`` patches, each flattened and sent through a fixed random
  projection (one per layer), L2-normalised -> ``[B, N, D]``; identical patches give identical tokens, so the
  few-shot distance of an image against itself is 0 and references matter;
* ``vl_map``: sigmoid of the channel mean, average-pooled to ``grid x grid`` and resized back to ``s`` with
  ``align_corners`` (like the real M^vl);
* ``global_prob``: sigmoid of the image mean;
* ``best_description``: argmax of a fixed projection of the per-channel means (int64).

Like the writers, :func:`make_bundle` and :meth:`FakeBundle.write_manifest` write ``manifest.digest`` beside the
manifest (a test of a changed field then reaches that field's check); ``digest=False`` leaves it stale or, for
:func:`make_bundle`, absent, as in a bundle written before fgad kept digests.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fgad.bundle.digest import write_digest

DESCRIPTIONS = ["scratch on the surface", "hole in the part", "stain", "dent", "crack"]
OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]


def build_graph(size: int = 32, grid: int = 4, dim: int = 16, layers: Sequence[int] = (3, 6), seed: int = 0) -> bytes:
    """Serialized ONNX model of the fake detector."""
    if size % grid:
        raise ValueError("size must be a multiple of grid")
    p = size // grid
    n = grid * grid
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(np.array([-1, 3, grid, p, grid, p], dtype=np.int64), "shape6"),
        numpy_helper.from_array(np.array([-1, n, 3 * p * p], dtype=np.int64), "shape3"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes23"),
        numpy_helper.from_array(np.array([1, 2, 3], dtype=np.int64), "axes123"),
        numpy_helper.from_array(np.array([1, 1, p, p], dtype=np.float32), "scales"),
        numpy_helper.from_array(rng.standard_normal((3, len(DESCRIPTIONS))).astype(np.float32), "w_desc"),
    ]
    nodes = [
        # patch tokens
        helper.make_node("Reshape", ["image", "shape6"], ["patches6"]),
        helper.make_node("Transpose", ["patches6"], ["patches_t"], perm=[0, 2, 4, 1, 3, 5]),
        helper.make_node("Reshape", ["patches_t", "shape3"], ["patches"]),
        # vl_map
        helper.make_node("ReduceMean", ["image", "axis1"], ["chan_mean"], keepdims=1),
        helper.make_node("AveragePool", ["chan_mean"], ["pooled"], kernel_shape=[p, p], strides=[p, p]),
        helper.make_node("Resize", ["pooled", "", "scales"], ["up"], mode="linear",
                         coordinate_transformation_mode="align_corners"),
        helper.make_node("Squeeze", ["up", "axis1"], ["up3"]),
        helper.make_node("Sigmoid", ["up3"], ["vl_map"]),
        # global_prob
        helper.make_node("ReduceMean", ["image", "axes123"], ["img_mean"], keepdims=0),
        helper.make_node("Sigmoid", ["img_mean"], ["global_prob"]),
        # best_description
        helper.make_node("ReduceMean", ["image", "axes23"], ["rgb_mean"], keepdims=0),
        helper.make_node("MatMul", ["rgb_mean", "w_desc"], ["desc_logits"]),
        helper.make_node("ArgMax", ["desc_logits"], ["best_description"], axis=1, keepdims=0),
    ]
    outputs = [
        helper.make_tensor_value_info("vl_map", TensorProto.FLOAT, ["B", size, size]),
        helper.make_tensor_value_info("global_prob", TensorProto.FLOAT, ["B"]),
        helper.make_tensor_value_info("best_description", TensorProto.INT64, ["B"]),
    ]
    for layer in layers:
        w = (rng.standard_normal((3 * p * p, dim)) / np.sqrt(3 * p * p)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w_{layer}"))
        nodes.append(helper.make_node("MatMul", ["patches", f"w_{layer}"], [f"proj_{layer}"]))
        nodes.append(helper.make_node("LpNormalization", [f"proj_{layer}"], [f"tokens_{layer}"], axis=-1, p=2))
        outputs.append(helper.make_tensor_value_info(f"tokens_{layer}", TensorProto.FLOAT, ["B", n, dim]))
    graph = helper.make_graph(
        nodes,
        "fake_fgad",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["B", 3, size, size])],
        outputs,
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], producer_name="fgad-tests")
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest_dict(size: int, grid: int, dim: int, layers: Sequence[int]) -> dict[str, Any]:
    outputs: dict[str, Any] = {"vl_map": [None, size, size], "global_prob": [None], "best_description": [None]}
    for layer in layers:
        outputs[f"tokens_{layer}"] = [None, grid * grid, dim]
    return {
        "format_version": 1,
        "fgad_version": "0.1.0",
        "created": "2026-11-22T10:00:00Z",
        "class_name": "tile",
        "engine": {"kind": "onnx", "file": "model.onnx", "opset": 19, "precision": "fp32",
                   "tensorrt_version": None, "compute_capability": None},
        "input": {"name": "image", "size": size, "layout": "NCHW", "color": "RGB", "resize": "bicubic",
                  "mean": OPENAI_MEAN, "std": OPENAI_STD},
        "outputs": outputs,
        "grid": grid,
        "fewshot": {"layers": list(layers), "file": None, "num_references": 0},
        "post": {"sigma": 4.0, "truncate": 4.0},
        "text": {"mode": "frozen", "conditioning": "cocoop", "filtering": "reference-set",
                 "descriptions": list(DESCRIPTIONS), "num_normal": 2, "num_abnormal": len(DESCRIPTIONS)},
        "deform": "decomposed",
        "model": {"config": "fake", "backbone": "fake", "pretrained": "none"},
        "thresholds": {"image": 0.9, "rule": "fixed in the test bundle"},
        "parity": {},
        "sha256": {},
    }


@dataclass
class FakeBundle:
    path: Path
    size: int
    grid: int
    dim: int
    layers: tuple[int, ...]

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    def manifest(self) -> dict[str, Any]:
        return json.loads(self.manifest_path.read_text())

    def write_manifest(self, data: dict[str, Any], rehash: bool = False, digest: bool = True) -> None:
        """Write the manifest (``rehash``: its sha256 recomputed first) and, unless not ``digest``, its digest."""
        if rehash:
            data["sha256"] = {name: sha256(self.path / name) for name in data["sha256"]}
        self.manifest_path.write_text(json.dumps(data, indent=2))
        if digest:
            write_digest(self.path)

    def edit(self, digest: bool = True, **changes: Any) -> dict[str, Any]:
        """Set manifest fields given as dotted keys with '__' (``engine__kind="tensorrt"``); returns the new dict.
        ``digest=False``: the digest is left as it was (a tampered manifest)."""
        data = self.manifest()
        for dotted, value in changes.items():
            keys = dotted.split("__")
            node = data
            for key in keys[:-1]:
                node = node[key]
            node[keys[-1]] = value
        self.write_manifest(data, digest=digest)
        return data


def make_bundle(
    root: Path,
    size: int = 32,
    grid: int = 4,
    dim: int = 16,
    layers: Sequence[int] = (3, 6),
    references: Sequence[np.ndarray] | None = None,
    seed: int = 0,
    digest: bool = True,
) -> FakeBundle:
    """Write a bundle under ``root``; with ``references`` (RGB uint8 images) it also gets references.npz;
    without ``digest`` no manifest.digest (a bundle written before fgad kept digests)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "model.onnx").write_bytes(build_graph(size, grid, dim, layers, seed))
    data = manifest_dict(size, grid, dim, layers)
    data["sha256"]["model.onnx"] = sha256(root / "model.onnx")
    if references is not None:
        import onnxruntime as ort

        from fgad.core.transforms import preprocess

        session = ort.InferenceSession(str(root / "model.onnx"), providers=["CPUExecutionProvider"])
        batch = np.stack([preprocess(img, size) for img in references])
        names = [f"tokens_{layer}" for layer in layers]
        tokens = dict(zip(names, session.run(names, {"image": batch}), strict=True))
        arrays = {f"layer_{layer}": tokens[f"tokens_{layer}"].reshape(-1, dim) for layer in layers}
        arrays["paths"] = np.array([f"ref_{i}.png" for i in range(len(references))])
        np.savez(root / "references.npz", **arrays)
        data["fewshot"]["file"] = "references.npz"
        data["fewshot"]["num_references"] = len(references)
        data["sha256"]["references.npz"] = sha256(root / "references.npz")
    bundle = FakeBundle(root, size, grid, dim, tuple(layers))
    bundle.write_manifest(data, digest=digest)
    return bundle
