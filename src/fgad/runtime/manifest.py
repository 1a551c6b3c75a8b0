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
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import math
import os
import re
import subprocess
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

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

logger = logging.getLogger(__name__)

#: Manifest format versions this runtime understands.
SUPPORTED_FORMAT_VERSIONS: tuple[int, ...] = (1,)
MANIFEST_NAME = "manifest.json"
REQUIRED_OUTPUTS: tuple[str, ...] = ("vl_map", "global_prob", "best_description")
#: Outputs of a graph with a box prior inside: the chosen position cell and the few-shot map's weight.
BOX_PRIOR_OUTPUTS: tuple[str, ...] = ("position", "region_weight")
#: Box priors a bundle's graph can hold (fgad.export.wrapper.GRAPH_BOX_PRIORS).
GRAPH_BOX_PRIORS: tuple[str, ...] = ("none", "objectness")
_REEXPORT = "re-export the bundle with fgad-export"

Shape = tuple[int | None, ...]


class BundleError(Exception):
    """A bundle the runtime cannot honour. ``field`` is the manifest field at fault (``None`` if none)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


# --------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True)
class EngineSpec:
    kind: str  # "onnx" (onnxruntime) or "tensorrt" (serialized TensorRT engine)
    file: str  # engine file, relative to the bundle folder
    opset: int | None = None  # ONNX opset of the exported graph
    precision: str = "fp32"  # fp32 | fp16 | int8 (informational for the runtime)
    tensorrt_version: str | None = None  # TensorRT version that built the engine ("10.3.0"); engines only
    compute_capability: str | None = None  # GPU compute capability the engine was built for ("8.7"); engines only
    deform: str | None = None  # deformable-conv flavour the engine was built from (decomposed | onnx | plugin)
    plugins: tuple[PluginSpec, ...] = ()  # TensorRT plugin libraries to load before deserializing; engines only
    fallback: EngineSpec | None = None  # what to run where this engine cannot run (the ONNX graph it was built from)


@dataclass(frozen=True)
class PluginSpec:
    file: str  # plugin library, relative to the bundle folder (listed in ``sha256`` too)
    ops: tuple[str, ...] = ()  # "<domain>::<op>" nodes it implements, e.g. "fgad::FgadDeformConv2d"


@dataclass(frozen=True)
class InputSpec:
    name: str  # graph input name
    size: int  # s: the image is resized to s x s
    layout: str  # only "NCHW"
    color: str  # only "RGB"
    resize: str  # only "bicubic" (fgad.data.transforms.preprocess)
    mean: tuple[float, float, float]  # per-channel mean on [0, 1] pixels
    std: tuple[float, float, float]  # per-channel std


@dataclass(frozen=True)
class FewshotSpec:
    layers: tuple[int, ...] = ()  # memory layers; each has a tokens_<layer> output
    file: str | None = None  # references.npz, relative to the bundle folder (None: zero-shot bundle)
    num_references: int = 0  # k reference images stored in ``file``


@dataclass(frozen=True)
class PostSpec:
    sigma: float  # Gaussian smoothing sigma, pixels at input size
    truncate: float  # kernel radius int(truncate * sigma + 0.5)
    # map fusion and score (fgad.runtime.fusion); the defaults are FiLo++'s
    fusion: str = "mean"  # "mean": (vl_map + few) / 2; "harmonic": 1 / (1/vl_map + 1/few) (FineGrainedAD)
    score: str = "mean"  # "mean": (global_prob + max map) / 2; "harmonic": global_prob (+) max Up(few) (FineGrainedAD)
    fewshot_scale: float = 1.0  # few-shot map = scale * mean over layers of the min distance (FineGrainedAD: 0.5)
    map_size: int | None = None  # side of vl_map, where the maps are fused (None: input.size)
    output_size: int | None = None  # side of the final map (None: map_size)


@dataclass(frozen=True)
class TextSpec:
    mode: str | None = None  # "frozen" or "bank"
    conditioning: str | None = None
    filtering: str | None = None
    descriptions: tuple[str, ...] = ()  # best_description indexes into this list
    num_normal: int | None = None
    num_abnormal: int | None = None


@dataclass(frozen=True)
class ThresholdSpec:
    image: float | None = None  # image-score threshold chosen at export (None: none recorded)
    rule: str | None = None  # how it was chosen


@dataclass(frozen=True)
class BoxPriorSpec:
    name: str = "none"  # "none" or a prior computed inside the graph ("objectness")
    outputs: tuple[str, ...] = ()  # extra graph outputs the runtime reads (BOX_PRIOR_OUTPUTS for a prior)
    suppression: float | None = None  # lambda outside the box (informational: region_weight already holds it)


@dataclass(frozen=True)
class Manifest:
    format_version: int
    engine: EngineSpec
    input: InputSpec
    outputs: dict[str, Shape]  # output name -> declared shape, None for dynamic dims
    grid: int  # g: patch tokens form a g x g grid, N = g * g
    post: PostSpec
    sha256: dict[str, str]  # relative file name -> hex digest
    fewshot: FewshotSpec = field(default_factory=FewshotSpec)
    text: TextSpec = field(default_factory=TextSpec)
    thresholds: ThresholdSpec = field(default_factory=ThresholdSpec)
    box_prior: BoxPriorSpec = field(default_factory=BoxPriorSpec)
    class_name: str = ""
    fgad_version: str | None = None
    created: str | None = None
    deform: str | None = None
    model: dict[str, Any] = field(default_factory=dict)
    parity: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)  # the parsed JSON as read

    @property
    def map_size(self) -> int:
        """Side of the graph's ``vl_map`` (``post.map_size``, default ``input.size``)."""
        return self.post.map_size or self.input.size

    @property
    def output_size(self) -> int:
        """Side of the final anomaly map (``post.output_size``, default the map size)."""
        return self.post.output_size or self.map_size

    @property
    def num_patches(self) -> int:
        """N = grid * grid patch tokens per image."""
        return self.grid * self.grid

    @staticmethod
    def token_output(layer: int) -> str:
        """Name of the graph output holding the patch tokens of ``layer``."""
        return f"tokens_{layer}"

    def token_dim(self, layer: int) -> int | None:
        """D of ``tokens_<layer>`` as declared in ``outputs`` (None if unknown)."""
        shape = self.outputs.get(self.token_output(layer))
        return shape[-1] if shape else None

    def description(self, index: int) -> str:
        """The abnormal description at ``index`` (``#index`` if the manifest has no such entry)."""
        if 0 <= index < len(self.text.descriptions):
            return self.text.descriptions[index]
        return f"#{index}"


