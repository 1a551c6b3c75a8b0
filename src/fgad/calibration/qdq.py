"""Explicit INT8: an fp32 ONNX graph + calibration images -> a Q/DQ ONNX graph (ARCHITECTURE decision 4).

onnxruntime's static quantization inserts ``QuantizeLinear``/``DequantizeLinear`` pairs with scales
measured on normal images. The same file runs in onnxruntime on any CPU (so its accuracy is measured
anywhere) and is what TensorRT consumes for an int8 engine, so the graph follows TensorRT's rules
for explicit quantization:

* int8 everywhere, symmetric: every zero point is 0 (``ActivationSymmetric``, ``WeightSymmetric``);
* activations per tensor; weights per output channel: axis 0 for ``Conv`` (``[C_out, C_in, kh, kw]``),
  axis 1 for ``MatMul`` weights ``[K, N]`` (the exporter stores ``x @ W^T`` as ``MatMul(x, W^T)``),
  ``transB``-aware for ``Gemm``;
* Q/DQ only on the *inputs* of quantized nodes (no output quantization), biases left in float
  (``QuantizeBias=False``: TensorRT has no int32 ``DequantizeLinear``), opset >= 13 (the graph keeps
  the export's opset 19).

What stays in float is decided per node *family* (:mod:`fgad.calibration.families`) by measurement:
:mod:`fgad.calibration.sensitivity` quantizes with each family kept float / quantized alone and compares
the runtime's final maps and scores with fp32 on held-out images. The numbers behind
:data:`DEFAULT_KEEP_FLOAT` are in ``docs/int8.md``. A family kept float gets no Q/DQ on any of its inputs,
even where the same tensor also feeds a quantized node (that node gets its own Q/DQ; the float consumer
reads the float tensor), and graph outputs stay float.

Needs ``onnx`` and ``onnxruntime`` (``pip install 'fgad[export]'``); no torch.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fgad.calibration.families import FAMILIES, classify_nodes, constant_names, ensure_node_names
from fgad.calibration.images import ImageCalibrationReader
from fgad.core.onnx_external import check_external_data

__all__ = [
    "DEFAULT_KEEP_FLOAT",
    "DEFAULT_PERCENTILE",
    "KEEP_FLOAT_REASONS",
    "QUANT_METHODS",
    "KeepFloat",
    "KeptFloatNode",
    "QuantizationError",
    "QuantizationReport",
    "quantize_qdq",
]

log = logging.getLogger(__name__)

QUANT_METHODS = ("entropy", "percentile", "minmax")
DEFAULT_PERCENTILE = 99.999
_INSTALL = "pip install 'fgad[export]' (onnx, onnxruntime)"
#: fp32 graphs above this size are pre-processed and calibrated with their weights in an external-data file
#: (protobuf cannot hold more than 2 GB in one message: FiLo++ at ViT-L/518 is over it).
EXTERNAL_DATA_BYTES = 1 << 30
_Q, _DQ = "QuantizeLinear", "DequantizeLinear"

#: Why a family is kept float: the measurement of docs/int8.md (tiny-test on magnetic tile, the runtime's final
#: maps and scores against fp32; "default, <family> int8" rows of the sensitivity table).
KEEP_FLOAT_REASONS: dict[str, str] = {
    "patch_embed": "int8 on the layer that reads the image: worst-case map correlation 0.998 -> 0.990, largest map "
    "error x2.5 (docs/int8.md)",
    "deform_sampling": "int8 sampling coordinates and modulation move the deformable taps: worst-case map correlation "
    "0.998 -> 0.989 (docs/int8.md); GridSample has no int8 kernel to gain from",
    "deform_matmul": "kept float on request (int8 by default, docs/int8.md)",
    "layernorm": "int8 inputs: image-score correlation 0.9996 -> 0.9986, largest map error x1.8 (docs/int8.md)",
    "softmax": "probabilities in [0, 1] get 7 bits with a symmetric scale: largest score error x2.3, largest map "
    "error x3.5 (docs/int8.md)",
    "residual_add": "the residual stream has the widest range of the network: worst-case map correlation "
    "0.998 -> 0.989 (docs/int8.md)",
    "activation_matmul": "kept float on request (int8 by default, docs/int8.md)",
    "linear": "kept float on request (int8 by default, docs/int8.md)",
    "conv": "kept float on request (int8 by default, docs/int8.md)",
    "other": "elementwise, L2 normalisation, reductions, text similarity: no int8 kernel gain, and int8 there is the "
    "largest single loss (score correlation 0.9996 -> 0.985, docs/int8.md)",
}


class QuantizationError(RuntimeError):
    """The Q/DQ model could not be produced or failed its checks; nothing was written."""


@dataclass(frozen=True)
class KeepFloat:
    """What stays in float: whole node families (:data:`fgad.calibration.families.FAMILIES`) plus named nodes."""

    families: tuple[str, ...] = ()  # family names, e.g. ("layernorm", "softmax")
    nodes: tuple[str, ...] = ()  # extra node names of the (pre-processed) graph

    def __post_init__(self) -> None:
        object.__setattr__(self, "families", tuple(self.families))
        object.__setattr__(self, "nodes", tuple(self.nodes))
        unknown = [f for f in self.families if f not in FAMILIES]
        if unknown:
            raise ValueError(f"unknown node family {unknown}; choose from {', '.join(FAMILIES)}")

    def with_families(self, *families: str) -> KeepFloat:
        """A copy that also keeps ``families`` float."""
        return KeepFloat(tuple(dict.fromkeys((*self.families, *families))), self.nodes)

    def without_families(self, *families: str) -> KeepFloat:
        """A copy that quantizes ``families``."""
        return KeepFloat(tuple(f for f in self.families if f not in families), self.nodes)


#: Set from the sensitivity measurement of docs/int8.md: int8 for the GEMM-like layers (weight projections,
#: attention products, the deformable kernels' GEMMs, the offset convolutions); float for the patch embedding,
#: the deformable sampling, LayerNorm, softmax, residual adds and the elementwise rest.
DEFAULT_KEEP_FLOAT = KeepFloat(
    families=("patch_embed", "deform_sampling", "layernorm", "softmax", "residual_add", "other")
)


@dataclass(frozen=True)
class KeptFloatNode:
    """A node that onnxruntime could quantize but that was kept float."""

    name: str
    op_type: str
    family: str
    reason: str


@dataclass(frozen=True)
class QuantizationReport:
    """What :func:`quantize_qdq` did."""

    method: str  # entropy | percentile | minmax
    percentile: float | None  # for method "percentile"
    images: int  # calibration images used
    per_channel: bool
    opset: int
    quantized: dict[str, int]  # op type -> nodes with Q/DQ on their inputs
    kept_float: dict[str, int]  # op type -> quantizable nodes kept float
    kept_float_nodes: tuple[KeptFloatNode, ...] = field(repr=False)
    families: dict[str, dict[str, Any]] = field(default_factory=dict)  # family -> nodes, quantized, kept, reason
    qdq_nodes: dict[str, int] = field(default_factory=dict)  # QuantizeLinear / DequantizeLinear counts
    fp32_bytes: int = 0  # fp32 graph (+ external data)
    int8_bytes: int = 0  # Q/DQ graph

    def to_dict(self, include_nodes: bool = True) -> dict[str, Any]:
        """JSON-ready; ``include_nodes=False`` drops the per-node list (kept: the per-family summary)."""
        out = asdict(self)
        out["kept_float_nodes"] = [asdict(n) for n in self.kept_float_nodes] if include_nodes else None
        return out

    def summary(self) -> str:
        """One paragraph for logs and CLIs."""
        q = sum(self.quantized.values())
        k = sum(self.kept_float.values())
        kept = [f for f, info in self.families.items() if info.get("kept") and info.get("nodes")]
        return (
            f"{self.method} calibration on {self.images} images: {q} nodes int8 "
            f"({', '.join(f'{t} {n}' for t, n in sorted(self.quantized.items()))}), {k} quantizable nodes kept float "
            f"(families: {', '.join(kept) or 'none'}); {self.qdq_nodes.get(_Q, 0)} QuantizeLinear, "
            f"{self.qdq_nodes.get(_DQ, 0)} DequantizeLinear; {self.fp32_bytes / 2**20:.1f} MiB fp32 -> "
            f"{self.int8_bytes / 2**20:.1f} MiB"
        )


# ---------------------------------------------------------------------------------- helpers


def _import_quantization() -> Any:
    try:
        import onnx  # noqa: F401
        from onnxruntime import quantization
    except ImportError as err:
        raise ImportError(f"INT8 quantization needs onnx and onnxruntime's quantization tools: {_INSTALL}") from err
    return quantization


def _model_bytes(path: Path) -> int:
    """The graph file plus any external-data files next to it (``<name>.data`` and friends)."""
    total = path.stat().st_size
    for extra in path.parent.glob(path.name + ".*"):
        if extra.is_file():
            total += extra.stat().st_size
    return total


def _strides(count: int, largest: int = 4) -> int:
    """Images per calibration pass: the largest divisor of ``count`` up to ``largest`` (onnxruntime wants a divisor).

    The calibrator keeps every intermediate tensor of a pass in memory; a few images at a time bound that
    (ViT-B at 224 px has ~1500 of them).
    """
    return max(d for d in range(1, min(largest, count) + 1) if count % d == 0)


def _check_calibration(calibration: np.ndarray, input_shape: Sequence[Any], name: str) -> np.ndarray:
    arr = np.asarray(calibration)
    if arr.ndim != 4 or arr.shape[0] < 1:
        raise ValueError(f"calibration must be a non-empty [N, 3, S, S] array, got shape {arr.shape}")
    for axis, dim in enumerate(input_shape[1:], start=1):
        if isinstance(dim, int) and dim > 0 and arr.shape[axis] != dim:
            raise ValueError(
                f"calibration images have shape {list(arr.shape[1:])} but the graph input {name!r} is "
                f"{list(input_shape[1:])}; preprocess them at the bundle's input.size (read_calibration_images)"
            )
    if not np.issubdtype(arr.dtype, np.floating) or not np.isfinite(arr).all():
        raise ValueError("calibration images must be finite floats, preprocessed like the runtime's frames")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _split_shared_initializers(model: Any, kept: set[str]) -> int:
    """Give kept-float nodes their own copy of an initializer they share with nodes that will be quantized.

    onnxruntime replaces a quantized weight for *all* its readers; a float reader must keep the float value.
    """
    from onnx import numpy_helper

    readers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    inits = {init.name: init for init in model.graph.initializer}
    copies = 0
    for name, nodes in readers.items():
        if name not in inits:
            continue
        float_readers = [n for n in nodes if n.name in kept]
        if not float_readers or len(float_readers) == len(nodes):
            continue
        copy_name = f"{name}__float"
        if copy_name not in inits:
            model.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(inits[name]), copy_name))
            inits[copy_name] = model.graph.initializer[-1]
        for node in float_readers:
            for i, value in enumerate(node.input):
                if value == name:
                    node.input[i] = copy_name
        copies += 1
    return copies


def _weight_axes(model: Any, kept: set[str]) -> dict[str, int]:
    """Output-channel axis of every constant ``MatMul`` operand, as TensorRT wants it: ``N`` (last axis) of a
    constant ``B [.., K, N]``, ``M`` (second to last) of a constant ``A [.., M, K]`` (the decomposed deformable
    kernel is ``W @ columns``). onnxruntime's default would be axis 1 for both."""
    inits = {init.name: len(init.dims) for init in model.graph.initializer}
    axes: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type != "MatMul" or node.name in kept:
            continue
        for index, name in enumerate(node.input[:2]):
            rank = inits.get(name)
            if rank is not None and rank >= 2:
                axes[name] = rank - 1 if index == 1 else rank - 2
    return axes


