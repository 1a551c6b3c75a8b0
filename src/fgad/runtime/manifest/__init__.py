"""The bundle manifest (``manifest.json``): parsing into dataclasses and the checks made before the first frame.

``docs/bundle.md`` is the contract. The runtime refuses a bundle it cannot honour with a :class:`BundleError`
whose message names the manifest field and says what to do. Torch-free: numpy and the standard library
only; TensorRT and CUDA helpers are imported lazily, and only for ``engine.kind == "tensorrt"``.

Two groups of checks:

* :func:`check_manifest` (manifest + files, before any engine is created): format version, sha256 of every
  listed file, engine kind vs installed backends (TensorRT major version and GPU compute capability for
  engines), input description, output names and shapes vs ``input.size`` / ``grid``, few-shot layers vs
  ``tokens_<layer>`` outputs, and the shapes of ``references.npz``.
* :func:`check_graph` (after the backend is created): the graph's declared input/output shapes agree with
  the manifest.

Modules (import from this package; patch a function in the module that calls it, e.g.
``fgad.runtime.manifest.engine.detect_compute_capability`` for the TensorRT checks):

* ``errors``: :class:`BundleError`;
* ``spec``: the dataclasses (:class:`Manifest` and its parts) and the names the contract fixes;
* ``parse``: :func:`load_manifest`, the JSON parser whose errors name the dotted field;
* ``files``: files inside the bundle, present, with their sha256 (:func:`file_sha256`);
* ``engine``: engine kind vs backends, TensorRT version, GPU compute capability, :func:`resolve_engine`;
* ``shapes``: output shapes vs ``input.size``/``grid``/``box_prior``, and :func:`check_graph`;
* ``references``: the few-shot ``references.npz`` (:func:`npz_array_shapes`, :func:`reference_keys`);
* ``checks``: :func:`check_manifest`, every check above in its order.
"""

from __future__ import annotations

from fgad.runtime.manifest.checks import check_manifest
from fgad.runtime.manifest.engine import detect_compute_capability, resolve_engine
from fgad.runtime.manifest.errors import BundleError
from fgad.runtime.manifest.files import file_sha256
from fgad.runtime.manifest.parse import load_manifest
from fgad.runtime.manifest.references import npz_array_shapes, reference_keys
from fgad.runtime.manifest.shapes import check_graph
from fgad.runtime.manifest.spec import (
    BOX_PRIOR_OUTPUTS,
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
from fgad.runtime.manifest.spec import MANIFEST_NAME as MANIFEST_NAME

__all__ = [
    "SUPPORTED_FORMAT_VERSIONS",
    "BOX_PRIOR_OUTPUTS",
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
    "check_manifest",
    "detect_compute_capability",
    "file_sha256",
    "load_manifest",
    "npz_array_shapes",
    "reference_keys",
    "resolve_engine",
]
