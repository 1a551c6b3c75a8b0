"""Will TensorRT's ONNX parser take this graph? Every node against TensorRT 10.x's operator support matrix.

The matrix is data (``data/tensorrt_onnx_ops.yaml``, with the document and revision it was read from): per
operator the tensor types TensorRT imports it for, the first 10.x release that imports it, and its
restrictions. :func:`check_tensorrt_coverage` walks every node of a graph, including the bodies of
``If``/``Loop``/``Scan`` and local functions, takes each tensor's element type from ONNX shape inference
(with data propagation), and reports

* ``unsupported-op``: an operator the parser has no importer for (or not yet in the target TensorRT), a
  node of a custom domain that is not one of the expected plugins;
* ``unsupported-type``: an operator used with a tensor type it is not imported for (e.g. ``MatMul`` on
  INT64, an int8 tensor outside Q/DQ);
* ``restriction``: an attribute or input the table restricts (``Resize`` cubic, ``GridSample`` on 5-D,
  ``DeformConv`` with unequal pads, a non-zero Q/DQ zero point, per-channel Q/DQ on activations, ``axes``
  that are not constants, ...);
* ``opset``: a default-domain opset outside the target TensorRT's range;

and, as warnings, types the parser casts down (DOUBLE) or could not be determined. ``fgad-export`` runs it
before building an engine; ``report.summary()`` is the one-screen version.

Needs ``onnx`` and ``pyyaml`` (no torch, no TensorRT).
"""

from __future__ import annotations

import functools
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from fgad.export.deform_flavours import PLUGIN_ID

__all__ = [
    "DEFAULT_PLUGINS",
    "MIN_TENSORRT",
    "CoverageIssue",
    "CoverageReport",
    "OpSupport",
    "SupportMatrix",
    "check_tensorrt_coverage",
    "load_support_matrix",
    "parse_version",
]

#: Plugins whose nodes are expected in our graphs (``<domain>::<op type>``).
DEFAULT_PLUGINS: tuple[str, ...] = (PLUGIN_ID,)
#: Oldest TensorRT the project targets (JetPack 6); the default version checked against.
MIN_TENSORRT = "10.3"
#: Types our plugin accepts (the cpp_ext contract).
PLUGIN_TYPES: dict[str, tuple[str, ...]] = {PLUGIN_ID: ("FP32", "FP16")}
DATA_FILE = "tensorrt_onnx_ops.yaml"
_DEFAULT_DOMAINS = ("", "ai.onnx")
_INSTALL = "pip install 'fgad[export]'"

#: ONNX TensorProto element type -> the table's type name
_TYPE_NAMES: dict[int, str] = {
    1: "FP32", 2: "UINT8", 3: "INT8", 4: "UINT16", 5: "INT16", 6: "INT32", 7: "INT64", 8: "STRING", 9: "BOOL",
    10: "FP16", 11: "DOUBLE", 12: "UINT32", 13: "UINT64", 14: "COMPLEX64", 15: "COMPLEX128", 16: "BF16",
    17: "FP8", 18: "FP8E4M3FNUZ", 19: "FP8E5M2", 20: "FP8E5M2FNUZ", 21: "UINT4", 22: "INT4", 23: "FP4",
}


def parse_version(version: str) -> tuple[int, ...]:
    """``"10.3.0.26"`` -> ``(10, 3, 0, 26)``; compare versions as tuples, never as strings."""
    parts = re.findall(r"\d+", str(version))
    if not parts:
        raise ValueError(f"not a version: {version!r}")
    return tuple(int(p) for p in parts)


# ---------------------------------------------------------------------------------- the matrix


@dataclass(frozen=True)
class OpSupport:
    """One row of the support matrix."""

    name: str
    types: tuple[str, ...]  # tensor types the parser imports the op for
    since: str | None = None  # first TensorRT release that imports it (None: all of 10.x)
    restrictions: str = ""  # the table's restrictions, in words
    checks: tuple[str, ...] = ()  # restriction checks implemented here (see _RESTRICTION_CHECKS)
    checks_input: int | str = 0  # whose type is compared: an input index, "output", "both" or "none"