def _producers(model: Any) -> dict[str, Any]:
    return {out: node for node in model.graph.node for out in node.output}


def _restore_float_inputs(model: Any, kept: set[str], consts: set[str]) -> int:
    """Kept-float nodes read the float tensor instead of ``DQ(Q(x))``; returns how many inputs were rewired."""
    producer = _producers(model)
    rewired = 0
    for node in model.graph.node:
        if node.name not in kept:
            continue
        for i, value in enumerate(node.input):
            dq = producer.get(value)
            if dq is None or dq.op_type != _DQ:
                continue
            q = producer.get(dq.input[0])
            if q is None or q.op_type != _Q or q.input[0] in consts:
                raise QuantizationError(
                    f"kept-float node {node.name!r} reads a quantized constant {value!r}; this is a bug in "
                    "fgad.calibration (shared initializers are split before quantization)"
                )
            node.input[i] = q.input[0]
            rewired += 1
    return rewired


def _float_graph_outputs(model: Any) -> int:
    """Graph outputs produced by ``DequantizeLinear`` (onnxruntime quantizes a tensor that is also an output by
    renaming): give the output name back to the float tensor; quantized readers keep the DQ value."""
    producer = _producers(model)
    fixed = 0
    for output in model.graph.output:
        dq = producer.get(output.name)
        if dq is None or dq.op_type != _DQ:
            continue
        q = producer.get(dq.input[0])
        if q is None or q.op_type != _Q:
            continue
        float_name, name = q.input[0], output.name
        dq_name = f"{name}__dq"
        dq.output[0] = dq_name
        for node in model.graph.node:
            if node is dq:
                continue
            for i, value in enumerate(node.input):
                if value == name:
                    node.input[i] = dq_name
        for node in model.graph.node:
            for i, value in enumerate(node.output):
                if value == float_name:
                    node.output[i] = name
            for i, value in enumerate(node.input):
                if value == float_name:
                    node.input[i] = name
        fixed += 1
    return fixed


