"""export_onnx / check_against_torch on a single deformable-convolution layer (seconds to export).

The layer has random offsets and modulation, a 1x5 kernel (asymmetric padding) and, for DCNv1, no
mask, so the ``DeformConv`` translation's argument mapping is checked against PyTorch in
onnxruntime for both flavours.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from fgad.backbone.deform import ModulatedDeformConv2d
from fgad.export.onnx_export import (
    ExportParityError,
    check_against_torch,
    export_onnx,
    onnx_output_shapes,
    run_onnx,
)


class DeformLayer(nn.Module):
    output_names = ["out"]

    def __init__(self, kernel: tuple[int, int], modulation: bool) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.conv = ModulatedDeformConv2d(8, 6, kernel, modulation=modulation)
        with torch.no_grad():
            self.conv.offset_conv.weight.copy_(torch.randn(self.conv.offset_conv.weight.shape, generator=gen) * 0.1)
            self.conv.offset_conv.bias.copy_(torch.randn(self.conv.offset_conv.bias.shape, generator=gen))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.conv(image)


def _ops(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


@pytest.mark.parametrize(("deform", "kernel", "modulation"), [
    ("onnx", (1, 5), True),
    ("onnx", (3, 3), False),
    ("decomposed", (1, 5), True),
])
def test_deform_flavours_match_torch_in_onnxruntime(
    tmp_path: Path, deform: str, kernel: tuple[int, int], modulation: bool
) -> None:
    layer = DeformLayer(kernel, modulation).eval()
    x = torch.randn(3, 8, 9, 7, generator=torch.Generator().manual_seed(1))
    path = export_onnx(layer, x[:2], tmp_path / "layer.onnx", deform=deform)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["layer.onnx"]  # no temporary files left
    ops = _ops(path)
    if deform == "onnx":
        assert "DeformConv" in ops and "GridSample" not in ops
    else:
        assert "GridSample" in ops and "DeformConv" not in ops
    model = onnx.load(str(path))
    assert {i.domain or "ai.onnx": i.version for i in model.opset_import}["ai.onnx"] == 19
    assert onnx_output_shapes(path) == {"out": [None, 6, 9, 7]}
    report = check_against_torch(layer, path, x)  # batch 3: the batch axis is dynamic
    assert report["max_abs_diff_out"] < 1e-5 and report["images"] == 3
    single = run_onnx(path, x[:1].numpy())["out"]
    with torch.no_grad():
        np.testing.assert_allclose(single, layer(x[:1]).numpy(), atol=1e-5, rtol=0)


def test_parity_error_names_the_output_and_the_difference(tmp_path: Path) -> None:
    layer = DeformLayer((3, 3), True).eval()
    x = torch.randn(2, 8, 6, 6, generator=torch.Generator().manual_seed(2))
    path = export_onnx(layer, x, tmp_path / "layer.onnx", deform="onnx", dynamic_batch=False)
    with torch.no_grad():
        layer.conv.weight.add_(0.01)  # the graph no longer matches the module
    with pytest.raises(ExportParityError, match=r"output 'out'.*> tolerance 0.0001") as info:
        check_against_torch(layer, path, x)
    assert info.value.output == "out" and info.value.diff > 1e-3


def test_export_rejects_unknown_flavour_and_low_opset(tmp_path: Path) -> None:
    layer = DeformLayer((3, 3), True)
    with pytest.raises(ValueError, match="deform='grid'"):
        export_onnx(layer, torch.zeros(2, 8, 5, 5), tmp_path / "x.onnx", deform="grid")
    with pytest.raises(ValueError, match="DeformConv needs opset >= 19"):
        export_onnx(layer, torch.zeros(2, 8, 5, 5), tmp_path / "x.onnx", deform="onnx", opset=18)
    assert not list(tmp_path.iterdir())


def test_external_data_moves_with_the_graph(tmp_path: Path) -> None:
    """Above 2 GB (FiLo++ at ViT-L/518) the weights live in ``<graph>.data``; both land atomically."""
    layer = DeformLayer((3, 3), True).eval()
    x = torch.randn(2, 8, 6, 6, generator=torch.Generator().manual_seed(3))
    path = export_onnx(layer, x, tmp_path / "model.onnx", deform="onnx", external_data=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data"]
    graph = onnx.load(str(path), load_external_data=False)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.graph.initializer)
    assert check_against_torch(layer, path, x)["max_abs_diff_out"] < 1e-5
