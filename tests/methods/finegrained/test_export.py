"""FineGrainedAD export: the frozen-text graph, ONNX parity, the bundle, and the torch-free runtime's parity.

One tiny model is trained for two epochs on synthetic data (2 shots) and exported once per session
through :func:`fgad.export.bundle.export_bundle` (which dispatches on ``method: finegrained``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fgad.backbone.postprocess import GaussianBlur
from fgad.config import load_config
from fgad.core.io import read_image
from fgad.core.smoothing import upsample_align_corners
from fgad.core.transforms import preprocess
from fgad.data.synthetic import make_synthetic_dataset
from fgad.export.bundle import export_bundle
from fgad.export.onnx_export import run_onnx
from fgad.methods.finegrained.captions.schema import CaptionRecord, Entity
from fgad.methods.finegrained.export import FgadExportModule, runtime_post
from fgad.methods.finegrained.mllp import build_mllp_texts
from fgad.methods.finegrained.model import FineGrainedAD, build_finegrained, fuse_and_score
from fgad.methods.finegrained.train import train_finegrained
from fgad.runtime.fusion import FusionSpec, finish_maps, upsample_half_pixel
from fgad.runtime.postprocess import finish

CLASS = "mesh"
RECORD = CaptionRecord(
    class_name=CLASS,
    foreground="mesh",
    background="gray",
    entities=(
        Entity(name="wires", number="many", location="throughout", direction="", color="silver",
               texture="woven", shape="lattice", caption="Silver wires are woven throughout the mesh."),
    ),
    relation="The wires cross each other at right angles.",
    caption="A woven metal mesh filling the frame.",
)
TOL = 1e-4


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fgad_export_data")
    return make_synthetic_dataset(root, classes=(CLASS,), n_train_good=3, n_test_good=2, n_test_defect=2,
                                  image_size=112, seed=1)


@pytest.fixture(scope="module")
def trained(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> FineGrainedAD:
    config = load_config("fgad-tiny", {"model": {"finegrained": {"epochs": 2}}})
    model = build_finegrained(config.model, build_mllp_texts(RECORD, ("with a tear", "with a dent"), seed=111))
    train_finegrained(model, config, data_root, 2, tmp_path_factory.mktemp("fgad_ck"), progress=False)
    return model.eval()  # galleries hold the 2 training shots


@pytest.fixture(scope="module")
def bundle(trained: FineGrainedAD, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fgad_bundle") / "bundle"
    return export_bundle(out, trained, trained.cfg, CLASS, refs=None)


def _test_images(data_root: Path) -> tuple[list[Path], torch.Tensor]:
    paths = sorted((data_root / CLASS / "test").rglob("*.png"))
    bb = load_config("fgad-tiny").model.backbone
    arrays = np.stack([preprocess(read_image(p), bb.image_size, bb.mean, bb.std) for p in paths])
    return paths, torch.from_numpy(arrays)


def test_export_module_equals_the_model(trained: FineGrainedAD, data_root: Path) -> None:
    """The graph's outputs, finished with the model's own steps, are the model's maps and scores."""
    _, images = _test_images(data_root)
    module = FgadExportModule(trained).eval()
    with torch.no_grad():
        tmap, prob, choice, *tokens = module(images)
        out = trained(images)
        g = trained.cfg.backbone.grid
        visual = (0.5 * trained.memory(tokens)).unflatten(1, (g, g))
        amap, score = fuse_and_score(tmap, visual, prob, trained.cfg.finegrained.output_size, trained.blur)
    assert torch.equal(tmap, out.text_map) and torch.equal(choice, out.best_description)
    assert torch.allclose(amap, out.anomaly_map, atol=1e-6) and torch.allclose(score, out.image_score, atol=1e-6)


def test_bundle_manifest_and_onnx_parity(bundle: Path, trained: FineGrainedAD, data_root: Path) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    bb, fc = trained.cfg.backbone, trained.cfg.finegrained
    assert manifest["post"] == runtime_post(trained.cfg)
    assert manifest["post"]["map_size"] == bb.grid and manifest["post"]["output_size"] == fc.output_size
    assert manifest["outputs"]["vl_map"] == [None, bb.grid, bb.grid]
    assert manifest["fewshot"]["layers"] == list(fc.gallery_layers) and manifest["fewshot"]["num_references"] == 2
    assert manifest["fewshot"]["references_from"] == "training shots"
    assert manifest["text"]["descriptions"] == list(trained.pair_names)
    assert manifest["model"]["method"] == "finegrained"
    parity = manifest["parity"]
    assert parity["best_description_mismatches"] == 0
    assert all(v <= TOL for k, v in parity.items() if k.startswith("max_abs_diff_"))
    assert manifest["text"]["approximation"]["max_abs_diff_anomaly_map"] <= 1e-5
    # on images the export never saw
    _, images = _test_images(data_root)
    got = run_onnx(bundle / "model.onnx", images.numpy())
    with torch.no_grad():
        want = FgadExportModule(trained)(images)
    for name, value in zip(FgadExportModule(trained).output_names, want, strict=True):
        if name == "best_description":
            assert np.array_equal(got[name], value.numpy())
        else:
            assert np.abs(got[name] - value.numpy()).max() <= TOL, name


