"""ONNX export of :class:`~fgad.methods.filo.export_module.FiloExportModule`, then ``onnx.checker``, then an
onnxruntime comparison against PyTorch (the timm ``utils/onnx.py`` sequence, every time).

Three flavours of the MDCI deformable convolutions (ARCHITECTURE decision 2,
:mod:`fgad.export.deform_flavours`):

* ``decomposed``: exported under :func:`fgad.backbone.deform.exportable`, so the op's pure-PyTorch
  body traces to ``GridSample`` + ``MatMul`` (opset >= 16; every backend runs it);
* ``onnx`` (CLI name ``native``): the exporter sees the project's ``fgad::deform_conv2d`` custom op
  and :func:`deform_conv2d_to_onnx` translates it to the standard ``DeformConv`` (opset 19). The
  layouts are the same (torchvision = ONNX: ``(dy, dx)`` pairs per tap, one mask value per tap),
  so the translation only maps arguments to attributes. onnxruntime 1.31 runs ``DeformConv`` on
  CPU (checked by the tests against the decomposed graph and PyTorch); TensorRT >= 10.1 parses it;
* ``plugin``: :func:`deform_conv2d_to_plugin` translates the custom op to the node of our TensorRT
  plugin (``fgad::FgadDeformConv2d``, the ``cpp_ext`` contract: DeformConv's inputs, all five present).
  onnxruntime cannot run that node, so :func:`run_onnx` / :func:`check_against_torch` run a copy in
  which the plugin nodes are swapped back to ``DeformConv`` with the same inputs and attributes
  (:func:`fgad.export.deform_flavours.ort_runnable`). That proves the node wiring (argument order,
  attributes, the filled-in zero bias and ones mask); the plugin's arithmetic is tested in ``cpp_ext``.

The graph is written atomically: into a temporary folder next to the target, checked, then
renamed into place (an external-data file, needed above protobuf's 2 GB, moves first).
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fgad.backbone.deform import ModulatedDeformConv2d, exportable
from fgad.bundle.spec import INPUT_NAME
from fgad.bundle.staging import parity_tolerance
from fgad.export.deform_flavours import (
    DEFORM_FLAVOURS,
    PLUGIN_DOMAIN,
    PLUGIN_NAMESPACE,
    PLUGIN_OP,
    PLUGIN_VERSION,
    normalize_deform,
    ort_runnable,
    register_plugin_schema,
)

__all__ = [
    "DEFAULT_OPSET",
    "DEFORM_FLAVOURS",
    "TOLERANCES",
    "ExportError",
    "ExportParityError",
    "check_against_torch",
    "deform_conv2d_to_onnx",
    "deform_conv2d_to_plugin",
    "export_onnx",
    "onnx_output_shapes",
]

log = logging.getLogger(__name__)

DEFAULT_OPSET = 19

#: Largest accepted |onnxruntime - PyTorch| per output (fp32 on CPU). Measured differences on the
#: tiny test model are ~1e-6 (maps, tokens) and ~1e-7 (global_prob); the bounds leave room for the
#: longer reductions of ViT-L while still catching any real divergence (a wrong weight or op shows
#: up as >= 1e-2). ``best_description`` must be equal, except for exact ties (see TIE_TOLERANCE).
TOLERANCES: dict[str, float] = {"vl_map": 1e-4, "global_prob": 1e-5, "tokens": 1e-4, "default": 1e-4}
#: Two abnormal prompts whose similarity to G_a differs by less than this are a tie: either index
#: is a correct ``best_description``, and float rounding may pick either.
TIE_TOLERANCE = 1e-5


class ExportError(RuntimeError):
    """The export could not produce a valid graph."""


class ExportParityError(ExportError):
    """onnxruntime and PyTorch disagree beyond the stated tolerance; names the output and the diff."""

    def __init__(self, output: str, diff: float, tolerance: float, report: dict[str, Any] | None = None) -> None:
        self.output = output
        self.diff = diff
        self.tolerance = tolerance
        self.report = report or {}
        super().__init__(
            f"ONNX parity check failed for output {output!r}: max |onnxruntime - torch| = {diff:.3g} "
            f"> tolerance {tolerance:.3g}; the bundle is not written"
        )


# ---------------------------------------------------------------------------------- DeformConv


def _deform_attributes(
    stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int], groups: int, offset_groups: int
) -> dict[str, Any]:
    """ONNX ``DeformConv`` attributes (the plugin node's too) of the op's arguments; ``pads`` are symmetric."""
    return {
        "dilations": [int(v) for v in dilation],
        "group": int(groups),
        "offset_group": int(offset_groups),
        "pads": [int(padding[0]), int(padding[1]), int(padding[0]), int(padding[1])],
        "strides": [int(v) for v in stride],
    }


def deform_conv2d_to_onnx(
    x,  # noqa: ANN001 - onnxscript values
    offset,  # noqa: ANN001
    weight,  # noqa: ANN001
    bias=None,  # noqa: ANN001
    mask=None,  # noqa: ANN001
    stride: Sequence[int] = (1, 1),
    padding: Sequence[int] = (0, 0),
    dilation: Sequence[int] = (1, 1),
    groups: int = 1,
    offset_groups: int = 1,
):  # noqa: ANN201
    """``fgad::deform_conv2d`` -> ONNX ``DeformConv`` (opset 19), for ``custom_translation_table``.

    Argument order is the custom op's; ONNX takes ``(X, W, offset, B, mask)`` and symmetric
    ``pads = [top, left, bottom, right]``.
    """
    from onnxscript import opset19 as op

    attrs = _deform_attributes(stride, padding, dilation, groups, offset_groups)
    shape = getattr(weight, "shape", None)
    if shape is not None and len(shape) == 4 and all(isinstance(d, int) for d in (shape[2], shape[3])):
        attrs["kernel_shape"] = [int(shape[2]), int(shape[3])]  # optional in ONNX; some parsers want it
    return op.DeformConv(x, weight, offset, bias, mask, **attrs)


def deform_conv2d_to_plugin(
    x,  # noqa: ANN001 - onnxscript values
    offset,  # noqa: ANN001
    weight,  # noqa: ANN001
    bias=None,  # noqa: ANN001
    mask=None,  # noqa: ANN001
    stride: Sequence[int] = (1, 1),
    padding: Sequence[int] = (0, 0),
    dilation: Sequence[int] = (1, 1),
    groups: int = 1,
    offset_groups: int = 1,
):  # noqa: ANN201
    """``fgad::deform_conv2d`` -> the TensorRT plugin node ``fgad::FgadDeformConv2d``.

    Same inputs and attributes as :func:`deform_conv2d_to_onnx`, plus ``plugin_namespace`` /
    ``plugin_version``; all five inputs are present (the plugin contract): a constant zero bias of
    ``[C_out]`` and a mask of ones shaped from ``offset`` at run time (the batch stays dynamic) where
    the layer has none. ``kernel_shape`` is required, so ``weight`` must have a static shape.
    """
    from onnxscript import ir, values
    from onnxscript import opset19 as op

    register_plugin_schema()
    shape = getattr(weight, "shape", None)
    dims = [d if isinstance(d, int) else None for d in shape] if shape is not None else []
    if len(dims) != 4 or any(d is None for d in dims):
        raise ExportError(f"the plugin flavour needs a static 4-D deformable-conv weight, got shape {shape}")
    c_out, _, kh, kw = (int(d) for d in dims)  # type: ignore[arg-type]
    np_dtype = np.float16 if getattr(weight, "dtype", None) == ir.DataType.FLOAT16 else np.float32
    if bias is None:
        bias = op.Constant(value=ir.tensor(np.zeros(c_out, dtype=np_dtype)))
    if mask is None:
        taps = op.Constant(value=ir.tensor(np.array([int(offset_groups) * kh * kw], dtype=np.int64)))
        mask_shape = op.Concat(op.Shape(offset, start=0, end=1), taps, op.Shape(offset, start=2), axis=0)
        mask = op.ConstantOfShape(mask_shape, value=ir.tensor(np.ones(1, dtype=np_dtype)))
    plugin = values.Opset(PLUGIN_DOMAIN, 1)
    return getattr(plugin, PLUGIN_OP)(
        x, weight, offset, bias, mask,
        **_deform_attributes(stride, padding, dilation, groups, offset_groups),
        kernel_shape=[kh, kw],
        plugin_namespace=PLUGIN_NAMESPACE,
        plugin_version=PLUGIN_VERSION,
    )


def _translation_table(deform: str) -> dict[Any, Any] | None:
    """The custom translation of ``fgad::deform_conv2d`` for ``deform`` (None: the op body is traced)."""
    if deform == "onnx":
        return {torch.ops.fgad.deform_conv2d.default: deform_conv2d_to_onnx}
    if deform == "plugin":
        register_plugin_schema()
        return {torch.ops.fgad.deform_conv2d.default: deform_conv2d_to_plugin}
    return None


# ---------------------------------------------------------------------------------- graph fixes


def _rewrite_bool_where(model: Any) -> int:
    """Replace ``Where`` on bool values by ``Or(And(c, x), And(Not(c), y))``; returns the count.

    The prompt filter's "keep a set whole if it would become empty" rule
    (:func:`fgad.methods.filo.scoring.filter_masks`) is a ``torch.where`` on bool masks; onnxruntime's
    CPU ``Where`` has no bool kernel ("Could not find an implementation for Where(16)"). The
    logical form is the same function with the same broadcasting, and every backend has it.
    """
    from onnxscript import ir

    graph = model.graph
    count = 0
    for node in list(graph):
        if node.op_type != "Where" or node.domain not in ("", "ai.onnx"):
            continue
        out = node.outputs[0]
        if out.dtype != ir.DataType.BOOL:
            continue
        cond, x, y = node.inputs
        base = node.name or f"where_bool_{count}"
        keep_x = ir.node("And", [cond, x], name=f"{base}_and_x")
        not_c = ir.node("Not", [cond], name=f"{base}_not")
        keep_y = ir.node("And", [not_c.outputs[0], y], name=f"{base}_and_y")
        merged = ir.node("Or", [keep_x.outputs[0], keep_y.outputs[0]], name=f"{base}_or")
        merged.outputs[0].dtype = ir.DataType.BOOL
        merged.outputs[0].shape = out.shape
        graph.insert_before(node, [keep_x, not_c, keep_y, merged])
        is_output = out in graph.outputs
        name = out.name
        ir.convenience.replace_all_uses_with(out, merged.outputs[0], replace_graph_outputs=True)
        graph.remove(node, safe=True)
        if is_output:
            merged.outputs[0].name = name
        count += 1
    return count


def _strip_node_metadata(model: Any) -> None:
    """Drop per-node exporter metadata (source stack traces with local paths): reproducible files."""
    for node in model.graph:
        node.metadata_props.clear()


def _postprocess(model: Any) -> None:
    fixed = _rewrite_bool_where(model)
    if fixed:
        log.debug("rewrote %d bool Where node(s) as And/Or/Not", fixed)
    _strip_node_metadata(model)


# ---------------------------------------------------------------------------------- export


def _output_names(module: nn.Module) -> list[str] | None:
    names = getattr(module, "output_names", None)
    return list(names) if names is not None else None


def _dynamo_export(
    module: nn.Module, example: torch.Tensor, opset: int, deform: str, dynamic_batch: bool
) -> Any:
    names = _output_names(module)
    dynamic_shapes = {INPUT_NAME: {0: torch.export.Dim("batch")}} if dynamic_batch else None
    with torch.no_grad(), exportable(deform == "decomposed"), warnings.catch_warnings():
        # torch's own pytree use inside torch.export (not ours); nothing to act on
        warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
        return torch.onnx.export(
            module,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=names,
            dynamic_shapes=dynamic_shapes,
            custom_translation_table=_translation_table(deform),
            optimize=True,
            verbose=False,
        )


def _torchscript_export(
    module: nn.Module, example: torch.Tensor, path: Path, opset: int, dynamic_batch: bool
) -> None:
    names = _output_names(module) or []
    axes = {name: {0: "batch"} for name in [INPUT_NAME, *names]} if dynamic_batch else None
    with torch.no_grad(), exportable(True):
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=names or None,
            dynamic_axes=axes,
        )


def _check_graph(path: Path, opset: int, deform: str, has_deform: bool) -> None:
    import onnx

    onnx.checker.check_model(str(path))  # by path: works with external data too
    model = onnx.load(str(path), load_external_data=False)
    domains = {imp.domain or "ai.onnx": imp.version for imp in model.opset_import}
    if domains.get("ai.onnx") != opset:
        raise ExportError(f"the exported graph has opset {domains.get('ai.onnx')}, asked for {opset}")
    ops = {node.op_type for node in model.graph.node}
    if deform == "onnx" and has_deform and "DeformConv" not in ops:
        raise ExportError("deform='onnx' but the graph has no DeformConv node")
    if deform == "plugin" and has_deform and PLUGIN_OP not in ops:
        raise ExportError(f"deform='plugin' but the graph has no {PLUGIN_DOMAIN}::{PLUGIN_OP} node")
    if deform != "onnx" and "DeformConv" in ops:
        raise ExportError(f"deform={deform!r} but the graph has a DeformConv node")
    if deform != "plugin" and PLUGIN_OP in ops:
        raise ExportError(f"deform={deform!r} but the graph has a {PLUGIN_OP} node")
    if INPUT_NAME not in [i.name for i in model.graph.input]:
        raise ExportError(f"the graph's input is not named {INPUT_NAME!r}")


def export_onnx(
    module: nn.Module,
    example: torch.Tensor,
    path: str | os.PathLike[str],
    opset: int = DEFAULT_OPSET,
    deform: str = "decomposed",
    dynamic_batch: bool = True,
    external_data: bool | None = None,
) -> Path:
    """Export ``module`` (image -> outputs) to ``path``; checked with ``onnx.checker``, written atomically.

    ``example`` is an input batch; with ``dynamic_batch`` the batch axis is symbolic (an example
    of batch 1 is repeated to 2 so the exporter does not specialise the axis to 1). The dynamo
    exporter is used; only if it fails, and only for the decomposed flavour, the TorchScript
    exporter is tried, and the reason is logged. ``external_data``: weights in ``<path>.data``
    next to the graph; ``None`` does so only above protobuf's 2 GB limit (FiLo++ at ViT-L/518 is
    over it).
    """
    deform = normalize_deform(deform)
    if deform in ("onnx", "plugin") and opset < 19:  # the plugin flavour is checked as its DeformConv twin
        raise ValueError(f"deform={deform!r}: ONNX DeformConv needs opset >= 19, got opset={opset}")
    if deform == "decomposed" and opset < 16:
        raise ValueError(f"GridSample needs opset >= 16, got opset={opset}")
    target = Path(path)
    module = module.eval()
    example = example.detach()
    if dynamic_batch and example.shape[0] < 2:
        example = example[:1].repeat(2, 1, 1, 1)

    tmp_dir = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
    tmp_dir.mkdir(parents=True)
    tmp_path = tmp_dir / target.name
    log.info("exporting %s to ONNX (opset %d, deform=%s, dynamic batch=%s)", type(module).__name__, opset, deform,
             dynamic_batch)
    try:
        try:
            program = _dynamo_export(module, example, opset, deform, dynamic_batch)
            _postprocess(program.model)
            program.save(str(tmp_path), external_data=external_data)
        except Exception as err:  # the exporter raises many types; report the reason, then decide
            if deform != "decomposed":
                raise ExportError(
                    f"dynamo export with deform={deform!r} failed ({type(err).__name__}: {err}); the TorchScript "
                    "exporter has no translation of the deformable-conv op, use deform='decomposed'"
                ) from err
            log.warning("dynamo ONNX export failed (%s: %s); falling back to the TorchScript exporter",
                        type(err).__name__, str(err).splitlines()[0] if str(err) else "")
            for leftover in tmp_dir.iterdir():
                leftover.unlink()
            _torchscript_export(module, example, tmp_path, opset, dynamic_batch)
            from onnxscript import ir

            legacy = ir.load(str(tmp_path))
            _postprocess(legacy)
            ir.save(legacy, str(tmp_path))
        has_deform = any(isinstance(m, ModulatedDeformConv2d) for m in module.modules())
        _check_graph(tmp_path, opset, deform, has_deform)
        target.parent.mkdir(parents=True, exist_ok=True)
        extra = sorted(p for p in tmp_dir.iterdir() if p != tmp_path)
        for p in extra:  # external data first: the graph never points at a missing file
            os.replace(p, target.parent / p.name)
        os.replace(tmp_path, target)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return target


def onnx_output_shapes(path: str | os.PathLike[str]) -> dict[str, list[int | None]]:
    """Declared output shapes of a graph, with ``None`` for symbolic axes (the batch)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    out: dict[str, list[int | None]] = {}
    for value in model.graph.output:
        dims = value.type.tensor_type.shape.dim
        out[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return out


# ---------------------------------------------------------------------------------- parity


def _ort_session(onnx_path: str | os.PathLike[str]):  # noqa: ANN202 - onnxruntime type
    """A CPU session on the graph; plugin nodes are swapped back to ``DeformConv`` first (module docstring)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    with ort_runnable(onnx_path) as source:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run_onnx(onnx_path: str | os.PathLike[str], images: np.ndarray, batch_size: int = 4) -> dict[str, np.ndarray]:
    """All outputs of the graph for ``images`` [k, 3, s, s] (run in batches), by output name.

    A plugin-flavour graph runs as its ``DeformConv`` twin (same inputs and attributes).
    """
    session = _ort_session(onnx_path)
    names = [o.name for o in session.get_outputs()]
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for start in range(0, images.shape[0], batch_size):
        values = session.run(names, {INPUT_NAME: np.ascontiguousarray(images[start : start + batch_size])})
        for n, v in zip(names, values, strict=True):
            parts[n].append(v)
    return {n: np.concatenate(v, axis=0) for n, v in parts.items()}



#: ``(module, images, onnx choice, torch choice) -> bool [B]``: the two choices are equally good for that image.
TieCheck = Callable[[nn.Module, torch.Tensor, np.ndarray, np.ndarray], np.ndarray]


def _module_ties(module: nn.Module, images: torch.Tensor, got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """The export module's own tie rule (``module.description_ties(images, got, want)``), else no ties."""
    rule = getattr(module, "description_ties", None)
    if rule is None:
        return np.zeros(got.shape, dtype=bool)
    return np.asarray(rule(images, got, want), dtype=bool)


def check_against_torch(
    module: nn.Module,
    onnx_path: str | os.PathLike[str],
    images: torch.Tensor,
    tolerances: dict[str, float] | None = None,
    batch_size: int = 4,
    *,
    description_ties: TieCheck | None = None,
) -> dict[str, Any]:
    """Run the graph in onnxruntime (CPU) and ``module`` in PyTorch on ``images``; compare every output.

    Returns ``max_abs_diff_<output>`` per float output, ``best_description_mismatches`` (ties
    excluded), ``best_description_ties`` and ``images``. Raises :class:`ExportParityError` naming the
    first output beyond its tolerance (:data:`TOLERANCES`). ``description_ties(module, images, got, want)``
    says per image whether two different ``best_description`` choices are a tie (default: the module's own
    ``description_ties(images, got, want)``, e.g. FiLo++'s abnormal prompts against the adapted global feature;
    a module without one has no ties).
    """
    tol = dict(TOLERANCES if tolerances is None else tolerances)
    module = module.eval()
    onnx_out = run_onnx(onnx_path, images.detach().cpu().numpy().astype(np.float32), batch_size)
    names = _output_names(module) or list(onnx_out)
    torch_parts: list[tuple[torch.Tensor, ...]] = []
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            result = module(images[start : start + batch_size])
            torch_parts.append((result,) if isinstance(result, torch.Tensor) else tuple(result))
    torch_out = {n: torch.cat([p[i] for p in torch_parts]).cpu().numpy() for i, n in enumerate(names)}
    if set(torch_out) != set(onnx_out):
        raise ExportParityError("<names>", float("inf"), 0.0, {"torch": sorted(torch_out), "onnx": sorted(onnx_out)})

    report: dict[str, Any] = {}
    failures: list[tuple[str, float, float]] = []
    for name in names:
        got, want = onnx_out[name], torch_out[name]
        if got.shape != want.shape:
            raise ExportParityError(name, float("inf"), 0.0, {"shape_onnx": got.shape, "shape_torch": want.shape})
        if name == "best_description":
            differ = got != want
            is_tie = description_ties or _module_ties
            ties = is_tie(module, images, got, want) & differ if differ.any() else np.zeros_like(differ)
            mismatches = int((differ & ~ties).sum())
            report["best_description_mismatches"] = mismatches
            report["best_description_ties"] = int(ties.sum())
            if mismatches:
                failures.append((name, float(mismatches), 0.0))
            continue
        diff = float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max()) if got.size else 0.0
        report[f"max_abs_diff_{name}"] = diff
        limit = parity_tolerance(name, tol, TOLERANCES["default"])
        if not diff <= limit:  # also catches NaN
            failures.append((name, diff, limit))
    report["images"] = int(images.shape[0])
    report["tolerances"] = tol
    if failures:
        name, diff, limit = failures[0]
        raise ExportParityError(name, diff, limit, report)
    return report
