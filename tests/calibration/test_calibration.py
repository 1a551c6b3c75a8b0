"""fgad.calibration: calibration readers, the Q/DQ graph and its TensorRT rules, the int8 bundle, fgad-calibrate.

One mini FiLo++ bundle (conftest MINI_HEADS, decomposed deformable convs with non-zero offsets) is exported per
module and quantized once with the default keep-float set; the other tests reuse it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from fgad.bundle import QUANTIZATION_REPORT_FILE, BundleError, file_sha256
from fgad.calibration import bundle as bundle_mod
from fgad.calibration import qdq as qdq_mod
from fgad.calibration.bundle import MIN_CALIBRATION_IMAGES, quantize_bundle
from fgad.calibration.families import FAMILIES, classify_nodes, ensure_node_names
from fgad.calibration.images import ImageCalibrationReader, list_calibration_images, read_calibration_images
from fgad.calibration.qdq import (
    DEFAULT_KEEP_FLOAT,
    KeepFloat,
    QuantizationError,
    QuantizationReport,
    quantize_qdq,
)
from fgad.calibration.sensitivity import (
    Variant,
    compare_results,
    measure_sensitivity,
    pearson_rows,
    study_variants,
)
from fgad.cli.calibrate import main as calibrate_main
from fgad.core.io import read_image
from fgad.core.transforms import OPENAI_MEAN, OPENAI_STD, preprocess
from fgad.data.synthetic import make_synthetic_dataset
from fgad.export.bundle import export_bundle
from fgad.runtime.backends.ort import session_options
from fgad.runtime.pipeline import Detector, Result
from tests.helpers.tiny import CLASS_NAME, make_config, make_model

SIZE = 112
#: Per-image correlation of the int8 vl_map with fp32 that the default Q/DQ graph must reach on held-out images.
#: Measured on this mini model: >= 0.998 (docs/int8.md); tiny-test on magnetic tile: min 0.99 for the final map.
#: A broken quantization (one weight's scale off by 8x, tested below) falls below it.
MAP_CORR_MIN = 0.98


def _session(path: Path) -> ort.InferenceSession:
    """The graph as fgad runs it (a Q/DQ graph keeps exact arithmetic on CPUs whose int8 kernels saturate)."""
    quantized = any(n.op_type == "QuantizeLinear" for n in onnx.load(str(path), load_external_data=False).graph.node)
    return ort.InferenceSession(str(path), session_options(quantized), providers=["CPUExecutionProvider"])


def _run(path: Path, images: np.ndarray) -> dict[str, np.ndarray]:
    session = _session(path)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"image": images}), strict=True))


def _producers(model: Any) -> dict[str, Any]:
    return {out: node for node in model.graph.node for out in node.output}


# ---------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tile: 12 train/good (4 references + 8 calibration), 3 good + 3 defective test images (held out)."""
    root = tmp_path_factory.mktemp("calib_data")
    return make_synthetic_dataset(root, classes=(CLASS_NAME,), n_train_good=12, n_test_good=3, n_test_defect=3,
                                  image_size=SIZE, seed=1)


@pytest.fixture(scope="module")
def refs(data: Path) -> list[Path]:
    return sorted((data / CLASS_NAME / "train" / "good").glob("*.png"))[:4]


