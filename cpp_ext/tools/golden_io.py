"""The FgadDeformConv2d plugin's spec (``deformConv2dPlugin/spec.json``) and golden files
(``deformConv2dPlugin/golden/*.npz``): reading, writing, validating, and the tolerance rules.

Only numpy and the standard library: this is what ``check_golden.py`` runs on a device that has no torch.
``make_golden.py`` (which needs torch) writes the golden files through :func:`save_golden`.

A golden file holds one small geometry: the plugin's inputs ``X``, ``W``, ``offset`` and, when the layer has
them, ``B`` and ``mask`` (float32); ``Y``, the float64 reference output on those inputs; ``Y_fp16``, the
float64 reference on the same inputs rounded to fp16 (what an fp16 engine is given); and ``meta``, a JSON
string with the case's name, description, seed and plugin fields (``strides``, ``pads``, ``dilations``,
``group``, ``offset_group``).
"""

from __future__ import annotations

import json
import math
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PLUGIN_DIR = Path(__file__).resolve().parents[1] / "deformConv2dPlugin"
SPEC_PATH = PLUGIN_DIR / "spec.json"
GOLDEN_DIR = PLUGIN_DIR / "golden"

#: The plugin's inputs, in order (ONNX DeformConv's); ``B`` and ``mask`` may be absent from a golden file.
INPUT_NAMES = ("X", "W", "offset", "B", "mask")
OPTIONAL_INPUTS = ("B", "mask")
#: The plugin fields a golden file states (``kernel_shape`` is always ``W.shape[2:]``).
FIELD_NAMES = ("strides", "pads", "dilations", "group", "offset_group")
_FIELD_COUNTS = {"strides": 2, "pads": 4, "dilations": 2, "group": 1, "offset_group": 1}
_OUTPUT_KEYS = ("Y", "Y_fp16")


class GoldenError(ValueError):
    """A spec or golden file is missing, unreadable or inconsistent; the message names the file."""


# ---------------------------------------------------------------------------------------------- tolerances


@dataclass(frozen=True)
class Comparison:
    """One output against its reference: the largest |difference| and the largest |difference| / allowed."""

    max_abs_diff: float
    worst_ratio: float
    problem: str | None = None

    @property
    def passed(self) -> bool:
        return self.problem is None and self.worst_ratio <= 1.0  # False for NaN too


@dataclass(frozen=True)
class Tolerance:
    """Elementwise rule ``|got - reference| <= atol + rtol * |reference|``."""

    atol: float
    rtol: float = 0.0

    def describe(self) -> str:
        return f"{self.atol:.3g}" if self.rtol == 0.0 else f"{self.atol:.3g} + {self.rtol:.3g}*|ref|"

    def compare(self, got: np.ndarray, reference: np.ndarray) -> Comparison:
        if got.shape != reference.shape:
            return Comparison(math.inf, math.inf, f"output shape {got.shape} != reference shape {reference.shape}")
        ref = reference.astype(np.float64)
        diff = np.abs(got.astype(np.float64) - ref)
        allowed = self.atol + self.rtol * np.abs(ref)
        if diff.size == 0:
            return Comparison(0.0, 0.0)
        if not np.isfinite(diff).all():
            return Comparison(math.nan, math.nan, "output has NaN or infinite values")
        return Comparison(float(diff.max()), float((diff / allowed).max()))


# ---------------------------------------------------------------------------------------------- spec


@dataclass(frozen=True)
class FieldSpec:
    name: str
    type: str
    count: int
    default: Any


@dataclass(frozen=True)
class Spec:
    """The parts of spec.json that code reads; ``raw`` is the whole document."""

    path: Path
    name: str
    version: str
    namespace: str
    onnx_op_type: str
    onnx_domain: str
    onnx_domain_version: int
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    fields: tuple[FieldSpec, ...]
    precisions: tuple[str, ...]
    tolerances: Mapping[str, Tolerance]
    raw: Mapping[str, Any]

    def tolerance(self, precision: str) -> Tolerance:
        if precision not in self.tolerances:
            raise GoldenError(f"{self.path}: no tolerance for precision {precision!r} (has {sorted(self.tolerances)})")
        return self.tolerances[precision]


def _get(document: Mapping[str, Any], dotted: str, path: Path) -> Any:
    value: Any = document
    for key in dotted.split("."):
        if not isinstance(value, Mapping) or key not in value:
            raise GoldenError(f"{path}: missing key {dotted!r}")
        value = value[key]
    return value


