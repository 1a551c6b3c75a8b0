"""The objectness prior and position selection inside the exported graph: wrapper = FiLoPlusPlus, ONNX =
PyTorch, runtime Detector = the PyTorch pipeline; grounding-dino is refused with a message that says why.

The random tiny model's "objectness" means nothing, so the threshold is set high (0.999) for these tests: the
foreground is then a few scattered cells whose box and centre cell differ between images, which exercises the
gather of the position pairs and the suppression (checked by ``test_the_inputs_exercise_the_prior``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fgad.config import Config, load_config
from fgad.core.cells import NUM_POSITIONS, POSITIONS
from fgad.export.bundle import export_bundle, list_reference_images, load_reference_images
from fgad.export.onnx_export import TOLERANCES, check_against_torch
from fgad.methods.filo.export_module import FiloExportModule, output_names
from fgad.methods.filo.frozen_text import freeze_text, freeze_text_bank
from fgad.methods.filo.model import FiLoPlusPlus
from fgad.methods.filo.priors.base import one_hot_positions
from fgad.methods.filo.priors.registry import build_box_prior
from fgad.methods.filo.scoring import l2n
from tests.helpers.tiny import CLASS_NAME, MINI_HEADS, make_images, make_model

EXACT = 1e-6
THRESHOLD = 0.999


def prior_config() -> Config:
    """The mini CoOp model of conftest (per-image filtering) with the objectness prior in its config."""
    model: dict[str, Any] = {"prompts": {"banks": ["synthetic"], "conditioning": "coop", "filtering": True},
                             "post": {"box_prior": "objectness", "objectness": {"threshold": THRESHOLD}}}
    model.update(MINI_HEADS)
    return load_config("tiny-test", {"model": model})


@pytest.fixture(scope="module")
def model() -> FiLoPlusPlus:
    return make_model(prior_config(), seed=5)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return make_images(6)


def _split(outputs: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
    vl, prob, best, *rest = outputs
    return {"vl_map": vl, "global_prob": prob, "best_description": best, "position": rest[-2],
            "region_weight": rest[-1]}


@torch.no_grad()
def test_the_inputs_exercise_the_prior(model: FiLoPlusPlus, images: torch.Tensor) -> None:
    prior = build_box_prior("objectness", model=model)(images, CLASS_NAME)
    assert len(set(prior.position.tolist())) > 1  # different cells, so the gather matters
    assert float(prior.region.amin()) == 0.0  # some pixels lie outside the box, so suppression matters


@torch.no_grad()
def test_frozen_wrapper_gathers_the_position_pair_like_the_model(model: FiLoPlusPlus, images: torch.Tensor) -> None:
    # no references: no filtering, and CoOp context does not depend on the image, so freezing is exact
    text = freeze_text(model, CLASS_NAME, None, per_position=True)
    wrapper = FiloExportModule(model, text).eval()  # box prior from the config: objectness
    assert wrapper.output_names == output_names(model.cfg.fewshot.memory_layers, "objectness")
    got = _split(wrapper(images))
    prior = build_box_prior("objectness", model=model)
    exact = model(images, CLASS_NAME, filtering=False, use_memory=False, box_prior=prior)
    torch.testing.assert_close(got["vl_map"], exact.vl_map, atol=EXACT, rtol=0)
    torch.testing.assert_close(got["global_prob"], exact.global_prob, atol=EXACT, rtol=0)
    assert torch.equal(got["best_description"], exact.best_description)
    assert torch.equal(got["position"], exact.prior.position) and got["position"].dtype == torch.int64
    lam = model.cfg.post.suppression
    torch.testing.assert_close(got["region_weight"], exact.prior.region[:, 0] * (1 - lam) + lam)


@torch.no_grad()
def test_bank_wrapper_masks_other_positions_and_filters_per_image(model: FiLoPlusPlus, images: torch.Tensor) -> None:
    wrapper = FiloExportModule(model, freeze_text_bank(model, CLASS_NAME, None), box_prior="objectness").eval()
    got = _split(wrapper(images))
    exact = model(images, CLASS_NAME, use_memory=False, box_prior=build_box_prior("objectness", model=model))
    torch.testing.assert_close(got["vl_map"], exact.vl_map, atol=EXACT, rtol=0)
    torch.testing.assert_close(got["global_prob"], exact.global_prob, atol=EXACT, rtol=0)
    assert torch.equal(got["best_description"], exact.best_description)


@torch.no_grad()
def test_position_pairs_are_filtered_within_each_position(model: FiLoPlusPlus, refs_dir: Path) -> None:
    refs = load_reference_images(list_reference_images(refs_dir), model.cfg)
    text = freeze_text(model, CLASS_NAME, refs, per_position=True)
    assert text.position_normal is not None and text.position_abnormal is not None
    assert text.position_normal.shape == (NUM_POSITIONS, model.cfg.backbone.embed_dim)
    feats = model.encode_images(refs)
    condition = l2n(feats.global_embed.mean(dim=0, keepdim=True))
    adapted = l2n(model.adapted_global(feats.global_embed).mean(dim=0, keepdim=True))
    for p in range(NUM_POSITIONS):
        pair = model.text_pair(CLASS_NAME, condition, adapted, one_hot_positions(torch.tensor([p])), filtering=True)
        torch.testing.assert_close(text.position_normal[p], pair.t_normal[0], atol=EXACT, rtol=0)
        torch.testing.assert_close(text.position_abnormal[p], pair.t_abnormal[0], atol=EXACT, rtol=0)
        assert text.position_kept_abnormal[p] == int(pair.keep_abnormal[0].sum())
    summary = text.summary()
    assert summary["positions"].startswith("per image") and len(summary["kept_abnormal_per_position"]) == 9


def test_none_keeps_the_graph_and_other_priors_are_refused(model: FiLoPlusPlus) -> None:
    text = freeze_text(model, CLASS_NAME, None)
    plain = FiloExportModule(model, text, box_prior="none")
    assert plain.output_names == output_names(model.cfg.fewshot.memory_layers)
    assert plain.objectness is None
    assert not {"abnormal_position", "position_normal", "position_abnormal"} & set(plain.state_dict())
    with pytest.raises(ValueError, match="per_position=True"):
        FiloExportModule(model, text)  # objectness in frozen mode needs the 9 pairs
    with pytest.raises(ValueError, match="PyTorch path"):
        FiloExportModule(model, text, box_prior="grounding-dino")


def test_write_bundle_refuses_grounding_dino(model: FiLoPlusPlus, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"fgad-eval --box-prior grounding-dino"):
        export_bundle(tmp_path / "b", model, model.cfg, CLASS_NAME, None, box_prior="grounding-dino")
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------- ONNX and runtime


@pytest.fixture(scope="module")
def prior_bundle(model: FiLoPlusPlus, refs_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Bank text (exact for CoOp + per-image filtering), references, objectness in the graph; export_bundle itself
    checks onnxruntime against PyTorch on the references and refuses to write on a mismatch."""
    out = tmp_path_factory.mktemp("prior") / "bundle"
    return export_bundle(out, model, model.cfg, CLASS_NAME, list_reference_images(refs_dir), text_mode="bank")