@pytest.fixture(scope="module")
def calib_dir(data: Path, refs: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 8 train/good images that are not references."""
    folder = tmp_path_factory.mktemp("calib_images")
    for path in sorted((data / CLASS_NAME / "train" / "good").glob("*.png")):
        if path not in refs:
            (folder / path.name).write_bytes(path.read_bytes())
    return folder


@pytest.fixture(scope="module")
def calibration(calib_dir: Path) -> np.ndarray:
    return read_calibration_images(calib_dir, SIZE, OPENAI_MEAN, OPENAI_STD)


@pytest.fixture(scope="module")
def held_out(data: Path) -> np.ndarray:
    paths = sorted((data / CLASS_NAME / "test").rglob("*.png"))
    return np.stack([preprocess(read_image(p), SIZE, OPENAI_MEAN, OPENAI_STD) for p in paths])


@pytest.fixture(scope="module")
def fp32_bundle(tmp_path_factory: pytest.TempPathFactory, refs: list[Path]) -> Path:
    cfg = make_config()
    return export_bundle(tmp_path_factory.mktemp("fp32") / "bundle", make_model(cfg), cfg.model, CLASS_NAME, refs)


@pytest.fixture(scope="module")
def quantized(fp32_bundle: Path, calibration: np.ndarray,
              tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, QuantizationReport]:
    out = tmp_path_factory.mktemp("qdq") / "model_int8.onnx"
    return out, quantize_qdq(fp32_bundle / "model.onnx", out, calibration)


# ---------------------------------------------------------------------------------- calibration images


def test_calibration_folder_errors_name_the_folder(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope.*does not exist.*normal"):
        list_calibration_images(missing)
    a_file = tmp_path / "image.png"
    a_file.write_bytes(b"x")
    with pytest.raises(NotADirectoryError, match="image.png"):
        list_calibration_images(a_file)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    (empty / ".hidden.png").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="empty holds no images"):
        read_calibration_images(empty, SIZE, OPENAI_MEAN, OPENAI_STD)
    with pytest.raises(ValueError, match="limit"):
        list_calibration_images(empty, limit=0)


def test_calibration_images_are_the_runtime_preprocessing(calib_dir: Path) -> None:
    paths = sorted(calib_dir.glob("*.png"))
    arr = read_calibration_images(calib_dir, SIZE, OPENAI_MEAN, OPENAI_STD)
    assert arr.shape == (len(paths), 3, SIZE, SIZE) and arr.dtype == np.float32
    for got, path in zip(arr, paths, strict=True):
        np.testing.assert_array_equal(got, preprocess(read_image(path), SIZE, OPENAI_MEAN, OPENAI_STD))
    subset = list_calibration_images(calib_dir, limit=3, seed=5)
    assert len(subset) == 3 and subset == sorted(subset) and set(subset) <= set(paths)
    assert subset == list_calibration_images(calib_dir, limit=3, seed=5)
    assert any(list_calibration_images(calib_dir, limit=3, seed=s) != subset for s in range(6, 12))


def test_reader_serves_every_image_once_and_honours_ranges() -> None:
    from onnxruntime.quantization import CalibrationDataReader

    images = np.arange(5 * 3 * 2 * 2, dtype=np.float32).reshape(5, 3, 2, 2)
    reader = ImageCalibrationReader(images, "image", batch_size=2)
    assert isinstance(reader, CalibrationDataReader) and len(reader) == 5
    batches = list(reader)
    assert [b["image"].shape[0] for b in batches] == [2, 2, 1]
    np.testing.assert_array_equal(np.concatenate([b["image"] for b in batches]), images)
    assert reader.get_next() is None
    reader.set_range(1, 3)
    np.testing.assert_array_equal(np.concatenate([b["image"] for b in reader]), images[1:3])
    with pytest.raises(ValueError, match=r"\[N, 3, S, S\]"):
        ImageCalibrationReader(np.zeros((0, 3, 2, 2), np.float32))
    with pytest.raises(ValueError, match="finite"):
        ImageCalibrationReader(np.full((1, 3, 2, 2), np.nan, np.float32))


# ---------------------------------------------------------------------------------- node families


def test_families_cover_the_deformable_convolutions(fp32_bundle: Path) -> None:
    model = onnx.load(str(fp32_bundle / "model.onnx"))
    ensure_node_names(model)
    families = classify_nodes(model)
    nodes = {n.name: n for n in model.graph.node}
    assert set(families) == set(nodes) and set(families.values()) <= set(FAMILIES)
    producer = _producers(model)
    samplers = [n for n in model.graph.node if n.op_type == "GridSample"]
    assert samplers and all(families[n.name] == "deform_sampling" for n in samplers)
    # every GridSample's grid comes from offset arithmetic inside the family, up to the offset Conv
    for sampler in samplers:
        grid_producer = producer[sampler.input[1]]
        assert families[grid_producer.name] == "deform_sampling"
    kernels = [n for n, f in families.items() if f == "deform_matmul"]
    assert len(kernels) == len(samplers) and all(nodes[k].op_type == "MatMul" for k in kernels)
    inits = {i.name for i in model.graph.initializer}
    for name, family in families.items():
        node = nodes[name]
        if node.op_type == "LayerNormalization":
            assert family == "layernorm"
        if node.op_type == "Softmax":
            assert family == "softmax"
        if node.op_type == "Conv":
            assert family == ("patch_embed" if node.input[0] == "image" else "conv")
        if node.op_type == "MatMul" and family != "deform_matmul":
            weighted = any(i in inits for i in node.input)
            assert family == ("linear" if weighted else "activation_matmul"), (name, family)


# ---------------------------------------------------------------------------------- the Q/DQ graph


def test_qdq_graph_is_symmetric_int8_with_per_channel_weights(quantized: tuple[Path, QuantizationReport]) -> None:
    path, report = quantized
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert {imp.domain or "ai.onnx": imp.version for imp in model.opset_import}["ai.onnx"] >= 13
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > 0
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zero_point = numpy_helper.to_array(inits[node.input[2]])
            assert zero_point.dtype == np.int8 and not zero_point.any(), node.name
    producer = _producers(model)
    per_channel = 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "MatMul", "Gemm"):
            continue
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        for index, value in enumerate(node.input[:2]):
            dq = producer.get(value)
            if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
                continue
            weight = numpy_helper.to_array(inits[dq.input[0]])
            scale = numpy_helper.to_array(inits[dq.input[1]])
            assert weight.dtype == np.int8
            axis = next((a.i for a in dq.attribute if a.name == "axis"), 1) % weight.ndim
            # the output-channel axis: C_out of a Conv kernel, N of B [K, N] ([N, K] with Gemm's transB),
            # M of a constant A [M, K]
            if node.op_type == "Conv":
                want = 0
            elif node.op_type == "Gemm":
                want = 0 if trans_b else 1
            else:
                want = weight.ndim - 1 if index == 1 else weight.ndim - 2
            assert axis == want and scale.shape == (weight.shape[want],), (node.name, axis, scale.shape)
            per_channel += 1
    # every int8 weight layer (projections, convolutions, deformable kernels) has per-channel weight scales
    weight_layers = sum(report.families[f]["quantized"] for f in ("linear", "patch_embed", "conv", "deform_matmul"))
    assert per_channel == weight_layers > 0


def test_kept_float_nodes_have_no_qdq_inputs(quantized: tuple[Path, QuantizationReport]) -> None:
    path, report = quantized
    model = onnx.load(str(path))
    producer = _producers(model)
    families = {n.name: n.family for n in report.kept_float_nodes}
    reads_dq = {
        n.name for n in model.graph.node
        if any((p := producer.get(i)) is not None and p.op_type == "DequantizeLinear" for i in n.input)
    }
    kept_ops = {"LayerNormalization", "Softmax"}  # op types whose whole family is kept float by default
    assert {"layernorm", "softmax"} <= set(DEFAULT_KEEP_FLOAT.families)
    for node in model.graph.node:
        if node.op_type in kept_ops:
            assert node.name not in reads_dq, node.name
    assert families and not (set(families) & reads_dq)
    assert all(f in DEFAULT_KEEP_FLOAT.families for f in families.values())
    assert not any(producer[o.name].op_type == "DequantizeLinear" for o in model.graph.output)
    # and the families left to int8 are int8: every linear/conv layer reads Q/DQ input
    assert report.families["linear"]["quantized"] == report.families["linear"]["nodes"] > 0
    assert report.quantized.get("LayerNormalization", 0) == report.quantized.get("Softmax", 0) == 0


def test_keep_float_by_family_moves_the_qdq(fp32_bundle: Path, calibration: np.ndarray, tmp_path: Path) -> None:
    report = quantize_qdq(fp32_bundle / "model.onnx", tmp_path / "q.onnx", calibration[:2], method="minmax",
                          keep_float=KeepFloat(("linear", "other")))
    assert report.families["linear"]["quantized"] == 0 and report.families["linear"]["kept"]
    assert report.families["layernorm"]["quantized"] == report.families["layernorm"]["nodes"] > 0
    assert report.families["softmax"]["quantized"] > 0
    model = onnx.load(str(tmp_path / "q.onnx"))
    producer = _producers(model)
    lns = [n for n in model.graph.node if n.op_type == "LayerNormalization"]
    assert all(producer[n.input[0]].op_type == "DequantizeLinear" for n in lns)


def test_qdq_map_correlates_with_fp32(fp32_bundle: Path, quantized: tuple[Path, QuantizationReport],
                                      held_out: np.ndarray, tmp_path: Path) -> None:
    path, _ = quantized
    fp32 = _run(fp32_bundle / "model.onnx", held_out)
    int8 = _run(path, held_out)
    corr = pearson_rows(fp32["vl_map"], int8["vl_map"])
    assert corr.min() > MAP_CORR_MIN, corr
    for name in fp32:
        if name.startswith("tokens_"):
            assert pearson_rows(fp32[name], int8[name]).min() > MAP_CORR_MIN
    # the check can fail: one linear weight's scale off by 8x ruins the map
    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    producer = _producers(model)
    first = next(n for n in model.graph.node if n.op_type == "MatMul" and producer.get(n.input[1]) is not None
                 and producer[n.input[1]].op_type == "DequantizeLinear")
    scale = inits[producer[first.input[1]].input[1]]
    scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * 8, scale.name))
    onnx.save(model, str(tmp_path / "broken.onnx"))
    broken = _run(tmp_path / "broken.onnx", held_out)
    assert pearson_rows(fp32["vl_map"], broken["vl_map"]).min() < MAP_CORR_MIN


def test_large_graphs_go_through_external_data(fp32_bundle: Path, calibration: np.ndarray, held_out: np.ndarray,
                                               quantized: tuple[Path, QuantizationReport], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The path for graphs above protobuf's 2 GB (weights in an external-data file), forced on the mini graph:
    the same Q/DQ graph, and one self-contained file."""
    monkeypatch.setattr(qdq_mod, "EXTERNAL_DATA_BYTES", 0)
    quantize_qdq(fp32_bundle / "model.onnx", tmp_path / "q.onnx", calibration)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.onnx"]
    want, got = _run(quantized[0], held_out), _run(tmp_path / "q.onnx", held_out)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])


