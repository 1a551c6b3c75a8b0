"""The grounding-dino prior: caption, anomaly words, box selection on constructed detector outputs (thresholds,
area filter, phrase filter, top-1 fallback), and a tiny randomly initialised Grounding DINO end to end."""

from __future__ import annotations

import json
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch

from fgad.config import GroundingConfig, load_config
from fgad.core.cells import position_index
from fgad.methods.filo.priors.grounding import (
    DetectorNotFoundError,
    GroundingDinoPrior,
    anomaly_keywords,
    build_caption,
    load_grounding_dino,
    phrase_has_anomaly_word,
    select_detections,
    tiny_random_grounding_dino,
)

#: The reason tests that build or load a detector skip where transformers is not installed.
DETECT_EXTRA = "the Grounding DINO prior needs the detect extra (transformers): pip install 'fgad[detect]'"
GENERIC = ["anomaly", "damage", "broken", "defect", "contamination"]


def _bank_phrases(name: str) -> list[str]:
    raw = resources.files("fgad.data").joinpath("banks", "magnetic_tile.json").read_text(encoding="utf-8")
    return json.loads(raw)[name]


def test_caption_is_the_generic_words_then_the_class_phrases() -> None:
    phrases = _bank_phrases("magnetic_tile")
    want = " . ".join(GENERIC + [p.lower() for p in phrases]) + "."
    assert build_caption("magnetic_tile") == want
    assert want.startswith("anomaly . damage . broken . defect . contamination . a chipped corner . ")
    assert build_caption("magnetic_tile", generic_words=("Defect",)).startswith("defect . a chipped corner")


def test_anomaly_keywords_are_content_words() -> None:
    words = anomaly_keywords("magnetic_tile")
    assert words[:5] == tuple(GENERIC)
    assert {"fracture", "pit", "chipped", "corner"} <= set(words)
    assert not {"a", "an", "on", "the"} & set(words)
    assert phrase_has_anomaly_word("a fracture", words) and phrase_has_anomaly_word("Cracked corner", words)
    assert not phrase_has_anomaly_word("a tile", words) and not phrase_has_anomaly_word("", words)


# ---------------------------------------------------------------------------------- constructed outputs

VOCAB = {1: "[CLS]", 2: "[SEP]", 3: ".", 10: "crack", 11: "tile", 12: "anomaly", 13: "the"}
IDS = [1, 12, 3, 10, 3, 11, 13, 3, 2]  # [CLS] anomaly . crack . tile the . [SEP]
SPECIAL = (1, 2, 3)
KEYWORDS = ("anomaly", "crack")


def _decode(ids: list[int]) -> str:
    return " ".join(VOCAB[i] for i in ids)


def _probs(rows: list[dict[int, float]], width: int = 12) -> torch.Tensor:
    """[Q, T] token probabilities: rows map token position -> probability (T wider than the caption)."""
    out = torch.zeros(len(rows), width)
    for q, row in enumerate(rows):
        for t, p in row.items():
            out[q, t] = p
    return out


def _select(probs: torch.Tensor, boxes: torch.Tensor, size: int = 112, **params: float):  # noqa: ANN202
    return select_detections(probs, boxes, IDS, _decode, KEYWORDS, GroundingConfig(**params), size, SPECIAL)


def test_thresholds_area_and_phrase_filter() -> None:
    probs = _probs([
        {3: 0.9},  # q0: "crack", confident, small: kept
        {1: 0.8},  # q1: "anomaly", but covers 80 % of the image: area filter
        {3: 0.2},  # q2: below the box threshold
        {5: 0.7, 6: 0.6},  # q3: "tile the": no anomaly word, phrase filter
        {3: 0.3, 1: 0.26, 7: 0.95, 8: 0.99},  # q4: best tokens "." and [SEP] (not in phrases): "anomaly crack"
        {1: 0.24, 3: 0.9, 11: 0.99},  # q5: column 11 lies past the caption: ignored; "crack" at 0.9
    ])
    boxes = torch.tensor([
        [0.25, 0.25, 0.2, 0.2], [0.5, 0.5, 0.9, 0.9], [0.5, 0.5, 0.1, 0.1],
        [0.5, 0.5, 0.2, 0.2], [0.8, 0.5, 0.2, 0.4], [0.1, 0.9, 0.2, 0.2],
    ])
    det = _select(probs, boxes)
    assert det.queries == [0, 4, 5] and not det.fallback
    assert det.candidates == 4  # q0, q3, q4, q5 pass threshold and area; q3 loses its phrase
    assert det.phrases == ["crack", "anomaly crack", "crack"]
    torch.testing.assert_close(det.scores, torch.tensor([0.9, 0.99, 0.9]))
    want = [[(cx - w / 2) * 112, (cy - h / 2) * 112, (cx + w / 2) * 112, (cy + h / 2) * 112]
            for cx, cy, w, h in boxes[[0, 4, 5]].tolist()]
    torch.testing.assert_close(det.boxes, torch.tensor(want).clamp(0, 112))


