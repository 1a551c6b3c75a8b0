"""Few-shot search inside the graph (fgad-export --knn graph): the nodes against the runtime's numpy search, their
fp16 safety and TensorRT coverage, and bundles whose graph searches itself against the runtime's own search."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the graph search is written with onnx (the export extra)")
ort = pytest.importorskip("onnxruntime")

from click.testing import CliRunner  # noqa: E402

from fgad.bundle import BundleError, load_manifest  # noqa: E402
from fgad.cli.run import main as run_main  # noqa: E402
from fgad.export.knn_graph import NORM_EPS, search_in_graph, search_model  # noqa: E402
from fgad.export.op_coverage import check_tensorrt_coverage  # noqa: E402
from fgad.runtime.knn import max_similarity_numpy, normalize_rows  # noqa: E402
from fgad.runtime.pipeline import Detector  # noqa: E402
from tests.helpers.fake_bundle import FakeBundle, make_bundle  # noqa: E402

LAYERS = (3, 6)


def _banks(rng: np.random.Generator, rows: int = 40, dim: int = 24) -> dict[int, np.ndarray]:
    return {layer: normalize_rows(rng.normal(size=(rows, dim))) for layer in LAYERS}


def _tokens(rng: np.random.Generator, batch: int = 2, n: int = 9, dim: int = 24) -> dict[int, np.ndarray]:
    tokens = {layer: rng.normal(size=(batch, n, dim)).astype(np.float32) for layer in LAYERS}
    tokens[3][0, 0] *= 3000.0  # CLIP's outlier channels: a token far from unit scale
    tokens[3][0, 1] *= 1e-4
    tokens[6][1, 2] = 0.0  # a zero token: similarity 0 on both paths
    return tokens


@pytest.mark.parametrize("opset", [17, 19])
def test_graph_search_matches_the_numpy_search(opset: int) -> None:
    rng = np.random.default_rng(0)
    banks, tokens = _banks(rng), _tokens(rng)
    session = ort.InferenceSession(search_model(banks, 9, opset).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    outs = dict(zip([o.name for o in session.get_outputs()],
                    session.run(None, {f"tokens_{layer}": t for layer, t in tokens.items()}), strict=True))
    for layer in LAYERS:
        want = max_similarity_numpy(normalize_rows(tokens[layer].reshape(-1, 24)), banks[layer]).reshape(2, 9)
        assert outs[f"knn_{layer}"].shape == (2, 9)
        np.testing.assert_allclose(outs[f"knn_{layer}"], want, atol=1e-6, rtol=0)
    assert outs["knn_6"][1, 2] == 0.0


def _fp16_search(tokens: np.ndarray, bank: np.ndarray) -> np.ndarray:
    """The graph's node sequence with every tensor in float16, as an fp16 engine computes it."""
    t, b, eps = tokens.astype(np.float16), bank.astype(np.float16), np.float16(NORM_EPS)
    scaled = t / np.maximum(np.abs(t).max(axis=-1, keepdims=True), eps)
    sumsq = np.sum(scaled * scaled, axis=-1, keepdims=True, dtype=np.float16)
    unit = scaled / np.sqrt(np.maximum(sumsq, eps))
    return np.matmul(unit, b.T, dtype=np.float16).max(axis=-1)


def test_graph_search_is_fp16_safe() -> None:
    rng = np.random.default_rng(1)
    bank = normalize_rows(rng.normal(size=(64, 1024)))
    tokens = (rng.normal(size=(1, 16, 1024)) * 40.0).astype(np.float32)  # |t|^2 ~ 1.6e6: overflows fp16 (65504)
    naive = tokens.astype(np.float16)
    with np.errstate(over="ignore"):
        assert not np.isfinite(np.sum(naive * naive, axis=-1, dtype=np.float16)).all()  # why the scaling is there
    got = _fp16_search(tokens, bank)
    want = max_similarity_numpy(normalize_rows(tokens[0]), bank)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got[0].astype(np.float32), want, atol=5e-3)


def test_graph_search_is_covered_by_tensorrt(tmp_path: Path) -> None:
    pytest.importorskip("yaml")
    path = tmp_path / "knn.onnx"
    onnx.save_model(search_model(_banks(np.random.default_rng(2)), 9), str(path))
    report = check_tensorrt_coverage(path)
    assert report.ok, report.summary()
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert {"MatMul", "ReduceMax"} <= ops and "TopK" not in ops


# ---------------------------------------------------------------------------------- bundles


@pytest.fixture()
def ref_paths(good_dir: Path) -> list[Path]:
    return sorted(good_dir.glob("*.png"))[:3]


@pytest.fixture()
def graph_bundle(tmp_path: Path, ref_paths: list[Path]) -> FakeBundle:
    bundle = make_bundle(tmp_path / "graph")
    search_in_graph(bundle.path, ref_paths)
    return bundle


def test_a_graph_search_bundle_scores_as_the_runtime_search(graph_bundle: FakeBundle, shared_bundle: FakeBundle,
                                                            ref_paths: list[Path], test_images: list[np.ndarray]
                                                            ) -> None:
    runtime = Detector.from_bundle(shared_bundle.path, refs=ref_paths, threshold="auto", knn="numpy")
    graph = Detector.from_bundle(graph_bundle.path, threshold="auto")
    assert graph.graph_search and graph.memory is None and graph.num_references == 3
    assert graph.threshold == pytest.approx(runtime.threshold, abs=1e-6)  # leave-one-out, computed at export
    for want, got in zip(runtime.batch(test_images), graph.batch(test_images), strict=True):
        assert abs(want.score - got.score) <= 1e-5
        np.testing.assert_allclose(got.anomaly_map, want.anomaly_map, atol=1e-5, rtol=0)
    manifest = load_manifest(graph_bundle.path)
    assert manifest.format_version == 2 and manifest.fewshot.search == "graph" and manifest.fewshot.file is None
    assert not (graph_bundle.path / "references.npz").exists()
    assert manifest.parity["knn_graph"]["max_abs_diff_score"] <= 1e-5