def test_quantize_qdq_refuses_bad_inputs(fp32_bundle: Path, calibration: np.ndarray, tmp_path: Path) -> None:
    src = fp32_bundle / "model.onnx"
    with pytest.raises(ValueError, match="method"):
        quantize_qdq(src, tmp_path / "q.onnx", calibration, method="kl")
    with pytest.raises(ValueError, match="graph input 'image'"):
        quantize_qdq(src, tmp_path / "q.onnx", np.zeros((2, 3, 64, 64), np.float32))
    with pytest.raises(FileNotFoundError, match="fgad-export"):
        quantize_qdq(tmp_path / "missing.onnx", tmp_path / "q.onnx", calibration)
    with pytest.raises(ValueError, match="fp32 graph itself"):
        quantize_qdq(src, src, calibration)
    with pytest.raises(ValueError, match="unknown node family"):
        KeepFloat(("attention",))
    with pytest.raises(ValueError, match="not in the graph"):
        quantize_qdq(src, tmp_path / "q.onnx", calibration[:1], keep_float=KeepFloat(nodes=("no_such_node",)))
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_quantize_qdq_writes_nothing_on_failure(fp32_bundle: Path, calibration: np.ndarray, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: Any, **kwargs: Any) -> None:
        raise QuantizationError("injected")

    target = tmp_path / "q.onnx"
    target.write_bytes(b"an earlier file")
    monkeypatch.setattr(qdq_mod, "_check_qdq", fail)
    with pytest.raises(QuantizationError, match="injected"):
        quantize_qdq(fp32_bundle / "model.onnx", target, calibration[:1], method="minmax")
    assert target.read_bytes() == b"an earlier file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.onnx"]