def test_manifest_records_the_prior(prior_bundle: Path, model: FiLoPlusPlus) -> None:
    manifest = json.loads((prior_bundle / "manifest.json").read_text())
    entry = manifest["box_prior"]
    assert entry["name"] == "objectness" and entry["in_graph"] is True
    assert entry["outputs"] == ["position", "region_weight"] and entry["suppression"] == model.cfg.post.suppression
    assert entry["params"]["threshold"] == THRESHOLD
    assert manifest["outputs"]["position"] == [None] and manifest["outputs"]["region_weight"] == [None, 112, 112]
    assert manifest["parity"]["max_abs_diff_region_weight"] <= TOLERANCES["default"]
    assert manifest["text"]["approximation"]["box_prior"] == "objectness"
    assert manifest["text"]["approximation"]["max_abs_diff_image_score"] < 1e-5  # exact text: CoOp + bank


def test_onnx_matches_torch_on_varied_positions(prior_bundle: Path, model: FiLoPlusPlus, images: torch.Tensor) -> None:
    module = FiloExportModule(model, freeze_text_bank(model, CLASS_NAME, None), box_prior="objectness").eval()
    report = check_against_torch(module, prior_bundle / "model.onnx", images)
    assert report["max_abs_diff_position"] == 0.0
    assert report["max_abs_diff_region_weight"] <= TOLERANCES["default"]
    assert report["max_abs_diff_vl_map"] <= TOLERANCES["vl_map"] and report["best_description_mismatches"] == 0


