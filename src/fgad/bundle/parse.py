"""``manifest.json`` -> :class:`~fgad.bundle.spec.Manifest`, field by field.

Structure only (types, ranges, the preprocessing this runtime implements); whether the bundle can run here is
:func:`fgad.runtime.backends.check_manifest`. Every error names the dotted field at fault.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fgad.bundle.digest import manifest_digest, read_digest
from fgad.bundle.engine import parse_compute_capability
from fgad.bundle.errors import REEXPORT, BundleError
from fgad.bundle.spec import (
    DIGEST_FILE,
    FEWSHOT_SEARCHES,
    GRAPH_SEARCH_FORMAT_VERSION,
    MANIFEST_FILE,
    SUPPORTED_FORMAT_VERSIONS,
    BoxPriorSpec,
    EngineSpec,
    FewshotSpec,
    InputSpec,
    Manifest,
    PluginSpec,
    PostSpec,
    Shape,
    TextSpec,
    ThresholdSpec,
)

__all__ = ["load_manifest"]


_MISSING = object()


class _Fields:
    """Typed access to one JSON object of the manifest; errors name the dotted field."""

    def __init__(self, data: Any, prefix: str, where: str) -> None:
        if not isinstance(data, Mapping):
            raise BundleError(
                f"{where}: field '{prefix}' must be an object, got {type(data).__name__}; {REEXPORT}", prefix
            )
        self.data = data
        self.prefix = prefix
        self.where = where

    def name(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def fail(self, key: str, problem: str) -> BundleError:
        return BundleError(f"{self.where}: field '{self.name(key)}' {problem}; {REEXPORT}", self.name(key))

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
        cc = parse_compute_capability(eng.raw("compute_capability", None))
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
        search=few.str_("search", "runtime") or "runtime",
    )
    if fewshot.search not in FEWSHOT_SEARCHES:
        raise few.fail("search", f"is {fewshot.search!r}, but this runtime knows {list(FEWSHOT_SEARCHES)}")
    if fewshot.search == "graph" and (version < GRAPH_SEARCH_FORMAT_VERSION or not fewshot.layers
                                      or fewshot.file or fewshot.num_references < 1):
        raise few.fail("search", f"is 'graph': that needs format_version >= {GRAPH_SEARCH_FORMAT_VERSION}, "
                       "fewshot.layers, fewshot.num_references >= 1 and no fewshot.file (the memory is in the graph)")

    post = top.obj("post")
    post_spec = PostSpec(
        sigma=post.float_("sigma", positive=True),
        truncate=post.float_("truncate", positive=True),
        fusion=post.str_("fusion", "mean"),
        score=post.str_("score", "mean"),
        fewshot_scale=post.float_("fewshot_scale", 1.0, positive=True),
        map_size=post.int_("map_size", None, minimum=1),
        output_size=post.int_("output_size", None, minimum=1),
        align_corners=post.raw("align_corners", True),
    )
    if not isinstance(post_spec.align_corners, bool):
        raise post.fail("align_corners", f"must be true or false, got {post_spec.align_corners!r}")
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
    thresholds = ThresholdSpec(image=thr.float_("image", None), rule=thr.str_("rule", None),
                               auto=thr.float_("auto", None))

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


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def load_manifest(bundle_dir: str | os.PathLike[str]) -> Manifest:
    """Read and parse ``<bundle_dir>/manifest.json`` (structure only; see :func:`check_manifest`)."""
    root = Path(bundle_dir)
    if not root.is_dir():
        raise BundleError(f"bundle '{root}' is not a folder; pass the folder written by fgad-export")
    path = root / MANIFEST_FILE
    if not path.is_file():
        raise BundleError(f"bundle '{root}' has no {MANIFEST_FILE}; pass the folder written by fgad-export")
    try:
        data = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_unique_keys)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: not readable JSON ({exc}); {REEXPORT}") from exc
    except _DuplicateKey as dup:
        raise BundleError(f"{path}: field '{dup.key}' appears twice in one object (JSON readers disagree on "
                          f"which one counts); {REEXPORT}", dup.key) from None
    if not isinstance(data, dict):
        raise BundleError(f"{path}: the manifest must be a JSON object; {REEXPORT}")
    try:
        return _parse(data, str(path))
    except BundleError as err:
        if _edited(root, data):  # say why a field an exporter wrote correctly is wrong now
            raise BundleError(f"{err} (and {MANIFEST_FILE} differs from {DIGEST_FILE}: it was edited or damaged "
                              "after export)", err.field) from None
        raise


def _edited(root: Path, data: Mapping[str, Any]) -> bool:
    """Whether the bundle has a digest file and ``data`` does not match it (False when it cannot tell)."""
    try:
        record = read_digest(root)
    except BundleError:
        return False
    return record is not None and record["manifest_sha256"] != manifest_digest(data)

