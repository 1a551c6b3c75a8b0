"""Slow: the full tiny-test graph (4 linear stages, 3 x 6 MDCI kernels) in every flavour, and the
CLI at another input size. About a minute per export on 2 CPU cores."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx
import pytest
from click.testing import CliRunner

from fgad.backbone.checkpoint import save_checkpoint
from fgad.cli.export import main as export_main
from fgad.export.bundle import export_bundle, list_reference_images, load_reference_images
from fgad.export.onnx_export import TOLERANCES, check_against_torch
from fgad.methods.filo.export_module import FiloExportModule
from fgad.methods.filo.frozen_text import freeze_text, freeze_text_bank
from fgad.methods.filo.model import FiLoPlusPlus
from tests.helpers.tiny import CLASS_NAME, make_config, make_images, make_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def full_model() -> FiLoPlusPlus:
    return make_model(make_config(mini=False))


@pytest.mark.parametrize(("text_mode", "deform"), [
    ("frozen", "decomposed"), ("frozen", "onnx"), ("bank", "decomposed"), ("bank", "onnx"),
])
def test_full_tiny_graph_in_every_flavour(
    full_model: FiLoPlusPlus, refs_dir: Path, tmp_path: Path, text_mode: str, deform: str
) -> None:
    external = text_mode == "bank" and deform == "onnx"  # the > 2 GB layout, on a small graph
    out = export_bundle(tmp_path / "bundle", full_model, full_model.cfg, CLASS_NAME,
                       list_reference_images(refs_dir), text_mode=text_mode, deform=deform, external_data=external)
    manifest: dict[str, Any] = json.loads((out / "manifest.json").read_text())
    files = ["manifest.digest", "manifest.json", "model.onnx", *(["model.onnx.data"] if external else []),
             "references.npz"]
    assert sorted(p.name for p in out.iterdir()) == files
    assert sorted(manifest["sha256"]) == [f for f in files if not f.startswith("manifest.")]
    assert manifest["engine"]["external_data"] == (["model.onnx.data"] if external else None)
    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert ("DeformConv" in ops) == (deform == "onnx") and ("GridSample" in ops) == (deform == "decomposed")
    assert list(manifest["outputs"]) == ["vl_map", "global_prob", "best_description",
                                         "tokens_1", "tokens_2", "tokens_3", "tokens_4"]
    parity = manifest["parity"]
    assert parity["max_abs_diff_vl_map"] <= TOLERANCES["vl_map"]
    assert parity["max_abs_diff_global_prob"] <= TOLERANCES["global_prob"]
    assert parity["best_description_mismatches"] == 0
    approx = manifest["text"]["approximation"]
    assert approx["max_abs_diff_anomaly_map"] > 0  # CoCoOp: frozen conditioning is an approximation
    print(f"\n{text_mode}/{deform}: parity {json.dumps({k: v for k, v in parity.items() if k != 'tolerances'})}"
          f"\n  approximation {json.dumps(approx)}")
    # a batch that is neither 1 nor the example's 2
    freeze = freeze_text if text_mode == "frozen" else freeze_text_bank
    refs = load_reference_images(list_reference_images(refs_dir), full_model.cfg)
    module = FiloExportModule(full_model, freeze(full_model, CLASS_NAME, refs))
    report = check_against_torch(module, out / "model.onnx", make_images(3, seed=99), batch_size=3)
    assert report["best_description_mismatches"] == 0


def test_cli_exports_at_another_image_size(refs_dir: Path, tmp_path: Path) -> None:
    config = make_config()
    ckpt = save_checkpoint(tmp_path / "ckpt", make_model(config), config, pretrained=None)
    out = tmp_path / "bundle96"
    result = CliRunner().invoke(export_main, ["--checkpoint", str(ckpt), "--class-name", CLASS_NAME, "--refs",
                                              str(refs_dir), "--image-size", "96", "--text", "bank",
                                              "--deform", "onnx", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "image size 112 -> 96" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["input"]["size"] == 96 and manifest["grid"] == 6
    assert manifest["outputs"]["vl_map"] == [None, 96, 96] and manifest["outputs"]["tokens_2"] == [None, 36, 64]
    assert manifest["model"]["image_size_override"]["trained"] == 112
    assert manifest["text"]["mode"] == "bank" and manifest["deform"] == "onnx"
