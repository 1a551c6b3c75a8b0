"""Configuration: frozen dataclasses, with variants as YAML files in ``fgad/configs``.

Every shape the model uses (input size, patch size, widths, layer indices) is stated here, so
``forward`` never derives shapes from tensors and an exported graph never freezes Python
arithmetic on tensor sizes. :func:`load_config` accepts a built-in variant name
(``filo-vitl14-336``, ``tiny-test``, ...) or a path to a YAML/JSON file; a file may name a
``base`` variant and override only some fields.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


@dataclass(frozen=True)
class BackboneConfig:
    """The frozen open_clip CLIP model and its dual-path (V-V) forward."""

    model_name: str = "ViT-L-14-336"  # open_clip model name, or `local-dir:DIR`
    pretrained: str | None = "openai"  # open_clip tag, weights file, or None for random init
    init_seed: int = 0  # seed of the random init when `pretrained` is None (recorded, checked)
    image_size: int = 518  # s: input side; the position grid is resized to s / patch_size
    patch_size: int = 14  # p
    width: int = 1024  # D: visual transformer width
    heads: int = 16  # visual attention heads
    layers: int = 24  # L: visual transformer blocks
    embed_dim: int = 768  # C: joint image-text embedding width
    text_width: int = 768  # W: text transformer width
    context_length: int = 77  # text tokens
    quick_gelu: bool = True  # OpenAI weights were trained with QuickGELU
    vv_start: int = 7  # l0: first block (1-indexed) with a V-V path
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

    @property
    def grid(self) -> int:
        """g = s / p, tokens per side."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """N = g^2."""
        return self.grid * self.grid

    @property
    def head_dim(self) -> int:
        return self.width // self.heads


@dataclass(frozen=True)
class PromptConfig:
    """FusDes prompts: fixed templates plus learnable (CoOp/CoCoOp) context."""

    n_ctx: int = 12  # learnable context tokens per template
    conditioning: str = "cocoop"  # "cocoop" (meta-net bias from the image) or "coop"
    meta_reduction: int = 16  # meta-net hidden width = C / meta_reduction
    use_fixed: bool = True  # pool the hand-written templates into both sets
    use_learnable: bool = True  # pool the learnable templates into both sets
    filtering: bool = True  # runtime prompt filtering (overlap-interval rule), inference only
    banks: tuple[str, ...] = ()  # extra description banks (JSON files) searched before built-ins
    ctx_init_std: float = 0.02


@dataclass(frozen=True)
class HeadConfig:
    """Local heads (linear + MDCI), adapter and temperatures."""

    linear_layers: tuple[int, ...] = (6, 12, 18, 24)  # original-path stages (1-indexed blocks)
    mdci_layers: tuple[int, ...] = (12, 18, 24)  # V-V stages; each must be >= vv_start
    mdci_kernels: tuple[tuple[int, int], ...] = ((1, 1), (3, 3), (5, 5), (7, 7), (1, 5), (5, 1))
    mdci_modulation: bool = True  # DCNv2 (modulated) or DCNv1
    adapter: bool = True
    adapter_reduction: int = 2  # adapter hidden width = C / adapter_reduction
    tau_local: float = 100.0 / math.sqrt(2.0)
    tau_global: float = 1.0 / (0.07 * math.sqrt(2.0))
    vl_map: str = "abnormal"  # "abnormal": M^a; "symmetric": (M^a + 1 - M^n) / 2 (equal)


@dataclass(frozen=True)
class FewShotConfig:
    memory_layers: tuple[int, ...] = (6, 12, 18, 24)  # original-path stages in the patch memory


BOX_PRIORS = ("none", "objectness", "grounding-dino")
#: model.reproduce: fgad's own method, or the released code's numerics (an explicit switch, never the default)
REPRODUCE_MODES = ("fgad", "released")


@dataclass(frozen=True)
class GroundingConfig:
    """The ``grounding-dino`` box prior (METHOD.md §1.5), PyTorch path only."""

    model: str | None = None  # Hugging Face model id or local folder (weights + tokenizer); None: must be given
    image_size: int = 518  # detector input side (our images are square: the short side is resized to this)
    box_threshold: float = 0.25  # keep a box when its best token probability exceeds this
    text_threshold: float = 0.25  # tokens above this form the box's phrase (CODE-FiLo reused box_threshold, P6)
    max_area: float = 0.7  # keep a box when its normalised area w * h is below this
    generic_words: tuple[str, ...] = ("anomaly", "damage", "broken", "defect", "contamination")  # caption head


@dataclass(frozen=True)
class ObjectnessConfig:
    """The ``objectness`` box prior: foreground vs background prompts on the patch tokens (in the graph)."""

    object_templates: tuple[str, ...] = ("a photo of a {}.", "a photo of the {}.", "a close-up photo of a {}.")
    background_prompts: tuple[str, ...] = ("a photo of the background.", "a photo of an empty surface.",
                                           "a photo of nothing.")
    temperature: float = 100.0  # CLIP's logit scale for the two-way object/background softmax
    threshold: float = 0.5  # a patch is foreground when p(object) > threshold


@dataclass(frozen=True)
class PostConfig:
    sigma: float = 4.0  # Gaussian smoothing of the final map
    truncate: float = 4.0  # radius = int(truncate * sigma + 0.5)
    suppression: float = 0.7  # lambda outside the box prior's region
    box_prior: str = "none"  # one of BOX_PRIORS; "none": whole image, all 9 positions
    grounding: GroundingConfig = field(default_factory=GroundingConfig)  # read when box_prior is grounding-dino
    objectness: ObjectnessConfig = field(default_factory=ObjectnessConfig)  # read when box_prior is objectness


@dataclass(frozen=True)
class ModelConfig:
    name: str = "filo-vitl14-336"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    heads: HeadConfig = field(default_factory=HeadConfig)
    fewshot: FewShotConfig = field(default_factory=FewShotConfig)
    post: PostConfig = field(default_factory=PostConfig)
    method: str = "filo"  # a method of fgad.methods.registry: filo (FiLo++), finegrained (FineGrainedAD)
    #: "fgad": the method as fgad specifies it; "released": the released code's numerics on purpose, known
    #: bugs included (docs/finegrained.md and docs/filo.md list what each method's mode reproduces)
    reproduce: str = "fgad"
    #: (key, section) for the config section of every registered method that has one, sorted by key (filled in
    #: with defaults on construction); read as attributes: ``cfg.finegrained``. In files they are ``model.<key>``.
    method_sections: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "method_sections", _complete_sections(self.method_sections))
        validate_model_config(self)

    def __getattr__(self, name: str) -> Any:
        """A method's config section by its key (``cfg.finegrained``)."""
        try:
            sections = object.__getattribute__(self, "method_sections")
        except AttributeError:
            raise AttributeError(name) from None
        for key, section in sections:
            if key == name:
                return section
        raise AttributeError(f"{type(self).__name__!r} has no field or method section {name!r}")

    @property
    def feature_layers(self) -> tuple[int, ...]:
        """Original-path layers the backbone must return."""
        return tuple(sorted(set(self.heads.linear_layers) | set(self.fewshot.memory_layers)))