def test_runtime_detector_matches_the_torch_model(bundle: Path, trained: FineGrainedAD, data_root: Path) -> None:
    from fgad.runtime.pipeline import Detector

    paths, images = _test_images(data_root)
    detector = Detector.from_bundle(bundle, knn="numpy")
    assert detector.num_references == 2
    results = detector.batch(paths)
    with torch.no_grad():
        out = trained(images)
    for i, r in enumerate(results):
        assert r.anomaly_map.shape == (trained.cfg.finegrained.output_size,) * 2
        assert np.abs(r.anomaly_map - out.anomaly_map[i].numpy()).max() <= TOL
        assert abs(r.score - float(out.image_score[i])) <= 1e-5
        assert abs(r.global_prob - float(out.global_prob[i])) <= 1e-5
        assert r.best_description == trained.pair_names[int(out.best_description[i])]
    auto = Detector.from_bundle(bundle, refs=list(trained.reference_paths), knn="numpy", threshold="auto")
    assert auto.threshold is not None and auto.loo_scores is not None and len(auto.loo_scores) == 2


def test_fgad_export_refuses_what_it_cannot_honour(trained: FineGrainedAD, tmp_path: Path) -> None:
    from fgad.export.bundle import resize_model

    with pytest.raises(ValueError, match="trained for class"):
        export_bundle(tmp_path / "b", trained, trained.cfg, "tile", refs=None)
    with pytest.raises(ValueError, match="frozen"):
        export_bundle(tmp_path / "b", trained, trained.cfg, CLASS, refs=None, text_mode="bank")
    with pytest.raises(ValueError, match="image-size"):
        resize_model(trained, 224, None)  # type: ignore[arg-type]
    assert not (tmp_path / "b").exists()


# ---------------------------------------------------------------------------------- runtime fusion


def _maps(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.05, 1.0, size=shape).astype(np.float32)


def test_default_fusion_is_filos_finish() -> None:
    vl, few, prob = _maps(0, (2, 28, 28)), _maps(1, (2, 7, 7)), _maps(2, (2,))
    spec = FusionSpec(sigma=4.0, truncate=4.0, map_size=28, output_size=28)
    for grid in (few, None):
        got = finish_maps(vl, prob, grid, spec)
        up = None if grid is None else upsample_align_corners(grid, 28)
        want = finish(vl, prob, up, 4.0, 4.0)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def test_harmonic_fusion_matches_the_torch_steps() -> None:
    text, dist, prob = _maps(3, (2, 7, 7)), _maps(4, (2, 7, 7)), _maps(5, (2,))
    spec = FusionSpec(sigma=4.0, truncate=4.0, map_size=7, output_size=40, fusion="harmonic", score="harmonic",
                      fewshot_scale=0.5, align_corners=False)
    amap, score = finish_maps(text, prob, dist, spec)
    blur = GaussianBlur(40, sigma=4.0, truncate=4.0)
    want_map, want_score = fuse_and_score(torch.from_numpy(text), 0.5 * torch.from_numpy(dist),
                                          torch.from_numpy(prob), 40, blur)
    assert np.abs(amap - want_map.numpy()).max() <= 1e-5
    assert np.abs(score - want_score.numpy()).max() <= 1e-6
    # by hand, no smoothing involved: the score is 1 / (1/p + 1/max Up(V))
    peak = upsample_half_pixel(0.5 * dist, 40).reshape(2, -1).max(axis=1)
    assert np.allclose(score, 1.0 / (1.0 / prob + 1.0 / peak), rtol=1e-5)


def test_box_priors_are_refused_for_finegrained(trained: FineGrainedAD, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    with pytest.raises(ValueError, match="box priors are FiLo\\+\\+'s"):
        export_bundle(out, trained, trained.cfg, CLASS, refs=None, box_prior="objectness")
    assert not out.exists()