def _torch_pipeline(model: FiLoPlusPlus, refs: torch.Tensor, x: torch.Tensor) -> Any:
    model.set_reference_images(refs)
    try:
        with torch.no_grad():
            return model(x, CLASS_NAME, box_prior=build_box_prior("objectness", model=model))
    finally:
        model.clear_memory()


def test_runtime_detector_matches_the_torch_model(prior_bundle: Path, model: FiLoPlusPlus, refs_dir: Path,
                                                  data_root: Path) -> None:
    from fgad.core.io import read_image
    from fgad.runtime.pipeline import Detector

    detector = Detector.from_bundle(prior_bundle, knn="numpy")
    refs = load_reference_images(list_reference_images(refs_dir), model.cfg)
    gen = np.random.default_rng(0)
    frames = [read_image(p) for p in sorted((data_root / CLASS_NAME / "test").glob("*/*.png"))]
    frames += [gen.integers(0, 256, (112, 112, 3), dtype=np.uint8) for _ in range(3)]  # noise: varied boxes
    x = torch.stack([load_reference_images_from_array(f, model) for f in frames])
    exact = _torch_pipeline(model, refs, x)
    results = detector.batch(frames)
    for i, result in enumerate(results):
        np.testing.assert_allclose(result.anomaly_map, exact.anomaly_map[i].numpy(), atol=1e-4, rtol=0)
        assert result.score == pytest.approx(float(exact.image_score[i]), abs=1e-4)
        assert result.position == POSITIONS[int(exact.prior.position[i])]
        assert result.to_dict()["position"] == result.position
    assert float(exact.prior.region.amin()) == 0.0  # the few-shot map was suppressed somewhere


def load_reference_images_from_array(rgb: np.ndarray, model: FiLoPlusPlus) -> torch.Tensor:
    from fgad.core.transforms import preprocess

    bb = model.cfg.backbone
    return torch.from_numpy(preprocess(rgb, bb.image_size, bb.mean, bb.std).astype(np.float32))


def test_leave_one_out_uses_the_references_own_region(prior_bundle: Path, refs_dir: Path) -> None:
    from fgad.runtime.pipeline import Detector

    paths = list_reference_images(refs_dir)
    detector = Detector.from_bundle(prior_bundle, refs=paths, threshold="auto", knn="numpy")
    loo = detector.leave_one_out_scores()
    for i, path in enumerate(paths):  # independent: a detector holding the other references scores reference i
        others = Detector.from_bundle(prior_bundle, refs=[p for j, p in enumerate(paths) if j != i], knn="numpy")
        assert float(loo[i]) == pytest.approx(others(path).score, abs=1e-5)


def test_runtime_refuses_priors_it_cannot_run(prior_bundle: Path, tmp_path: Path) -> None:
    from fgad.bundle import BundleError
    from fgad.bundle.digest import write_digest
    from fgad.runtime.pipeline import Detector

    def edited(change: dict[str, Any]) -> Path:
        """A copy whose manifest a writer could have written so (its digest matches): the checks of the prior."""
        copy = tmp_path / f"b{len(list(tmp_path.iterdir()))}"
        shutil.copytree(prior_bundle, copy)
        manifest = json.loads((copy / "manifest.json").read_text())
        manifest["box_prior"].update(change)
        (copy / "manifest.json").write_text(json.dumps(manifest))
        write_digest(copy)
        return copy

    with pytest.raises(BundleError, match="PyTorch path") as info:
        Detector.from_bundle(edited({"name": "grounding-dino"}))
    assert info.value.field == "box_prior.name"
    with pytest.raises(BundleError, match="box_prior.outputs") as info:
        Detector.from_bundle(edited({"outputs": ["position"]}))
    assert info.value.field == "box_prior.outputs"
    with pytest.raises(BundleError, match="'yolo'"):
        Detector.from_bundle(edited({"name": "yolo"}))


def test_cli_export_refuses_grounding_dino_before_loading_anything(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from fgad.cli.export import main as export_main

    out = tmp_path / "bundle"
    result = CliRunner().invoke(export_main, ["--checkpoint", str(tmp_path / "missing"), "--class-name", CLASS_NAME,
                                              "--box-prior", "grounding-dino", "--out", str(out)])
    assert result.exit_code == 1
    assert "runs only on the PyTorch path" in result.output and "fgad-eval --box-prior grounding-dino" in result.output
    assert not out.exists()