@dataclass(frozen=True)
class SupportMatrix:
    """The whole data file, parsed."""

    ops: Mapping[str, OpSupport]
    unsupported: frozenset[str]
    opset_ranges: tuple[tuple[tuple[int, ...], int, int], ...]  # (version, lowest, highest), ascending
    quantized_types: frozenset[str]
    io_only_types: frozenset[str]
    cast_down_types: frozenset[str]
    source: Mapping[str, str]

    def opset_range(self, tensorrt_version: str) -> tuple[int, int]:
        """Default-domain opsets the given TensorRT accepts (the closest listed version at or below it)."""
        wanted = parse_version(tensorrt_version)
        usable = [(lo, hi) for version, lo, hi in self.opset_ranges if version <= wanted]
        if not usable:
            lowest = ".".join(str(v) for v in self.opset_ranges[0][0])
            raise ValueError(f"TensorRT {tensorrt_version} is older than the support table ({lowest}); use >= 10.0")
        return usable[-1]


def _load_yaml(path: Path | None) -> dict[str, Any]:
    try:
        import yaml
    except ImportError as exc:  # pragma: no cover - pyyaml is a base dependency
        raise ImportError("reading the TensorRT support table needs pyyaml: pip install pyyaml") from exc
    if path is None:
        text = resources.files("fgad.export").joinpath("data", DATA_FILE).read_text(encoding="utf-8")
    else:
        text = Path(path).read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    if not isinstance(data, dict) or not isinstance(data.get("ops"), dict):
        raise ValueError(f"{path or DATA_FILE}: not a support table (no 'ops' mapping)")
    return data


@functools.lru_cache(maxsize=4)
def _cached_matrix(path: str | None) -> SupportMatrix:
    data = _load_yaml(Path(path) if path else None)
    ops: dict[str, OpSupport] = {}
    for name, row in data["ops"].items():
        row = row or {}
        checks_input = row.get("checks_input", 0)
        ops[str(name)] = OpSupport(
            name=str(name),
            types=tuple(str(t) for t in row.get("types", ())),
            since=str(row["since"]) if row.get("since") is not None else None,
            restrictions=str(row.get("restrictions", "") or "").strip(),
            checks=tuple(str(c) for c in row.get("checks", ())),
            checks_input=checks_input if isinstance(checks_input, int) else str(checks_input),
        )
    unknown_checks = {c for op in ops.values() for c in op.checks} - set(_RESTRICTION_CHECKS)
    if unknown_checks:
        raise ValueError(f"{path or DATA_FILE}: unknown restriction checks {sorted(unknown_checks)}")
    ranges = sorted((parse_version(v), int(r[0]), int(r[1])) for v, r in data.get("opset_ranges", {}).items())
    if not ranges:
        raise ValueError(f"{path or DATA_FILE}: no opset_ranges")
    return SupportMatrix(
        ops=ops,
        unsupported=frozenset(str(n) for n in data.get("unsupported", ())),
        opset_ranges=tuple(ranges),
        quantized_types=frozenset(data.get("quantized_types", ())),
        io_only_types=frozenset(data.get("io_only_types", ())),
        cast_down_types=frozenset(data.get("cast_down_types", ())),
        source={str(k): str(v) for k, v in (data.get("source") or {}).items()},
    )


def load_support_matrix(path: str | os.PathLike[str] | None = None) -> SupportMatrix:
    """The support matrix from ``path`` (default: the packaged ``data/tensorrt_onnx_ops.yaml``)."""
    return _cached_matrix(os.fspath(path) if path is not None else None)


# ---------------------------------------------------------------------------------- the report


@dataclass(frozen=True)
class CoverageIssue:
    """One finding: the node (name, op, domain, the subgraph it is in), what is wrong and how bad."""

    kind: str  # unsupported-op | unsupported-type | restriction | opset | cast-down | unknown-type
    node: str  # node name ("" for graph-level findings)
    op_type: str
    domain: str
    message: str
    dtype: str | None = None
    graph: str = "main"
    severity: str = "error"  # error | warning

    def __str__(self) -> str:
        where = f"node {self.node!r} ({self._op()})" if self.node or self.op_type else "graph"
        inside = "" if self.graph == "main" else f" in {self.graph}"
        return f"{self.severity}: {where}{inside}: {self.message}"

    def _op(self) -> str:
        return self.op_type if self.domain in _DEFAULT_DOMAINS else f"{self.domain}::{self.op_type}"


