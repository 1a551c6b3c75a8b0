"""Bundles end to end: fgad-export on a checkpoint with synthetic references, export_bundle in the other
flavours, the manifest and references against docs/bundle.md, and refusal when parity fails."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner, Result

import fgad
import fgad.export.bundle as bundle_mod
from fgad.backbone.checkpoint import WEIGHTS_FILE, save_checkpoint
from fgad.bundle import INTEGRITY_FILES
from fgad.cli.export import main as export_main
from fgad.export.bundle import (
    export_bundle,
    list_reference_images,
    load_reference_images,
    sha256_file,
)
from fgad.export.onnx_export import TOLERANCES, ExportParityError, check_against_torch, run_onnx
from fgad.methods.filo.checkpoint import load_checkpoint
from fgad.methods.filo.export import frozen_text_error
from fgad.methods.filo.export_module import FiloExportModule
from fgad.methods.filo.frozen_text import freeze_text, freeze_text_bank
from fgad.methods.filo.model import FiLoPlusPlus
from tests.helpers.tiny import CLASS_NAME, make_config, make_images


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, cocoop_model: FiLoPlusPlus) -> Path:
    """An untrained CoCoOp model (random offsets in MDCI) saved as an fgad-train checkpoint."""
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "ckpt", cocoop_model, make_config(), pretrained=None)


@pytest.fixture(scope="module")
def cli_bundle(
    checkpoint: Path, refs_dir: Path, data_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Result]:
    out = tmp_path_factory.mktemp("cli") / "bundle"
    test_dir = data_root / CLASS_NAME / "test"
    sign = []
    if importlib.util.find_spec("cryptography") is not None:  # the sign extra: --sign KEY (test_cli_signs_...)
        from fgad.bundle.signing import generate_key_pair

        key, _ = generate_key_pair(tmp_path_factory.mktemp("key") / "key.pem")
        sign = ["--sign", str(key)]
    result = CliRunner().invoke(export_main, ["--checkpoint", str(checkpoint), "--class-name", CLASS_NAME,
                                              "--refs", str(refs_dir), "--measure-on", str(test_dir),
                                              "--out", str(out), *sign])
    return out, result


@pytest.fixture(scope="module")
def reference(checkpoint: Path, refs_dir: Path) -> dict[str, Any]:
    """The PyTorch side, rebuilt from the checkpoint: model, wrapper with the same frozen text, references."""
    model, _, _ = load_checkpoint(checkpoint)
    paths = list_reference_images(refs_dir)
    refs = load_reference_images(paths, model.cfg)
    module = FiloExportModule(model, freeze_text(model, CLASS_NAME, refs)).eval()
    return {"model": model, "module": module, "refs": refs, "paths": paths}


@pytest.fixture(scope="module")
def manifest(cli_bundle: tuple[Path, Result]) -> dict[str, Any]:
    out, result = cli_bundle
    assert result.exit_code == 0, result.output
    return json.loads((out / "manifest.json").read_text())


def test_cli_writes_the_bundle_and_prints_parity(cli_bundle: tuple[Path, Result]) -> None:
    out, result = cli_bundle
    assert result.exit_code == 0, result.output
    signed = ["manifest.sig"] if (out / "manifest.sig").exists() else []
    assert sorted(p.name for p in out.iterdir()) == ["manifest.digest", "manifest.json", *signed, "model.onnx",
                                                     "references.npz"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["bundle"]  # no temporary folders left
    assert "parity onnxruntime vs torch on 4 reference images" in result.output
    for name in ("vl_map", "global_prob", "tokens_2", "tokens_4"):
        assert f"  {name}: max |diff| " in result.output
    assert "best_description: 0 mismatches" in result.output
    assert "frozen text (frozen, cocoop) vs the exact model" in result.output


def test_cli_signs_the_bundle(cli_bundle: tuple[Path, Result]) -> None:
    pytest.importorskip("cryptography", reason="signatures need the sign extra (cryptography)")
    from fgad.bundle import load_manifest
    from fgad.bundle.signing import TrustedKey, load_trusted_key
    from fgad.runtime.backends import check_manifest

    out, result = cli_bundle
    assert result.exit_code == 0, result.output
    record = json.loads((out / "manifest.sig").read_text())
    key_file = next((out.parent.parent).glob("key*/key.pem.pub"))
    trusted: TrustedKey = load_trusted_key(key_file)
    assert record["key_id"] == trusted.key_id
    check_manifest(load_manifest(out), out, trust=[trusted], strict=True)


def test_manifest_follows_the_contract(
    manifest: dict[str, Any], checkpoint: Path, reference: dict[str, Any], data_root: Path
) -> None:
    model: FiLoPlusPlus = reference["model"]
    assert manifest["format_version"] == 1 and manifest["fgad_version"] == fgad.__version__
    assert manifest["created"].endswith("Z") and manifest["class_name"] == CLASS_NAME
    assert manifest["engine"] == {"kind": "onnx", "file": "model.onnx", "opset": 19, "precision": "fp32",
                                  "tensorrt_version": None, "compute_capability": None, "external_data": None}
    assert manifest["input"] == {"name": "image", "size": 112, "layout": "NCHW", "color": "RGB",
                                 "resize": "bicubic", "mean": list(model.cfg.backbone.mean),
                                 "std": list(model.cfg.backbone.std)}
    assert manifest["outputs"] == {"vl_map": [None, 112, 112], "global_prob": [None], "best_description": [None],
                                   "tokens_2": [None, 49, 64], "tokens_4": [None, 49, 64]}
    assert manifest["grid"] == 7 and manifest["deform"] == "decomposed"
    assert manifest["fewshot"] == {"layers": [2, 4], "file": "references.npz", "num_references": 4}
    assert manifest["post"] == {"sigma": 4.0, "truncate": 4.0}
    assert manifest["thresholds"] == {"image": None, "rule": None}
    text = manifest["text"]
    assert text["mode"] == "frozen" and text["conditioning"] == "cocoop" and text["filtering"] == "reference-set"
    assert text["descriptions"] == model.prompts.prepare(CLASS_NAME).abnormal_descriptions()
    assert text["num_abnormal"] == len(text["descriptions"]) == 180 and text["num_normal"] == 14
    approx = text["approximation"]  # CoCoOp frozen on the reference set: a real, recorded difference
    measured = len(list((data_root / CLASS_NAME / "test").glob("*/*.png")))  # --measure-on: good and defects
    assert approx["images"] == measured > 4 and approx["inputs"] == f"{measured} given images"
    assert 0 < approx["max_abs_diff_anomaly_map"] < 1 and 0 < approx["max_abs_diff_image_score"] < 1
    m = manifest["model"]
    assert m["config"] == "tiny-test" and m["backbone"] == "fgad-tiny" and m["pretrained"] is None
    assert m["checkpoint_sha256"] == sha256_file(checkpoint / WEIGHTS_FILE)
    assert m["backbone_fingerprint"] == json.loads((checkpoint / "config.json").read_text())["backbone_fingerprint"]
    parity = manifest["parity"]
    assert parity["images"] == 4 and parity["best_description_mismatches"] == 0
    assert parity["max_abs_diff_vl_map"] <= TOLERANCES["vl_map"]
    assert parity["max_abs_diff_global_prob"] <= TOLERANCES["global_prob"]
    assert max(parity["max_abs_diff_tokens_2"], parity["max_abs_diff_tokens_4"]) <= TOLERANCES["tokens"]


def test_manifest_hashes_every_file(cli_bundle: tuple[Path, Result], manifest: dict[str, Any]) -> None:
    out, _ = cli_bundle
    files = sorted(p.name for p in out.iterdir() if p.name not in INTEGRITY_FILES)
    assert sorted(manifest["sha256"]) == files
    for name, digest in manifest["sha256"].items():
        assert sha256_file(out / name) == digest


def test_references_are_the_graphs_normalised_tokens(
    cli_bundle: tuple[Path, Result], reference: dict[str, Any]
) -> None:
    out, _ = cli_bundle
    with np.load(out / "references.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    assert sorted(arrays) == ["fingerprint", "layer_2", "layer_4", "paths"]
    assert list(arrays["paths"]) == [str(p) for p in reference["paths"]]
    from fgad.bundle import load_manifest
    from fgad.bundle.references import manifest_references_fingerprint

    assert str(arrays["fingerprint"]) == manifest_references_fingerprint(load_manifest(out))
    with torch.no_grad():
        _, _, _, tok2, tok4 = reference["module"](reference["refs"])
    for key, tokens in (("layer_2", tok2), ("layer_4", tok4)):
        rows = arrays[key]
        assert rows.dtype == np.float32 and rows.shape == (4 * 49, 64)
        np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-6)
        np.testing.assert_allclose(rows, tokens.reshape(-1, 64).numpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("batch", [1, 3])
def test_dynamic_batch_matches_torch(cli_bundle: tuple[Path, Result], reference: dict[str, Any], batch: int) -> None:
    out, _ = cli_bundle
    images = make_images(batch, seed=10 + batch)
    report = check_against_torch(reference["module"], out / "model.onnx", images, batch_size=batch)
    assert report["images"] == batch and report["best_description_mismatches"] == 0
    outputs = run_onnx(out / "model.onnx", images.numpy(), batch_size=batch)
    assert outputs["vl_map"].shape == (batch, 112, 112) and outputs["best_description"].dtype == np.int64
    assert outputs["tokens_4"].shape == (batch, 49, 64)


def test_runtime_reproduces_the_torch_pipeline(
    cli_bundle: tuple[Path, Result], reference: dict[str, Any], data_root: Path
) -> None:
    """The contract's runtime steps on the bundle = the same steps in PyTorch (skipped without fgad.runtime)."""
    pipeline = pytest.importorskip("fgad.runtime.pipeline")
    out, _ = cli_bundle
    model: FiLoPlusPlus = reference["model"]
    detector = pipeline.Detector.from_bundle(out, knn="numpy")
    image_path = sorted((data_root / CLASS_NAME / "test").glob("*/*.png"))[-1]
    result = detector(image_path)
    x = load_reference_images([image_path], model.cfg)
    with torch.no_grad():
        vl, prob, best, *_ = reference["module"](x)
        model.set_reference_images(reference["refs"])
        try:
            few = model.fewshot_map(model.encode_images(x))
        finally:
            model.clear_memory()
        amap = model.blur(((vl + few) / 2).unsqueeze(1))[:, 0]
        score = 0.5 * (prob + amap.flatten(1).amax(dim=1))
    assert result.score == pytest.approx(float(score[0]), abs=1e-4)
    np.testing.assert_allclose(result.anomaly_map, amap[0].numpy(), atol=1e-4)
    assert result.best_description_index == int(best[0])


