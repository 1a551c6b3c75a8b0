"""The bundles of the tiny models are what they were before the package layout changed.

:mod:`tests.helpers.golden_bundles` says what is compared and how the files in ``golden/`` were made.
A difference here is a change of the bundle contract or of the exported graph: make it on purpose,
regenerate the golden files, and say so in the commit.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="writing a bundle needs the train and export extras (torch, onnx)")
pytest.importorskip("onnx", reason="writing a bundle needs the export extra (onnx)")

from tests.helpers import golden_bundles as golden  # noqa: E402

GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture(scope="module", params=sorted(golden.VARIANTS))
def written(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Path]:
    name = request.param
    scratch = tmp_path_factory.mktemp(f"golden_{name}")
    bundle = golden.VARIANTS[name](scratch / name / "bundle", scratch / name / "data")  # as write_golden lays it out
    return name, bundle, scratch


def test_manifest_fields_are_unchanged(written: tuple[str, Path, Path]) -> None:
    name, bundle, scratch = written
    want = json.loads((GOLDEN / name / "manifest.json").read_text())
    got = json.loads(json.dumps(golden.comparable_manifest(bundle, scratch)))  # tuples -> lists, as stored
    differing = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
    assert not differing, f"{name}: manifest fields differ from the golden bundle: {differing}"


def test_graph_is_unchanged(written: tuple[str, Path, Path]) -> None:
    name, bundle, _ = written
    want = json.loads((GOLDEN / name / "graph.json").read_text())
    got = json.loads(json.dumps(golden.graph_summary(bundle)))
    assert got == want


def test_graph_outputs_are_bit_identical(written: tuple[str, Path, Path]) -> None:
    name, bundle, _ = written
    got = golden.graph_outputs(bundle)
    with np.load(GOLDEN / name / "outputs.npz") as npz:
        want = {k: npz[k] for k in npz.files}
    assert list(got) == list(want)
    for key, value in want.items():
        assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
        assert np.array_equal(got[key], value), f"{name}: output {key} differs (max {np.abs(got[key] - value).max()})"