def test_text_threshold_is_its_own_threshold() -> None:
    # CODE-FiLo passed the box threshold as the text threshold (P6); here they are separate
    probs = _probs([{3: 0.5, 1: 0.3}])
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    assert _select(probs, boxes).phrases == ["anomaly crack"]  # both tokens above 0.25
    assert _select(probs, boxes, text_threshold=0.4).phrases == ["crack"]
    assert _select(probs, boxes, text_threshold=0.6).phrases == []  # no phrase left: dropped
    assert _select(probs, boxes, box_threshold=0.6).fallback  # the only box fails: top-1 fallback keeps it


def test_top1_fallback_when_nothing_passes() -> None:
    probs = _probs([{3: 0.1}, {1: 0.2}, {5: 0.15}])
    boxes = torch.tensor([[0.5, 0.5, 0.1, 0.1], [0.7, 0.2, 0.95, 0.95], [0.2, 0.2, 0.1, 0.1]])
    det = _select(probs, boxes, text_threshold=0.05)
    # the top-1 box by score (q1) is kept even though it is large (fallback ignores the area filter)
    assert det.fallback and det.candidates == 0 and det.queries == [1] and det.phrases == ["anomaly"]
    assert det.boxes[0].tolist() == pytest.approx([(0.7 - 0.475) * 112, 0.0, 112.0, (0.2 + 0.475) * 112])
    # its phrase has no anomaly word: nothing is kept
    probs[1, 1], probs[1, 5] = 0.0, 0.2
    det = _select(probs, boxes, text_threshold=0.05)
    assert det.fallback and det.queries == [] and det.boxes.shape == (0, 4)


@pytest.mark.parametrize("size", [112, 224, 518, 97])
def test_boxes_are_pixels_at_the_model_size(size: int) -> None:
    probs = _probs([{3: 0.9}])
    boxes = torch.tensor([[0.5, 0.25, 0.5, 0.3]])
    det = _select(probs, boxes, size=size)
    torch.testing.assert_close(det.boxes[0], torch.tensor([0.25 * size, 0.10 * size, 0.75 * size, 0.40 * size]))


# ---------------------------------------------------------------------------------- the tiny detector


@pytest.fixture(scope="module")
def tiny_detector(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    pytest.importorskip("transformers", reason=DETECT_EXTRA)
    folder = tmp_path_factory.mktemp("tiny_gdino")
    detector, tokenizer = tiny_random_grounding_dino(folder, seed=0)
    return folder, detector, tokenizer


@pytest.fixture(scope="module")
def tiny_prior(tiny_detector) -> GroundingDinoPrior:  # noqa: ANN001
    _, detector, tokenizer = tiny_detector
    cfg = load_config("tiny-test").model
    # thresholds low enough that a random detector keeps several boxes
    params = GroundingConfig(box_threshold=0.05, text_threshold=0.05, max_area=0.9)
    return GroundingDinoPrior(detector, tokenizer, params, cfg.backbone)


def test_tiny_detector_tokenises_the_caption_with_bert_delimiters(tiny_prior: GroundingDinoPrior) -> None:
    text = tiny_prior.text("magnetic_tile")
    ids = text["inputs"]["input_ids"][0].tolist()
    tokens = tiny_prior.tokenizer.convert_ids_to_tokens(ids)
    assert ids[0] == 101 and ids[-1] == 102 and 1012 in ids  # [CLS], [SEP], "." as Grounding DINO expects
    assert "[UNK]" not in tokens
    assert tiny_prior.tokenizer.decode(ids, skip_special_tokens=True).replace(" .", ".").startswith(
        "anomaly. damage. broken")
    assert 1012 in text["special_ids"] and 101 in text["special_ids"]


@torch.no_grad()
def test_tiny_detector_end_to_end(tiny_prior: GroundingDinoPrior) -> None:
    gen = torch.Generator().manual_seed(3)
    images = torch.randn(2, 3, 112, 112, generator=gen)
    result = tiny_prior(images, "magnetic_tile")
    probs, boxes = tiny_prior.detect(images, "magnetic_tile")
    assert probs.shape[:2] == boxes.shape[:2] == (2, tiny_prior.detector.config.num_queries)
    dets = tiny_prior.select(probs, boxes, "magnetic_tile")
    assert result.region is not None and result.region.shape == (2, 1, 112, 112)
    assert result.boxes is not None and result.valid is not None and result.phrases is not None
    for b, det in enumerate(dets):
        n = len(det.phrases)
        assert int(result.valid[b].sum()) == n and result.phrases[b] == det.phrases
        torch.testing.assert_close(result.boxes[b, :n], det.boxes)
        if n:
            best = int(det.scores.argmax())
            x0, y0, x1, y1 = det.boxes[best].tolist()
            assert int(result.position[b]) == position_index((x0 + x1) / 2, (y0 + y1) / 2, 112)
        assert float(result.boxes[b].min()) >= 0.0 and float(result.boxes[b].max()) <= 112.0
    assert result.positions.sum(dim=1).tolist() == [1.0, 1.0]


@torch.no_grad()
def test_detector_input_is_imagenet_normalised(tiny_prior: GroundingDinoPrior) -> None:
    bb = load_config("tiny-test").model.backbone
    rgb = torch.rand(1, 3, 112, 112)
    clip_in = (rgb - torch.tensor(bb.mean).view(1, 3, 1, 1)) / torch.tensor(bb.std).view(1, 3, 1, 1)
    pixels = tiny_prior.pixel_values(clip_in)
    assert pixels.shape == (1, 3, 518, 518)
    up = torch.nn.functional.interpolate(rgb, size=(518, 518), mode="bilinear", align_corners=False)
    want = (up - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(
        1, 3, 1, 1)
    torch.testing.assert_close(pixels, want, atol=1e-5, rtol=0)


@torch.no_grad()
def test_load_from_a_local_folder(tiny_detector, tmp_path: Path) -> None:  # noqa: ANN001
    _, detector, tokenizer = tiny_detector
    folder = tmp_path / "gdino"
    detector.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    loaded, loaded_tok = load_grounding_dino(folder)
    ids = loaded_tok("anomaly . a crack.", return_tensors="pt")
    assert ids["input_ids"].tolist() == tokenizer("anomaly . a crack.", return_tensors="pt")["input_ids"].tolist()
    x = torch.randn(1, 3, 128, 128)
    a = detector(pixel_values=x, **ids)
    b = loaded(pixel_values=x, **ids)
    torch.testing.assert_close(a.logits, b.logits)
    torch.testing.assert_close(a.pred_boxes, b.pred_boxes)


def test_clear_errors_for_missing_weights(tmp_path: Path) -> None:
    pytest.importorskip("transformers", reason=DETECT_EXTRA)
    with pytest.raises(DetectorNotFoundError, match="not in the Hugging Face cache"):
        load_grounding_dino("fgad-tests/no-such-grounding-dino", local_files_only=True)
    with pytest.raises(DetectorNotFoundError, match="not a Grounding DINO folder"):
        load_grounding_dino(tmp_path)
    with pytest.raises(DetectorNotFoundError, match="not a folder"):
        load_grounding_dino(str(tmp_path / "missing"))


def test_missing_transformers_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from fgad.backbone.compat import import_grounding_dino

    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ModuleNotFoundError, match=r"fgad\[detect\]"):
        import_grounding_dino()


def test_shimmed_torchvision_ops_fail_clearly() -> None:
    pytest.importorskip("transformers", reason=DETECT_EXTRA)
    from fgad.backbone import compat as _compat

    _compat.import_grounding_dino()
    if not _compat._library_keepalive:
        pytest.skip("torchvision's own C++ ops loaded here: no schema was shimmed, nothing to check")
    with pytest.raises(_compat.TorchvisionOpUnavailable, match="torchvision::nms"):
        torch.ops.torchvision.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)