def load_spec(path: Path = SPEC_PATH) -> Spec:
    """Read and check spec.json (every key code relies on is present, tolerances are numbers)."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise GoldenError(f"{path}: cannot read the plugin spec: {exc}") from exc
    if not isinstance(document, dict):
        raise GoldenError(f"{path}: the plugin spec must be a JSON object")
    try:
        fields = tuple(
            FieldSpec(str(f["name"]), str(f["type"]), int(f["count"]), f["default"])
            for f in _get(document, "fields", path)
        )
        formats = _get(document, "formats", path)
        precisions = tuple(str(f["precision"]) for f in formats)
        tolerances = {
            precision: Tolerance(float(rule["atol"]), float(rule["rtol"]))
            for precision, rule in _get(document, "tolerances", path).items()
            if isinstance(rule, Mapping)
        }
        spec = Spec(
            path=path,
            name=str(_get(document, "plugin.name", path)),
            version=str(_get(document, "plugin.version", path)),
            namespace=str(_get(document, "plugin.namespace", path)),
            onnx_op_type=str(_get(document, "onnx_node.op_type", path)),
            onnx_domain=str(_get(document, "onnx_node.domain", path)),
            onnx_domain_version=int(_get(document, "onnx_node.domain_version", path)),
            input_names=tuple(str(i["name"]) for i in _get(document, "inputs", path)),
            output_names=tuple(str(o["name"]) for o in _get(document, "outputs", path)),
            fields=fields,
            precisions=precisions,
            tolerances=tolerances,
            raw=document,
        )
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, GoldenError):
            raise
        raise GoldenError(f"{path}: malformed plugin spec: {exc!r}") from exc
    missing = [p for p in precisions if p not in tolerances]
    if missing:
        raise GoldenError(f"{path}: formats list precisions {missing} without a tolerance")
    if spec.input_names != INPUT_NAMES:
        raise GoldenError(f"{path}: inputs are {spec.input_names}, the golden files use {INPUT_NAMES}")
    return spec


# ---------------------------------------------------------------------------------------------- golden files


def output_size(x_shape: tuple[int, ...], w_shape: tuple[int, ...], fields: Mapping[str, Any]) -> tuple[int, int]:
    """(Ho, Wo) by the spec's formula (ONNX pads: top, left, bottom, right)."""
    (_, _, height, width), (_, _, kh, kw) = x_shape, w_shape
    (sh, sw), (pt, pl, pb, pr), (dh, dw) = fields["strides"], fields["pads"], fields["dilations"]
    return (height + pt + pb - dh * (kh - 1) - 1) // sh + 1, (width + pl + pr - dw * (kw - 1) - 1) // sw + 1


