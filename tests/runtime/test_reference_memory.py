"""The reference memory's guards: duplicate references, the references' fingerprint, the search's BLAS threads."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fgad.bundle import BundleError
from fgad.cli.run import main as run_main
from fgad.runtime import knn
from fgad.runtime.pipeline import Detector
from tests.helpers.fake_bundle import FakeBundle, make_bundle


def _refs_folder(tmp_path: Path, good_dir: Path, duplicate: bool) -> Path:
    folder = tmp_path / ("dup" if duplicate else "unique")
    folder.mkdir()
    goods = sorted(good_dir.glob("*.png"))[:4]
    for i, path in enumerate(goods):
        shutil.copy(path, folder / f"{i}.png")
    if duplicate:  # the same photo twice under two names, as happens when folders are merged
        shutil.copy(goods[1], folder / "1_copy.png")
    return folder


def test_duplicate_references_are_dropped_and_named(shared_bundle: FakeBundle, good_dir: Path, tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    unique = Detector.from_bundle(shared_bundle.path, refs=_refs_folder(tmp_path, good_dir, False), threshold="auto")
    with caplog.at_level(logging.WARNING, logger="fgad.runtime.pipeline"):
        dup = Detector.from_bundle(shared_bundle.path, refs=_refs_folder(tmp_path, good_dir, True), threshold="auto")
    assert dup.num_references == unique.num_references == 4
    assert dup.threshold == pytest.approx(unique.threshold, abs=1e-6)  # a twin would pull leave-one-out down
    assert "1_copy.png" in caplog.text and "duplicates reference" in caplog.text


def test_duplicates_added_later_are_dropped_too(shared_bundle: FakeBundle, good_dir: Path) -> None:
    goods = sorted(good_dir.glob("*.png"))[:3]
    detector = Detector.from_bundle(shared_bundle.path, refs=goods)
    assert detector.add_references([goods[0]]) == 0
    assert detector.num_references == 3


def test_distinct_references_are_not_duplicates(good_images: list[np.ndarray]) -> None:
    rng = np.random.default_rng(0)
    a = {1: knn.normalize_rows(rng.normal(size=(16, 8)))}
    b = {1: knn.normalize_rows(a[1] + rng.normal(scale=0.05, size=(16, 8)))}  # close, but not the same picture
    assert knn.duplicate_of(b, [a]) is None
    assert knn.duplicate_of({1: a[1].copy()}, [b, a]) == 1


@pytest.fixture()
def other_model_bundle(tmp_path: Path) -> FakeBundle:
    """Same shapes as the shared bundles, but another model (as a FiLo++ and a FineGrainedAD bundle can be)."""
    bundle = make_bundle(tmp_path / "other", seed=1)
    bundle.edit(model__config="another-model")
    return bundle


def test_references_of_another_model_are_refused(refs_bundle: FakeBundle, other_model_bundle: FakeBundle,
                                                 tmp_path: Path) -> None:
    saved = tmp_path / "refs.npz"
    Detector.from_bundle(refs_bundle.path).save_references(saved)
    assert Detector.from_bundle(refs_bundle.path, refs=saved).num_references == 3  # its own model: fine
    with pytest.raises(BundleError, match="made by another model") as err:
        Detector.from_bundle(other_model_bundle.path, refs=saved)
    assert err.value.field == "fewshot.file"
    result = CliRunner().invoke(run_main, ["--bundle", str(other_model_bundle.path), "--images", str(tmp_path),
                                           "--refs", str(saved)])
    assert result.exit_code != 0 and "made by another model" in result.output


def test_a_bundle_shipping_another_models_references_is_refused(refs_bundle: FakeBundle,
                                                                other_model_bundle: FakeBundle) -> None:
    saved = other_model_bundle.path / "references.npz"
    Detector.from_bundle(refs_bundle.path).save_references(saved)
    data = other_model_bundle.manifest()
    data["fewshot"].update(file="references.npz", num_references=3)
    data["sha256"]["references.npz"] = ""
    other_model_bundle.write_manifest(data, rehash=True)
    with pytest.raises(BundleError, match="made by another model"):
        Detector.from_bundle(other_model_bundle.path)


def test_references_without_a_fingerprint_load_with_a_warning(refs_bundle: FakeBundle,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    # make_bundle writes references.npz as fgad did before fingerprints
    with caplog.at_level(logging.WARNING, logger="fgad.bundle.references"):
        detector = Detector.from_bundle(refs_bundle.path)
    assert detector.num_references == 3
    assert "has no fingerprint" in caplog.text


class _RecordingRows(np.ndarray):
    """Rows that record the BLAS threads in force when the search multiplies with them."""

    seen: list[int] = []

    def __rmatmul__(self, other: np.ndarray) -> np.ndarray:
        from threadpoolctl import threadpool_info

        numpy_blas = [lib for lib in threadpool_info()  # numpy's own BLAS (faiss may bring another, unused here)
                      if lib["user_api"] == "blas" and "numpy" in lib["filepath"]] or [
                      lib for lib in threadpool_info() if lib["user_api"] == "blas"]
        _RecordingRows.seen.append(max(lib["num_threads"] for lib in numpy_blas))
        return np.asarray(other) @ np.asarray(self)


def test_numpy_search_runs_on_one_blas_thread(refs_bundle: FakeBundle, good_images: list[np.ndarray],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    threadpoolctl = pytest.importorskip("threadpoolctl")
    detector = Detector.from_bundle(refs_bundle.path, knn="numpy")
    assert detector.memory is not None
    for index in detector.memory.indexes.values():
        rows = index.rows().view(_RecordingRows)
        monkeypatch.setattr(index, "rows", lambda rows=rows: rows)
    _RecordingRows.seen = []
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):  # BLAS's default on a 2-core machine
        detector(good_images[-1])
    assert _RecordingRows.seen and set(_RecordingRows.seen) == {1}


def test_an_image_already_in_a_references_file_is_not_added_again(refs_bundle: FakeBundle,
                                                                   good_images: list[np.ndarray]) -> None:
    detector = Detector.from_bundle(refs_bundle.path)  # references.npz holds good_images[:3]
    assert len(good_images) > 3
    assert detector.add_references([good_images[1], good_images[-1]]) == 1
    assert detector.num_references == 4