def _drop_dangling_qdq(model: Any) -> int:
    """Remove Q/DQ nodes whose outputs nobody reads (left by the rewiring above)."""
    removed = 0
    while True:
        used = {name for node in model.graph.node for name in node.input}
        used.update(o.name for o in model.graph.output)
        dead = [n for n in model.graph.node if n.op_type in (_Q, _DQ) and not any(o in used for o in n.output)]
        if not dead:
            return removed
        for node in dead:
            model.graph.node.remove(node)
        removed += len(dead)


def _drop_unused_domains(model: Any) -> None:
    """The optimiser's save lists every onnxruntime domain; keep only the domains nodes use (and ai.onnx)."""
    used = {node.domain for node in model.graph.node} | {"", "ai.onnx"}
    keep = [imp for imp in model.opset_import if imp.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(keep)


def _quantized_nodes(model: Any) -> dict[str, str]:
    """Node name -> op type of every non-Q/DQ node with a ``DequantizeLinear`` input."""
    producer = _producers(model)
    out: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type in (_Q, _DQ):
            continue
        if any((p := producer.get(v)) is not None and p.op_type == _DQ for v in node.input):
            out[node.name] = node.op_type
    return out


def _check_qdq(model: Any, kept: set[str]) -> None:
    """The TensorRT rules of the module docstring, checked on the result."""
    from onnx import numpy_helper

    inits = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type not in (_Q, _DQ):
            continue
        if len(node.input) < 3 or node.input[2] not in inits:
            raise QuantizationError(f"{node.op_type} {node.name!r} has no constant zero point")
        zp = numpy_helper.to_array(inits[node.input[2]])
        if zp.dtype != np.int8 or np.any(zp != 0):
            raise QuantizationError(f"{node.op_type} {node.name!r} is not symmetric int8 (zero point {zp.ravel()[:4]})")
    producer = _producers(model)
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Conv", "Gemm"):
            continue
        for index, value in enumerate(node.input[:2]):
            dq = producer.get(value)
            if dq is None or dq.op_type != _DQ or dq.input[0] not in inits:
                continue
            scale = numpy_helper.to_array(inits[dq.input[1]])
            if scale.size == 1:
                continue  # per-tensor weight
            rank = len(inits[dq.input[0]].dims)
            axis = next((a.i for a in dq.attribute if a.name == "axis"), 1) % rank
            if node.op_type == "Conv":
                want = 0
            elif node.op_type == "Gemm":
                trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
                want = 0 if trans_b else 1
            else:
                want = rank - 1 if index == 1 else rank - 2
            if axis != want:
                raise QuantizationError(
                    f"{node.op_type} {node.name!r}: weight {dq.input[0]!r} is quantized per channel on axis {axis}, "
                    f"TensorRT needs the output-channel axis {want}"
                )
    quantized = _quantized_nodes(model)
    wrong = sorted(set(quantized) & kept)
    if wrong:
        raise QuantizationError(f"nodes kept float still read quantized inputs: {wrong[:5]}")


# ---------------------------------------------------------------------------------- main entry


def quantize_qdq(
    fp32_onnx: str | os.PathLike[str],
    out_onnx: str | os.PathLike[str],
    calibration: np.ndarray,
    *,
    method: str = "entropy",
    percentile: float = DEFAULT_PERCENTILE,
    keep_float: KeepFloat = DEFAULT_KEEP_FLOAT,
    per_channel: bool = True,
    calibration_cache: str | os.PathLike[str] | None = None,
) -> QuantizationReport:
    """Quantize ``fp32_onnx`` to a Q/DQ graph at ``out_onnx`` (written atomically), calibrated on ``calibration``.

    Args:
        fp32_onnx: the fp32 graph (a bundle's ``model.onnx``).
        out_onnx: where to write the Q/DQ graph; nothing is written if any step fails.
        calibration: preprocessed normal images ``[N, 3, S, S]``
            (:func:`~fgad.calibration.images.read_calibration_images`).
        method: activation range from ``entropy`` (KL divergence of the histogram), ``percentile`` (of |x|) or
            ``minmax``.
        percentile: for ``method="percentile"``.
        keep_float: families / nodes left in float (default: :data:`DEFAULT_KEEP_FLOAT`).
        per_channel: per-output-channel weight scales (TensorRT's recommendation; per-tensor otherwise).
        calibration_cache: a JSON file of activation ranges: read if it exists (same method required), else
            written. Lets :mod:`fgad.calibration.sensitivity` calibrate once for many variants.
    """
    if method not in QUANT_METHODS:
        raise ValueError(f"method={method!r}: choose one of {', '.join(QUANT_METHODS)}")
    if not 0.0 < float(percentile) <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    if not isinstance(keep_float, KeepFloat):
        raise TypeError(f"keep_float must be a KeepFloat, got {type(keep_float).__name__}")
    src = Path(fp32_onnx)
    if not src.is_file():
        raise FileNotFoundError(f"fp32 ONNX graph {src} does not exist; export a bundle with fgad-export first")
    check_external_data(src)  # onnx and onnxruntime read its external data: it must stay next to the graph
    target = Path(out_onnx)
    if target.resolve() == src.resolve():
        raise ValueError(f"out_onnx {target} is the fp32 graph itself; write the Q/DQ graph to another path")
    quantization = _import_quantization()
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    header = onnx.load(str(src), load_external_data=False)
    graph_input = header.graph.input[0]
    input_name = graph_input.name
    dims = [d.dim_value if d.HasField("dim_value") else None for d in graph_input.type.tensor_type.shape.dim]
    images = _check_calibration(calibration, dims, input_name)
    opset = {imp.domain or "ai.onnx": imp.version for imp in header.opset_import}.get("ai.onnx", 0)
    if opset < 13:
        raise QuantizationError(f"{src} has opset {opset}; per-channel QuantizeLinear/DequantizeLinear need >= 13")
    del header

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
    tmp.mkdir()
    try:
        # Shape inference + onnxruntime's basic optimisations (constant folding turns the reshaped deformable
        # kernels into initializers, so they get per-channel weight scales). Symbolic shape inference is
        # skipped: it cannot follow the exporter's Expand of the frozen text; onnx's shape inference runs.
        pre = tmp / "pre.onnx"
        large = _model_bytes(src) > EXTERNAL_DATA_BYTES
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True, save_as_external_data=large,
                          all_tensors_to_one_file=True, external_data_location="pre.onnx.data")
        model = onnx.load(str(pre))
        ensure_node_names(model)
        families = classify_nodes(model)
        unknown = sorted(set(keep_float.nodes) - set(families))
        if unknown:
            raise ValueError(f"keep_float.nodes names nodes that are not in the graph: {unknown[:5]}")
        kept = {n for n, fam in families.items() if fam in keep_float.families} | set(keep_float.nodes)
        _split_shared_initializers(model, kept)
        if large:
            (tmp / "pre.onnx.data").unlink(missing_ok=True)
        onnx.save(model, str(pre), save_as_external_data=large, all_tensors_to_one_file=True,
                  location="pre.onnx.data")
        consts = constant_names(model)

        from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

        op_types = sorted(set(QLinearOpsRegistry) | set(QDQRegistry))
        extra_options: dict[str, Any] = {
            "ActivationSymmetric": True,
            "WeightSymmetric": True,
            "CalibTensorRangeSymmetric": True,
            "QuantizeBias": False,
            "OpTypesToExcludeOutputQuantization": op_types,
            "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1, "LayerNormalization": 0},
            "TensorQuantOverrides": {name: [{"axis": axis}] for name, axis in _weight_axes(model, kept).items()}
            if per_channel else {},
            # min/max merge exactly across passes, so minmax takes one image a pass (the least memory: ViT-L at 336
            # needs ~20 GB at 4 a pass); the histogram methods keep 4, their bins depend on the first pass
            "CalibStridedMinMax": _strides(len(images), largest=1 if method == "minmax" else 4),
        }
        if method == "percentile":
            extra_options["CalibPercentile"] = float(percentile)
        calibrate_method = {
            "entropy": quantization.CalibrationMethod.Entropy,
            "percentile": quantization.CalibrationMethod.Percentile,
            "minmax": quantization.CalibrationMethod.MinMax,
        }[method]
        qdq_path = tmp / target.name
        log.info("calibrating (%s) on %d images and quantizing %s", method, len(images), src)
        with contextlib.redirect_stdout(io.StringIO()) as chatter:  # the calibrator prints its progress
            quantization.quantize_static(
                str(pre),
                str(qdq_path),
                ImageCalibrationReader(images, input_name),
                quant_format=quantization.QuantFormat.QDQ,
                op_types_to_quantize=op_types,
                per_channel=per_channel,
                reduce_range=False,
                activation_type=quantization.QuantType.QInt8,
                weight_type=quantization.QuantType.QInt8,
                nodes_to_exclude=sorted(kept),
                calibrate_method=calibrate_method,
                extra_options=extra_options,
                calibration_cache_path=None if calibration_cache is None else str(calibration_cache),
                use_external_data_format=large,
            )
        log.debug("onnxruntime calibrator: %s", " | ".join(chatter.getvalue().split("\n")))
        qmodel = onnx.load(str(qdq_path))
        _restore_float_inputs(qmodel, kept, consts)
        _float_graph_outputs(qmodel)
        _drop_dangling_qdq(qmodel)
        _drop_unused_domains(qmodel)
        _check_qdq(qmodel, kept)
        onnx.checker.check_model(qmodel)
        out_tmp = tmp / f"checked_{target.name}"
        onnx.save(qmodel, str(out_tmp))
        report = _report(qmodel, families, kept, method, percentile, len(images), per_channel, opset,
                         _model_bytes(src), out_tmp.stat().st_size, set(op_types))
        os.replace(out_tmp, target)
    except Exception as err:
        if isinstance(err, ValueError | QuantizationError | FileNotFoundError | ImportError):
            raise
        raise QuantizationError(f"quantizing {src} failed ({type(err).__name__}: {err}); nothing was written") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("%s", report.summary())
    return report