def test_references_at_run_time_are_refused_on_a_graph_search_bundle(graph_bundle: FakeBundle, good_dir: Path,
                                                                     tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="--knn graph") as err:
        Detector.from_bundle(graph_bundle.path, refs=good_dir)
    assert err.value.field == "fewshot.search"
    frames = tmp_path / "frames"
    frames.mkdir()
    shutil.copy(sorted(good_dir.glob("*.png"))[-1], frames / "a.png")
    result = CliRunner().invoke(run_main, ["--bundle", str(graph_bundle.path), "--images", str(frames),
                                           "--refs", str(good_dir)])
    assert result.exit_code != 0
    assert "fgad-export" in result.output and "--knn graph" in result.output and "Traceback" not in result.output
    ok = CliRunner().invoke(run_main, ["--bundle", str(graph_bundle.path), "--images", str(frames),
                                       "--threshold", "auto"])
    assert ok.exit_code == 0, ok.output
    assert "computed at export" in ok.output


def test_a_graph_search_manifest_must_declare_its_outputs(graph_bundle: FakeBundle) -> None:
    data = graph_bundle.manifest()
    del data["outputs"]["knn_6"]
    graph_bundle.write_manifest(data)
    with pytest.raises(BundleError, match="knn_6"):
        Detector.from_bundle(graph_bundle.path)


def test_a_version_1_manifest_cannot_claim_graph_search(graph_bundle: FakeBundle) -> None:
    graph_bundle.edit(format_version=1)
    with pytest.raises(BundleError, match="format_version >= 2"):
        load_manifest(graph_bundle.path)


def test_export_records_the_graph_search(graph_bundle: FakeBundle) -> None:
    data = json.loads(graph_bundle.manifest_path.read_text())
    assert data["outputs"]["knn_3"] == [None, 16] and data["thresholds"]["auto"] is not None


# ---------------------------------------------------------------------------------- the tiny model through the CLI

REAL_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "magnetic_tile" / "magnetic_tile"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, cocoop_model) -> Path:  # noqa: ANN001 - torch fixture
    from fgad.backbone.checkpoint import save_checkpoint
    from tests.helpers.tiny import make_config

    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "ckpt", cocoop_model, make_config(), pretrained=None)


def _export(checkpoint: Path, refs: Path, out: Path, *extra: str) -> Path:
    from fgad.cli.export import main as export_main
    from tests.helpers.tiny import CLASS_NAME

    result = CliRunner().invoke(export_main, ["--checkpoint", str(checkpoint), "--class-name", CLASS_NAME,
                                              "--refs", str(refs), "--out", str(out), *extra])
    assert result.exit_code == 0, result.output
    if "graph" in extra:
        assert "few-shot search in the graph vs the runtime's search" in result.output
    return out


@pytest.fixture(scope="module")
def runtime_bundle(checkpoint: Path, refs_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export(checkpoint, refs_dir, tmp_path_factory.mktemp("runtime") / "bundle")


def _compare(runtime: Detector, graph: Detector, images: list) -> float:
    worst = 0.0
    for want, got in zip(runtime.batch(images), graph.batch(images), strict=True):
        worst = max(worst, abs(want.score - got.score), float(np.abs(want.anomaly_map - got.anomaly_map).max()))
    return worst


@pytest.mark.slow
def test_tiny_model_exported_with_knn_graph_scores_as_faiss_and_numpy(
    checkpoint: Path, refs_dir: Path, runtime_bundle: Path, test_images: list[np.ndarray], tmp_path: Path
) -> None:
    pytest.importorskip("torch")
    graph_dir = _export(checkpoint, refs_dir, tmp_path / "graph", "--knn", "graph")
    graph = Detector.from_bundle(graph_dir, threshold="auto")
    refs = sorted(refs_dir.glob("*.png"))
    for knn in ("numpy", "faiss"):
        if knn == "faiss":
            pytest.importorskip("faiss")
        runtime = Detector.from_bundle(runtime_bundle, refs=refs, threshold="auto", knn=knn)
        assert _compare(runtime, graph, test_images) <= 1e-5, knn
        assert graph.threshold == pytest.approx(runtime.threshold, abs=1e-5)


@pytest.mark.slow
@pytest.mark.realdata
def test_tiny_model_knn_graph_parity_on_real_images(checkpoint: Path, tmp_path: Path) -> None:
    if not REAL_DATA.is_dir():
        pytest.skip(f"real data not found at {REAL_DATA} (the shared data folder beside the repository)")
    pytest.importorskip("torch")
    from fgad.core.io import read_image

    refs = tmp_path / "refs"
    refs.mkdir()
    for path in sorted((REAL_DATA / "train" / "good").iterdir())[:4]:
        shutil.copy(path, refs / path.name)
    tests = sorted(p for p in (REAL_DATA / "test").rglob("*") if p.is_file())
    images = [read_image(tests[i]) for i in np.linspace(0, len(tests) - 1, 12).round().astype(int)]
    # the references also condition the frozen text: both bundles are exported with the same ones
    graph = Detector.from_bundle(_export(checkpoint, refs, tmp_path / "graph", "--knn", "graph"), threshold="auto")
    runtime = Detector.from_bundle(_export(checkpoint, refs, tmp_path / "runtime"), knn="numpy")
    assert runtime.num_references == graph.num_references == 4
    assert _compare(runtime, graph, images) <= 1e-5