# ---------------------------------------------------------------------------------- the int8 bundle


@pytest.fixture(scope="module")
def int8_bundle(fp32_bundle: Path, calib_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return quantize_bundle(fp32_bundle, tmp_path_factory.mktemp("int8") / "bundle", calib_dir, method="percentile")


def test_int8_bundle_loads_and_runs_in_the_runtime(fp32_bundle: Path, int8_bundle: Path, data: Path,
                                                   refs: list[Path]) -> None:
    fp32_manifest = json.loads((fp32_bundle / "manifest.json").read_text())
    manifest = json.loads((int8_bundle / "manifest.json").read_text())
    assert manifest["engine"]["kind"] == "onnx" and manifest["engine"]["precision"] == "int8"
    quant = manifest["quantization"]
    assert quant["method"] == "percentile" and quant["images"] == 8 and quant["percentile"] == 99.999
    assert set(quant["kept_float"]) == {f for f in DEFAULT_KEEP_FLOAT.families
                                        if json.loads((int8_bundle / QUANTIZATION_REPORT_FILE).read_text())
                                        ["families"][f]["nodes"]}
    assert quant["fp32_model_sha256"] == fp32_manifest["sha256"]["model.onnx"]
    assert sorted(p.name for p in int8_bundle.iterdir()) == ["manifest.digest", "manifest.json", "model.onnx",
                                                             QUANTIZATION_REPORT_FILE,
                                                             "references.npz"]
    assert sorted(p.name for p in int8_bundle.parent.iterdir()) == ["bundle"]  # no temporary folders left
    assert file_sha256(fp32_bundle / "model.onnx") == fp32_manifest["sha256"]["model.onnx"]  # source untouched

    # references recomputed by the int8 graph: the normalised tokens of the reference images
    images = np.stack([preprocess(read_image(p), SIZE, OPENAI_MEAN, OPENAI_STD) for p in refs])
    tokens = _run(int8_bundle / "model.onnx", images)
    with np.load(int8_bundle / "references.npz") as npz:
        for layer in manifest["fewshot"]["layers"]:
            rows = tokens[f"tokens_{layer}"].reshape(-1, tokens[f"tokens_{layer}"].shape[-1])
            np.testing.assert_allclose(npz[f"layer_{layer}"], rows / np.linalg.norm(rows, axis=1, keepdims=True),
                                       rtol=1e-5, atol=1e-6)

    test_images = [read_image(p) for p in sorted((data / CLASS_NAME / "test").rglob("*.png"))]
    results = {name: Detector.from_bundle(path, knn="numpy").batch(test_images)
               for name, path in (("fp32", fp32_bundle), ("int8", int8_bundle))}
    agreement = compare_results(results["fp32"], results["int8"])
    assert agreement.map_corr_min > MAP_CORR_MIN
    assert all(np.isfinite(r.score) for r in results["int8"])


def test_quantize_bundle_needs_enough_calibration_images(fp32_bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=f"at least {MIN_CALIBRATION_IMAGES}.*--calib-dir"):
        quantize_bundle(fp32_bundle, tmp_path / "int8")
    assert not (tmp_path / "int8").exists()


def test_quantize_bundle_refuses_an_int8_bundle_and_its_own_folder(int8_bundle: Path, fp32_bundle: Path,
                                                                   calib_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="engine.precision"):
        quantize_bundle(int8_bundle, tmp_path / "again", calib_dir)
    with pytest.raises(ValueError, match="fp32 bundle itself"):
        quantize_bundle(fp32_bundle, fp32_bundle, calib_dir)


def test_quantize_bundle_leaves_nothing_half_written(fp32_bundle: Path, calib_dir: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "int8"
    out.mkdir()
    (out / "manifest.json").write_text('{"an": "earlier bundle"}')

    def fail(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("injected after quantization")

    monkeypatch.setattr(bundle_mod, "_check_against_fp32", fail)
    with pytest.raises(RuntimeError, match="injected"):
        quantize_bundle(fp32_bundle, out, calib_dir, method="minmax", limit=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int8"]
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"]
    assert json.loads((out / "manifest.json").read_text()) == {"an": "earlier bundle"}


def test_cli_writes_the_bundle_and_reports(fp32_bundle: Path, calib_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "int8"
    result = CliRunner().invoke(calibrate_main, ["--bundle", str(fp32_bundle), "--calib-dir", str(calib_dir),
                                                 "--out", str(out), "--method", "minmax", "--limit", "3"])
    assert result.exit_code == 0, result.output
    assert "calibrated (minmax) on 3 images" in result.output
    assert "kept float: " in result.output and "layernorm" in result.output
    assert Detector.from_bundle(out).manifest.engine.precision == "int8"
    bad = CliRunner().invoke(calibrate_main, ["--bundle", str(fp32_bundle), "--calib-dir", str(tmp_path / "none"),
                                              "--out", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "does not exist" in bad.output and "Traceback" not in bad.output


def test_cli_signs_the_int8_bundle(fp32_bundle: Path, calib_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("cryptography", reason="signatures need the sign extra (cryptography)")
    from fgad.bundle.signing import generate_key_pair

    key, public = generate_key_pair(tmp_path / "key.pem")
    out = tmp_path / "int8"
    result = CliRunner().invoke(calibrate_main, ["--bundle", str(fp32_bundle), "--calib-dir", str(calib_dir),
                                                 "--out", str(out), "--method", "minmax", "--limit", "2",
                                                 "--sign", str(key)])
    assert result.exit_code == 0, result.output
    Detector.from_bundle(out, trust=[public], strict=True)
    bad = CliRunner().invoke(calibrate_main, ["--bundle", str(fp32_bundle), "--calib-dir", str(calib_dir),
                                              "--out", str(tmp_path / "x"), "--sign", str(public)])
    assert bad.exit_code == 1 and "not a readable PEM private key" in bad.output and not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------------- sensitivity


def test_pearson_rows_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((4, 6, 6)), rng.standard_normal((4, 6, 6))
    b[1] = 2 * a[1] + 1
    want = [np.corrcoef(x.ravel(), y.ravel())[0, 1] for x, y in zip(a, b, strict=True)]
    np.testing.assert_allclose(pearson_rows(a, b), want, atol=1e-12)
    assert pearson_rows(np.ones((1, 4)), np.ones((1, 4)))[0] == 1.0


def test_compare_results_and_study_variants() -> None:
    def result(score: float, amap: np.ndarray, best: int) -> Result:
        return Result(score=score, is_anomalous=None, threshold=None, anomaly_map=amap, best_description="",
                      best_description_index=best)

    rng = np.random.default_rng(1)
    maps = rng.random((3, 8, 8)).astype(np.float32)
    ref = [result(s, m, 0) for s, m in zip((0.1, 0.5, 0.9), maps, strict=True)]
    same = compare_results(ref, ref)
    assert same.map_corr_min == 1.0 and same.score_max_abs_diff == 0.0 and same.best_description_agreement == 1.0
    other = [result(r.score + 0.1, r.anomaly_map * 2, i % 2) for i, r in enumerate(ref)]
    moved = compare_results(ref, other)
    assert moved.map_corr_min == pytest.approx(1.0) and moved.map_max_abs_diff == pytest.approx(maps.max())
    assert moved.score_max_abs_diff == pytest.approx(0.1) and moved.best_description_agreement == pytest.approx(2 / 3)
    variants = study_variants()
    names = [v.name for v in variants]
    assert len(names) == len(set(names)) and "all int8" in names and "default" in names
    assert {f"only {f} int8" for f in FAMILIES} <= set(names)
    default = next(v for v in variants if v.name == "default")
    assert default.keep_float == DEFAULT_KEEP_FLOAT


def test_measure_sensitivity_nothing_quantized_is_fp32(fp32_bundle: Path, calibration: np.ndarray,
                                                       data: Path, refs: list[Path]) -> None:
    held = [read_image(p) for p in sorted((data / CLASS_NAME / "test").rglob("*.png"))[:3]]
    ref_images = [read_image(p) for p in refs[:2]]
    variants = [Variant("nothing int8", KeepFloat(tuple(FAMILIES))), Variant("default", DEFAULT_KEEP_FLOAT)]
    rows = measure_sensitivity(fp32_bundle, calibration[:2], held, refs=ref_images, method="minmax",
                               variants=variants, progress=False)
    assert [r.variant for r in rows] == ["nothing int8", "default"]
    exact, default = rows[0].agreement, rows[1].agreement
    assert rows[0].int8_nodes == 0 and exact.map_max_abs_diff < 1e-4 and exact.score_max_abs_diff < 1e-4
    assert rows[1].int8_nodes > 0 and default.map_max_abs_diff > exact.map_max_abs_diff
    assert default.map_corr_min > MAP_CORR_MIN


# ---------------------------------------------------------------------------------- no torch


def test_calibration_works_without_torch(fp32_bundle: Path, calib_dir: Path, tmp_path: Path) -> None:
    """The int8 path needs onnx + onnxruntime only: quantize a bundle with torch unimportable."""
    code = (
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "from fgad.calibration import quantize_bundle\n"
        "import fgad.calibration.sensitivity, fgad.cli.calibrate\n"
        f"quantize_bundle({str(fp32_bundle)!r}, {str(tmp_path / 'int8')!r}, {str(calib_dir)!r}, method='minmax',"
        " limit=1)\n"
        "print('torch' in sys.modules and sys.modules['torch'] is None)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "True"
    assert (tmp_path / "int8" / "manifest.json").is_file()


def test_cli_refuses_a_calibration_folder_with_an_unreadable_image_in_one_line(fp32_bundle: Path, calib_dir: Path,
                                                                               tmp_path: Path) -> None:
    folder = tmp_path / "calib"
    folder.mkdir()
    for path in sorted(calib_dir.glob("*.png")):
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "zz_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "int8"
    result = CliRunner().invoke(calibrate_main, ["--bundle", str(fp32_bundle), "--calib-dir", str(folder),
                                                 "--out", str(out), "--method", "minmax"])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.splitlines() if line.strip() and "img/s]" not in line]  # no tqdm bar
    assert len(lines) == 1 and lines[0].startswith("Error: 1 of 9 calibration images cannot be read")
    assert str(folder / "zz_corrupt.png") in lines[0] and "refuses rather than skip" in lines[0]
    assert not out.exists()
    # --limit draws a subset first: only the drawn files are read, so a subset without the bad one works
    assert len(list_calibration_images(folder, limit=2, seed=0)) == 2
