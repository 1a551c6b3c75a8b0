"""``TritonPythonModel`` in-process, with a stand-in for the python backend's ``triton_python_backend_utils``:
the dynamic batcher's requests go through one engine call, and a bad request is answered with an error without
failing the others."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fgad.bundle import load_manifest
from fgad.core.transforms import preprocess
from fgad.runtime.pipeline import Detector
from fgad.triton import model_config as mc
from fgad.triton.python_model import TritonPythonModel
from fgad.triton.repository import write_repository
from tests.triton.conftest import class_bundle, rgb_images


class _Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self.name, self.array = name, np.asarray(array)

    @classmethod
    def from_dlpack(cls, name: str, capsule: Any) -> _Tensor:
        return cls(name, np.from_dlpack(_Capsule(capsule)))

    def __dlpack__(self, **kwargs: Any) -> Any:
        return self.array.__dlpack__(**kwargs)

    def __dlpack_device__(self) -> Any:
        return self.array.__dlpack_device__()

    def as_numpy(self) -> np.ndarray:
        return self.array


class _Capsule:
    """np.from_dlpack needs an object with __dlpack__; the model hands over a capsule, as the stub takes it."""

    def __init__(self, capsule: Any) -> None:
        self.capsule = capsule

    def __dlpack__(self, **kwargs: Any) -> Any:
        return self.capsule

    def __dlpack_device__(self) -> tuple[int, int]:
        return (1, 0)  # CPU


class _Response:
    def __init__(self, output_tensors: list[_Tensor], error: Any = None) -> None:
        self.outputs = {t.name: t.array for t in output_tensors}
        self.error = error


class _Error:
    def __init__(self, message: str) -> None:
        self.message = message


@pytest.fixture()
def pb_utils(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    module = types.ModuleType("triton_python_backend_utils")
    module.Tensor = _Tensor  # type: ignore[attr-defined]
    module.InferenceResponse = _Response  # type: ignore[attr-defined]
    module.TritonError = _Error  # type: ignore[attr-defined]
    module.get_input_tensor_by_name = lambda request, name: request.get(name)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", module)
    return module


def test_execute_answers_every_request(pb_utils: types.ModuleType, tmp_path: Path) -> None:
    bundle = class_bundle(tmp_path / "b", "tile")
    repo = tmp_path / "repo"
    write_repository(repo, [bundle.path])
    manifest = load_manifest(bundle.path)
    config = mc.pipeline_config("fgad_tile", manifest, mc.ServeSettings(), "f" * 64)
    as_json = {**config, "parameters": {p["key"]: p["value"] for p in config["parameters"]}}
    model = TritonPythonModel()
    model.initialize({"model_config": json.dumps(as_json), "model_repository": str(repo / "fgad_tile"),
                      "model_version": "1", "model_name": "fgad_tile"})
    images = rgb_images(3, 4)
    spec = manifest.input
    batches = [preprocess(img, spec.size, spec.mean, spec.std)[None] for img in images]
    requests = [{"image": _Tensor("image", batches[0])}, {},  # the second request lacks its input
                {"image": _Tensor("image", np.concatenate(batches[1:]))}]
    responses = model.execute(requests)
    assert len(responses) == 3
    assert responses[1].error is not None and "image" in responses[1].error.message
    want = [r.score for r in Detector.from_bundle(bundle.path).batch(images)]
    assert responses[0].error is None and responses[2].error is None
    got = [*responses[0].outputs["score"].reshape(-1), *responses[2].outputs["score"].reshape(-1)]
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert responses[2].outputs["anomaly_map"].shape == (2, 32, 32)
    assert set(responses[0].outputs) == {o["name"] for o in config["output"]}

