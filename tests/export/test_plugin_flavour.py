"""The plugin flavour: the exported node follows the cpp_ext contract, and its DeformConv twin matches PyTorch.

onnxruntime cannot run ``fgad::FgadDeformConv2d``; these tests run the graph with the plugin nodes swapped back
to ONNX ``DeformConv`` (same inputs, same attributes). That checks the wiring the exporter is responsible for
(argument order, attributes, the zero bias and ones mask it fills in); the plugin's arithmetic is tested in
cpp_ext against the same PyTorch op.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper
from torch import nn

from fgad.backbone.deform import ModulatedDeformConv2d
from fgad.export.deform_flavours import (
    PLUGIN_DOMAIN,
    PLUGIN_OP,
    count_deform_nodes,
    deformconv_to_plugin,
    normalize_deform,
    plugin_to_deformconv,
)
from fgad.export.onnx_export import check_against_torch, export_onnx, run_onnx

KERNEL = (1, 5)  # asymmetric: pads (0, 2) must become [top, left, bottom, right] = [0, 2, 0, 2]


class DeformLayer(nn.Module):
    output_names = ["out"]

    def __init__(self, modulation: bool, bias: bool, offset_groups: int = 1) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.conv = ModulatedDeformConv2d(8, 6, KERNEL, modulation=modulation, bias=bias, offset_groups=offset_groups)
        with torch.no_grad():
            self.conv.offset_conv.weight.copy_(torch.randn(self.conv.offset_conv.weight.shape, generator=gen) * 0.1)
            self.conv.offset_conv.bias.copy_(torch.randn(self.conv.offset_conv.bias.shape, generator=gen))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.conv(image)


CASES = {"dcnv2_bias": (True, True, 1), "dcnv1_no_bias_2_offset_groups": (False, False, 2)}


@pytest.fixture(scope="module", params=list(CASES))
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    modulation, bias, groups = CASES[request.param]
    layer = DeformLayer(modulation, bias, groups).eval()
    x = torch.randn(3, 8, 9, 7, generator=torch.Generator().manual_seed(1))
    folder = tmp_path_factory.mktemp(request.param)
    path = export_onnx(layer, x[:2], folder / "plugin.onnx", deform="plugin")
    return {"layer": layer, "x": x, "path": path, "modulation": modulation, "bias": bias, "groups": groups}


def _plugin_node(model: onnx.ModelProto) -> onnx.NodeProto:
    nodes = [n for n in model.graph.node if n.op_type == PLUGIN_OP]
    assert len(nodes) == 1, [n.op_type for n in model.graph.node]
    return nodes[0]


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    out = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in out.items()}


def test_plugin_node_follows_the_contract(exported: dict[str, Any]) -> None:
    model = onnx.load(str(exported["path"]))
    node = _plugin_node(model)
    conv: ModulatedDeformConv2d = exported["layer"].conv
    assert node.domain == PLUGIN_DOMAIN == "fgad"
    assert {i.domain: i.version for i in model.opset_import}.get("fgad") == 1
    assert "DeformConv" not in {n.op_type for n in model.graph.node}
    assert len(node.input) == 5 and all(node.input), list(node.input)  # X, W, offset, B, mask: all present
    assert node.input[0] == "image"
    attrs = _attrs(node)
    kh, kw = KERNEL
    pad_h, pad_w = conv.padding
    assert attrs == {
        "strides": list(conv.stride), "pads": [pad_h, pad_w, pad_h, pad_w], "dilations": list(conv.dilation),
        "group": conv.groups, "offset_group": exported["groups"], "kernel_shape": [kh, kw],
        "plugin_namespace": "fgad", "plugin_version": "1",
    }
    assert attrs["pads"] == [0, 2, 0, 2]
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    np.testing.assert_array_equal(inits[node.input[1]], conv.weight.detach().numpy())
    want_bias = conv.bias.detach().numpy() if exported["bias"] else np.zeros(conv.out_channels, np.float32)
    np.testing.assert_array_equal(inits[node.input[3]], want_bias)
    onnx.checker.check_model(model, full_check=True)  # the registered schema checks inputs and attribute types


def _values_of(path: Path, names: list[str], x: np.ndarray) -> dict[str, np.ndarray]:
    """Intermediate tensors of the graph (made graph outputs in a DeformConv-twin copy), run in onnxruntime."""
    import onnxruntime as ort

    model = onnx.load(str(path))
    plugin_to_deformconv(model)
    model.graph.output.extend([helper.make_empty_tensor_value_info(n) for n in names])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(names, session.run(names, {"image": x}), strict=True))


def test_filled_in_mask_is_ones_of_the_tap_shape(exported: dict[str, Any]) -> None:
    node = _plugin_node(onnx.load(str(exported["path"])))
    x = exported["x"].numpy()
    mask = _values_of(exported["path"], [node.input[4]], x)[node.input[4]]
    taps = exported["groups"] * KERNEL[0] * KERNEL[1]
    assert mask.shape == (3, taps, 9, 7)  # batch 3 although exported with 2: the shape follows the input
    if exported["modulation"]:
        assert 0.0 < mask.min() and mask.max() < 2.0 and not np.allclose(mask, 1.0)  # 2 * sigmoid(logits)
    else:
        np.testing.assert_array_equal(mask, np.ones_like(mask))


def test_deformconv_twin_matches_torch(exported: dict[str, Any]) -> None:
    report = check_against_torch(exported["layer"], exported["path"], exported["x"])
    assert report["max_abs_diff_out"] < 1e-5 and report["images"] == 3
    with torch.no_grad():
        want = exported["layer"](exported["x"][:1]).numpy()
    np.testing.assert_allclose(run_onnx(exported["path"], exported["x"][:1].numpy())["out"], want, atol=1e-5, rtol=0)


def test_rewriting_a_native_export_gives_the_same_plugin_node(exported: dict[str, Any], tmp_path: Path) -> None:
    native = export_onnx(exported["layer"], exported["x"][:2], tmp_path / "native.onnx", deform="native")
    model = onnx.load(str(native))
    assert count_deform_nodes(model) == {"DeformConv": 1, PLUGIN_OP: 0}
    assert deformconv_to_plugin(model) == 1
    onnx.checker.check_model(model, full_check=True)
    rewritten, direct = _plugin_node(model), _plugin_node(onnx.load(str(exported["path"])))
    assert _attrs(rewritten) == _attrs(direct)
    onnx.save(model, str(tmp_path / "rewritten.onnx"))
    report = check_against_torch(exported["layer"], tmp_path / "rewritten.onnx", exported["x"])
    assert report["max_abs_diff_out"] < 1e-5
    # and back: the twin is a plain DeformConv graph again, with no trace of the plugin domain
    assert plugin_to_deformconv(model) == 1
    assert count_deform_nodes(model) == {"DeformConv": 1, PLUGIN_OP: 0}
    assert all(i.domain != PLUGIN_DOMAIN for i in model.opset_import)


def test_plugin_graph_with_external_data_runs_and_leaves_no_files(tmp_path: Path) -> None:
    layer = DeformLayer(True, True).eval()
    x = torch.randn(2, 8, 6, 6, generator=torch.Generator().manual_seed(3))
    path = export_onnx(layer, x, tmp_path / "model.onnx", deform="plugin", external_data=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data"]
    assert check_against_torch(layer, path, x)["max_abs_diff_out"] < 1e-5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data"]  # twin removed


def test_flavour_names_and_the_bundle_refusal(tmp_path: Path) -> None:
    assert [normalize_deform(n) for n in ("decomposed", "native", "onnx", "plugin")] == [
        "decomposed", "onnx", "onnx", "plugin"]
    with pytest.raises(ValueError, match="deform='grid'.*native"):
        normalize_deform("grid")
    from fgad.export.bundle import export_bundle

    with pytest.raises(ValueError, match="must run in onnxruntime.*deform='plugin'"):
        export_bundle(tmp_path / "b", None, None, "tile", None, deform="plugin")  # type: ignore[arg-type]
    assert not (tmp_path / "b").exists()