# --------------------------------------------------------------------------- parsing


_MISSING = object()


class _Fields:
    """Typed access to one JSON object of the manifest; errors name the dotted field."""

    def __init__(self, data: Any, prefix: str, where: str) -> None:
        if not isinstance(data, Mapping):
            raise BundleError(
                f"{where}: field '{prefix}' must be an object, got {type(data).__name__}; {_REEXPORT}", prefix
            )
        self.data = data
        self.prefix = prefix
        self.where = where

    def name(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def fail(self, key: str, problem: str) -> BundleError:
        return BundleError(f"{self.where}: field '{self.name(key)}' {problem}; {_REEXPORT}", self.name(key))

    def raw(self, key: str, default: Any = _MISSING) -> Any:
        if key not in self.data:
            if default is _MISSING:
                raise self.fail(key, "is missing")
            return default
        return self.data[key]

    def obj(self, key: str, required: bool = True) -> _Fields:
        value = self.raw(key, _MISSING if required else None)
        return _Fields({} if value is None else value, self.name(key), self.where)

    def int_(self, key: str, default: Any = _MISSING, minimum: int | None = None) -> Any:
        value = self.raw(key, default)
        if value is None and default is not _MISSING:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"must be an integer, got {value!r}")
        if minimum is not None and value < minimum:
            raise self.fail(key, f"must be >= {minimum}, got {value}")
        return int(value)

    def float_(self, key: str, default: Any = _MISSING, positive: bool = False) -> Any:
        value = self.raw(key, default)
        if value is None and default is not _MISSING:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise self.fail(key, f"must be a finite number, got {value!r}")
        if positive and value <= 0:
            raise self.fail(key, f"must be > 0, got {value}")
        return float(value)

    def str_(self, key: str, default: Any = _MISSING) -> Any:
        value = self.raw(key, default)
        if value is None and default is not _MISSING:
            return default
        if not isinstance(value, str):
            raise self.fail(key, f"must be a string, got {value!r}")
        return value

    def triple(self, key: str) -> tuple[float, float, float]:
        value = self.raw(key)
        ok = isinstance(value, list | tuple) and len(value) == 3
        ok = ok and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        if not ok:
            raise self.fail(key, f"must be a list of 3 numbers (one per RGB channel), got {value!r}")
        return (float(value[0]), float(value[1]), float(value[2]))