@dataclass(frozen=True)
class TrainConfig:
    epochs_phase1: int = 15
    epochs_phase2: int = 5
    batch_size: int = 1  # images of one class per step
    lr_prompts: float = 1e-3
    lr_heads: float = 1e-4
    lr_adapter: float = 1e-5
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = 0.01
    mosaic_prob: float = 0.2  # 2x2 same-class mosaic augmentation (the reference recipe, MVTec)
    positions_from_mask: bool = False  # anomalous images use their mask-centre cell, else all 9
    max_steps_per_epoch: int | None = None  # cap for quick runs
    seed: int = 111
    num_workers: int = 0


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


class ConfigError(ValueError):
    """A configuration that cannot work; the message names the field."""


def _method_section_types() -> dict[str, type]:
    from fgad.methods.registry import config_sections

    return config_sections()


def _complete_sections(given: Any) -> tuple[tuple[str, Any], ...]:
    """``given`` (pairs or a mapping) with a default section for every method that has one, checked and sorted."""
    types_ = _method_section_types()
    items = dict(given.items() if isinstance(given, dict) else given)
    unknown = sorted(set(items) - set(types_))
    if unknown:
        raise ConfigError(f"model: unknown method section(s) {unknown}; known: {sorted(types_)}")
    for key, cls in types_.items():
        value = items.get(key)
        if value is None:
            items[key] = cls()
        elif not isinstance(value, cls):
            raise ConfigError(f"model.{key}: expected a {cls.__name__}, got {type(value).__name__}")
    return tuple(sorted(items.items()))


def validate_model_config(cfg: ModelConfig) -> None:
    bb = cfg.backbone
    if bb.image_size % bb.patch_size:
        raise ConfigError(
            f"backbone.image_size={bb.image_size} is not a multiple of backbone.patch_size={bb.patch_size}"
        )
    if bb.width % bb.heads:
        raise ConfigError(f"backbone.width={bb.width} is not divisible by backbone.heads={bb.heads}")
    if not 1 <= bb.vv_start <= bb.layers:
        raise ConfigError(f"backbone.vv_start={bb.vv_start} must be in [1, {bb.layers}]")
    from fgad.methods.registry import get_method, method_names

    if cfg.reproduce not in REPRODUCE_MODES:
        raise ConfigError(f"reproduce={cfg.reproduce!r}: use one of {list(REPRODUCE_MODES)}")
    if cfg.method not in method_names():
        raise ConfigError(f"method={cfg.method!r}: use one of {method_names()}")
    get_method(cfg.method).check_config(cfg)  # the method's own sections and fields


