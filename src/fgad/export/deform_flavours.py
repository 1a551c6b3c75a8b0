"""The three ways a deformable convolution appears in an exported graph, and the rewrites between two of them.

=============  =============================================  ====================================
flavour        node(s)                                        runs in
=============  =============================================  ====================================
decomposed     ``GridSample`` + ``MatMul`` (traced op body)    every backend (opset >= 16)
onnx (native)  ``DeformConv`` (opset 19)                      onnxruntime >= 1.31, TensorRT >= 10.1
plugin         ``fgad::FgadDeformConv2d``                      TensorRT with the ``cpp_ext`` plugin
=============  =============================================  ====================================

The plugin node is the contract with ``cpp_ext/``: op type :data:`PLUGIN_OP`, domain :data:`PLUGIN_DOMAIN`
(TensorRT's ONNX parser looks unknown ops up in the plugin registry by op type; ``plugin_namespace`` and
``plugin_version`` attributes pin the creator), the five inputs of ONNX ``DeformConv`` in its order
``(X, W, offset, B, mask)``, all present (a zero bias / a mask of ones where the layer has none), and the
attributes ``strides``, ``pads`` (top, left, bottom, right), ``dilations``, ``group``, ``offset_group`` and
``kernel_shape``. Output ``[N, C_out, H_out, W_out]``.

Because the plugin node and ``DeformConv`` take the same inputs and attributes, the rewrite between them
is node for node (:func:`deformconv_to_plugin`, :func:`plugin_to_deformconv`). onnxruntime cannot run the
plugin node, so a plugin-flavour graph is checked by swapping the nodes back to ``DeformConv`` in a copy and
running that (:func:`ort_runnable`): it proves the wiring (inputs, attributes, the filled-in bias and mask),
while the plugin's own arithmetic is tested in ``cpp_ext``.

Needs ``onnx`` only (no torch), so the engine build on a device can make the plugin flavour from a bundle.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DEFORM_ALIASES",
    "DEFORM_FLAVOURS",
    "PLUGIN_DOMAIN",
    "PLUGIN_ID",
    "PLUGIN_NAMESPACE",
    "PLUGIN_OP",
    "PLUGIN_VERSION",
    "count_deform_nodes",
    "deformconv_to_plugin",
    "normalize_deform",
    "ort_runnable",
    "plugin_to_deformconv",
    "register_plugin_schema",
]

log = logging.getLogger(__name__)

#: Canonical flavour names (the manifest's ``deform`` field); ``onnx`` is ONNX ``DeformConv``.
DEFORM_FLAVOURS: tuple[str, ...] = ("decomposed", "onnx", "plugin")
#: CLI names -> canonical: ``native`` is TensorRT's own importer of ONNX ``DeformConv``.
DEFORM_ALIASES: dict[str, str] = {"native": "onnx"}

PLUGIN_OP = "FgadDeformConv2d"
PLUGIN_DOMAIN = "fgad"
PLUGIN_NAMESPACE = "fgad"
PLUGIN_VERSION = "1"
PLUGIN_OPSET = 1
#: how op_coverage names a plugin op: "<domain>::<op type>"
PLUGIN_ID = f"{PLUGIN_DOMAIN}::{PLUGIN_OP}"

_DEFORMCONV = "DeformConv"
_DEFAULT_DOMAINS = ("", "ai.onnx")
_PLUGIN_ONLY_ATTRS = ("plugin_namespace", "plugin_version")
_INSTALL = "pip install 'fgad[export]'"


def normalize_deform(name: str) -> str:
    """``decomposed`` / ``onnx`` / ``plugin`` for a flavour or CLI alias (``native`` -> ``onnx``)."""
    canonical = DEFORM_ALIASES.get(name, name)
    if canonical not in DEFORM_FLAVOURS:
        names = ", ".join([*DEFORM_FLAVOURS, *DEFORM_ALIASES])
        raise ValueError(f"deform={name!r}: use one of {names}")
    return canonical


def _onnx() -> Any:
    try:
        import onnx
    except ImportError as exc:  # pragma: no cover - onnx is in the export extra
        raise ImportError(f"rewriting ONNX graphs needs the onnx package: {_INSTALL}") from exc
    return onnx


def register_plugin_schema() -> None:
    """Register the plugin op's schema with onnx (once per process).

    The exporter (onnxscript) needs a schema to emit a node of a custom domain, and with it
    ``onnx.checker`` checks the node's inputs and attribute types instead of skipping them.
    """
    onnx = _onnx()
    defs = onnx.defs
    if defs.has(PLUGIN_OP, PLUGIN_DOMAIN):
        return
    schema_cls = defs.OpSchema
    param = schema_cls.FormalParameter
    attr = schema_cls.Attribute
    kinds = schema_cls.AttrType
    doc = ("fgad deformable convolution (TensorRT plugin from cpp_ext/): ONNX DeformConv semantics, "
           "all five inputs present")
    inputs = [param(name, "T") for name in ("X", "W", "offset", "B", "mask")]
    attributes = [
        attr("strides", kinds.INTS, "stride (h, w)", required=False),
        attr("pads", kinds.INTS, "padding (top, left, bottom, right)", required=False),
        attr("dilations", kinds.INTS, "dilation (h, w)", required=False),
        attr("group", kinds.INT, "convolution groups", required=False),
        attr("offset_group", kinds.INT, "offset groups", required=False),
        attr("kernel_shape", kinds.INTS, "kernel (kh, kw)", required=False),
        attr("plugin_namespace", kinds.STRING, "TensorRT plugin namespace", required=False),
        attr("plugin_version", kinds.STRING, "TensorRT plugin version", required=False),
    ]
    schema = schema_cls(
        PLUGIN_OP, PLUGIN_DOMAIN, PLUGIN_OPSET, doc,
        inputs=inputs, outputs=[param("Y", "T")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "float tensors")],
        attributes=attributes,
    )
    defs.register_schema(schema)


# ---------------------------------------------------------------------------------- graph walking


def _graphs(graph: Any) -> Iterator[Any]:
    """``graph`` and every subgraph (If/Loop/Scan bodies), depth first."""
    onnx = _onnx()
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attribute.g)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for sub in attribute.graphs:
                    yield from _graphs(sub)


def _is_plugin(node: Any) -> bool:
    return bool(node.op_type == PLUGIN_OP and node.domain == PLUGIN_DOMAIN)


def _is_deformconv(node: Any) -> bool:
    return bool(node.op_type == _DEFORMCONV and node.domain in _DEFAULT_DOMAINS)


def count_deform_nodes(model: Any) -> dict[str, int]:
    """``{"DeformConv": n, "FgadDeformConv2d": m}`` over the graph and its subgraphs."""
    counts = {_DEFORMCONV: 0, PLUGIN_OP: 0}
    for graph in _graphs(model.graph):
        for node in graph.node:
            if _is_deformconv(node):
                counts[_DEFORMCONV] += 1
            elif _is_plugin(node):
                counts[PLUGIN_OP] += 1
    return counts


def _attrs(node: Any) -> dict[str, Any]:
    onnx = _onnx()
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _static_shape(graph: Any, name: str) -> list[int] | None:
    """Static dims of ``name`` from the initializers or value_info of ``graph`` (None if unknown)."""
    for init in graph.initializer:
        if init.name == name:
            return [int(d) for d in init.dims]
    for info in [*graph.value_info, *graph.input]:
        if info.name == name and info.type.HasField("tensor_type"):
            dims = info.type.tensor_type.shape.dim
            if all(d.HasField("dim_value") for d in dims):
                return [int(d.dim_value) for d in dims]
    return None


def _elem_type(graph: Any, name: str) -> int:
    onnx = _onnx()
    for init in graph.initializer:
        if init.name == name:
            return int(init.data_type)
    for info in [*graph.value_info, *graph.input]:
        if info.name == name and info.type.HasField("tensor_type"):
            return int(info.type.tensor_type.elem_type)
    return int(onnx.TensorProto.FLOAT)


def _unique(graph_names: set[str], base: str) -> str:
    name = base
    while name in graph_names:
        name = f"{base}_{uuid.uuid4().hex[:6]}"
    graph_names.add(name)
    return name


def _ensure_opset(model: Any, domain: str, version: int) -> None:
    if not any(imp.domain == domain for imp in model.opset_import):
        model.opset_import.append(_onnx().helper.make_opsetid(domain, version))


def _drop_unused_opset(model: Any, domain: str) -> None:
    used = any(node.domain == domain for graph in _graphs(model.graph) for node in graph.node)
    if not used:
        keep = [imp for imp in model.opset_import if imp.domain != domain]
        del model.opset_import[:]
        model.opset_import.extend(keep)


# ---------------------------------------------------------------------------------- rewrites


def deformconv_to_plugin(model: Any) -> int:
    """Replace every ONNX ``DeformConv`` by the plugin node, in place; returns how many were replaced.

    Missing optional inputs are made explicit, as the plugin contract asks: a zero bias initializer of
    ``[C_out]`` (from ``W``'s static shape) and a mask of ones ``[N, offset_group * kh * kw, H_out, W_out]``
    built from ``offset``'s runtime shape (``Shape`` / ``Concat`` / ``ConstantOfShape``, so the batch stays
    dynamic). ``kernel_shape`` is taken from ``W`` when the node does not state it.
    """
    onnx = _onnx()
    helper, numpy_helper = onnx.helper, onnx.numpy_helper
    replaced = 0
    for graph in _graphs(model.graph):
        names = {out for node in graph.node for out in node.output} | {i.name for i in graph.initializer}
        names |= {i.name for i in graph.input}
        new_nodes: list[Any] = []
        for node in graph.node:
            if not _is_deformconv(node):
                new_nodes.append(node)
                continue
            label = node.name or f"deformconv_{replaced}"
            inputs = list(node.input) + [""] * (5 - len(node.input))
            x, w, offset, bias, mask = inputs
            attrs = _attrs(node)
            w_shape = _static_shape(graph, w)
            kernel = [int(v) for v in attrs.get("kernel_shape", [])] or (w_shape[2:] if w_shape else [])
            if len(kernel) != 2:
                raise ValueError(
                    f"DeformConv node {label!r}: the plugin needs a 2-D kernel_shape and W has no static shape; "
                    "export with a static weight (an initializer)"
                )
            kh, kw = kernel
            offset_group = int(attrs.get("offset_group", 1))
            dtype = _elem_type(graph, w)
            np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
            if not bias:
                if not w_shape:
                    raise ValueError(f"DeformConv node {label!r} has no bias and W has no static shape")
                bias = _unique(names, f"{label}_zero_bias")
                graph.initializer.append(numpy_helper.from_array(np.zeros(w_shape[0], dtype=np_dtype), bias))
            if not mask:
                batch, spatial = _unique(names, f"{label}_n"), _unique(names, f"{label}_hw")
                taps, shape = _unique(names, f"{label}_taps"), _unique(names, f"{label}_mask_shape")
                mask = _unique(names, f"{label}_ones_mask")
                new_nodes += [
                    helper.make_node("Shape", [offset], [batch], name=f"{label}_shape_n", start=0, end=1),
                    helper.make_node("Shape", [offset], [spatial], name=f"{label}_shape_hw", start=2),
                    helper.make_node("Constant", [], [taps], name=f"{label}_taps",
                                     value=numpy_helper.from_array(np.array([offset_group * kh * kw], np.int64))),
                    helper.make_node("Concat", [batch, taps, spatial], [shape], name=f"{label}_concat", axis=0),
                    helper.make_node("ConstantOfShape", [shape], [mask], name=f"{label}_ones",
                                     value=numpy_helper.from_array(np.ones(1, dtype=np_dtype))),
                ]
            plugin = helper.make_node(
                PLUGIN_OP, [x, w, offset, bias, mask], list(node.output), name=node.name, domain=PLUGIN_DOMAIN,
                strides=[int(v) for v in attrs.get("strides", [1, 1])],
                pads=[int(v) for v in attrs.get("pads", [0, 0, 0, 0])],
                dilations=[int(v) for v in attrs.get("dilations", [1, 1])],
                group=int(attrs.get("group", 1)),
                offset_group=offset_group,
                kernel_shape=[kh, kw],
                plugin_namespace=PLUGIN_NAMESPACE,
                plugin_version=PLUGIN_VERSION,
            )
            new_nodes.append(plugin)
            replaced += 1
        if replaced:
            del graph.node[:]
            graph.node.extend(new_nodes)
    if replaced:
        _ensure_opset(model, PLUGIN_DOMAIN, PLUGIN_OPSET)
    return replaced


def plugin_to_deformconv(model: Any) -> int:
    """Replace every plugin node by ONNX ``DeformConv`` with the same inputs and attributes, in place.

    The result runs in onnxruntime (>= 1.31 on CPU); this is how a plugin-flavour graph is checked
    against PyTorch. Returns the number of nodes replaced.
    """
    replaced = 0
    for graph in _graphs(model.graph):
        for node in graph.node:
            if not _is_plugin(node):
                continue
            keep = [a for a in node.attribute if a.name not in _PLUGIN_ONLY_ATTRS]
            del node.attribute[:]
            node.attribute.extend(keep)
            node.op_type = _DEFORMCONV
            node.domain = ""
            replaced += 1
    if replaced:
        _drop_unused_opset(model, PLUGIN_DOMAIN)
        if not any(imp.domain in _DEFAULT_DOMAINS and imp.version >= 19 for imp in model.opset_import):
            raise ValueError("the graph's default opset is below 19, which has no DeformConv; re-export with opset 19")
    return replaced


@contextmanager
def ort_runnable(path: str | os.PathLike[str]) -> Iterator[str | bytes]:
    """What to hand to ``onnxruntime.InferenceSession`` for the graph at ``path``.

    A graph without plugin nodes: its path. With plugin nodes: a copy with them swapped back to
    ``DeformConv`` (:func:`plugin_to_deformconv`), as serialized bytes, or, when the weights live in an
    external-data file, as a temporary graph file next to ``path`` (removed on exit) so the relative
    external-data reference still resolves.
    """
    onnx = _onnx()
    source = Path(path)
    model = onnx.load(str(source), load_external_data=False)
    if not count_deform_nodes(model)[PLUGIN_OP]:
        yield str(source)
        return
    swapped = plugin_to_deformconv(model)
    external = any(
        init.data_location == onnx.TensorProto.EXTERNAL for graph in _graphs(model.graph) for init in graph.initializer
    )
    log.debug("%s: %d plugin node(s) swapped back to DeformConv for onnxruntime", source, swapped)
    if not external:
        yield model.SerializeToString()
        return
    tmp = source.with_name(f".{source.stem}.{uuid.uuid4().hex}.ort.onnx")
    try:
        onnx.save(model, str(tmp))
        yield str(tmp)
    finally:
        tmp.unlink(missing_ok=True)
