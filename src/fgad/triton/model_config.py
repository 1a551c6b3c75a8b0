"""The ``config.pbtxt`` of each model fgad writes, as plain values for :func:`fgad.triton.pbtxt.dumps`.

Names, shapes and dtypes come from the bundle's manifest (``input`` and ``outputs``; the batch axis is Triton's
``max_batch_size``). Each model has dynamic batching up to the bundle's max batch, an instance group, a warm-up
request of zeros (the first real request does not pay for session start-up) and ``parameters`` naming the
bundle (class, manifest digest, weights fingerprint, descriptions).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from fgad.bundle import Manifest
from fgad.bundle.digest import manifest_digest
from fgad.triton.pbtxt import Enum
from fgad.triton.served import descriptions_json

__all__ = [
    "DEFAULT_MAX_BATCH",
    "ServeSettings",
    "encoder_config",
    "ensemble_config",
    "max_batch",
    "model_name",
    "pipeline_config",
    "post_config",
    "result_outputs",
]

DEFAULT_MAX_BATCH = 8  # the runtime's batch (fgad.runtime.pipeline.DEFAULT_BATCH) where the bundle names none
_SAFE = re.compile(r"[^A-Za-z0-9_]+")
_INT_OUTPUTS = {"best_description", "position"}


@dataclass(frozen=True)
class ServeSettings:
    """How the models are served (command-line options of fgad-triton).

    ``instances``/``kind``: the instance group (``cpu`` or ``gpu``); ``max_batch``: None takes the bundle's
    (a TensorRT engine's optimisation profile) or 8; ``queue_delay_us``: how long the dynamic batcher waits to
    fill a batch; ``threads``: onnxruntime CPU threads per instance; ``threshold``: the decision threshold
    (None: the manifest's); ``trust``: absolute paths of PEM public keys on the server the bundles must be signed
    by; ``strict``: refuse unlisted files in a bundle.
    """

    instances: int = 1
    kind: str = "cpu"
    max_batch: int | None = None
    queue_delay_us: int = 2000
    threads: int | None = None
    knn: str = "auto"
    threshold: float | None = None
    trust: tuple[str, ...] = ()
    strict: bool = True
    warmup: bool = True

    def __post_init__(self) -> None:
        if self.instances < 1:
            raise ValueError(f"instances must be >= 1, got {self.instances}")
        if self.kind not in ("cpu", "gpu"):
            raise ValueError(f"instance kind must be cpu or gpu, got {self.kind!r}")
        if self.max_batch is not None and self.max_batch < 1:
            raise ValueError(f"max batch must be >= 1, got {self.max_batch}")
        if self.queue_delay_us < 0:
            raise ValueError(f"queue delay must be >= 0, got {self.queue_delay_us}")


def model_name(class_name: str, suffix: str = "") -> str:
    """``fgad_<class>`` (characters other than letters, digits and _ become _)."""
    name = "fgad_" + _SAFE.sub("_", class_name).strip("_")
    return name + (f"_{suffix}" if suffix else "")


def max_batch(manifest: Manifest, settings: ServeSettings) -> int:
    """The given max batch, else a TensorRT engine's profile maximum (``engine.build.batch.max``), else 8."""
    if settings.max_batch is not None:
        return settings.max_batch
    build = (manifest.raw.get("engine") or {}).get("build") or {}
    value = (build.get("batch") or {}).get("max") if isinstance(build, dict) else None
    return int(value) if isinstance(value, int) and value > 0 else DEFAULT_MAX_BATCH


def _dtype(name: str) -> Enum:
    return Enum("TYPE_INT64" if name in _INT_OUTPUTS else "TYPE_FP32")


def _dims(shape: Any) -> list[int]:
    return [int(d) if d is not None else -1 for d in list(shape)[1:]]


def _threshold(manifest: Manifest, settings: ServeSettings) -> float | None:
    return settings.threshold if settings.threshold is not None else manifest.thresholds.image


def result_outputs(manifest: Manifest, settings: ServeSettings) -> list[dict[str, Any]]:
    """Outputs of a pipeline (or post) model: score, anomaly_map, global_prob, best_description, ..."""
    size = manifest.output_size
    outputs: list[dict[str, Any]] = [
        {"name": "score", "data_type": Enum("TYPE_FP32"), "dims": [1]},
        {"name": "anomaly_map", "data_type": Enum("TYPE_FP32"), "dims": [size, size]},
        {"name": "global_prob", "data_type": Enum("TYPE_FP32"), "dims": [1]},
        {"name": "best_description", "data_type": Enum("TYPE_INT64"), "dims": [1]},
    ]
    if _threshold(manifest, settings) is not None:
        outputs.append({"name": "is_anomalous", "data_type": Enum("TYPE_BOOL"), "dims": [1]})
    if manifest.box_prior.name != "none":
        outputs.append({"name": "position", "data_type": Enum("TYPE_INT64"), "dims": [1]})
    return outputs


def _image_input(manifest: Manifest) -> dict[str, Any]:
    size = manifest.input.size
    return {"name": manifest.input.name, "data_type": Enum("TYPE_FP32"), "dims": [3, size, size]}


def _batching(batch: int, settings: ServeSettings) -> dict[str, Any]:
    return {"preferred_batch_size": [batch], "max_queue_delay_microseconds": settings.queue_delay_us}


def _instances(settings: ServeSettings, kind: str | None = None) -> list[dict[str, Any]]:
    return [{"kind": Enum("KIND_" + (kind or settings.kind).upper()), "count": settings.instances}]


def _warmup(manifest: Manifest, settings: ServeSettings) -> list[dict[str, Any]] | None:
    if not settings.warmup:
        return None
    size = manifest.input.size
    return [{"name": "zeros", "batch_size": 1, "count": 1,
             "inputs": [{"key": manifest.input.name,
                         "value": {"data_type": Enum("TYPE_FP32"), "dims": [3, size, size], "zero_data": True}}]}]


def _parameters(values: dict[str, str]) -> list[dict[str, Any]]:
    return [{"key": key, "value": {"string_value": value}} for key, value in values.items()]


def input_json(manifest: Manifest) -> str:
    """The preprocessing a client applies (``fgad.core.transforms.preprocess``): size, mean, std."""
    spec = manifest.input
    return json.dumps({"name": spec.name, "size": spec.size, "mean": list(spec.mean), "std": list(spec.std)})


def _common_params(manifest: Manifest, step: str, settings: ServeSettings, fingerprint: str) -> dict[str, str]:
    from fgad import __version__

    threshold = _threshold(manifest, settings)
    values = {
        "fgad.step": step,
        "fgad.class": manifest.class_name,
        "fgad.bundle_digest": manifest_digest(manifest.raw),
        "fgad.fingerprint": fingerprint,
        "fgad.threshold": "" if threshold is None else repr(float(threshold)),
        "fgad.knn": settings.knn,
        "fgad.strict": "true" if settings.strict else "false",
        "fgad.fgad_version": str(__version__),
    }
    if settings.threads is not None:
        values["fgad.threads"] = str(settings.threads)
    if settings.trust:
        values["fgad.trust"] = ":".join(settings.trust)
    return values


def pipeline_config(name: str, manifest: Manifest, settings: ServeSettings, fingerprint: str) -> dict[str, Any]:
    """The python form: the whole pipeline in one python-backend model."""
    batch = max_batch(manifest, settings)
    params = _common_params(manifest, "pipeline", settings, fingerprint)
    params["fgad.descriptions"] = descriptions_json(manifest)
    params["fgad.input"] = input_json(manifest)
    params["fgad.num_references"] = str(manifest.fewshot.num_references)
    return {
        "name": name,
        "backend": "python",
        "max_batch_size": batch,
        "input": [_image_input(manifest)],
        "output": result_outputs(manifest, settings),
        "dynamic_batching": _batching(batch, settings),
        "instance_group": _instances(settings),
        "model_warmup": _warmup(manifest, settings),
        "parameters": _parameters(params),
    }


def _graph_outputs(manifest: Manifest) -> list[dict[str, Any]]:
    """The graph's outputs without the batch axis; a ``[B]`` output is ``dims: [1]`` with ``reshape: []``
    (Triton needs dims; the model itself produces ``[B]``)."""
    out = []
    for name, shape in manifest.outputs.items():
        dims = _dims(shape)
        entry: dict[str, Any] = {"name": name, "data_type": _dtype(name), "dims": dims or [1]}
        if not dims:
            entry["reshape"] = {"shape": []}
        out.append(entry)
    return out


def encoder_config(name: str, manifest: Manifest, settings: ServeSettings, fingerprint: str,
                   backend: str) -> dict[str, Any]:
    """The graph as its own model: ``onnxruntime``, ``tensorrt`` (a plan) or ``python`` (the stand-in)."""
    batch = max_batch(manifest, settings)
    config: dict[str, Any] = {"name": name}
    if backend == "onnxruntime":
        config.update(backend="onnxruntime", default_model_filename="model.onnx")
    elif backend == "tensorrt":
        config.update(backend="tensorrt", default_model_filename="model.plan")
    elif backend == "python":
        config.update(backend="python")
    else:
        raise ValueError(f"encoder backend must be onnxruntime, tensorrt or python, got {backend!r}")
    config.update(
        max_batch_size=batch,
        input=[_image_input(manifest)],
        output=_graph_outputs(manifest),
        dynamic_batching=_batching(batch, settings),
        instance_group=_instances(settings, "gpu" if backend == "tensorrt" else None),
        model_warmup=_warmup(manifest, settings),
    )
    if backend == "python":
        config["parameters"] = _parameters(_common_params(manifest, "encoder", settings, fingerprint))
    else:  # a record for people and tools (the native backends ignore fgad.* parameters)
        config["parameters"] = _parameters({"fgad.fingerprint": fingerprint, "fgad.class": manifest.class_name})
    return config


def post_config(name: str, manifest: Manifest, settings: ServeSettings, fingerprint: str) -> dict[str, Any]:
    """The ensemble's python step: the graph's outputs in, the pipeline's results out."""
    batch = max_batch(manifest, settings)
    params = _common_params(manifest, "post", settings, fingerprint)
    return {
        "name": name,
        "backend": "python",
        "max_batch_size": batch,
        "input": _graph_outputs(manifest),
        "output": result_outputs(manifest, settings),
        "dynamic_batching": _batching(batch, settings),
        "instance_group": _instances(settings, "cpu"),
        "parameters": _parameters(params),
    }


def ensemble_config(name: str, manifest: Manifest, settings: ServeSettings, encoder: str, post: str,
                    fingerprint: str) -> dict[str, Any]:
    """``fgad_<class>``: image -> encoder model -> post model."""
    graph = list(manifest.outputs)
    params = {"fgad.class": manifest.class_name, "fgad.bundle_digest": manifest_digest(manifest.raw),
              "fgad.fingerprint": fingerprint, "fgad.descriptions": descriptions_json(manifest),
              "fgad.input": input_json(manifest),
              "fgad.num_references": str(manifest.fewshot.num_references)}
    threshold = _threshold(manifest, settings)
    params["fgad.threshold"] = "" if threshold is None else repr(float(threshold))
    results = [o["name"] for o in result_outputs(manifest, settings)]
    return {
        "name": name,
        "platform": "ensemble",
        "max_batch_size": max_batch(manifest, settings),
        "input": [_image_input(manifest)],
        "output": result_outputs(manifest, settings),
        "ensemble_scheduling": {"step": [
            {"model_name": encoder, "model_version": -1,
             "input_map": [{"key": manifest.input.name, "value": manifest.input.name}],
             "output_map": [{"key": n, "value": f"graph_{n}"} for n in graph]},
            {"model_name": post, "model_version": -1,
             "input_map": [{"key": n, "value": f"graph_{n}"} for n in graph],
             "output_map": [{"key": n, "value": n} for n in results]},
        ]},
        "parameters": _parameters(params),
    }
