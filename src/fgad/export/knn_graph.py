"""Few-shot search inside the graph (``fgad-export --knn graph``): the reference memory as constants of the graph.

For every memory layer ``l`` the graph gets an output ``knn_<l>`` ``[B, N]``: the inner product of each patch token
with its nearest reference row, ``max_m <t / |t|, m>``, the quantity the runtime's FAISS/numpy search returns
(:mod:`fgad.runtime.knn`). TensorRT or onnxruntime then run the search with the encoder, and a device needs no
FAISS (faiss-gpu has no aarch64 wheels for a Jetson).

The nodes are fp16-safe, so that an fp16 TensorRT engine can run them:

* the token is divided by its largest absolute component first (every value in [-1, 1]), then by its L2 norm:
  the sum of squares is at most D (1024 for ViT-L, far below fp16's 65504) whatever the token's scale;
* the memory rows are unit vectors (``references.npz`` holds them so), so every inner product lies in [-1, 1];
* ``MatMul`` + ``ReduceMax`` over the rows; no large intermediate sum anywhere.

Operators: Abs, ReduceMax, Max, Div, Mul, ReduceSum, Sqrt, MatMul, all in the TensorRT coverage list
(:mod:`fgad.export.op_coverage`), with ``axes`` as initializers.

:func:`search_in_graph` turns a written bundle (graph + ``references.npz``) into one whose graph searches itself,
checked against the runtime's numpy search on the same images (scores and maps to ``1e-5``), with the ``auto``
threshold (leave-one-out over the references) computed here and stored (``thresholds.auto``): the runtime can no
longer leave a reference out of a memory it does not hold.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fgad.bundle.spec import (
    GRAPH_SEARCH_FORMAT_VERSION,
    MANIFEST_FILE,
    knn_output,
    token_output,
)

__all__ = [
    "GRAPH_SEARCH_TOLERANCE",
    "NORM_EPS",
    "add_graph_search",
    "search_in_graph",
    "search_model",
]

log = logging.getLogger(__name__)

#: largest |score| and |map| difference allowed between the graph's search and the runtime's numpy search
GRAPH_SEARCH_TOLERANCE = 1e-5
#: floor of the largest |component| and of the squared norm (both representable in fp16): a zero token gives 0
NORM_EPS = 1e-6
#: images of seeded noise added to the parity inputs (far from every reference, unlike the references themselves)
NOISE_IMAGES = 3
NOISE_SEED = 0
#: at most this many of the images to measure on join the parity inputs
MEASURE_IMAGES = 8
#: IR version of the standalone search graph (onnxruntime 1.18+ reads it)
SEARCH_IR_VERSION = 9


def _onnx() -> Any:
    try:
        import onnx
    except ImportError as exc:  # pragma: no cover - onnx is in the export extra
        raise ImportError("--knn graph needs onnx: pip install 'fgad[export]'") from exc
    return onnx


def _layer_nodes(onnx: Any, tokens: str, output: str, bank: np.ndarray, opset: int, prefix: str
                 ) -> tuple[list[Any], list[Any]]:
    """Nodes and initializers computing ``output = max_m <normalize(tokens), bank[m]>`` (``bank``: [M, D] unit rows)."""
    helper = onnx.helper
    rows = np.ascontiguousarray(np.asarray(bank, dtype=np.float32).T)  # [D, M]: MatMul needs no transpose
    inits = [onnx.numpy_helper.from_array(rows, f"{prefix}bank"),
             onnx.numpy_helper.from_array(np.array(NORM_EPS, dtype=np.float32), f"{prefix}eps")]
    nodes: list[Any] = []

    def reduce(op: str, x: str, out: str, keepdims: int) -> None:
        inputs = [x]
        if (op == "ReduceSum" and opset >= 13) or opset >= 18:  # axes as an initializer input
            inits.append(onnx.numpy_helper.from_array(np.array([-1], dtype=np.int64), f"{out}_axes"))
            inputs.append(f"{out}_axes")
            nodes.append(helper.make_node(op, inputs, [out], keepdims=keepdims, name=out))
        else:
            nodes.append(helper.make_node(op, inputs, [out], axes=[-1], keepdims=keepdims, name=out))

    p = prefix
    nodes.append(helper.make_node("Abs", [tokens], [f"{p}abs"], name=f"{p}abs"))
    reduce("ReduceMax", f"{p}abs", f"{p}absmax", 1)
    nodes.append(helper.make_node("Max", [f"{p}absmax", f"{p}eps"], [f"{p}scale"], name=f"{p}scale"))
    nodes.append(helper.make_node("Div", [tokens, f"{p}scale"], [f"{p}scaled"], name=f"{p}scaled"))
    nodes.append(helper.make_node("Mul", [f"{p}scaled", f"{p}scaled"], [f"{p}squares"], name=f"{p}squares"))
    reduce("ReduceSum", f"{p}squares", f"{p}sumsq", 1)
    nodes.append(helper.make_node("Max", [f"{p}sumsq", f"{p}eps"], [f"{p}sumsq_floor"], name=f"{p}sumsq_floor"))
    nodes.append(helper.make_node("Sqrt", [f"{p}sumsq_floor"], [f"{p}norm"], name=f"{p}norm"))
    nodes.append(helper.make_node("Div", [f"{p}scaled", f"{p}norm"], [f"{p}unit"], name=f"{p}unit"))
    nodes.append(helper.make_node("MatMul", [f"{p}unit", f"{p}bank"], [f"{p}sim"], name=f"{p}sim"))
    reduce("ReduceMax", f"{p}sim", output, 0)
    return nodes, inits


def _opset(model: Any) -> int:
    return next((imp.version for imp in model.opset_import if imp.domain in ("", "ai.onnx")), 19)


def _batch_dim(model: Any, name: str) -> Any:
    for value in model.graph.output:
        if value.name == name:
            dim = value.type.tensor_type.shape.dim[0]
            return dim.dim_param or (dim.dim_value or None)
    raise ValueError(f"the graph has no output '{name}' (it has {[o.name for o in model.graph.output]})")


def add_graph_search(model: Any, banks: Mapping[int, np.ndarray]) -> Any:
    """``model`` (an ``onnx.ModelProto`` with ``tokens_<l>`` outputs) with a ``knn_<l>`` output per layer of
    ``banks`` (``{layer: [M, D] unit rows}``), appended after the existing outputs; changed in place and returned."""
    onnx = _onnx()
    opset = _opset(model)
    for layer, bank in banks.items():
        tokens = token_output(layer)
        batch = _batch_dim(model, tokens)
        n = next(o for o in model.graph.output if o.name == tokens).type.tensor_type.shape.dim[1].dim_value or None
        nodes, inits = _layer_nodes(onnx, tokens, knn_output(layer), bank, opset, f"knn{layer}/")
        model.graph.node.extend(nodes)
        model.graph.initializer.extend(inits)
        model.graph.output.append(onnx.helper.make_tensor_value_info(knn_output(layer), onnx.TensorProto.FLOAT,
                                                                     [batch, n]))
    return model


def search_model(banks: Mapping[int, np.ndarray], num_patches: int, opset: int = 19) -> Any:
    """A graph of the search alone: inputs ``tokens_<l>`` [B, N, D], outputs ``knn_<l>`` [B, N] (benchmarks,
    tests)."""
    onnx = _onnx()
    helper = onnx.helper
    nodes: list[Any] = []
    inits: list[Any] = []
    inputs, outputs = [], []
    for layer, bank in banks.items():
        dim = int(np.asarray(bank).shape[1])
        inputs.append(helper.make_tensor_value_info(token_output(layer), onnx.TensorProto.FLOAT,
                                                    ["batch", num_patches, dim]))
        layer_nodes, layer_inits = _layer_nodes(onnx, token_output(layer), knn_output(layer), bank, opset,
                                                f"knn{layer}/")
        nodes += layer_nodes
        inits += layer_inits
        outputs.append(helper.make_tensor_value_info(knn_output(layer), onnx.TensorProto.FLOAT,
                                                     ["batch", num_patches]))
    graph = helper.make_graph(nodes, "fgad_knn_search", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              ir_version=min(onnx.IR_VERSION, SEARCH_IR_VERSION))
    onnx.checker.check_model(model)
    return model


# ---------------------------------------------------------------------------------- a bundle's graph


def _noise_images(size: int) -> list[np.ndarray]:
    rng = np.random.default_rng(NOISE_SEED)
    return [rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8) for _ in range(NOISE_IMAGES)]


def _max_diffs(want: Sequence[Any], got: Sequence[Any]) -> tuple[float, float]:
    score = max(abs(float(a.score) - float(b.score)) for a, b in zip(want, got, strict=True))
    maps = max(float(np.abs(a.anomaly_map - b.anomaly_map).max()) for a, b in zip(want, got, strict=True))
    return score, maps


def _save_graph(model: Any, path: Path, external: Sequence[str]) -> None:
    onnx = _onnx()
    if external:  # keep the weights where the manifest says they are
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=external[0], size_threshold=1024)
    else:
        onnx.save_model(model, str(path))
    onnx.checker.check_model(str(path))


def search_in_graph(
    bundle_dir: str | os.PathLike[str],
    reference_paths: Sequence[str | os.PathLike[str]],
    measure_images: Sequence[str | os.PathLike[str]] | None = None,
    sign: Any = None,
    tolerance: float = GRAPH_SEARCH_TOLERANCE,
) -> dict[str, Any]:
    """Move the reference memory of the (staged) bundle at ``bundle_dir`` into its graph; returns the parity record.

    The bundle's runtime memory is built from ``reference_paths`` exactly as ``fgad-run --refs`` would (duplicates
    dropped, :meth:`fgad.runtime.Detector.add_references`), its ``auto`` threshold computed by leave-one-out, and
    the scores and maps of the references, of up to :data:`MEASURE_IMAGES` of ``measure_images`` and of seeded
    noise images recorded. Then the graph gets the memory as constants, ``references.npz`` goes, the manifest says
    ``fewshot.search: "graph"`` (format version 2), and the new bundle must reproduce the recorded scores and maps
    within ``tolerance``, else :class:`~fgad.export.onnx_export.ExportParityError` (the staged bundle is dropped).
    """
    from fgad.bundle.files import file_sha256
    from fgad.bundle.staging import write_manifest
    from fgad.core.io import read_image
    from fgad.export.onnx_export import ExportParityError
    from fgad.runtime.pipeline import Detector

    root = Path(bundle_dir)
    data: dict[str, Any] = json.loads((root / MANIFEST_FILE).read_text(encoding="utf-8"))
    runtime = Detector.from_bundle(root, refs=list(reference_paths), knn="numpy", verify=False)
    auto = runtime.calibrate_threshold() if runtime.num_references >= 2 else None
    images = [read_image(p) for p in reference_paths]
    images += [read_image(p) for p in list(measure_images or [])[:MEASURE_IMAGES]]
    images += _noise_images(runtime.size)
    want = runtime.batch(images)
    assert runtime.memory is not None
    banks = {layer: runtime.memory.indexes[layer].rows() for layer in runtime.layers}

    onnx = _onnx()
    graph_file = root / data["engine"]["file"]
    external = list(data["engine"].get("external_data") or [])
    model = add_graph_search(onnx.load(str(graph_file)), banks)
    _save_graph(model, graph_file, external)
    few = data["fewshot"]
    references_file = few.get("file")
    if references_file:
        (root / references_file).unlink()
        data["sha256"].pop(references_file, None)
    n = data["grid"] * data["grid"]
    data["format_version"] = GRAPH_SEARCH_FORMAT_VERSION
    data["outputs"].update({knn_output(layer): [None, n] for layer in runtime.layers})
    data["fewshot"] = {**few, "file": None, "num_references": runtime.num_references, "search": "graph"}
    data["thresholds"] = {**data.get("thresholds", {}), "auto": auto}
    for name in [graph_file.name, *external]:
        data["sha256"][name] = file_sha256(root / name)
    record = {"images": len(images), "inputs": "references, images to measure on and seeded noise",
              "tolerance": tolerance}
    data["parity"] = {**data.get("parity", {}), "knn_graph": record}
    write_manifest(root, data, sign)

    graph = Detector.from_bundle(root)
    got = graph.batch(images)
    score_diff, map_diff = _max_diffs(want, got)
    record.update(max_abs_diff_score=score_diff, max_abs_diff_anomaly_map=map_diff)
    log.info("few-shot search in the graph vs the runtime's numpy search: %s", record)
    for name, diff in (("score", score_diff), ("anomaly_map", map_diff)):
        if not diff <= tolerance:
            raise ExportParityError(f"knn graph {name}", diff, tolerance, record)
    write_manifest(root, data, sign)
    return record
