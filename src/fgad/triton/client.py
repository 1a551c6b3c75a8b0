"""``fgad.triton.Client``: fgad-run's results from a model on a remote Triton server.

::

    client = Client("127.0.0.1:8000", "fgad_bottle")            # HTTP; "grpc://host:8001" for gRPC
    result = client(rgb_uint8)                                    # fgad.runtime.pipeline.Result
    results = client.batch(frames)

The client preprocesses exactly as the runtime does (``fgad.core.transforms.preprocess`` with the size, mean and
std the model config names in ``fgad.input``), sends the bundle's ``image`` tensor and builds the same
:class:`~fgad.runtime.pipeline.Result` from ``score``, ``anomaly_map``, ``global_prob``, ``best_description``
(+ ``is_anomalous``, ``position``). Needs ``pip install 'fgad[triton]'`` (tritonclient).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from fgad.core.cells import POSITIONS
from fgad.core.transforms import preprocess
from fgad.runtime.pipeline import ImageLike, Result, _as_rgb

__all__ = ["Client", "TritonUnavailableError", "import_tritonclient"]

_INSTALL = "the Triton client needs tritonclient: pip install 'fgad[triton]'"
RESULT_OUTPUTS = ("score", "anomaly_map", "global_prob", "best_description")


class _RemoteName:
    """What ``fgad-run`` prints as the backend of a remote model."""

    def __init__(self, name: str) -> None:
        self.name = name


class TritonUnavailableError(RuntimeError):
    """The server cannot be reached, or the model is not ready there."""


def import_tritonclient(protocol: str) -> Any:
    """``tritonclient.http`` or ``tritonclient.grpc``, with an error naming the extra to install."""
    try:
        if protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
    except ImportError as exc:
        raise ImportError(_INSTALL) from exc
    return module


def _split_url(url: str) -> tuple[str, str]:
    for prefix, protocol in (("grpc://", "grpc"), ("http://", "http")):
        if url.startswith(prefix):
            return protocol, url[len(prefix):]
    if url.startswith("https://"):
        raise ValueError(f"--triton {url}: TLS is not supported by this client; use http:// or grpc://")
    return "http", url


class Client:
    """One model on one Triton server (module docstring).

    Args:
        url: ``host:port`` (HTTP), ``http://host:port`` or ``grpc://host:port``.
        model: the model name, ``fgad_<class>``.
        timeout_s: per-request timeout (network and inference).
        threshold: a number overriding the model's ``fgad.threshold`` for ``is_anomalous`` (None: the model's).
    """

    def __init__(self, url: str, model: str, *, timeout_s: float = 30.0, threshold: float | None = None,
                 version: str = "") -> None:
        self.protocol, self.address = _split_url(url)
        self.model, self.version, self.timeout_s = model, version, float(timeout_s)
        self._mod = import_tritonclient(self.protocol)
        if self.protocol == "grpc":
            self._client = self._mod.InferenceServerClient(self.address)
        else:
            self._client = self._mod.InferenceServerClient(self.address, connection_timeout=self.timeout_s,
                                                           network_timeout=self.timeout_s)
        try:
            ready = self._client.is_model_ready(model, version)
        except Exception as exc:  # noqa: BLE001 - tritonclient raises its own and socket errors
            raise TritonUnavailableError(f"Triton server {url} cannot be reached ({exc}); is it running?") from exc
        if not ready:
            raise TritonUnavailableError(f"model {model!r} is not ready on {url}; check the server's log and "
                                         "its model repository (fgad-triton)")
        config = self._client.get_model_config(model, version)
        if self.protocol == "grpc":
            from google.protobuf.json_format import MessageToDict

            config = MessageToDict(config.config, preserving_proto_field_name=True)
        self.config: dict[str, Any] = config
        params = {k: v.get("string_value", "") for k, v in (config.get("parameters") or {}).items()}
        if "fgad.input" not in params:
            raise TritonUnavailableError(f"model {model!r} on {url} is not an fgad model (no fgad.input parameter)")
        spec = json.loads(params["fgad.input"])
        self.input_name, self.size = str(spec["name"]), int(spec["size"])
        self.mean, self.std = tuple(spec["mean"]), tuple(spec["std"])
        self.descriptions: list[str] = json.loads(params.get("fgad.descriptions") or "[]")
        model_threshold = float(params["fgad.threshold"]) if params.get("fgad.threshold") else None
        self.threshold = threshold if threshold is not None else model_threshold
        self.output_names = [o["name"] for o in config.get("output", [])]
        self.class_name = params.get("fgad.class", model)
        self.num_references = int(params.get("fgad.num_references") or 0)
        self.backend = _RemoteName(f"triton {url} model {model}")

    @property
    def threshold_rule(self) -> str:
        return "none" if self.threshold is None else "the model's fgad.threshold or given"

    # ---------------------------------------------------------------- raw tensors

    def infer_tensors(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """The model's outputs for a preprocessed ``[B, 3, s, s]`` float32 batch."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        tensor = self._mod.InferInput(self.input_name, list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch)
        outputs = [self._mod.InferRequestedOutput(n) for n in self.output_names]
        if self.protocol == "grpc":
            response = self._client.infer(self.model, [tensor], model_version=self.version, outputs=outputs,
                                          client_timeout=self.timeout_s)
        else:
            response = self._client.infer(self.model, [tensor], model_version=self.version, outputs=outputs,
                                          timeout=int(self.timeout_s * 1e6))
        return {n: response.as_numpy(n) for n in self.output_names}

    def preprocess(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return np.stack([preprocess(img, self.size, self.mean, self.std) for img in images])

    # ---------------------------------------------------------------- results

    def _results(self, outs: dict[str, np.ndarray], count: int, elapsed_ms: float) -> list[Result]:
        results = []
        for i in range(count):
            score = float(outs["score"][i].reshape(-1)[0])
            index = int(outs["best_description"][i].reshape(-1)[0])
            description = self.descriptions[index] if 0 <= index < len(self.descriptions) else f"#{index}"
            decided = None if self.threshold is None else bool(score >= self.threshold)
            position = None
            if "position" in outs:
                position = POSITIONS[int(outs["position"][i].reshape(-1)[0])]
            results.append(Result(score=score, is_anomalous=decided, threshold=self.threshold,
                                  anomaly_map=np.asarray(outs["anomaly_map"][i], dtype=np.float32),
                                  best_description=description, best_description_index=index,
                                  global_prob=float(outs["global_prob"][i].reshape(-1)[0]),
                                  timings={"remote": elapsed_ms / max(1, count)}, position=position))
        return results

    def __call__(self, image: ImageLike) -> Result:
        return self.batch([image], batch_size=1)[0]

    def batch(self, images: Iterable[ImageLike], batch_size: int = 8) -> list[Result]:
        """Results for many images, ``batch_size`` per request (the server's batcher may merge requests too)."""
        items = [_as_rgb(image)[0] for image in images]
        out: list[Result] = []
        for start in range(0, len(items), max(1, batch_size)):
            chunk = items[start:start + batch_size]
            t0 = time.perf_counter()
            outs = self.infer_tensors(self.preprocess(chunk))
            out += self._results(outs, len(chunk), 1000.0 * (time.perf_counter() - t0))
        return out

    def set_threshold(self, threshold: float | None) -> None:
        if threshold is not None and not math.isfinite(float(threshold)):
            raise ValueError(f"threshold must be finite, got {threshold!r}")
        self.threshold = None if threshold is None else float(threshold)

    def close(self) -> None:
        self._client.close()

    def __repr__(self) -> str:
        return f"Client({self.protocol}://{self.address}, model={self.model!r})"