def _report(
    qmodel: Any,
    families: Mapping[str, str],
    kept: set[str],
    method: str,
    percentile: float,
    images: int,
    per_channel: bool,
    opset: int,
    fp32_bytes: int,
    int8_bytes: int,
    quantizable_ops: set[str],
) -> QuantizationReport:
    quantized = _quantized_nodes(qmodel)
    op_of = {node.name: node.op_type for node in qmodel.graph.node}
    kept_nodes = tuple(
        KeptFloatNode(name, op_of[name], families.get(name, "named"),
                      KEEP_FLOAT_REASONS.get(families.get(name, ""), "kept float on request"))
        for name in sorted(kept)
        if name in op_of and op_of[name] in quantizable_ops
    )
    per_family: dict[str, dict[str, Any]] = {}
    for family in FAMILIES:
        members = [n for n, f in families.items() if f == family]
        per_family[family] = {
            "nodes": len(members),
            "quantized": sum(1 for n in members if n in quantized),
            "kept": bool(members) and all(n in kept for n in members),
            "reason": KEEP_FLOAT_REASONS[family] if members and all(n in kept for n in members) else None,
        }
    qdq = Counter(node.op_type for node in qmodel.graph.node if node.op_type in (_Q, _DQ))
    return QuantizationReport(
        method=method,
        percentile=float(percentile) if method == "percentile" else None,
        images=images,
        per_channel=per_channel,
        opset=opset,
        quantized=dict(sorted(Counter(quantized.values()).items())),
        kept_float=dict(sorted(Counter(n.op_type for n in kept_nodes).items())),
        kept_float_nodes=kept_nodes,
        families=per_family,
        qdq_nodes={_Q: qdq.get(_Q, 0), _DQ: qdq.get(_DQ, 0)},
        fp32_bytes=fp32_bytes,
        int8_bytes=int8_bytes,
    )