@pytest.fixture(scope="module")
def bank_bundle(tmp_path_factory: pytest.TempPathFactory, coop_model: FiLoPlusPlus) -> tuple[Path, FiLoPlusPlus]:
    """Zero-shot, bank text, ONNX DeformConv; CoOp + per-image filtering, where the bank graph is exact."""
    model = coop_model
    out = tmp_path_factory.mktemp("bank") / "bundle"
    return export_bundle(out, model, model.cfg, CLASS_NAME, None, text_mode="bank", deform="onnx"), model


def test_bank_bundle_with_deformconv(bank_bundle: tuple[Path, FiLoPlusPlus]) -> None:
    out, model = bank_bundle
    assert sorted(p.name for p in out.iterdir()) == ["manifest.digest", "manifest.json", "model.onnx"]
    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert "DeformConv" in ops and "GridSample" not in ops
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["deform"] == "onnx"
    assert manifest["fewshot"] == {"layers": [2, 4], "file": None, "num_references": 0}
    text = manifest["text"]
    assert text["mode"] == "bank" and text["filtering"] == "per-image" and text["conditioning"] == "coop"
    approx = text["approximation"]  # CoOp context + per-image filtering in the graph: exact
    assert approx["max_abs_diff_anomaly_map"] < 1e-5 and approx["max_abs_diff_image_score"] < 1e-5
    assert approx["best_description_agreement"] == 1.0
    parity = manifest["parity"]
    assert parity["inputs"] == "3 synthetic images" and parity["max_abs_diff_vl_map"] <= TOLERANCES["vl_map"]
    # the graph filters per image: two different images get different text pairs, like the model
    images = make_images(2, seed=21)
    report = check_against_torch(FiloExportModule(model, freeze_text_bank(model, CLASS_NAME, None)),
                                 out / "model.onnx", images)
    assert report["max_abs_diff_global_prob"] <= TOLERANCES["global_prob"]
    err = frozen_text_error(model, CLASS_NAME, images, text_mode="bank")
    assert err["max_abs_diff_image_score"] < 1e-5


