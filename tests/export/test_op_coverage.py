"""TensorRT ONNX coverage: the support table as data, findings on hand-made graphs, and our real exports.

The hand-made graphs each hold one thing TensorRT 10's ONNX parser refuses (an op without an importer, an op
on a type it is not imported for, an attribute or input it restricts); the check must name the node. The
exports of the tiny model (every deform flavour, fp32 and Q/DQ) must pass with no finding at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fgad.export.op_coverage import (
    CoverageReport,
    check_tensorrt_coverage,
    load_support_matrix,
    parse_version,
)

F, I64 = TensorProto.FLOAT, TensorProto.INT64


def _save(tmp_path: Path, nodes: list[Any], inputs: list[Any], outputs: list[Any], inits: list[Any] | None = None,
          opset: int = 19, name: str = "g.onnx", extra_opsets: dict[str, int] | None = None) -> Path:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits or [])
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in (extra_opsets or {}).items()]
    model = helper.make_model(graph, opset_imports=opsets)
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def _vi(name: str, elem: int, shape: list[Any]) -> Any:
    return helper.make_tensor_value_info(name, elem, shape)


def _only_error(report: CoverageReport) -> Any:
    assert len(report.errors) == 1, report.summary()
    return report.errors[0]


# ---------------------------------------------------------------------------------- the table


def test_table_is_data_with_its_source_and_real_op_names() -> None:
    matrix = load_support_matrix()
    assert matrix.source["repository"] == "onnx/onnx-tensorrt" and matrix.source["file"] == "docs/operators.md"
    assert parse_version(matrix.source["table_version"]) >= (10, 0)
    not_onnx = [n for n in [*matrix.ops, *matrix.unsupported] if not onnx.defs.has(n)]
    # a few table rows are ops of newer ONNX releases than the installed onnx, or contrib ops TensorRT also parses
    assert set(not_onnx) <= {"ImageScaler", "ParametricSoftplus", "ScaledTanh", "Scatter", "Upsample", "Crop",
                             "TensorScatter", "RotaryEmbedding", "RMSNormalization", "Attention"}, not_onnx
    assert not set(matrix.ops) & matrix.unsupported
    assert matrix.ops["DeformConv"].since == "10.1" and matrix.ops["GridSample"].types == ("FP32", "FP16")
    assert matrix.opset_range("10.3") == (9, 20) and matrix.opset_range("10.15.1") == (9, 24)
    assert parse_version("10.13.0.35") > parse_version("10.3")  # tuples, not strings: "10.13" < "10.3" as text


# ---------------------------------------------------------------------------------- findings


def test_an_op_without_importer_is_flagged_by_node(tmp_path: Path) -> None:
    path = _save(tmp_path, [helper.make_node("Unique", ["x"], ["y"], name="dedup")],
                 [_vi("x", F, [4])], [_vi("y", F, [None])])
    issue = _only_error(check_tensorrt_coverage(path))
    assert issue.kind == "unsupported-op" and issue.node == "dedup" and "Unique" in issue.message
    assert "'dedup'" in str(issue)


def test_an_unsupported_type_is_flagged_with_the_inferred_type(tmp_path: Path) -> None:
    # no value_info: the MatMul input type comes from the graph input, its consumer's from shape inference
    nodes = [helper.make_node("MatMul", ["x", "x"], ["y"], name="int_matmul"),
             helper.make_node("Relu", ["y"], ["z"], name="relu_of_int")]
    path = _save(tmp_path, nodes, [_vi("x", I64, [2, 2])], [_vi("z", I64, [2, 2])])
    report = check_tensorrt_coverage(path)
    assert [(i.node, i.kind, i.dtype) for i in report.errors] == [("int_matmul", "unsupported-type", "INT64")]
    assert report.types["Relu"]["INT64"] == 1  # Relu is imported for INT64: typed, not flagged


def test_int8_outside_qdq_and_double_cast_down(tmp_path: Path) -> None:
    nodes = [helper.make_node("Add", ["q", "q"], ["s"], name="int8_add"),
             helper.make_node("Cast", ["x"], ["d"], to=TensorProto.DOUBLE, name="to_double")]
    path = _save(tmp_path, nodes, [_vi("q", TensorProto.INT8, [3]), _vi("x", F, [3])],
                 [_vi("s", TensorProto.INT8, [3]), _vi("d", TensorProto.DOUBLE, [3])])
    report = check_tensorrt_coverage(path)
    issue = _only_error(report)
    assert issue.node == "int8_add" and "QuantizeLinear" in issue.message
    assert [(w.node, w.kind) for w in report.warnings] == [("to_double", "cast-down")]


def test_custom_domain_nodes_need_a_known_plugin(tmp_path: Path) -> None:
    node = helper.make_node("FgadDeformConv2d", ["x", "w", "o", "b", "m"], ["y"], domain="fgad", name="dcn")
    other = helper.make_node("FusedGelu", ["y"], ["z"], domain="com.microsoft", name="contrib")
    inputs = [_vi(n, F, None) for n in ("x", "w", "o", "b", "m")]
    path = _save(tmp_path, [node, other], inputs, [_vi("z", F, None)],
                 extra_opsets={"fgad": 1, "com.microsoft": 1})
    report = check_tensorrt_coverage(path)
    assert [(i.node, i.kind) for i in report.errors] == [("contrib", "unsupported-op")]
    assert report.plugins_used == {"fgad::FgadDeformConv2d": 1}
    assert {i.node for i in check_tensorrt_coverage(path, plugins=()).errors} == {"dcn", "contrib"}


RESTRICTED = {
    "resize_cubic": (helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="cubic", name="resize_cubic"),
                     [_vi("x", F, [1, 1, 4, 4])], [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32),
                                                                            "scales")], "mode 'cubic'"),
    "deform_pads": (helper.make_node("DeformConv", ["x", "w", "off"], ["y"], pads=[0, 1, 0, 2], name="deform_pads"),
                    [_vi("x", F, [1, 2, 5, 5]), _vi("off", F, [1, 6, 5, 4])],
                    [numpy_helper.from_array(np.ones((2, 2, 1, 3), np.float32), "w")], "begin and end padding"),
    "grid_5d": (helper.make_node("GridSample", ["x", "grid"], ["y"], name="grid_5d"),
                [_vi("x", F, [1, 1, 2, 2, 2]), _vi("grid", F, [1, 2, 2, 2, 3])], [], "rank 5"),
    "qdq_zero_point": (helper.make_node("QuantizeLinear", ["x", "scale", "zp"], ["y"], name="qdq_zero_point"),
                       [_vi("x", F, [4])], [numpy_helper.from_array(np.array(0.1, np.float32), "scale"),
                                            numpy_helper.from_array(np.array(3, np.int8), "zp")], "not zero"),
    "per_channel_activation": (
        helper.make_node("QuantizeLinear", ["x", "scale"], ["y"], axis=1, name="per_channel_activation"),
        [_vi("x", F, [1, 2])], [numpy_helper.from_array(np.array([0.1, 0.2], np.float32), "scale")],
        "per-channel scale"),
    "runtime_axes": (helper.make_node("ReduceSum", ["x", "axes"], ["y"], name="runtime_axes"),
                     [_vi("x", F, [2, 3]), _vi("axes", I64, [1])], [], "computed at run time"),
}


@pytest.mark.parametrize("case", list(RESTRICTED))
def test_restrictions_are_flagged_by_node(tmp_path: Path, case: str) -> None:
    node, inputs, inits, words = RESTRICTED[case]
    path = _save(tmp_path, [node], inputs, [_vi("y", F, None)], inits)
    issue = _only_error(check_tensorrt_coverage(path))
    assert issue.kind == "restriction" and issue.node == case and words in issue.message, str(issue)


def test_version_gates_deformconv_and_the_opset(tmp_path: Path) -> None:
    node, inputs, inits, _ = RESTRICTED["deform_pads"]
    ok = helper.make_node("DeformConv", ["x", "w", "off"], ["y"], pads=[0, 1, 0, 1], name="dcn")
    path = _save(tmp_path, [ok], inputs, [_vi("y", F, None)], inits)
    assert check_tensorrt_coverage(path, tensorrt_version="10.3").ok
    issue = _only_error(check_tensorrt_coverage(path, tensorrt_version="10.0.1"))
    assert issue.node == "dcn" and "10.1" in issue.message
    high = _save(tmp_path, [helper.make_node("Relu", ["x"], ["y"])], [_vi("x", F, [2])], [_vi("y", F, [2])],
                 opset=21, name="opset21.onnx")
    assert _only_error(check_tensorrt_coverage(high, tensorrt_version="10.3")).kind == "opset"
    assert check_tensorrt_coverage(high, tensorrt_version="10.15").ok


def test_subgraphs_are_walked(tmp_path: Path) -> None:
    then = helper.make_graph([helper.make_node("Unique", ["x"], ["t"], name="inner_unique")], "then", [],
                             [_vi("t", F, None)])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["e"], name="inner_id")], "else", [],
                              [_vi("e", F, None)])
    node = helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other, name="branch")
    path = _save(tmp_path, [node], [_vi("c", TensorProto.BOOL, []), _vi("x", F, [3])], [_vi("y", F, None)])
    report = check_tensorrt_coverage(path)
    issue = _only_error(report)
    assert issue.node == "inner_unique" and "branch.then_branch" in issue.graph
    assert report.nodes == 3 and "then_branch" in report.summary()


# ---------------------------------------------------------------------------------- our exports


@pytest.fixture(scope="module")
def mini_exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The mini tiny-test model (every op type of the full graph) in each flavour and text mode, and its Q/DQ
    graph."""
    import fgad.backbone.compat  # noqa: F401 - open_clip needs the torchvision shim
    from fgad.export.deform_flavours import deformconv_to_plugin
    from fgad.export.onnx_export import export_onnx
    from fgad.methods.filo.export_module import FiloExportModule
    from fgad.methods.filo.frozen_text import freeze_text, freeze_text_bank
    from tests.helpers.tiny import CLASS_NAME, make_config, make_images, make_model

    model = make_model(make_config())
    module = FiloExportModule(model, freeze_text(model, CLASS_NAME, None)).eval()
    folder = tmp_path_factory.mktemp("coverage")
    images = make_images(2)
    paths = {flavour: export_onnx(module, images, folder / f"{flavour}.onnx", deform=flavour)
             for flavour in ("decomposed", "native")}
    bank = FiloExportModule(model, freeze_text_bank(model, CLASS_NAME, None)).eval()  # per-image masks: bool ops
    paths["bank"] = export_onnx(bank, images, folder / "bank.onnx", deform="native")
    plugin = onnx.load(str(paths["native"]))
    assert deformconv_to_plugin(plugin) > 0
    onnx.save(plugin, str(folder / "plugin.onnx"))
    paths["plugin"] = folder / "plugin.onnx"
    try:
        from fgad.calibration.qdq import quantize_qdq
    except ImportError:
        return paths
    calibration = np.random.default_rng(0).standard_normal((4, 3, 112, 112)).astype(np.float32)
    quantize_qdq(paths["native"], folder / "qdq.onnx", calibration, method="minmax")
    paths["qdq"] = folder / "qdq.onnx"
    return paths


# Not `slow` on purpose: this is the CI check that every exported flavour stays inside TensorRT's ONNX support
# (~25 s, one mini export per flavour).
@pytest.mark.parametrize(("flavour", "marker_op"), [
    ("decomposed", "GridSample"), ("native", "DeformConv"), ("plugin", "fgad::FgadDeformConv2d"),
    ("qdq", "QuantizeLinear"), ("bank", "And"),
])
def test_every_export_flavour_is_fully_covered(mini_exports: dict[str, Path], flavour: str, marker_op: str) -> None:
    if flavour not in mini_exports:
        pytest.skip("fgad.calibration (quantize_qdq) is not importable in this checkout, so there is no Q/DQ graph")
    report = check_tensorrt_coverage(mini_exports[flavour])
    assert report.ok and not report.warnings, report.summary(limit=50)
    assert report.op_counts[marker_op] > 0, sorted(report.op_counts)
    assert report.nodes > 200 and report.opset == 19
    assert sum(sum(c.values()) for c in report.types.values()) > 200  # types were known and checked, node by node