def validate_box_prior(post: PostConfig) -> None:
    """The ``post`` section's box-prior fields (checked by the methods that take a box prior)."""
    if post.box_prior not in BOX_PRIORS:
        raise ConfigError(f"post.box_prior={post.box_prior!r}: use one of {list(BOX_PRIORS)}")
    if not 0.0 <= post.suppression <= 1.0:
        raise ConfigError(f"post.suppression={post.suppression}: lambda must lie in [0, 1]")
    g, o = post.grounding, post.objectness
    for name, value in (("post.grounding.box_threshold", g.box_threshold),
                        ("post.grounding.text_threshold", g.text_threshold),
                        ("post.objectness.threshold", o.threshold)):
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{name}={value}: a probability threshold must lie in [0, 1)")
    if not 0.0 < g.max_area <= 1.0:
        raise ConfigError(f"post.grounding.max_area={g.max_area}: a fraction of the image area in (0, 1]")
    if g.image_size < 32:
        raise ConfigError(f"post.grounding.image_size={g.image_size}: use at least 32 pixels")
    if not o.object_templates or not all("{}" in t for t in o.object_templates):
        raise ConfigError("post.objectness.object_templates: give templates with a '{}' for the class name")
    if not o.background_prompts:
        raise ConfigError("post.objectness.background_prompts: give at least one background prompt")


# ---------------------------------------------------------------- (de)serialisation


def to_dict(obj: Any) -> Any:
    """A JSON-ready dict of a (nested) config dataclass; tuples become lists; method sections are ``model.<key>``."""
    if isinstance(obj, ModelConfig):
        out = {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.name != "method_sections"}
        out.update({key: to_dict(section) for key, section in obj.method_sections})
        return out
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [to_dict(v) for v in obj]
    return obj


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except (ConfigError, TypeError, ValueError):
                continue
        raise ConfigError(f"{where}: {value!r} does not fit {tp}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values, got {value!r}")
        return tuple(_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "config") -> T:
    """Build a (nested) frozen dataclass from a dict, with errors that name the field."""
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of fields, got {data!r}")
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    sections: dict[str, Any] = {}
    if cls is ModelConfig:  # each method's own section: model.<key>
        names.discard("method_sections")
        types_ = _method_section_types()
        for key in [k for k in data if k in types_]:
            sections[key] = from_dict(types_[key], data.pop(key), f"{where}.{key}")
        names |= set(types_)
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; known: {sorted(names)}")
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    if sections:
        kwargs["method_sections"] = tuple(sections.items())
    return cls(**kwargs)


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def builtin_config_names() -> list[str]:
    files = resources.files("fgad.configs").iterdir()
    return sorted(p.name.rsplit(".", 1)[0] for p in files if p.name.endswith((".yaml", ".yml")))


def _read_raw(name_or_path: str | Path, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml", ".json") and path.exists():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config {str(path)!r} cannot be read ({exc}); save it as UTF-8 text") from exc
        label = str(path)
    else:
        key = str(name_or_path)
        res = resources.files("fgad.configs") / f"{key}.yaml"
        if not res.is_file():
            raise ConfigError(
                f"no config named {key!r}: built-in variants are {builtin_config_names()}, "
                "or pass a path to a .yaml/.json file"
            )
        text = res.read_text()
        label = key
    if label in seen:
        raise ConfigError(f"config {label!r} names itself as a base (cycle: {' -> '.join(seen)})")
    try:  # safe_load: plain data only, no Python objects
        raw = (json.loads(text) if label.endswith(".json") else yaml.safe_load(text)) or {}
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        kind = "JSON" if label.endswith(".json") else "YAML"
        raise ConfigError(f"config {label!r} is not valid {kind}: {' '.join(str(exc).split())}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"config {label!r} must be a mapping at the top level")
    base = raw.pop("base", None)
    if base:
        beside = path.parent / str(base)  # a relative base path is read next to the including file
        if label == str(path) and beside.suffix in (".yaml", ".yml", ".json") and beside.exists():
            base = beside
        raw = _deep_merge(_read_raw(base, seen + (label,)), raw)
    return raw


_TOP_LEVEL = ("model", "train")


def _check_top_level(raw: dict[str, Any], where: str) -> None:
    unknown = sorted(set(raw) - set(_TOP_LEVEL))
    if unknown:
        raise ConfigError(f"{where}: unknown top-level section(s) {unknown}; known: {list(_TOP_LEVEL)}")


def load_config(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """Load a built-in variant or a YAML/JSON file, with optional nested overrides."""
    raw = _read_raw(name_or_path)
    if overrides:
        raw = _deep_merge(raw, overrides)
    _check_top_level(raw, str(name_or_path))
    model = raw.get("model") or {}
    if not isinstance(model, dict):
        raise ConfigError(f"{name_or_path}: model: expected a mapping of fields, got {model!r}")
    model.setdefault("name", Path(str(name_or_path)).stem)
    return Config(model=from_dict(ModelConfig, model, "model"), train=from_dict(TrainConfig, raw.get("train"), "train"))


def config_from_dict(data: dict[str, Any]) -> Config:
    _check_top_level(data, "config")
    return Config(
        model=from_dict(ModelConfig, data.get("model"), "model"),
        train=from_dict(TrainConfig, data.get("train"), "train"),
    )


def replace(obj: T, **changes: Any) -> T:
    """dataclasses.replace, re-exported for callers that tweak one field."""
    return dataclasses.replace(obj, **changes)  # type: ignore[type-var]