@dataclass
class CoverageReport:
    """What :func:`check_tensorrt_coverage` found; ``ok`` when there is no error (warnings allowed)."""

    path: str
    tensorrt_version: str
    opset: int | None
    nodes: int = 0
    op_counts: Counter[str] = field(default_factory=Counter)
    types: dict[str, Counter[str]] = field(default_factory=dict)  # op -> type name -> count
    issues: list[CoverageIssue] = field(default_factory=list)
    plugins_used: Counter[str] = field(default_factory=Counter)
    source: Mapping[str, str] = field(default_factory=dict)

    @property
    def errors(self) -> list[CoverageIssue]:
        return [i for i in self.issues if i.severity == "error"]

    @property
    def warnings(self) -> list[CoverageIssue]:
        return [i for i in self.issues if i.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self, limit: int = 20) -> str:
        """A few lines for a terminal: verdict, counts, then the first ``limit`` findings."""
        verdict = "OK" if self.ok else f"{len(self.errors)} problem(s)"
        plugins = f", plugin nodes {dict(self.plugins_used)}" if self.plugins_used else ""
        lines = [
            f"TensorRT {self.tensorrt_version} ONNX coverage of {self.path}: {verdict} "
            f"({self.nodes} nodes, {len(self.op_counts)} op types, opset {self.opset}{plugins}; "
            f"table {self.source.get('repository', '?')} {self.source.get('file', '')} "
            f"{self.source.get('table_version', '')})"
        ]
        shown = sorted(self.issues, key=lambda i: i.severity != "error")[:limit]
        lines += [f"  {issue}" for issue in shown]
        if len(self.issues) > limit:
            lines.append(f"  ... and {len(self.issues) - limit} more")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (for the manifest or a report file)."""
        return {
            "tensorrt_version": self.tensorrt_version,
            "ok": self.ok,
            "nodes": self.nodes,
            "opset": self.opset,
            "ops": dict(sorted(self.op_counts.items())),
            "plugins": dict(self.plugins_used),
            "errors": [str(i) for i in self.errors],
            "warnings": [str(i) for i in self.warnings],
            "table": dict(self.source),
        }


# ---------------------------------------------------------------------------------- graph facts


class _Graph:
    """Types, constants and static shapes known in one (sub)graph, including what it sees of its parents."""

    def __init__(self, graph: Any, label: str, parent: _Graph | None = None) -> None:
        self.graph = graph
        self.label = label
        self.types: dict[str, int] = dict(parent.types) if parent else {}
        self.ranks: dict[str, int] = dict(parent.ranks) if parent else {}
        self.constants: dict[str, Any] = dict(parent.constants) if parent else {}
        for info in [*graph.input, *graph.output, *graph.value_info]:
            tensor = info.type.tensor_type if info.type.HasField("tensor_type") else None
            if tensor is None:
                continue
            if tensor.elem_type:
                self.types[info.name] = int(tensor.elem_type)
            if tensor.HasField("shape"):
                self.ranks[info.name] = len(tensor.shape.dim)
        for init in graph.initializer:
            self.types[init.name] = int(init.data_type)
            self.ranks[init.name] = len(init.dims)
            self.constants[init.name] = init
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in _DEFAULT_DOMAINS and node.output:
                for attribute in node.attribute:
                    if attribute.name == "value":
                        self.constants[node.output[0]] = attribute.t
                        self.types.setdefault(node.output[0], int(attribute.t.data_type))
                        self.ranks.setdefault(node.output[0], len(attribute.t.dims))

    def value(self, name: str) -> np.ndarray | None:
        """The array of a constant input (an initializer or a Constant output), None otherwise or if external."""
        import onnx

        tensor = self.constants.get(name)
        if tensor is None or tensor.data_location == onnx.TensorProto.EXTERNAL:
            return None
        return onnx.numpy_helper.to_array(tensor)

    def type_name(self, name: str) -> str | None:
        code = self.types.get(name)
        return None if code is None else _TYPE_NAMES.get(code, f"type{code}")


def _node_label(node: Any, index: int) -> str:
    return node.name or f"#{index}:{node.op_type}"


def _attr(node: Any, name: str, default: Any = None) -> Any:
    import onnx

    for attribute in node.attribute:
        if attribute.name == name:
            value = onnx.helper.get_attribute_value(attribute)
            return value.decode() if isinstance(value, bytes) else value
    return default


# ---------------------------------------------------------------------------------- restriction checks
# Each check returns the problems (in words) it found on one node.


def _check_pool_dilations(node: Any, g: _Graph) -> list[str]:
    dilations = _attr(node, "dilations")
    if dilations and any(int(d) != 1 for d in dilations):
        return [f"dilations {list(dilations)}: TensorRT pools only without dilation"]
    return []


def _check_first_output_only(node: Any, g: _Graph) -> list[str]:
    extra = [name for name in list(node.output)[1:] if name]
    return [f"uses optional output(s) {extra}; TensorRT imports only the first output"] if extra else []


def _check_constant_input_1(node: Any, g: _Graph) -> list[str]:
    if len(node.input) > 1 and node.input[1] and node.input[1] not in g.constants:
        return [f"input {node.input[1]!r} (axes/axis) is computed at run time; TensorRT needs a constant"]
    return []


def _check_constant_value(node: Any, g: _Graph) -> list[str]:
    bad = [a.name for a in node.attribute if a.name in ("sparse_value", "value_string", "value_strings")]
    return [f"attribute {bad[0]!r} is not supported"] if bad else []


def _check_deformconv(node: Any, g: _Graph) -> list[str]:
    problems = []
    pads = [int(p) for p in (_attr(node, "pads") or [])]
    half = len(pads) // 2
    if pads and pads[:half] != pads[half:]:
        problems.append(f"pads {pads}: begin and end padding must be equal on each spatial axis")
    rank = g.ranks.get(node.input[0]) if node.input else None
    if rank is not None and rank not in (3, 4):
        problems.append(f"input of rank {rank}: only 1-D or 2-D spatial inputs")
    return problems


def _check_gridsample(node: Any, g: _Graph) -> list[str]:
    problems = []
    rank = g.ranks.get(node.input[0]) if node.input else None
    if rank is not None and rank != 4:
        problems.append(f"input of rank {rank}: TensorRT samples 4-D inputs only")
    mode = str(_attr(node, "mode", "linear"))
    if mode not in ("linear", "bilinear", "nearest", "cubic", "bicubic"):
        problems.append(f"mode {mode!r} is not an interpolation mode of IGridSampleLayer")
    padding = str(_attr(node, "padding_mode", "zeros"))
    if padding not in ("zeros", "border", "reflection"):
        problems.append(f"padding_mode {padding!r} is not supported")
    return problems


_RESIZE_COORDS = ("half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners")
_RESIZE_NEAREST = ("floor", "ceil", "round_prefer_floor", "round_prefer_ceil")


def _check_resize(node: Any, g: _Graph) -> list[str]:
    problems = []
    mode = str(_attr(node, "mode", "nearest"))
    if mode not in ("nearest", "linear"):
        problems.append(f"mode {mode!r}: TensorRT resizes with nearest or linear only")
    coords = str(_attr(node, "coordinate_transformation_mode", "half_pixel"))
    if coords not in _RESIZE_COORDS:
        problems.append(f"coordinate_transformation_mode {coords!r} is not supported")
    nearest = str(_attr(node, "nearest_mode", "round_prefer_floor"))
    if mode == "nearest" and nearest not in _RESIZE_NEAREST:
        problems.append(f"nearest_mode {nearest!r} is not supported")
    if int(_attr(node, "antialias", 0)):
        problems.append("antialias=1 is not supported")
    policy = str(_attr(node, "keep_aspect_ratio_policy", "stretch"))
    if policy != "stretch":
        problems.append(f"keep_aspect_ratio_policy {policy!r}: only 'stretch'")
    return problems


def _check_zero_point(node: Any, g: _Graph) -> list[str]:
    if len(node.input) < 3 or not node.input[2]:
        return []
    name = node.input[2]
    if name not in g.constants:
        return [f"zero point {name!r} is computed at run time; TensorRT needs a constant zero"]
    value = g.value(name)
    if value is not None and np.any(value != 0):
        return [f"zero point {name!r} is not zero (TensorRT quantizes symmetrically); quantize with symmetric ranges"]
    return []


def _check_per_channel_weights_only(node: Any, g: _Graph) -> list[str]:
    if len(node.input) < 2:
        return []
    scale = g.value(node.input[1]) if node.input[1] in g.constants else None
    per_channel = scale is not None and scale.size > 1
    if per_channel and node.input[0] not in g.constants:
        return [f"per-channel scale ({scale.size} values) on a run-time tensor {node.input[0]!r}: TensorRT quantizes "
                "activations per tensor; per-channel scales are for weights (constants) only"]
    return []


def _check_scatter_reduction(node: Any, g: _Graph) -> list[str]:
    reduction = str(_attr(node, "reduction", "none"))
    return [f"reduction {reduction!r}: only 'none'"] if reduction != "none" else []


def _check_topk(node: Any, g: _Graph) -> list[str]:
    problems = []
    if int(_attr(node, "sorted", 1)) != 1:
        problems.append("sorted=0 is not supported")
    if len(node.input) > 1:
        k = g.value(node.input[1]) if node.input[1] in g.constants else None
        if k is not None and int(np.asarray(k).reshape(-1)[0]) >= 3840:
            problems.append(f"K={int(np.asarray(k).reshape(-1)[0])}: TensorRT's TopK needs K < 3840")
    return problems


_RESTRICTION_CHECKS = {
    "pool_dilations": _check_pool_dilations,
    "first_output_only": _check_first_output_only,
    "constant_input_1": _check_constant_input_1,
    "constant_value": _check_constant_value,
    "deformconv": _check_deformconv,
    "gridsample": _check_gridsample,
    "resize": _check_resize,
    "zero_point": _check_zero_point,
    "per_channel_weights_only": _check_per_channel_weights_only,
    "scatter_reduction": _check_scatter_reduction,
    "topk": _check_topk,
}


# ---------------------------------------------------------------------------------- walking


def _checked_tensors(node: Any, support: OpSupport) -> list[str]:
    which = support.checks_input
    if which == "none":
        return []
    if which == "output":
        return [node.output[0]] if node.output and node.output[0] else []
    if which == "both":
        return [n for n in (node.input[0] if node.input else "", node.output[0] if node.output else "") if n]
    index = int(which)
    return [node.input[index]] if len(node.input) > index and node.input[index] else []


def _subgraphs(node: Any) -> Iterator[tuple[str, Any]]:
    import onnx

    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.GRAPH:
            yield attribute.name, attribute.g
        elif attribute.type == onnx.AttributeProto.GRAPHS:
            for i, sub in enumerate(attribute.graphs):
                yield f"{attribute.name}[{i}]", sub


class _Walker:
    def __init__(self, matrix: SupportMatrix, version: str, plugins: Iterable[str], functions: set[tuple[str, str]],
                 report: CoverageReport) -> None:
        self.matrix = matrix
        self.version = parse_version(version)
        self.version_text = version
        self.plugins = set(plugins)
        self.functions = functions
        self.report = report

    def issue(self, kind: str, node: Any, label: str, g: _Graph, message: str, dtype: str | None = None,
              severity: str = "error") -> None:
        self.report.issues.append(CoverageIssue(kind, label, node.op_type, node.domain, message, dtype, g.label,
                                                severity))

    def walk(self, g: _Graph) -> None:
        for index, node in enumerate(g.graph.node):
            self.node(node, _node_label(node, index), g)
            for attr_name, sub in _subgraphs(node):
                self.walk(_Graph(sub, f"{g.label}/{_node_label(node, index)}.{attr_name}", g))

    def node(self, node: Any, label: str, g: _Graph) -> None:
        report = self.report
        report.nodes += 1
        domain = node.domain or ""
        op_id = node.op_type if domain in _DEFAULT_DOMAINS else f"{domain}::{node.op_type}"
        report.op_counts[op_id] += 1
        if (domain, node.op_type) in self.functions:
            return  # a call of a local function: its body is walked separately
        if domain not in _DEFAULT_DOMAINS:
            if op_id not in self.plugins:
                expected = ", ".join(sorted(self.plugins)) or "none"
                self.issue("unsupported-op", node, label, g,
                           f"custom-domain op {op_id} is neither a standard ONNX op nor an expected plugin "
                           f"(expected plugins: {expected})")
                return
            report.plugins_used[op_id] += 1
            allowed = PLUGIN_TYPES.get(op_id)
            if allowed:
                self._types(node, label, g, [node.input[0]] if node.input else [], allowed)
            return
        support = self.matrix.ops.get(node.op_type)
        if support is None:
            table = self.matrix.source.get("table_version")
            why = "marked unsupported" if node.op_type in self.matrix.unsupported else "not in the table"
            self.issue("unsupported-op", node, label, g,
                       f"TensorRT's ONNX parser has no importer for {node.op_type} ({why}, TensorRT {table}); "
                       "rewrite it in supported ops or provide a plugin")
            return
        if support.since is not None and parse_version(support.since) > self.version:
            self.issue("unsupported-op", node, label, g,
                       f"{node.op_type} is imported from TensorRT {support.since} on; the target is "
                       f"{self.version_text}")
        self._types(node, label, g, _checked_tensors(node, support), support.types)
        for check in support.checks:
            for problem in _RESTRICTION_CHECKS[check](node, g):
                self.issue("restriction", node, label, g, problem)

    def _types(self, node: Any, label: str, g: _Graph, tensors: Sequence[str], allowed: Sequence[str]) -> None:
        for name in tensors:
            dtype = g.type_name(name)
            if dtype is None:
                self.issue("unknown-type", node, label, g,
                           f"type of {name!r} unknown after shape inference; not checked", severity="warning")
                continue
            self.report.types.setdefault(node.op_type, Counter())[dtype] += 1
            if dtype in allowed:
                continue
            if dtype in self.matrix.cast_down_types:
                self.issue("cast-down", node, label, g,
                           f"{name!r} is {dtype}; TensorRT casts it down to FP32 (values beyond FP32 clamp)",
                           dtype, severity="warning")
                continue
            hint = ""
            if dtype in self.matrix.quantized_types:
                hint = " (quantized types only through QuantizeLinear/DequantizeLinear)"
            self.issue("unsupported-type", node, label, g,
                       f"{name!r} is {dtype}; TensorRT imports {node.op_type} for {', '.join(allowed)}{hint}",
                       dtype)


def _infer(model: Any) -> Any:
    import onnx

    try:
        return onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - inference is best effort: keep the exporter's own value_info
        return model


def check_tensorrt_coverage(
    onnx_path: str | os.PathLike[str],
    *,
    plugins: Sequence[str] = DEFAULT_PLUGINS,
    tensorrt_version: str = MIN_TENSORRT,
    table: str | os.PathLike[str] | None = None,
) -> CoverageReport:
    """Check every node of the graph at ``onnx_path`` against TensorRT's ONNX support matrix.

    Args:
        onnx_path: the graph (external weights are not loaded: only the structure matters).
        plugins: custom ops (``"<domain>::<op type>"``) a plugin provides; any other custom-domain node is an error.
        tensorrt_version: the TensorRT the engine will be built with (``since`` and the opset range depend on it);
            the default is the oldest the project targets, :data:`MIN_TENSORRT`.
        table: another support table file (default: the packaged one).

    Returns a :class:`CoverageReport`; nothing is raised for findings (``report.ok`` / ``report.errors``).
    """
    try:
        import onnx
    except ImportError as exc:  # pragma: no cover - onnx is in the export extra
        raise ImportError(f"the TensorRT coverage check needs onnx: {_INSTALL}") from exc
    path = Path(onnx_path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX graph {path} does not exist")
    matrix = load_support_matrix(table)
    model = _infer(onnx.load(str(path), load_external_data=False))
    opset = next((imp.version for imp in model.opset_import if imp.domain in _DEFAULT_DOMAINS), None)
    report = CoverageReport(str(path), tensorrt_version, opset, source=matrix.source)
    lowest, highest = matrix.opset_range(tensorrt_version)
    if opset is not None and not lowest <= opset <= highest:
        report.issues.append(CoverageIssue(
            "opset", "", "", "", f"default opset {opset} is outside TensorRT {tensorrt_version}'s range "
            f"{lowest}..{highest}; export with --opset in that range"))
    functions = {(f.domain, f.name) for f in model.functions}
    walker = _Walker(matrix, tensorrt_version, plugins, functions, report)
    main = _Graph(model.graph, "main")
    walker.walk(main)
    for function in model.functions:
        body = onnx.helper.make_graph(list(function.node), function.name, [], [])
        walker.walk(_Graph(body, f"function {function.domain}::{function.name}", main))
    return report