@pytest.mark.slow
@torch.no_grad()
def test_tiny_detector_exports_to_its_own_onnx(tiny_prior: GroundingDinoPrior, tmp_path: Path) -> None:
    import onnxruntime as ort

    from fgad.methods.filo.priors.grounding import export_grounding_onnx

    path = export_grounding_onnx(tiny_prior, "magnetic_tile", tmp_path / "gdino.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = torch.randn(1, 3, 112, 112, generator=torch.Generator().manual_seed(5))
    probs, boxes = session.run(["probs", "boxes"], {"pixel_values": tiny_prior.pixel_values(images).numpy()})
    want_probs, want_boxes = tiny_prior.detect(images, "magnetic_tile")
    np.testing.assert_allclose(probs, want_probs.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(boxes, want_boxes.numpy(), atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------- fgad-eval


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fgad.data.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("gd_data"), classes=("disc",), n_train_good=1,
                                  n_test_good=2, n_test_defect=2, image_size=112, seed=3)


def test_fgad_eval_with_the_detector(tiny_detector, synthetic_root: Path, tmp_path: Path) -> None:  # noqa: ANN001
    from click.testing import CliRunner

    from fgad.cli.eval import main as eval_main

    _, detector, tokenizer = tiny_detector
    folder = tmp_path / "gdino"
    detector.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    base = ["--config", "tiny-test", "--pretrained", "none", "--data", str(synthetic_root), "--overlays", "0",
            "--no-progress", "--box-prior", "grounding-dino"]
    res = CliRunner().invoke(eval_main, [*base, "--out", str(tmp_path / "a")])
    assert res.exit_code == 1 and "--box-model" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(eval_main, [*base, "--box-model", str(folder), "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert metrics["settings"]["box_prior"] == "grounding-dino" and metrics["settings"]["box_model"] == str(folder)
    predictions = [json.loads(line) for line in (tmp_path / "b" / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == metrics["classes"]["disc"]["images"] >= 4
    for p in predictions:
        assert p["position"] in {"top left", "top", "top right", "left", "center", "right", "bottom left", "bottom",
                                 "bottom right"}
        assert len(p["boxes"]) == len(p["phrases"])
