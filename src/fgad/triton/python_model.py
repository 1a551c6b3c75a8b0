"""``TritonPythonModel``: fgad's models for Triton's python backend.

Every ``model.py`` that ``fgad-triton`` writes is the same two lines importing this class (:data:`MODEL_PY`):
no code is generated from a bundle, a class name or any other input. What a model does comes from its
config's ``parameters``, validated by :func:`fgad.triton.served.parse_params`:

* ``fgad.step: pipeline``: input ``image`` -> the whole torch-free pipeline (engine, few-shot search, fusion,
  post-processing; :class:`fgad.runtime.pipeline.Detector`) -> ``score``, ``anomaly_map``, ``global_prob``,
  ``best_description`` (+ ``is_anomalous`` with a threshold, ``position`` with a box prior);
* ``fgad.step: post``: the graph's outputs (from the encoder model of an ensemble) -> the same results;
* ``fgad.step: encoder``: input ``image`` -> the graph's outputs with onnxruntime, a python-backend stand-in for
  the onnxruntime backend where a server has none.

Under numpy 2, tensors cross the backend boundary through DLPack, never ``as_numpy()``/``Tensor(name, array)``:
the python backend stub of Triton 2.51 (the one in nvidia-pytriton 0.7) reads numpy 2 arrays with numpy 1's
struct layout and returns wrong values silently (an input ``[1, 2, 3]`` arrives as ``[1, 1, 1]``). DLPack is
correct; that stub logs a harmless ``PyCapsule_GetPointer`` traceback per output tensor. Under numpy 1 (the NGC
containers' python) the stub's own numpy path is used.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fgad.triton.served import (
    BUNDLE_DIR,
    GivenOutputs,
    ServedParams,
    TensorDetector,
    check_digest,
    load_post_detector,
    load_served_detector,
    parse_params,
)

__all__ = ["MODEL_PY", "TritonPythonModel", "result_arrays"]

logger = logging.getLogger(__name__)
#: numpy 2 arrays cannot go through the stub's numpy path (module docstring)
_DLPACK = int(np.__version__.split(".")[0]) >= 2

#: the whole text of every generated model.py
MODEL_PY = (
    '"""fgad model for the Triton python backend (written by fgad-triton; see fgad.triton.python_model)."""\n'
    "from fgad.triton.python_model import TritonPythonModel  # noqa: F401\n"
)


def result_arrays(results: Sequence[Any], *, threshold: bool, position: bool) -> dict[str, np.ndarray]:
    """The output tensors of a pipeline or post model for a list of :class:`fgad.runtime.pipeline.Result`."""
    out = {
        "score": np.array([[r.score] for r in results], dtype=np.float32),
        "anomaly_map": np.stack([r.anomaly_map for r in results]).astype(np.float32, copy=False),
        "global_prob": np.array([[r.global_prob] for r in results], dtype=np.float32),
        "best_description": np.array([[r.best_description_index] for r in results], dtype=np.int64),
    }
    if threshold:
        out["is_anomalous"] = np.array([[bool(r.is_anomalous)] for r in results], dtype=np.bool_)
    if position:
        from fgad.core.cells import POSITIONS

        out["position"] = np.array([[POSITIONS.index(r.position)] for r in results], dtype=np.int64)
    return out


class TritonPythonModel:
    """The python backend's entry point (``initialize``, ``execute``, ``finalize``)."""

    def initialize(self, args: dict[str, Any]) -> None:
        import triton_python_backend_utils as pb_utils

        self._pb = pb_utils
        config = json.loads(args["model_config"])
        self.params: ServedParams = parse_params(config)
        self.output_names = [o["name"] for o in config.get("output", [])]
        version_dir = Path(args["model_repository"]) / str(args["model_version"])
        bundle_dir = version_dir / BUNDLE_DIR
        self._given: GivenOutputs | None = None
        self._encoder: Any = None
        if self.params.step == "pipeline":
            self.detector: TensorDetector | None = load_served_detector(bundle_dir, self.params)
        elif self.params.step == "post":
            self.detector, self._given = load_post_detector(bundle_dir, self.params)
        else:
            self.detector = None
            self._encoder = _load_encoder(bundle_dir, self.params)
        self.input_names = [i["name"] for i in config.get("input", [])]
        logger.info("fgad model %s version %s: %s step, bundle %s", args.get("model_name"),
                    args["model_version"], self.params.step, bundle_dir)

    # ---------------------------------------------------------------- tensors

    def _array(self, request: Any, name: str) -> np.ndarray:
        tensor = self._pb.get_input_tensor_by_name(request, name)
        if tensor is None:
            raise ValueError(f"input {name!r} is missing")
        if not _DLPACK:
            return np.array(tensor.as_numpy())
        return np.array(np.from_dlpack(tensor))  # a copy: the request's memory is released after execute

    def _tensor(self, name: str, array: np.ndarray) -> Any:
        if not _DLPACK:
            return self._pb.Tensor(name, np.ascontiguousarray(array))
        return self._pb.Tensor.from_dlpack(name, np.ascontiguousarray(array).__dlpack__())

    # ---------------------------------------------------------------- execute

    def _run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.params.step == "encoder":
            return dict(self._encoder.run(inputs["image"]))
        assert self.detector is not None
        if self._given is not None:
            self._given.set(inputs)
            count = len(next(iter(inputs.values())))
            size = self.detector.size
            results = self.detector.infer_tensors(np.zeros((count, 3, size, size), dtype=np.float32))
        else:
            results = self.detector.infer_tensors(inputs["image"])
        return result_arrays(results, threshold="is_anomalous" in self.output_names,
                             position="position" in self.output_names)

    def execute(self, requests: list[Any]) -> list[Any]:
        """One engine call for all requests the dynamic batcher gathered; an error answers only its request."""
        pb = self._pb
        responses: list[Any] = [None] * len(requests)
        parts: list[tuple[int, dict[str, np.ndarray]]] = []
        for i, request in enumerate(requests):
            try:
                parts.append((i, {name: self._array(request, name) for name in self.input_names}))
            except (ValueError, TypeError, RuntimeError) as exc:
                responses[i] = pb.InferenceResponse(output_tensors=[], error=pb.TritonError(str(exc)))
        if parts:
            try:
                joined = {name: np.concatenate([p[name] for _, p in parts]) for name in self.input_names}
                outputs = self._run(joined)
                start = 0
                for i, p in parts:
                    count = len(p[self.input_names[0]])
                    tensors = [self._tensor(name, outputs[name][start:start + count]) for name in self.output_names]
                    responses[i] = pb.InferenceResponse(output_tensors=tensors)
                    start += count
            except Exception as exc:  # noqa: BLE001 - every request gets an answer, the server keeps serving
                logger.exception("fgad model: batch of %d request(s) failed", len(parts))
                for i, _ in parts:
                    responses[i] = pb.InferenceResponse(output_tensors=[], error=pb.TritonError(str(exc)))
        return responses

    def finalize(self) -> None:
        self.detector = None
        self._encoder = None


def _load_encoder(bundle_dir: Path, params: ServedParams) -> Any:
    """The bundle's graph with onnxruntime, after the bundle's own checks (the encoder stand-in)."""
    from fgad.bundle import check_graph, load_manifest
    from fgad.runtime.backends import check_manifest, create_backend

    manifest = load_manifest(bundle_dir)
    check_digest(manifest, params, bundle_dir)
    check_manifest(manifest, bundle_dir, backend="onnxruntime", verify_hashes=True, strict=params.strict,
                   trust=list(params.trust) or None)
    backend = create_backend(manifest, bundle_dir, "onnxruntime", threads=params.threads)
    check_graph(manifest, backend.input_shapes, backend.output_shapes, str(bundle_dir / "manifest.json"))
    return backend
