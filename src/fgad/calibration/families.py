"""Node families of an exported FiLo++ graph: the unit in which INT8 is switched on or off.

Quantization is decided per *family*, not per op type, because one op type plays roles of very
different sensitivity: an ``Add`` is a bias, a residual connection or a step of the deformable
sampling grid; a ``MatMul`` is a weight projection, an attention product or the column product of
the decomposed deformable convolution. Every node gets exactly one family, tried in this order:

``deform_sampling``
    ``GridSample`` / ``DeformConv`` and the arithmetic that turns the offset convolution's output into
    sampling coordinates and modulation. Found structurally: backwards from the sampling inputs to the
    offset ``Conv``, forwards from the sampled values through the modulation to the kernel's ``MatMul``.
``deform_matmul``
    The ``MatMul`` that applies the deformable kernel to the sampled columns (decomposed flavour): a
    weight GEMM like ``linear``, but its input is the bilinearly sampled, modulated columns.
``layernorm``
    ``LayerNormalization`` (the exporter emits the fused op at opset >= 17; a decomposed
    ``ReduceMean``/``Pow``/``Sqrt`` pattern would fall into ``other``).
``softmax``
    ``Softmax``: attention probabilities and the normal/abnormal text probabilities of the head.
``residual_add``
    ``Add`` of two computed tensors (the transformer's skip connections, the adapter's residual).
``activation_matmul``
    ``MatMul`` of two computed tensors: attention scores ``Q K^T`` and ``P V``.
``linear``
    ``MatMul`` / ``Gemm`` with a constant weight: QKV, attention output and MLP projections, the
    linear heads and the adapter.
``patch_embed``
    The ``Conv`` that reads the image (the ViT patch embedding): its input is the normalised image itself.
``conv``
    Every other ``Conv``: the MDCI offset convolutions.
``other``
    Everything else: biases and scalings, activations, L2 normalisations, the text-similarity head
    (``Einsum``), reductions, resizing, shape and index operations.

Torch-free; needs ``onnx`` (``pip install 'fgad[export]'``), imported by the caller.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["FAMILIES", "classify_nodes", "constant_names", "ensure_node_names", "family_counts"]

#: family -> what it is (the order is the order of precedence in :func:`classify_nodes`)
FAMILIES: dict[str, str] = {
    "deform_sampling": "deformable sampling: GridSample/DeformConv, offset-to-grid arithmetic, modulation",
    "deform_matmul": "MatMul of the deformable kernel with the sampled columns (decomposed flavour)",
    "layernorm": "LayerNormalization",
    "softmax": "Softmax (attention and text probabilities)",
    "residual_add": "Add of two computed tensors (skip connections)",
    "activation_matmul": "MatMul of two computed tensors (attention QK^T and PV)",
    "linear": "MatMul/Gemm with a constant weight (projections, MLP, heads)",
    "patch_embed": "Conv on the input image (ViT patch embedding)",
    "conv": "other Conv (MDCI offset convolutions)",
    "other": "elementwise, normalisation, reductions, text-similarity head, resize, shape ops",
}

#: ops that only move or reshape data: followed through when tracing the deformable sampling
_SHAPE_OPS = frozenset(
    {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Slice", "Gather", "Concat", "Expand", "Identity",
     "Split"}
)
#: where the backward trace of the sampling coordinates stops: the layers that produce features
_TRACE_STOP = frozenset({"Conv", "MatMul", "Gemm", "LayerNormalization", "GridSample", "DeformConv"})
_SAMPLERS = frozenset({"GridSample", "DeformConv"})
#: inputs of a sampler that carry positions / modulation (not the sampled feature map)
_SAMPLER_POSITION_INPUTS = {"GridSample": (1,), "DeformConv": (2, 4)}


def ensure_node_names(model: Any) -> int:
    """Give every unnamed (or duplicate-named) node a unique name, in place; returns how many were renamed.

    onnxruntime's quantizer excludes nodes by name, so names must exist and be unique.
    """
    seen: set[str] = set()
    renamed = 0
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            base = f"{node.op_type}_{i}"
            name, k = base, 0
            while name in seen:
                k += 1
                name = f"{base}_{k}"
            node.name = name
            renamed += 1
        seen.add(node.name)
    return renamed


def constant_names(model: Any) -> set[str]:
    """Tensors whose value is fixed in the file: initializers and ``Constant`` outputs."""
    names = {init.name for init in model.graph.initializer}
    names.update(out for node in model.graph.node if node.op_type == "Constant" for out in node.output)
    return names


def _deform_nodes(nodes: list[Any], consts: set[str]) -> tuple[set[str], set[str]]:
    """(sampling nodes, kernel MatMuls) of the deformable convolutions."""
    producer = {out: node for node in nodes for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    found: set[str] = set()
    kernels: set[str] = set()

    def trace_back(tensors: Iterable[str]) -> None:
        queue = deque(tensors)
        while queue:
            tensor = queue.popleft()
            node = producer.get(tensor)
            if node is None or tensor in consts or node.op_type in _TRACE_STOP or node.name in found:
                continue
            found.add(node.name)
            queue.extend(node.input)

    for sampler in (n for n in nodes if n.op_type in _SAMPLERS):
        found.add(sampler.name)
        trace_back(sampler.input[i] for i in _SAMPLER_POSITION_INPUTS[sampler.op_type] if i < len(sampler.input))
        if sampler.op_type != "GridSample":
            continue
        # forwards: sampled columns -> (modulation Mul, reshapes) -> the kernel's MatMul
        queue = deque(sampler.output)
        while queue:
            for node in consumers.get(queue.popleft(), []):
                if node.name in found or node.name in kernels:
                    continue
                if node.op_type == "MatMul":
                    kernels.add(node.name)
                elif node.op_type in _SHAPE_OPS or node.op_type == "Mul":
                    found.add(node.name)
                    queue.extend(node.output)
                    if node.op_type == "Mul":  # the modulation factor's own chain back to the offset conv
                        trace_back(node.input)
    return found, kernels


def classify_nodes(model: Any) -> dict[str, str]:
    """Family of every node of ``model`` (an ``onnx.ModelProto`` with unique node names), by node name."""
    nodes = list(model.graph.node)
    names = [n.name for n in nodes]
    if any(not name for name in names) or len(set(names)) != len(names):
        raise ValueError("the graph has unnamed or duplicate node names; call ensure_node_names(model) first")
    consts = constant_names(model)
    graph_inputs = {value.name for value in model.graph.input}
    deform, kernels = _deform_nodes(nodes, consts)
    families: dict[str, str] = {}
    for node in nodes:
        computed = [name for name in node.input if name and name not in consts]
        op = node.op_type
        if node.name in deform:
            family = "deform_sampling"
        elif node.name in kernels:
            family = "deform_matmul"
        elif op == "LayerNormalization":
            family = "layernorm"
        elif op == "Softmax":
            family = "softmax"
        elif op == "Add" and len(computed) >= 2:
            family = "residual_add"
        elif op == "MatMul" and len(computed) >= 2:
            family = "activation_matmul"
        elif op in ("MatMul", "Gemm"):
            family = "linear"
        elif op == "Conv" and node.input[0] in graph_inputs:
            family = "patch_embed"
        elif op == "Conv":
            family = "conv"
        else:
            family = "other"
        families[node.name] = family
    return families


def family_counts(families: Mapping[str, str]) -> dict[str, int]:
    """Nodes per family, in :data:`FAMILIES` order."""
    counts = dict.fromkeys(FAMILIES, 0)
    for family in families.values():
        counts[family] += 1
    return counts