def _parse_shape(value: Any, fields: _Fields, key: str) -> Shape:
    if not isinstance(value, list | tuple) or not value:
        raise fields.fail(key, f"must be a non-empty list of dimensions (null for dynamic), got {value!r}")
    dims: list[int | None] = []
    for dim in value:
        if dim is None:
            dims.append(None)
        elif isinstance(dim, int) and not isinstance(dim, bool) and dim > 0:
            dims.append(int(dim))
        else:
            raise fields.fail(key, f"has an invalid dimension {dim!r} (positive integer or null)")
    return tuple(dims)


def _parse_compute_capability(value: Any) -> str | None:
    """"8.7", 8.7, [8, 7] or "sm_87" -> "8.7"; None stays None."""
    if value is None:
        return None
    if isinstance(value, list | tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return f"{value[0]}.{value[1]}"
    text = str(value).strip().lower()
    match = re.fullmatch(r"(?:sm_?)?(\d+)(?:\.(\d+)|(\d))", text)
    if not match:
        raise ValueError(value)
    minor = match.group(2) if match.group(2) is not None else match.group(3)
    return f"{int(match.group(1))}.{int(minor)}"


def _parse_plugins(eng: _Fields) -> tuple[PluginSpec, ...]:
    raw = eng.raw("plugins", None) or []
    if not isinstance(raw, list | tuple):
        raise eng.fail("plugins", f"must be a list of {{\"file\": ..., \"ops\": [...]}} objects, got {raw!r}")
    plugins = []
    for index, item in enumerate(raw):
        entry = _Fields(item, f"{eng.name('plugins')}[{index}]", eng.where)
        ops = entry.raw("ops", []) or []
        if not isinstance(ops, list | tuple) or not all(isinstance(o, str) for o in ops):
            raise entry.fail("ops", f"must be a list of op names, got {ops!r}")
        plugins.append(PluginSpec(file=entry.str_("file"), ops=tuple(ops)))
    return tuple(plugins)


def _parse_engine(eng: _Fields, nested: bool = False) -> EngineSpec:
    """The ``engine`` object; its ``fallback`` (one level deep) is parsed the same way."""
    try:
        cc = _parse_compute_capability(eng.raw("compute_capability", None))
    except ValueError:
        raise eng.fail("compute_capability", "must look like \"8.7\" or [8, 7]") from None
    tv = eng.raw("tensorrt_version", None)
    fallback = None
    if eng.raw("fallback", None) is not None:
        if nested:
            raise eng.fail("fallback", "cannot have a fallback of its own")
        fallback = _parse_engine(eng.obj("fallback"), nested=True)
    return EngineSpec(
        kind=eng.str_("kind"),
        file=eng.str_("file"),
        opset=eng.int_("opset", None),
        precision=eng.str_("precision", "fp32") or "fp32",
        tensorrt_version=None if tv is None else str(tv),
        compute_capability=cc,
        deform=eng.str_("deform", None),
        plugins=_parse_plugins(eng),
        fallback=fallback,
    )


def _parse(data: Mapping[str, Any], where: str) -> Manifest:
    top = _Fields(data, "", where)
    version = top.raw("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version not in SUPPORTED_FORMAT_VERSIONS:
        known = ", ".join(str(v) for v in SUPPORTED_FORMAT_VERSIONS)
        raise BundleError(
            f"{where}: field 'format_version' is {version!r}, but this fgad reads format version(s) {known}; "
            "upgrade fgad to a version that reads it, or re-export the bundle with this fgad's fgad-export",
            "format_version",
        )

    engine = _parse_engine(top.obj("engine"))

    inp = top.obj("input")
    input_spec = InputSpec(
        name=inp.str_("name"),
        size=inp.int_("size", minimum=1),
        layout=inp.str_("layout"),
        color=inp.str_("color"),
        resize=inp.str_("resize"),
        mean=inp.triple("mean"),
        std=inp.triple("std"),
    )
    for key, value, allowed in (
        ("layout", input_spec.layout, "NCHW"),
        ("color", input_spec.color, "RGB"),
        ("resize", input_spec.resize, "bicubic"),
    ):
        if value.lower() != allowed.lower():
            raise inp.fail(key, f"is {value!r}, but this runtime only implements {allowed!r} preprocessing")
    if any(v <= 0 for v in input_spec.std):
        raise inp.fail("std", f"must be > 0, got {list(input_spec.std)}")

    outs = top.raw("outputs")
    out_fields = _Fields(outs, "outputs", where)
    outputs = {str(name): _parse_shape(shape, out_fields, str(name)) for name, shape in out_fields.data.items()}

    few = top.obj("fewshot", required=False)
    layers_raw = few.raw("layers", [])
    if not isinstance(layers_raw, list | tuple) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in layers_raw
    ):
        raise few.fail("layers", f"must be a list of integers, got {layers_raw!r}")
    if len(set(layers_raw)) != len(layers_raw):
        raise few.fail("layers", f"lists a layer twice: {list(layers_raw)}")
    fewshot = FewshotSpec(
        layers=tuple(int(v) for v in layers_raw),
        file=few.str_("file", None),
        num_references=few.int_("num_references", 0, minimum=0) or 0,
    )

    post = top.obj("post")
    post_spec = PostSpec(
        sigma=post.float_("sigma", positive=True),
        truncate=post.float_("truncate", positive=True),
        fusion=post.str_("fusion", "mean"),
        score=post.str_("score", "mean"),
        fewshot_scale=post.float_("fewshot_scale", 1.0, positive=True),
        map_size=post.int_("map_size", None, minimum=1),
        output_size=post.int_("output_size", None, minimum=1),
    )
    for key, value in (("fusion", post_spec.fusion), ("score", post_spec.score)):
        if value not in ("mean", "harmonic"):
            raise post.fail(key, f"is {value!r}, but this runtime implements 'mean' and 'harmonic'")

    txt = top.obj("text", required=False)
    desc = txt.raw("descriptions", [])
    if not isinstance(desc, list | tuple) or not all(isinstance(d, str) for d in desc):
        raise txt.fail("descriptions", "must be a list of strings")
    text = TextSpec(
        mode=txt.str_("mode", None),
        conditioning=txt.str_("conditioning", None),
        filtering=txt.str_("filtering", None),
        descriptions=tuple(desc),
        num_normal=txt.int_("num_normal", None),
        num_abnormal=txt.int_("num_abnormal", None),
    )

    thr = top.obj("thresholds", required=False)
    thresholds = ThresholdSpec(image=thr.float_("image", None), rule=thr.str_("rule", None))

    bp = top.obj("box_prior", required=False)
    bp_outputs = bp.raw("outputs", [])
    if not isinstance(bp_outputs, list | tuple) or not all(isinstance(v, str) for v in bp_outputs):
        raise bp.fail("outputs", f"must be a list of output names, got {bp_outputs!r}")
    box_prior = BoxPriorSpec(name=bp.str_("name", "none") or "none", outputs=tuple(bp_outputs),
                             suppression=bp.float_("suppression", None))

    sha = top.raw("sha256")
    sha_fields = _Fields(sha, "sha256", where)
    digests: dict[str, str] = {}
    for name, digest in sha_fields.data.items():
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", digest):
            raise sha_fields.fail(str(name), f"must be a 64-digit hex sha256, got {digest!r}")
        digests[str(name)] = digest.lower()

    model = top.raw("model", {}) or {}
    parity = top.raw("parity", {}) or {}
    return Manifest(
        format_version=version,
        engine=engine,
        input=input_spec,
        outputs=outputs,
        grid=top.int_("grid", minimum=1),
        post=post_spec,
        sha256=digests,
        fewshot=fewshot,
        text=text,
        thresholds=thresholds,
        box_prior=box_prior,
        class_name=top.str_("class_name", "") or "",
        fgad_version=top.str_("fgad_version", None),
        created=top.str_("created", None),
        deform=top.str_("deform", None),
        model=dict(model) if isinstance(model, Mapping) else {},
        parity=dict(parity) if isinstance(parity, Mapping) else {},
        raw=dict(data),
    )


def load_manifest(bundle_dir: str | os.PathLike[str]) -> Manifest:
    """Read and parse ``<bundle_dir>/manifest.json`` (structure only; see :func:`check_manifest`)."""
    root = Path(bundle_dir)
    if not root.is_dir():
        raise BundleError(f"bundle '{root}' is not a folder; pass the folder written by fgad-export")
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(f"bundle '{root}' has no {MANIFEST_NAME}; pass the folder written by fgad-export")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: not readable JSON ({exc}); {_REEXPORT}") from exc
    if not isinstance(data, dict):
        raise BundleError(f"{path}: the manifest must be a JSON object; {_REEXPORT}")
    return _parse(data, str(path))


# --------------------------------------------------------------------------- files


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _bundle_file(root: Path, name: str, field_name: str) -> Path:
    """Resolve a manifest file name inside the bundle; refuses absolute paths and ``..``."""
    rel = PurePosixPath(name.replace("\\", "/"))
    if not name or rel.is_absolute() or ".." in rel.parts or re.match(r"^[A-Za-z]:", name):
        raise BundleError(
            f"{root / MANIFEST_NAME}: field '{field_name}' names '{name}', which is not a file inside the bundle; "
            f"{_REEXPORT}",
            field_name,
        )
    return root.joinpath(*rel.parts)


def _check_files(manifest: Manifest, root: Path, verify_hashes: bool) -> None:
    where = root / MANIFEST_NAME
    needed = [("engine.file", manifest.engine.file)]
    if manifest.engine.fallback is not None:
        needed.append(("engine.fallback.file", manifest.engine.fallback.file))
    needed += [(f"engine.plugins[{i}].file", p.file) for i, p in enumerate(manifest.engine.plugins)]
    if manifest.fewshot.file:
        needed.append(("fewshot.file", manifest.fewshot.file))
    for field_name, name in needed:
        if name not in manifest.sha256:
            raise BundleError(
                f"{where}: field 'sha256' has no entry for {field_name} '{name}', so the file cannot be verified; "
                f"{_REEXPORT}",
                "sha256",
            )
    for name, expected in manifest.sha256.items():
        field_name = f"sha256.{name}"
        path = _bundle_file(root, name, field_name)
        if not path.is_file():
            raise BundleError(
                f"{where}: field '{field_name}' lists '{name}', but {path} does not exist; copy the whole bundle "
                "folder again or re-export it",
                field_name,
            )
        if verify_hashes:
            actual = file_sha256(path)
            if actual != expected:
                raise BundleError(
                    f"{where}: field '{field_name}': {path} has sha256 {actual[:12]}..., the manifest says "
                    f"{expected[:12]}...; the file is corrupt or was changed after export: copy the bundle again "
                    "or re-export it",
                    field_name,
                )


def npz_array_shapes(path: str | os.PathLike[str]) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shapes and dtypes of the arrays in an ``.npz`` file, read from the headers only (no data is loaded)."""
    shapes: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with zf.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
                    else:
                        shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
                shapes[info.filename[: -len(".npy")]] = (tuple(shape), np.dtype(dtype))
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        raise BundleError(f"'{path}' is not a readable .npz file ({exc})") from exc
    return shapes


def reference_keys(layers: Sequence[int], names: Sequence[str]) -> dict[int, str] | None:
    """Which array of a references file holds each memory layer.

    The canonical name is ``layer_<layer>`` with the layer number (``layer_6`` pairs with ``tokens_6``). A file
    whose arrays are numbered by position in ``fewshot.layers`` instead (``layer_0 .. layer_{n-1}``) is accepted
    when the canonical names are not all there. Returns None if neither naming is complete.
    """
    available = set(names)
    canonical = {layer: f"layer_{layer}" for layer in layers}
    if all(key in available for key in canonical.values()):
        return canonical
    positional = {layer: f"layer_{i}" for i, layer in enumerate(layers)}
    if all(key in available for key in positional.values()):
        return positional
    return None


# --------------------------------------------------------------------------- engine / backend


def _major(version: str) -> int | None:
    match = re.match(r"\s*(\d+)", str(version))
    return int(match.group(1)) if match else None


def detect_compute_capability() -> str | None:
    """Compute capability of GPU 0 as "major.minor", or None when it cannot be determined.

    Tries cuda-python, then pycuda, then ``nvidia-smi``; all are optional and imported lazily.
    """
    try:
        if importlib.util.find_spec("cuda") is not None:
            try:
                runtime = importlib.import_module("cuda.bindings.runtime")
            except ImportError:
                runtime = importlib.import_module("cuda.cudart")
            attr = runtime.cudaDeviceAttr
            err1, major = runtime.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMajor, 0)
            err2, minor = runtime.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMinor, 0)
            if int(err1) == 0 and int(err2) == 0:
                return f"{int(major)}.{int(minor)}"
    except (ImportError, AttributeError, RuntimeError, TypeError, ValueError) as exc:
        logger.debug("cuda-python could not report the compute capability: %s", exc)
    try:
        if importlib.util.find_spec("pycuda") is not None:
            importlib.import_module("pycuda.autoinit")
            driver = importlib.import_module("pycuda.driver")
            major, minor = driver.Device(0).compute_capability()
            return f"{int(major)}.{int(minor)}"
    except (ImportError, AttributeError, RuntimeError, TypeError, ValueError) as exc:
        logger.debug("pycuda could not report the compute capability: %s", exc)
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip().splitlines()
        if out:
            return _parse_compute_capability(out[0])
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        logger.debug("nvidia-smi could not report the compute capability: %s", exc)
    return None


def _check_tensorrt(engine: EngineSpec, where: Path) -> None:
    if importlib.util.find_spec("tensorrt") is None:
        raise BundleError(
            f"{where}: field 'engine.kind' is 'tensorrt': TensorRT engines need the tensorrt package; install it from "
            "JetPack/NVIDIA, or use a bundle exported with --engine onnx",
            "engine.kind",
        )
    if engine.tensorrt_version is None:
        raise BundleError(
            f"{where}: field 'engine.tensorrt_version' is missing for a TensorRT engine; {_REEXPORT}",
            "engine.tensorrt_version",
        )
    trt = importlib.import_module("tensorrt")
    installed = str(getattr(trt, "__version__", ""))
    built, have = _major(engine.tensorrt_version), _major(installed)
    if built is None or have is None or built != have:
        raise BundleError(
            f"{where}: field 'engine.tensorrt_version': the engine was built with TensorRT {engine.tensorrt_version} "
            f"but TensorRT {installed or '(unknown version)'} is installed; an engine only runs on the TensorRT major "
            "version that built it: rebuild the engine on this device with fgad-export",
            "engine.tensorrt_version",
        )
    if engine.compute_capability is None:
        raise BundleError(
            f"{where}: field 'engine.compute_capability' is missing for a TensorRT engine; {_REEXPORT}",
            "engine.compute_capability",
        )
    gpu = detect_compute_capability()
    if gpu is None:
        logger.warning(
            "cannot determine this GPU's compute capability (install cuda-python to check it); the engine was "
            "built for %s",
            engine.compute_capability,
        )
    elif gpu != engine.compute_capability:
        raise BundleError(
            f"{where}: field 'engine.compute_capability': the engine was built for a GPU of compute capability "
            f"{engine.compute_capability}, this GPU is {gpu}; rebuild the engine on this device with fgad-export",
            "engine.compute_capability",
        )


#: --backend names -> the engine kind they run (aliases as in fgad.runtime.backends)
_BACKEND_KINDS = {"onnxruntime": "onnx", "ort": "onnx", "onnx": "onnx", "tensorrt": "tensorrt", "trt": "tensorrt"}


def _resolve(manifest: Manifest, root: Path, backend: str, quiet: bool) -> tuple[EngineSpec, bool]:
    """(engine to run, whether its TensorRT checks already passed); see :func:`resolve_engine`."""
    engine, fallback = manifest.engine, manifest.engine.fallback
    if fallback is None:
        return engine, False
    where = root / MANIFEST_NAME
    if backend != "auto":
        kind = _BACKEND_KINDS.get(backend)
        if kind is not None and kind != engine.kind and kind == fallback.kind:
            if not quiet:
                logger.info("--backend %s: running %s (engine.fallback) instead of %s", backend, fallback.file,
                            engine.file)
            return fallback, False
        return engine, False
    from fgad.runtime.backends import select_backend

    try:
        select_backend(engine.kind, "auto", where=str(where))
        if engine.kind == "tensorrt":
            if importlib.util.find_spec("cuda") is None:
                raise BundleError("the TensorRT backend needs cuda-python (pip install cuda-python)", "engine.kind")
            _check_tensorrt(engine, where)
    except BundleError as err:
        if not quiet:
            expected = err.field == "engine.kind"  # the package is simply not installed here
            (logger.info if expected else logger.warning)(
                "%s cannot run here (%s); running %s (engine.fallback, %s) instead", engine.file,
                str(err).split(": ", 1)[-1], fallback.file, fallback.kind)
        return fallback, False
    return engine, True


def resolve_engine(
    manifest: Manifest, bundle_dir: str | os.PathLike[str], backend: str = "auto", *, quiet: bool = False
) -> EngineSpec:
    """The engine this runtime will run: ``manifest.engine``, or its ``fallback`` where the engine cannot run.

    A bundle with a TensorRT engine keeps the ONNX graph it was built from as ``engine.fallback``. With
    ``backend="auto"`` the engine is preferred; when it cannot run here (TensorRT or cuda-python not installed,
    another TensorRT major version, another GPU) the fallback is used, with a log line saying why (unless
    ``quiet``). A ``backend`` that runs only the fallback's kind (``onnxruntime`` for a TensorRT bundle) picks
    the fallback; ``backend="tensorrt"`` insists on the engine, so its errors are raised by
    :func:`check_manifest`. Without a fallback this is always ``manifest.engine``.
    """
    return _resolve(manifest, Path(bundle_dir), backend, quiet)[0]


def _check_engine(manifest: Manifest, root: Path, backend: str) -> None:
    from fgad.runtime.backends import select_backend

    engine, checked = _resolve(manifest, root, backend, quiet=False)
    select_backend(engine.kind, backend, where=str(root / MANIFEST_NAME))
    if engine.kind == "tensorrt" and not checked:
        _check_tensorrt(engine, root / MANIFEST_NAME)


# --------------------------------------------------------------------------- shapes


def _shape_text(shape: Sequence[int | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _check_outputs(manifest: Manifest, where: Path) -> None:
    s, n = manifest.input.size, manifest.num_patches
    if manifest.grid > s:
        raise BundleError(
            f"{where}: field 'grid' is {manifest.grid}, larger than input.size {s}; {_REEXPORT}", "grid"
        )
    expected: dict[str, tuple[int, tuple[int | None, ...]]] = {
        "vl_map": (3, (None, manifest.map_size, manifest.map_size)),
        "global_prob": (1, (None,)),
        "best_description": (1, (None,)),
    }
    for name in REQUIRED_OUTPUTS:
        if name not in manifest.outputs:
            raise BundleError(f"{where}: field 'outputs.{name}' is missing; {_REEXPORT}", f"outputs.{name}")
    for name, (rank, dims) in expected.items():
        shape = manifest.outputs[name]
        bad = len(shape) != rank or any(e is not None and d != e for d, e in zip(shape, dims, strict=True))
        if bad:
            raise BundleError(
                f"{where}: field 'outputs.{name}' is {_shape_text(shape)}, expected {_shape_text(dims)} for "
                f"input.size {s}; {_REEXPORT}",
                f"outputs.{name}",
            )
    for layer in manifest.fewshot.layers:
        name = manifest.token_output(layer)
        if name not in manifest.outputs:
            raise BundleError(
                f"{where}: field 'fewshot.layers' lists layer {layer}, but 'outputs' has no '{name}'; {_REEXPORT}",
                "fewshot.layers",
            )
        shape = manifest.outputs[name]
        if len(shape) != 3 or shape[1] != n or shape[2] is None:
            raise BundleError(
                f"{where}: field 'outputs.{name}' is {_shape_text(shape)}, expected [?, {n}, D] "
                f"(N = grid * grid = {manifest.grid}^2); {_REEXPORT}",
                f"outputs.{name}",
            )


def _check_references(manifest: Manifest, root: Path) -> None:
    if not manifest.fewshot.file:
        return
    where = root / MANIFEST_NAME
    if not manifest.fewshot.layers:
        raise BundleError(
            f"{where}: field 'fewshot.file' is set but 'fewshot.layers' is empty; {_REEXPORT}", "fewshot.layers"
        )
    path = _bundle_file(root, manifest.fewshot.file, "fewshot.file")
    if not path.is_file():
        raise BundleError(
            f"{where}: field 'fewshot.file' names '{manifest.fewshot.file}', which does not exist; copy the whole "
            "bundle again or re-export it",
            "fewshot.file",
        )
    shapes = npz_array_shapes(path)
    keys = reference_keys(manifest.fewshot.layers, list(shapes))
    if keys is None:
        wanted = ", ".join(f"layer_{layer}" for layer in manifest.fewshot.layers)
        raise BundleError(
            f"{where}: field 'fewshot.file': {path.name} must hold arrays {wanted} (one per fewshot.layers entry), "
            f"found {sorted(shapes)}; {_REEXPORT}",
            "fewshot.file",
        )
    n = manifest.num_patches
    for layer, key in keys.items():
        shape, dtype = shapes[key]
        width = manifest.token_dim(layer)
        if len(shape) != 2 or shape[1] != width or shape[0] % n != 0 or not np.issubdtype(dtype, np.floating):
            raise BundleError(
                f"{where}: field 'fewshot.file': {path.name}[{key}] is {dtype}{list(shape)}, expected float "
                f"[k*{n}, {width}] (rows of k reference images, width D of tokens_{layer}); {_REEXPORT}",
                "fewshot.file",
            )
        k = shape[0] // n
        if manifest.fewshot.num_references and k != manifest.fewshot.num_references:
            raise BundleError(
                f"{where}: field 'fewshot.num_references' is {manifest.fewshot.num_references}, but {path.name}[{key}] "
                f"holds {k} images ({shape[0]} rows of {n}); {_REEXPORT}",
                "fewshot.num_references",
            )


def _check_box_prior(manifest: Manifest, where: Path) -> None:
    """A prior the runtime can honour: ``none``, or one inside the graph with its outputs declared."""
    prior = manifest.box_prior
    if prior.name == "grounding-dino":
        raise BundleError(
            f"{where}: field 'box_prior.name' is 'grounding-dino': that prior runs only on the PyTorch path "
            "(fgad-eval --box-prior grounding-dino), the runtime cannot run its detector; re-export the bundle with "
            "fgad-export --box-prior objectness (computed inside the graph) or none",
            "box_prior.name",
        )
    if prior.name not in GRAPH_BOX_PRIORS:
        raise BundleError(
            f"{where}: field 'box_prior.name' is {prior.name!r}, but this runtime knows {list(GRAPH_BOX_PRIORS)}; "
            f"upgrade fgad or {_REEXPORT}",
            "box_prior.name",
        )
    if prior.name == "none":
        return
    s = manifest.map_size
    wanted: dict[str, tuple[int | None, ...]] = {"position": (None,), "region_weight": (None, s, s)}
    for name, dims in wanted.items():
        shape = manifest.outputs.get(name)
        if name not in prior.outputs or shape is None:
            raise BundleError(
                f"{where}: field 'box_prior.outputs' must list '{name}' and 'outputs' must declare it for the "
                f"{prior.name} prior; {_REEXPORT}",
                "box_prior.outputs",
            )
        if len(shape) != len(dims) or any(e is not None and d != e for d, e in zip(shape, dims, strict=True)):
            raise BundleError(
                f"{where}: field 'outputs.{name}' is {_shape_text(shape)}, expected {_shape_text(dims)}; {_REEXPORT}",
                f"outputs.{name}",
            )


def check_manifest(
    manifest: Manifest,
    bundle_dir: str | os.PathLike[str],
    *,
    backend: str = "auto",
    verify_hashes: bool = True,
) -> None:
    """Everything that can be checked before an engine is created; raises :class:`BundleError`.

    Order: files and sha256 (``verify_hashes=False`` only checks presence), engine kind vs installed backends
    (``backend`` as in :func:`fgad.runtime.backends.select_backend`), output names and shapes vs
    ``input.size``/``grid``, few-shot layers vs ``tokens_<layer>`` outputs, and the references file.
    """
    root = Path(bundle_dir)
    _check_files(manifest, root, verify_hashes)
    _check_engine(manifest, root, backend)
    _check_outputs(manifest, root / MANIFEST_NAME)
    _check_box_prior(manifest, root / MANIFEST_NAME)
    _check_references(manifest, root)


def check_graph(
    manifest: Manifest,
    input_shapes: Mapping[str, Sequence[int | None]],
    output_shapes: Mapping[str, Sequence[int | None]],
    where: str = MANIFEST_NAME,
) -> None:
    """Compare the engine's declared input/output shapes (None for dynamic dims) with the manifest."""

    def compatible(declared: Sequence[int | None], wanted: Sequence[int | None]) -> bool:
        if len(declared) != len(wanted):
            return False
        return all(d is None or w is None or d == w for d, w in zip(declared, wanted, strict=True))

    name = manifest.input.name
    if name not in input_shapes:
        raise BundleError(
            f"{where}: field 'input.name' is '{name}', but the graph's inputs are {sorted(input_shapes)}; "
            f"{_REEXPORT}",
            "input.name",
        )
    s = manifest.input.size
    if not compatible(input_shapes[name], (None, 3, s, s)):
        raise BundleError(
            f"{where}: field 'input.size' is {s}, but the graph's input '{name}' is "
            f"{_shape_text(input_shapes[name])}; {_REEXPORT}",
            "input.size",
        )
    for out_name, wanted in manifest.outputs.items():
        if out_name not in output_shapes:
            field_name = "fewshot.layers" if out_name.startswith("tokens_") else f"outputs.{out_name}"
            raise BundleError(
                f"{where}: field 'outputs.{out_name}' is not an output of the graph (it has {sorted(output_shapes)}); "
                f"{_REEXPORT}",
                field_name,
            )
        declared = output_shapes[out_name]
        if not compatible(declared, wanted):
            field_name = "grid" if out_name.startswith("tokens_") else "input.size"
            raise BundleError(
                f"{where}: field 'outputs.{out_name}' is {_shape_text(wanted)}, but the graph declares "
                f"{_shape_text(declared)} (check '{field_name}'); {_REEXPORT}",
                f"outputs.{out_name}",
            )
