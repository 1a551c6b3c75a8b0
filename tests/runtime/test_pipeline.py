"""Detector end to end on hand-made bundles and synthetic images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from fgad.bundle import BundleError
from fgad.core.transforms import preprocess
from fgad.runtime.pipeline import AUTO_MARGIN_FRACTION, AUTO_MARGIN_MIN, Detector, Result
from tests.helpers.fake_bundle import DESCRIPTIONS, FakeBundle, make_bundle
from tests.helpers.references import scipy_ndimage


def _reference_outputs(bundle: FakeBundle, image: np.ndarray, refs: list[np.ndarray]) -> tuple[np.ndarray, float]:
    """The contract computed independently: onnxruntime + float64 brute force + scipy (no runtime code)."""
    session = ort.InferenceSession(str(bundle.path / "model.onnx"), providers=["CPUExecutionProvider"])
    names = ["vl_map", "global_prob"] + [f"tokens_{layer}" for layer in bundle.layers]

    def run(img: np.ndarray) -> dict[str, np.ndarray]:
        outs = session.run(names, {"image": preprocess(img, bundle.size)[None]})
        return dict(zip(names, outs, strict=True))

    query = run(image)
    fused = query["vl_map"][0].astype(np.float64)
    if refs:
        ref_outs = [run(r) for r in refs]
        dist = np.zeros(bundle.grid**2)
        for layer in bundle.layers:
            memory = np.concatenate([o[f"tokens_{layer}"][0] for o in ref_outs]).astype(np.float64)
            memory /= np.linalg.norm(memory, axis=1, keepdims=True)
            tokens = query[f"tokens_{layer}"][0].astype(np.float64)
            tokens /= np.linalg.norm(tokens, axis=1, keepdims=True)
            dist += 1.0 - (tokens @ memory.T).max(axis=1)
        dist = (dist / len(bundle.layers)).reshape(bundle.grid, bundle.grid)
        coords = np.linspace(0, bundle.grid - 1, bundle.size)
        yy, xx = np.meshgrid(coords, coords, indexing="ij")
        few = scipy_ndimage().map_coordinates(dist, [yy, xx], order=1)
        fused = (fused + few) / 2
    amap = scipy_ndimage().gaussian_filter(fused, 4.0, mode="reflect", truncate=4.0)
    return amap, 0.5 * (float(query["global_prob"][0]) + float(amap.max()))


def test_zero_shot_result(shared_bundle: FakeBundle, test_images: list[np.ndarray]) -> None:
    det = Detector.from_bundle(shared_bundle.path)
    assert det.num_references == 0 and det.threshold == 0.9 and det.class_name == "tile"
    res = det(test_images[0])
    assert isinstance(res, Result)
    assert res.anomaly_map.shape == (32, 32) and res.anomaly_map.dtype == np.float32
    assert set(res.timings) == {"preprocess", "engine", "fewshot", "post"}
    assert res.best_description in DESCRIPTIONS and res.threshold == 0.9
    assert res.is_anomalous == (res.score >= 0.9)
    amap, score = _reference_outputs(shared_bundle, test_images[0], [])
    np.testing.assert_allclose(res.anomaly_map, amap, atol=1e-5)
    assert res.score == pytest.approx(score, abs=1e-5)
    line = json.loads(res.to_json())
    assert line["score"] == pytest.approx(res.score, abs=1e-6) and "anomaly_map" not in line
    assert len(json.loads(res.to_json(include_map=True))["anomaly_map"]) == 32


@pytest.mark.parametrize("knn", ["faiss", "numpy"])
def test_few_shot_matches_the_contract(shared_bundle: FakeBundle, good_images: list[np.ndarray],
                                       test_images: list[np.ndarray], knn: str) -> None:
    if knn == "faiss":
        pytest.importorskip("faiss")
    det = Detector.from_bundle(shared_bundle.path, refs=good_images[:3], knn=knn)
    assert det.num_references == 3 and det.memory is not None
    for image in test_images[:4]:
        res = det(image)
        amap, score = _reference_outputs(shared_bundle, image, good_images[:3])
        np.testing.assert_allclose(res.anomaly_map, amap, atol=2e-5)
        assert res.score == pytest.approx(score, abs=2e-5)


def test_batch_equals_single_calls(shared_bundle: FakeBundle, good_images: list[np.ndarray],
                                   test_images: list[np.ndarray]) -> None:
    det = Detector.from_bundle(shared_bundle.path, refs=good_images[:2])
    batch = det.batch(test_images, batch_size=4)
    assert len(batch) == len(test_images)
    for image, res in zip(test_images, batch, strict=True):
        single = det(image)
        assert res.score == pytest.approx(single.score, abs=1e-5)
        np.testing.assert_allclose(res.anomaly_map, single.anomaly_map, atol=1e-5)


def test_references_added_later_change_scores(shared_bundle: FakeBundle, good_images: list[np.ndarray]) -> None:
    det = Detector.from_bundle(shared_bundle.path)
    image = good_images[3]
    zero_shot = det(image)
    assert det.add_references(good_images[:2]) == 2 and det.num_references == 2
    few_shot = det(image)
    assert few_shot.score != pytest.approx(zero_shot.score, abs=1e-4)

    det.add_references([image])  # the image itself joins the memory: its few-shot distance is ~0
    tokens = det.backend.run(preprocess(image, 32)[None], ["tokens_3", "tokens_6"])
    dist = det.memory.min_distance({3: tokens["tokens_3"], 6: tokens["tokens_6"]})
    assert np.abs(dist).max() < 1e-5
    res = det(image)
    vl = det.backend.run(preprocess(image, 32)[None], ["vl_map"])["vl_map"][0]
    expected = scipy_ndimage().gaussian_filter(vl / 2, 4.0, mode="reflect")
    np.testing.assert_allclose(res.anomaly_map, expected, atol=1e-5)
    assert res.score < few_shot.score

    det.clear_references()
    assert det(image).score == pytest.approx(zero_shot.score, abs=1e-6)


def test_bundle_references_and_replacement(refs_bundle: FakeBundle, good_images: list[np.ndarray],
                                           tmp_path: Path) -> None:
    det = Detector.from_bundle(refs_bundle.path)
    assert det.num_references == 3
    amap, score = _reference_outputs(refs_bundle, good_images[3], good_images[:3])
    assert det(good_images[3]).score == pytest.approx(score, abs=2e-5)
    assert det(good_images[0]).anomaly_map.max() < amap.max() + 1e-6  # a reference scores low

    other = Detector.from_bundle(refs_bundle.path, refs=good_images[3:4])  # refs replace the bundle's memory
    assert other.num_references == 1
    assert other(good_images[3]).score < det(good_images[3]).score

    det.save_references(tmp_path / "mine.npz")
    again = Detector.from_bundle(refs_bundle.path, refs=tmp_path / "mine.npz")
    assert again.num_references == 3
    assert again(good_images[3]).score == pytest.approx(det(good_images[3]).score, abs=1e-6)


def test_refs_from_a_folder(shared_bundle: FakeBundle, good_dir: Path, good_images: list[np.ndarray]) -> None:
    det = Detector.from_bundle(shared_bundle.path, refs=good_dir)
    assert det.num_references == len(good_images)
    det2 = Detector.from_bundle(shared_bundle.path, refs=str(good_dir / "*.png"))
    assert det2(good_images[0]).score == pytest.approx(det(good_images[0]).score, abs=1e-6)


def test_threshold_auto_is_leave_one_out(shared_bundle: FakeBundle, good_images: list[np.ndarray]) -> None:
    refs = good_images[:4]
    det = Detector.from_bundle(shared_bundle.path, refs=refs, threshold="auto")
    loo = det.loo_scores
    assert loo is not None and loo.shape == (4,)
    # each leave-one-out score is the score of that image against a detector holding the other references
    for j in range(4):
        others = Detector.from_bundle(shared_bundle.path, refs=[r for i, r in enumerate(refs) if i != j])
        assert loo[j] == pytest.approx(others(refs[j]).score, abs=1e-5)
    spread = float(loo.max() - loo.min())
    expected = float(loo.max()) + max(AUTO_MARGIN_MIN, AUTO_MARGIN_FRACTION * spread)
    assert det.threshold == pytest.approx(expected)
    assert det.threshold_rule.startswith("auto")
    assert all(not det(r).is_anomalous for r in refs)  # references sit below their own threshold

    before = det.threshold
    det.add_references([good_images[0][::-1].copy()])  # a flipped part: the rule runs again over 5 images
    assert det.loo_scores is not None and det.loo_scores.shape == (5,) and det.threshold != before


def test_threshold_auto_needs_two_reference_images(shared_bundle: FakeBundle, refs_bundle: FakeBundle,
                                                   good_images: list[np.ndarray]) -> None:
    with pytest.raises(ValueError, match="at least 2 reference images"):
        Detector.from_bundle(shared_bundle.path, refs=good_images[:1], threshold="auto")
    with pytest.raises(ValueError, match="at least 2 reference images"):
        Detector.from_bundle(shared_bundle.path, threshold="auto")
    with pytest.raises(ValueError, match="features, not images"):
        Detector.from_bundle(refs_bundle.path, threshold="auto")  # references.npz only


def test_threshold_values(shared_bundle: FakeBundle, good_images: list[np.ndarray]) -> None:
    det = Detector.from_bundle(shared_bundle.path, threshold="0.25")
    assert det.threshold == 0.25 and det(good_images[0]).is_anomalous is True
    det.set_threshold(10.0)
    assert det(good_images[0]).is_anomalous is False
    det.set_threshold(None)
    assert det.threshold == 0.9
    with pytest.raises(ValueError, match="number or 'auto'"):
        det.set_threshold("high")


def test_no_threshold_in_manifest_means_no_decision(bundle: FakeBundle, good_images: list[np.ndarray]) -> None:
    bundle.edit(thresholds={"image": None, "rule": None})
    res = Detector.from_bundle(bundle.path)(good_images[0])
    assert res.threshold is None and res.is_anomalous is None
    assert json.loads(res.to_json())["is_anomalous"] is None


def test_bundle_without_memory_layers_refuses_references(tmp_path: Path, good_images: list[np.ndarray]) -> None:
    b = make_bundle(tmp_path / "b", layers=())
    det = Detector.from_bundle(b.path)
    assert det(good_images[0]).anomaly_map.shape == (32, 32)
    with pytest.raises(BundleError, match="fewshot.layers") as info:
        det.add_references(good_images[:2])
    assert info.value.field == "fewshot.layers"


def test_grayscale_and_path_inputs(shared_bundle: FakeBundle, good_dir: Path, good_images: list[np.ndarray]) -> None:
    det = Detector.from_bundle(shared_bundle.path)
    path = sorted(good_dir.glob("*.png"))[0]
    assert det(path).score == pytest.approx(det(good_images[0]).score, abs=1e-7)
    gray = good_images[0][:, :, 0]
    assert det(gray).score == pytest.approx(det(np.repeat(gray[:, :, None], 3, axis=2)).score, abs=1e-7)
    with pytest.raises(ValueError, match="uint8"):
        det(good_images[0].astype(np.float32))


def test_unreadable_references_are_refused_all_or_nothing(shared_bundle: FakeBundle, good_dir: Path,
                                                          good_images: list[np.ndarray], tmp_path: Path) -> None:
    from fgad.core.io import ImageReadError, UnreadableImagesError

    bad_a, bad_b = tmp_path / "a.png", tmp_path / "b.jpg"
    bad_a.write_bytes(b"not an image")
    bad_b.write_bytes(b"")
    paths = sorted(good_dir.glob("*.png"))
    det = Detector.from_bundle(shared_bundle.path, refs=paths[:2])
    before = det(good_images[3]).score
    with pytest.raises(UnreadableImagesError) as caught:
        det.add_references([paths[2], bad_a, paths[3], bad_b])
    err = caught.value
    assert isinstance(err, ImageReadError) and isinstance(err, ValueError)
    assert [f.path for f in err.failures] == [bad_a, bad_b] and err.total == 4
    assert str(bad_a) in str(err) and str(bad_b) in str(err) and "2 of 4 reference images" in str(err)
    assert det.num_references == 2 and det(good_images[3]).score == before  # nothing was added
    with pytest.raises(UnreadableImagesError, match="1 of 5 reference images"):
        Detector.from_bundle(shared_bundle.path, refs=[*paths, bad_a])


def test_tiny_and_extreme_reference_images_are_upsampled(shared_bundle: FakeBundle) -> None:
    det = Detector.from_bundle(shared_bundle.path)
    rng = np.random.default_rng(0)
    sizes = [(1, 1), (1, 300), (300, 1), (2, 3)]
    assert det.add_references([rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]) == 4
    assert np.isfinite(det(rng.integers(0, 256, (1, 5, 3), dtype=np.uint8)).score)


def test_a_references_file_holding_a_pickle_is_refused(shared_bundle: FakeBundle, tmp_path: Path) -> None:
    marker = tmp_path / "pwned.txt"
    rows = np.empty((shared_bundle.grid**2, 1), dtype=object)
    rows[:] = None
    rows[0, 0] = _Payload(marker)
    arrays = {f"layer_{layer}": rows for layer in shared_bundle.layers}
    path = tmp_path / "refs.npz"
    np.savez(path, **arrays)  # object arrays are stored as pickles
    with pytest.raises(BundleError, match=r"refs\.npz.*cannot be read.*allow_pickle") as caught:
        Detector.from_bundle(shared_bundle.path, refs=path)
    assert caught.value.field == "fewshot.file" and not marker.exists()


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return exec, (f"open({str(self.marker)!r}, 'w')",)