@dataclass
class GoldenCase:
    """One golden geometry: inputs (None where the layer has no bias / mask), fields, reference outputs."""

    name: str
    description: str
    seed: int
    inputs: dict[str, np.ndarray | None]
    fields: dict[str, Any]
    expected: np.ndarray
    expected_fp16: np.ndarray
    path: Path | None = None

    def where(self) -> str:
        return str(self.path) if self.path is not None else f"golden case {self.name!r}"

    def inputs_as(self, dtype: type[np.floating[Any]]) -> dict[str, np.ndarray | None]:
        """The inputs as contiguous arrays of ``dtype`` (float16: what an fp16 engine is given)."""
        return {k: None if v is None else np.ascontiguousarray(v, dtype=dtype) for k, v in self.inputs.items()}

    def explicit_inputs(self, dtype: type[np.floating[Any]]) -> dict[str, np.ndarray]:
        """All five plugin inputs, a zero ``B`` and a ones ``mask`` where the layer has none (as the
        exporter fills them in for the plugin node)."""
        arrays = self.inputs_as(dtype)
        x, w, offset = self.inputs["X"], self.inputs["W"], self.inputs["offset"]
        assert x is not None and w is not None and offset is not None
        (kh, kw), og = w.shape[2:], int(self.fields["offset_group"])
        defaults = {
            "B": np.zeros((w.shape[0],), dtype),
            "mask": np.ones((x.shape[0], og * kh * kw, *offset.shape[2:]), dtype),
        }
        explicit: dict[str, np.ndarray] = {}
        for key in INPUT_NAMES:
            given = arrays[key]
            explicit[key] = given if given is not None else defaults[key]
        return explicit

    def validate(self) -> None:
        """Raise GoldenError (naming the file) unless dtypes, fields and shapes are consistent."""
        where = self.where()
        for key in ("X", "W", "offset"):
            if self.inputs.get(key) is None:
                raise GoldenError(f"{where}: input {key!r} is missing")
        for key, array in self.inputs.items():
            if key not in INPUT_NAMES:
                raise GoldenError(f"{where}: unknown input {key!r}")
            if array is not None and array.dtype != np.float32:
                raise GoldenError(f"{where}: input {key!r} is {array.dtype}, expected float32")
        for key, array in (("Y", self.expected), ("Y_fp16", self.expected_fp16)):
            if array.dtype != np.float64:
                raise GoldenError(f"{where}: {key!r} is {array.dtype}, expected float64")
        for key, count in _FIELD_COUNTS.items():
            value = self.fields.get(key)
            values = value if isinstance(value, list) else [value]
            if len(values) != count or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                raise GoldenError(f"{where}: field {key!r} must be {count} integer(s), got {value!r}")
        x, w = self.inputs["X"], self.inputs["W"]
        assert x is not None and w is not None
        if x.ndim != 4 or w.ndim != 4:
            raise GoldenError(f"{where}: X and W must be 4-D, got {x.shape} and {w.shape}")
        n, c = x.shape[:2]
        cout, c_per_group, kh, kw = w.shape
        group, og = self.fields["group"], self.fields["offset_group"]
        if c_per_group * group != c or c % og != 0 or cout % group != 0:
            raise GoldenError(f"{where}: W {w.shape} with group={group}, offset_group={og} does not fit X {x.shape}")
        ho, wo = output_size(x.shape, w.shape, self.fields)
        shapes = {
            "offset": (n, 2 * og * kh * kw, ho, wo),
            "B": (cout,),
            "mask": (n, og * kh * kw, ho, wo),
            "Y": (n, cout, ho, wo),
            "Y_fp16": (n, cout, ho, wo),
        }
        actual = {**{k: v for k, v in self.inputs.items() if v is not None}, "Y": self.expected,
                  "Y_fp16": self.expected_fp16}
        for key, shape in shapes.items():
            if key in actual and actual[key].shape != shape:
                raise GoldenError(f"{where}: {key!r} has shape {actual[key].shape}, the geometry needs {shape}")


def save_golden(case: GoldenCase, path: Path) -> Path:
    """Write ``case`` (validated first) as a compressed npz."""
    case.validate()
    meta = {"name": case.name, "description": case.description, "seed": case.seed, "fields": case.fields}
    arrays = {k: v for k, v in case.inputs.items() if v is not None}
    np.savez_compressed(path, **arrays, Y=case.expected, Y_fp16=case.expected_fp16,
                        meta=np.array(json.dumps(meta, sort_keys=True)))
    return Path(path)


def load_golden(path: Path) -> GoldenCase:
    """Read one golden file; GoldenError naming ``path`` when it is unreadable or inconsistent."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise GoldenError(f"{path}: not a readable golden .npz file: {exc}") from exc
    missing = [k for k in ("X", "W", "offset", *_OUTPUT_KEYS, "meta") if k not in arrays]
    if missing:
        raise GoldenError(f"{path}: missing arrays {missing} (has {sorted(arrays)})")
    unknown = sorted(set(arrays) - {*INPUT_NAMES, *_OUTPUT_KEYS, "meta"})
    if unknown:
        raise GoldenError(f"{path}: unknown arrays {unknown}")
    try:
        meta = json.loads(str(arrays.pop("meta")))
        name, description, seed, fields = meta["name"], meta["description"], int(meta["seed"]), dict(meta["fields"])
    except (ValueError, KeyError, TypeError) as exc:
        raise GoldenError(f"{path}: 'meta' must be a JSON object with name, description, seed, fields: {exc}") from exc
    case = GoldenCase(
        name=str(name),
        description=str(description),
        seed=seed,
        inputs={k: arrays.get(k) for k in INPUT_NAMES},
        fields=fields,
        expected=arrays["Y"],
        expected_fp16=arrays["Y_fp16"],
        path=path,
    )
    case.validate()
    return case


def golden_paths(directory: Path = GOLDEN_DIR) -> list[Path]:
    """The golden files of ``directory``, sorted; GoldenError when there are none."""
    directory = Path(directory)
    paths = sorted(directory.glob("*.npz"))
    if not paths:
        raise GoldenError(f"{directory}: no golden .npz files (generate them with cpp_ext/tools/make_golden.py)")
    return paths
