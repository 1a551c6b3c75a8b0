"""Runtime vs PyTorch on real defect images (magnetic tile), for both deform flavours and text modes.

The PyTorch side is the exported graph's own module (frozen or bank text) finished with the
contract's steps in torch (few-shot memory, smoothing, score); the runtime side is
``fgad.runtime.Detector`` on the written bundle (ONNX Runtime, numpy/FAISS memory, OpenCV
smoothing). Maps and scores must agree to 1e-4 and the image/pixel AUROCs of both paths to 1e-3.
Skipped, with the reason, where ../shared/data is absent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fgad.core.metrics import image_auroc, pixel_auroc
from fgad.data.datasets import discover, load_sample_arrays
from fgad.export.bundle import export_bundle, load_reference_images
from fgad.methods.filo.export_module import FiloExportModule
from fgad.methods.filo.frozen_text import freeze_text, freeze_text_bank
from tests.helpers.tiny import make_config, make_model

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "magnetic_tile"
CLASS = "magnetic_tile"
COMBOS_FAST = [("frozen", "decomposed"), ("bank", "onnx")]
COMBOS_SLOW = [("frozen", "onnx"), ("bank", "decomposed")]

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def real() -> dict:
    if not DATA.is_dir():
        pytest.skip(f"real data not found at {DATA} (the shared data folder beside the repository)")
    model = make_model(make_config())
    size = model.cfg.backbone.image_size
    refs = [s.image_path for s in discover(DATA, "train", [CLASS])[:2]]
    test = discover(DATA, "test", [CLASS])
    picks = [test[i] for i in np.linspace(0, len(test) - 1, 16).round().astype(int)]
    arrays = [load_sample_arrays(s, size, model.cfg.backbone.mean, model.cfg.backbone.std) for s in picks]
    return {
        "model": model,
        "refs": refs,
        "samples": picks,
        "images": torch.from_numpy(np.stack([a[0] for a in arrays])),
        "masks": np.stack([a[1] > 0.5 for a in arrays]),
        "labels": np.array([s.label for s in picks]),
    }


def _torch_path(real: dict, text_mode: str) -> tuple[np.ndarray, np.ndarray]:
    model = real["model"]
    ref_images = load_reference_images(real["refs"], model.cfg)
    text = (freeze_text if text_mode == "frozen" else freeze_text_bank)(model, CLASS, ref_images)
    module = FiloExportModule(model, text).eval()
    with torch.no_grad():
        vl, prob, *_ = module(real["images"])
        model.set_reference_images(ref_images)
        try:
            few = model.fewshot_map(model.encode_images(real["images"]))
        finally:
            model.clear_memory()
        amap = model.blur(((vl + few) / 2).unsqueeze(1))[:, 0]
        score = 0.5 * (prob + amap.flatten(1).amax(dim=1))
    return amap.numpy(), score.numpy()


def _check(real: dict, tmp_path: Path, text_mode: str, deform: str) -> None:
    from fgad.runtime.pipeline import Detector

    model = real["model"]
    bundle = export_bundle(
        tmp_path / "bundle", model, model.cfg, CLASS, real["refs"], text_mode=text_mode, deform=deform
    )
    detector = Detector.from_bundle(bundle, knn="numpy")
    results = [detector(s.image_path) for s in real["samples"]]
    rt_maps = np.stack([r.anomaly_map for r in results])
    rt_scores = np.array([r.score for r in results])
    pt_maps, pt_scores = _torch_path(real, text_mode)

    np.testing.assert_allclose(rt_maps, pt_maps, atol=1e-4)
    np.testing.assert_allclose(rt_scores, pt_scores, atol=1e-4)
    labels, masks = real["labels"], real["masks"]
    assert abs(image_auroc(labels, rt_scores) - image_auroc(labels, pt_scores)) <= 1e-3
    assert abs(pixel_auroc(masks, rt_maps) - pixel_auroc(masks, pt_maps)) <= 1e-3


@pytest.mark.parametrize(("text_mode", "deform"), COMBOS_FAST)
def test_runtime_matches_pytorch_on_real_images(real: dict, tmp_path: Path, text_mode: str, deform: str) -> None:
    _check(real, tmp_path, text_mode, deform)


@pytest.mark.slow
@pytest.mark.parametrize(("text_mode", "deform"), COMBOS_SLOW)
def test_runtime_matches_pytorch_on_real_images_other_combinations(
    real: dict, tmp_path: Path, text_mode: str, deform: str
) -> None:
    _check(real, tmp_path, text_mode, deform)