def test_failed_parity_writes_no_bundle(
    cli_bundle: tuple[Path, Result], reference: dict[str, Any], refs_dir: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The export step is replaced by a copy of the CLI bundle's graph (from this very checkpoint, and
    checked against it in test_dynamic_batch_matches_torch); a weight changed after the export, or a
    zero tolerance, must stop the bundle with nothing written."""
    good_graph = cli_bundle[0] / "model.onnx"
    model: FiLoPlusPlus = reference["model"]
    bias = model.linear_heads.maps[0].bias
    saved = bias.detach().clone()
    corrupt = {"on": True}

    def copy_export(module: torch.nn.Module, example: torch.Tensor, path: Path, **_: Any) -> Path:
        shutil.copyfile(good_graph, path)
        if corrupt["on"]:
            with torch.no_grad():
                module.linear_heads.maps[0].bias.add_(0.5)  # shared with ``model``
        return Path(path)

    monkeypatch.setattr(bundle_mod, "export_onnx", copy_export)  # the writer's own reference
    refs = list_reference_images(refs_dir)
    try:
        with pytest.raises(ExportParityError, match="output 'vl_map'") as info:
            export_bundle(tmp_path / "bad", model, model.cfg, CLASS_NAME, refs)
    finally:
        with torch.no_grad():
            bias.copy_(saved)
    assert info.value.diff > TOLERANCES["vl_map"]
    assert not list(tmp_path.iterdir())  # nothing half-written, no temporary folder

    corrupt["on"] = False
    monkeypatch.setitem(TOLERANCES, "vl_map", 0.0)
    with pytest.raises(ExportParityError, match=r"output 'vl_map'.*> tolerance 0"):
        export_bundle(tmp_path / "bad", model, model.cfg, CLASS_NAME, refs)
    assert not list(tmp_path.iterdir())


def test_cli_reports_user_errors_in_one_line(tmp_path: Path, checkpoint: Path, reference: dict[str, Any]) -> None:
    runner = CliRunner()
    result = runner.invoke(export_main, ["--checkpoint", str(tmp_path), "--class-name", CLASS_NAME,
                                         "--out", str(tmp_path / "b")])
    assert result.exit_code == 1 and "no config.json" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(export_main, ["--checkpoint", str(checkpoint), "--class-name", CLASS_NAME,
                                         "--refs", str(empty), "--out", str(tmp_path / "b")])
    assert result.exit_code == 1 and "no reference images" in result.output
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("keep me")
    model = reference["model"]
    with pytest.raises(FileExistsError, match="not a bundle"):
        export_bundle(stray, model, model.cfg, CLASS_NAME, None)
    assert (stray / "notes.txt").read_text() == "keep me"


def _with_broken_images(folder: Path, target: Path, broken: dict[str, bytes]) -> Path:
    """A copy of ``folder``'s images plus the ``broken`` files (name -> bytes)."""
    target.mkdir()
    for path in sorted(folder.glob("*.png")):
        (target / path.name).write_bytes(path.read_bytes())
    for name, data in broken.items():
        (target / name).write_bytes(data)
    return target


def test_cli_refuses_references_with_an_unreadable_image_in_one_line(tmp_path: Path, checkpoint: Path,
                                                                    refs_dir: Path) -> None:
    refs = _with_broken_images(refs_dir, tmp_path / "refs", {"corrupt.png": b"\x89PNG\r\n\x1a\n truncated",
                                                              "empty.jpg": b""})
    out = tmp_path / "bundle"
    result = CliRunner().invoke(export_main, ["--checkpoint", str(checkpoint), "--class-name", CLASS_NAME,
                                              "--refs", str(refs), "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)  # a click error, not an uncaught exception
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: 2 of 6 reference images cannot be read")
    assert str(refs / "corrupt.png") in lines[0] and str(refs / "empty.jpg") in lines[0]
    assert "refuses rather than skip" in lines[0]
    assert not out.exists()
