"""The bundle as a Triton model serves it: parameters checked, integrity checked, fgad's own Detector.

Inside the server the python backend hands :mod:`fgad.triton.python_model` the model config; everything it
reads from disk is checked here before anything runs: the parameters (only known keys, each value validated),
the bundle's digest against the one recorded when the repository was written (a swapped or edited bundle is
refused), the bundle's own integrity (``manifest.digest``, a signature with ``fgad.trust``, every file's
sha256; :func:`fgad.runtime.backends.check_manifest`).

The pipeline is :class:`fgad.runtime.pipeline.Detector` itself; :class:`TensorDetector` only takes the image
already preprocessed (the request carries the bundle's ``image`` input, made by
:func:`fgad.core.transforms.preprocess` on the client, exactly as ``fgad-run`` makes it), and
:class:`GivenOutputs` is a backend whose "graph outputs" come from the request (the ensemble's
post-processing step, after the encoder ran as its own model).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fgad.bundle import BundleError, Manifest, check_contents, load_manifest
from fgad.bundle.digest import manifest_digest
from fgad.bundle.files import file_sha256
from fgad.bundle.integrity import check_integrity
from fgad.runtime.pipeline import Detector, Result

__all__ = [
    "BUNDLE_DIR",
    "STEPS",
    "GivenOutputs",
    "ServedParams",
    "TensorDetector",
    "check_digest",
    "load_post_detector",
    "load_served_detector",
    "parse_params",
]

#: the bundle's folder inside a model version (``<model>/<version>/bundle/``)
BUNDLE_DIR = "bundle"
#: what a python-backend model of fgad does: the whole pipeline, the ensemble's post step, or the encoder graph
STEPS = ("pipeline", "post", "encoder")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_KNOWN = {"fgad.step", "fgad.class", "fgad.bundle_digest", "fgad.fingerprint", "fgad.threshold", "fgad.threads",
          "fgad.knn", "fgad.strict", "fgad.trust", "fgad.descriptions", "fgad.fgad_version", "fgad.input",
          "fgad.num_references"}


@dataclass(frozen=True)
class ServedParams:
    """The validated ``parameters`` of an fgad model config."""

    step: str
    class_name: str
    bundle_digest: str
    threshold: float | None = None
    threads: int | None = None
    knn: str = "auto"
    strict: bool = True
    trust: tuple[str, ...] = ()


def _param_values(config: Mapping[str, Any]) -> dict[str, str]:
    raw = config.get("parameters") or {}
    if not isinstance(raw, Mapping):
        raise BundleError("model config 'parameters' must be a map", "parameters")
    out: dict[str, str] = {}
    for key, value in raw.items():
        text = value.get("string_value") if isinstance(value, Mapping) else value
        if not isinstance(text, str):
            raise BundleError(f"model config parameter {key!r} must be a string", f"parameters.{key}")
        out[str(key)] = text
    return out


def parse_params(config: Mapping[str, Any]) -> ServedParams:
    """Validate the ``parameters`` of a model config (as JSON, the python backend's ``args['model_config']``)."""
    values = _param_values(config)
    unknown = sorted(k for k in values if k.startswith("fgad.") and k not in _KNOWN)
    if unknown:
        raise BundleError(f"model config: unknown fgad parameter(s) {', '.join(unknown)}; re-write the repository "
                          "with fgad-triton", "parameters")

    def need(key: str) -> str:
        if key not in values:
            raise BundleError(f"model config: parameter {key!r} is missing; re-write the repository with "
                              "fgad-triton", f"parameters.{key}")
        return values[key]

    step = need("fgad.step")
    if step not in STEPS:
        raise BundleError(f"model config: fgad.step is {step!r}, expected one of {', '.join(STEPS)}",
                          "parameters.fgad.step")
    digest = need("fgad.bundle_digest")
    if not _HEX64.match(digest):
        raise BundleError("model config: fgad.bundle_digest must be 64 lowercase hex digits",
                          "parameters.fgad.bundle_digest")
    threshold: float | None = None
    if values.get("fgad.threshold", ""):
        try:
            threshold = float(values["fgad.threshold"])
        except ValueError:
            threshold = math.nan
        if not math.isfinite(threshold):
            raise BundleError(f"model config: fgad.threshold {values['fgad.threshold']!r} is not a finite number",
                              "parameters.fgad.threshold")
    threads: int | None = None
    if values.get("fgad.threads", ""):
        if not values["fgad.threads"].isdigit() or int(values["fgad.threads"]) < 1:
            raise BundleError(f"model config: fgad.threads {values['fgad.threads']!r} must be a positive integer",
                              "parameters.fgad.threads")
        threads = int(values["fgad.threads"])
    knn = values.get("fgad.knn", "auto") or "auto"
    if knn not in ("auto", "faiss", "numpy"):
        raise BundleError(f"model config: fgad.knn {knn!r} must be auto, faiss or numpy", "parameters.fgad.knn")
    strict_text = values.get("fgad.strict", "true")
    if strict_text not in ("true", "false"):
        raise BundleError(f"model config: fgad.strict {strict_text!r} must be true or false",
                          "parameters.fgad.strict")
    trust = tuple(p for p in values.get("fgad.trust", "").split(":") if p)
    for path in trust:
        if not Path(path).is_absolute():
            raise BundleError(f"model config: fgad.trust names {path!r}; give absolute paths of PEM public keys "
                              "on the server", "parameters.fgad.trust")
    return ServedParams(step=step, class_name=need("fgad.class"), bundle_digest=digest, threshold=threshold,
                        threads=threads, knn=knn, strict=strict_text == "true", trust=trust)


def check_digest(manifest: Manifest, params: ServedParams, where: Path) -> None:
    """The bundle is the one the repository was written with (its canonical manifest digest)."""
    digest = manifest_digest(manifest.raw)
    if digest != params.bundle_digest:
        raise BundleError(
            f"{where}: the bundle's manifest digest {digest[:16]}... is not the one this model was written with "
            f"({params.bundle_digest[:16]}...): the bundle was replaced or changed; re-export it with fgad-triton",
            "parameters.fgad.bundle_digest",
        )
    if manifest.class_name != params.class_name:
        raise BundleError(f"{where}: bundle class {manifest.class_name!r} is not fgad.class {params.class_name!r}",
                          "class_name")


class TensorDetector(Detector):
    """:class:`Detector` on requests that carry the preprocessed ``image`` ``[3, s, s]`` float32 tensors."""

    def _preprocess(self, images: Sequence[np.ndarray]) -> np.ndarray:
        batch = np.ascontiguousarray(np.stack(list(images)), dtype=np.float32)
        expected = (3, self.size, self.size)
        if batch.shape[1:] != expected:
            raise ValueError(f"input '{self.manifest.input.name}' must be {list(expected)} per image, got "
                             f"{list(batch.shape[1:])}")
        return batch

    def infer_tensors(self, batch: np.ndarray) -> list[Result]:
        """Results for a ``[B, 3, s, s]`` batch, equal to ``Detector.__call__`` on the images it came from."""
        return self._infer(list(batch))


class GivenOutputs:
    """A backend whose graph outputs are given (the encoder ran elsewhere); :meth:`run` returns them."""

    name = "given"

    def __init__(self, manifest: Manifest) -> None:
        self._manifest = manifest
        self._outputs: dict[str, np.ndarray] = {}

    @classmethod
    def is_available(cls) -> bool:
        return True

    @property
    def output_names(self) -> list[str]:
        return list(self._manifest.outputs)

    @property
    def input_shapes(self) -> Mapping[str, tuple[int | None, ...]]:
        size = self._manifest.input.size
        return {self._manifest.input.name: (None, 3, size, size)}

    @property
    def output_shapes(self) -> Mapping[str, tuple[int | None, ...]]:
        return {k: tuple(v) for k, v in self._manifest.outputs.items()}

    def set(self, outputs: Mapping[str, np.ndarray]) -> None:
        self._outputs = dict(outputs)

    def run(self, image_batch: np.ndarray, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        wanted = list(names) if names is not None else self.output_names
        missing = [n for n in wanted if n not in self._outputs]
        if missing:
            raise ValueError(f"the encoder outputs {', '.join(missing)} were not given")
        return {n: self._outputs[n] for n in wanted}


def load_served_detector(bundle_dir: Path, params: ServedParams) -> TensorDetector:
    """The whole pipeline (engine included) on a served bundle, after every check (module docstring)."""
    manifest = load_manifest(bundle_dir)
    check_digest(manifest, params, bundle_dir)
    detector = TensorDetector.from_bundle(bundle_dir, threads=params.threads, knn=params.knn, verify=True,
                                          strict=params.strict, trust=list(params.trust) or None)
    detector.set_threshold(params.threshold)
    return detector


def load_post_detector(bundle_dir: Path, params: ServedParams) -> tuple[TensorDetector, GivenOutputs]:
    """The ensemble's post step: manifest, digest, signature and references of a bundle without its engine.

    The engine file is not there (it is the encoder model); every file that is there and that the step reads
    (``references.npz``) is checked against the manifest's sha256.
    """
    manifest = load_manifest(bundle_dir)
    check_digest(manifest, params, bundle_dir)
    check_integrity(manifest, bundle_dir, trust=list(params.trust) or None, strict=params.strict)
    refs = manifest.fewshot.file
    if refs:
        expected = manifest.sha256.get(refs)
        actual = file_sha256(bundle_dir / refs)
        if expected != actual:
            raise BundleError(f"{bundle_dir / refs}: sha256 {actual[:16]}... does not match the manifest's "
                              f"{str(expected)[:16]}...; re-export the bundle", f"sha256.{refs}")
    check_contents(manifest, bundle_dir)
    given = GivenOutputs(manifest)
    detector = TensorDetector(manifest, given, knn=params.knn)
    if refs:
        detector.load_references_npz(bundle_dir / refs)
    detector.set_threshold(params.threshold)
    return detector, given


def descriptions_json(manifest: Manifest) -> str:
    """The descriptions as one JSON list (a parameter clients read to name ``best_description``)."""
    return json.dumps(list(manifest.text.descriptions), ensure_ascii=False)
