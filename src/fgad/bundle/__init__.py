"""The bundle contract, one copy for writer and reader: every name, the manifest parser, the checks, staged writing.

``docs/bundle.md`` is the contract. The runtime refuses a bundle it cannot honour with a :class:`BundleError`
whose message names the manifest field and says what to do. Torch-free: numpy and the standard library
only; TensorRT and CUDA helpers are imported lazily, and only for ``engine.kind == "tensorrt"``.

Two groups of checks:

* before any engine is created: format version and input description (``parse``), the manifest's digest, its
  signature when keys are trusted, files the manifest does not list (``integrity``), sha256 of every listed
  file and of every file the runtime reads (``files``), the TensorRT major version and GPU compute capability
  of an engine (``engine``), output names and shapes vs ``input.size`` / ``grid``, few-shot layers vs
  ``tokens_<layer>`` outputs, and the shapes of ``references.npz`` (:func:`check_contents`). The runtime runs
  them in order, with its backend choice, in :func:`fgad.runtime.backends.check_manifest`.
* :func:`check_graph` (after the backend is created): the graph's declared input/output shapes agree with
  the manifest.

Modules (import from this package; patch a function in the module that calls it, e.g.
``fgad.bundle.engine.detect_compute_capability`` for the TensorRT checks):

* ``errors``: :class:`BundleError`;
* ``spec``: the dataclasses (:class:`Manifest` and its parts) and the names the contract fixes;
* ``parse``: :func:`load_manifest`, the JSON parser whose errors name the dotted field;
* ``files``: files inside the bundle, present, with their sha256 (:func:`file_sha256`), the files it does not list;
* ``digest``: ``manifest.digest``, the sha256 of the canonical manifest;
* ``signing``: ``manifest.sig``, the Ed25519 signature of that digest, and the keys (needs ``cryptography``);
* ``integrity``: :func:`check_integrity`, the digest, the signature and the unlisted files;
* ``engine``: TensorRT version and GPU compute capability of an engine (:func:`check_tensorrt_engine`);
* ``shapes``: output shapes vs ``input.size``/``grid``/``box_prior``, and :func:`check_graph`;
* ``references``: the few-shot ``references.npz`` (:func:`npz_array_shapes`, :func:`reference_keys`);
* ``checks``: :func:`check_contents`, the contents against the manifest;
* ``staging``: writing a bundle folder atomically, and its manifest with digest and signature
  (:func:`fgad.bundle.staging.write_manifest`; the writers' side).
"""

from __future__ import annotations

from fgad.bundle.checks import check_contents
from fgad.bundle.engine import check_tensorrt_engine, detect_compute_capability
from fgad.bundle.errors import BundleError
from fgad.bundle.files import file_sha256
from fgad.bundle.integrity import check_integrity
from fgad.bundle.parse import load_manifest
from fgad.bundle.references import npz_array_shapes, reference_keys
from fgad.bundle.shapes import check_graph
from fgad.bundle.spec import (
    BOX_PRIOR_OUTPUTS,
    DIGEST_FILE,
    ENGINE_FILE,
    FORMAT_VERSION,
    GRAPH_BOX_PRIORS,
    INPUT_NAME,
    INTEGRITY_FILES,
    MODEL_FILE,
    PLUGIN_DIR,
    QDQ_FILE,
    QUANTIZATION_REPORT_FILE,
    REFERENCES_FILE,
    REQUIRED_OUTPUTS,
    SIGNATURE_FILE,
    SUPPORTED_FORMAT_VERSIONS,
    BoxPriorSpec,
    EngineSpec,
    FewshotSpec,
    InputSpec,
    Manifest,
    PluginSpec,
    PostSpec,
    TextSpec,
    ThresholdSpec,
)
from fgad.bundle.spec import MANIFEST_FILE as MANIFEST_FILE
from fgad.bundle.spec import token_output as token_output

__all__ = [
    "BOX_PRIOR_OUTPUTS",
    "DIGEST_FILE",
    "ENGINE_FILE",
    "FORMAT_VERSION",
    "GRAPH_BOX_PRIORS",
    "INPUT_NAME",
    "INTEGRITY_FILES",
    "MANIFEST_FILE",
    "MODEL_FILE",
    "PLUGIN_DIR",
    "QDQ_FILE",
    "QUANTIZATION_REPORT_FILE",
    "REFERENCES_FILE",
    "REQUIRED_OUTPUTS",
    "SIGNATURE_FILE",
    "SUPPORTED_FORMAT_VERSIONS",
    "BoxPriorSpec",
    "BundleError",
    "EngineSpec",
    "FewshotSpec",
    "InputSpec",
    "Manifest",
    "PluginSpec",
    "PostSpec",
    "TextSpec",
    "ThresholdSpec",
    "check_graph",
    "check_integrity",
    "check_tensorrt_engine",
    "check_contents",
    "detect_compute_capability",
    "file_sha256",
    "load_manifest",
    "npz_array_shapes",
    "reference_keys",
    "token_output",
]
