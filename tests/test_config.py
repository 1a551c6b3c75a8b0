"""fgad.config: built-in variants, (de)serialisation, ``base:`` inheritance and validation errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from fgad.config import (
    Config,
    ConfigError,
    ModelConfig,
    builtin_config_names,
    config_from_dict,
    load_config,
    replace,
    to_dict,
)

EXPECTED_BUILTINS = {"filo-vitl14-336", "tiny-test", "vitb16-224"}


def test_builtin_names_include_the_shipped_variants() -> None:
    names = builtin_config_names()
    assert EXPECTED_BUILTINS <= set(names)
    assert names == sorted(names)


@pytest.mark.parametrize("name", builtin_config_names())
def test_every_builtin_variant_loads_and_is_self_consistent(name: str) -> None:
    cfg = load_config(name)
    assert isinstance(cfg, Config)
    bb = cfg.model.backbone
    assert cfg.model.name == name
    assert bb.image_size % bb.patch_size == 0
    assert bb.grid * bb.patch_size == bb.image_size
    assert bb.num_patches == bb.grid**2
    assert all(i >= bb.vv_start for i in cfg.model.heads.mdci_layers)
    assert all(1 <= i <= bb.layers for i in cfg.model.feature_layers)


def test_filo_variant_matches_method_table() -> None:
    """METHOD.md §0 / §3: the FiLo++ numbers, checked against the spec rather than the defaults."""
    m = load_config("filo-vitl14-336").model
    bb = m.backbone
    assert (bb.model_name, bb.pretrained) == ("ViT-L-14-336", "openai")
    assert (bb.image_size, bb.patch_size, bb.grid, bb.num_patches) == (518, 14, 37, 1369)
    assert (bb.width, bb.heads, bb.layers, bb.embed_dim, bb.text_width) == (1024, 16, 24, 768, 768)
    assert bb.quick_gelu is True and bb.vv_start == 7
    assert m.heads.linear_layers == (6, 12, 18, 24)
    assert m.heads.mdci_layers == (12, 18, 24)
    assert m.fewshot.memory_layers == (6, 12, 18, 24)
    assert sorted(m.heads.mdci_kernels) == sorted([(1, 1), (3, 3), (5, 5), (7, 7), (1, 5), (5, 1)])
    assert m.heads.tau_local == pytest.approx(100.0 / 2**0.5, rel=1e-12)
    assert m.heads.tau_global == pytest.approx(1.0 / (0.07 * 2**0.5), rel=1e-12)
    assert m.prompts.n_ctx == 12 and m.prompts.conditioning == "cocoop"
    assert (m.post.sigma, m.post.suppression) == (4.0, 0.7)
    assert int(m.post.truncate * m.post.sigma + 0.5) == 16  # radius 16 (METHOD §0.4)


def test_tiny_variant_fields() -> None:
    bb = load_config("tiny-test").model.backbone
    assert (bb.model_name, bb.pretrained, bb.image_size, bb.patch_size) == ("fgad-tiny", None, 112, 16)
    assert (bb.width, bb.heads, bb.layers, bb.vv_start, bb.grid) == (64, 2, 4, 2, 7)


@pytest.mark.parametrize("name", builtin_config_names())
def test_to_dict_round_trip_is_exact(name: str) -> None:
    cfg = load_config(name)
    data = to_dict(cfg)
    # JSON-ready: survives an actual JSON round trip, tuples became lists.
    data = json.loads(json.dumps(data))
    assert isinstance(data["model"]["heads"]["linear_layers"], list)
    back = config_from_dict(data)
    assert back == cfg
    assert to_dict(back) == to_dict(cfg)


def test_round_trip_keeps_nested_tuples_and_none() -> None:
    cfg = load_config("tiny-test", {"train": {"max_steps_per_epoch": None}})
    back = config_from_dict(to_dict(cfg))
    assert back.model.heads.mdci_kernels == cfg.model.heads.mdci_kernels
    assert all(isinstance(k, tuple) for k in back.model.heads.mdci_kernels)
    assert back.model.backbone.pretrained is None
    assert back.train.max_steps_per_epoch is None


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_base_inheritance_and_overrides(tmp_path: Path) -> None:
    parent = _write(
        tmp_path / "parent.yaml",
        {"base": "tiny-test", "model": {"post": {"sigma": 3.0}}, "train": {"epochs_phase1": 7}},
    )
    child = _write(
        tmp_path / "child.yaml",
        {"base": str(parent), "model": {"post": {"suppression": 0.5}, "backbone": {"init_seed": 5}}},
    )
    tiny = load_config("tiny-test")
    cfg = load_config(child)
    # From the child.
    assert cfg.model.post.suppression == 0.5
    assert cfg.model.backbone.init_seed == 5
    # From the parent (a deep merge: sibling keys of the same section survive).
    assert cfg.model.post.sigma == 3.0
    assert cfg.train.epochs_phase1 == 7
    # From tiny-test through two levels of ``base``.
    assert cfg.model.backbone.width == tiny.model.backbone.width == 64
    assert cfg.model.backbone.image_size == 112
    assert cfg.model.heads.linear_layers == (1, 2, 3, 4)
    assert cfg.train.epochs_phase2 == tiny.train.epochs_phase2
    # The name defaults to the file stem.
    assert cfg.model.name == "child"
    # Call-site overrides win over every file.
    over = load_config(child, {"model": {"post": {"sigma": 2.0}}, "train": {"epochs_phase1": 9}})
    assert over.model.post.sigma == 2.0 and over.train.epochs_phase1 == 9
    assert over.model.post.suppression == 0.5


def test_json_file_with_base(tmp_path: Path) -> None:
    path = tmp_path / "variant.json"
    path.write_text(json.dumps({"base": "tiny-test", "model": {"prompts": {"n_ctx": 6}}}))
    cfg = load_config(path)
    assert cfg.model.prompts.n_ctx == 6
    assert cfg.model.backbone.model_name == "fgad-tiny"


def test_base_cycle_is_reported(tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    _write(a, {"base": str(b)})
    _write(b, {"base": str(a)})
    with pytest.raises(ConfigError, match="cycle"):
        load_config(a)


def test_unknown_variant_lists_the_builtins() -> None:
    with pytest.raises(ConfigError, match="tiny-test"):
        load_config("no-such-variant")


# ---------------------------------------------------------------- validation errors name the field


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"model": {"heads": {"mdci_layers": [1, 3]}}}, "heads.mdci_layers"),  # 1 < vv_start=2
        ({"model": {"backbone": {"image_size": 100}}}, "backbone.image_size"),  # 100 % 16 != 0
        ({"model": {"backbone": {"heads": 3}}}, "backbone.width"),  # 64 % 3 != 0
        ({"model": {"backbone": {"vv_start": 9}}}, "backbone.vv_start"),  # > layers=4
        ({"model": {"heads": {"linear_layers": [0, 2]}}}, "heads.linear_layers"),  # blocks are 1-indexed
        ({"model": {"fewshot": {"memory_layers": [5]}}}, "fewshot.memory_layers"),
        ({"model": {"prompts": {"conditioning": "cocop"}}}, "prompts.conditioning"),
        ({"model": {"heads": {"vl_map": "mean"}}}, "heads.vl_map"),
        ({"model": {"heads": {"mdci_kernels": [[3, 3], [0, 1]]}}}, "heads.mdci_kernels"),
        ({"model": {"prompts": {"use_fixed": False, "use_learnable": False}}}, "use_learnable"),
    ],
)
def test_semantic_errors_name_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config("tiny-test", overrides)


def test_mdci_before_vv_start_names_both_fields() -> None:
    with pytest.raises(ConfigError) as info:
        load_config("tiny-test", {"model": {"backbone": {"vv_start": 3}}})  # tiny mdci_layers = 2, 3, 4
    msg = str(info.value)
    assert "heads.mdci_layers" in msg and "backbone.vv_start" in msg and "[2]" in msg


@pytest.mark.parametrize(
    ("overrides", "section", "bad"),
    [
        ({"model": {"backbone": {"widht": 64}}}, "model.backbone", "widht"),
        ({"model": {"prompts": {"n_context": 4}}}, "model.prompts", "n_context"),
        ({"model": {"colour": "red"}}, "model", "colour"),
        ({"train": {"epochs": 3}}, "train", "epochs"),
    ],
)
def test_unknown_field_is_rejected_by_name(overrides: dict, section: str, bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config("tiny-test", overrides)
    assert str(info.value).startswith(f"{section}:")
    assert bad in str(info.value)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"model": {"backbone": {"width": "64"}}}, "model.backbone.width"),
        ({"model": {"backbone": {"width": 64.0}}}, "model.backbone.width"),
        ({"model": {"backbone": {"layers": True}}}, "model.backbone.layers"),
        ({"model": {"post": {"sigma": "4"}}}, "model.post.sigma"),
        ({"model": {"prompts": {"filtering": 1}}}, "model.prompts.filtering"),
        ({"model": {"backbone": {"model_name": 5}}}, "model.backbone.model_name"),
        ({"model": {"heads": {"linear_layers": 3}}}, "model.heads.linear_layers"),
        ({"model": {"backbone": {"mean": [0.5, 0.5]}}}, "model.backbone.mean"),
        ({"model": {"backbone": {"pretrained": 3}}}, "model.backbone.pretrained"),
        ({"train": {"betas": [0.5, "x"]}}, "train.betas[1]"),
    ],
)
def test_wrong_type_names_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.").replace("[", r"\[").replace("]", r"\]")):
        load_config("tiny-test", overrides)


def test_section_that_is_not_a_mapping_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"model\.backbone"):
        load_config("tiny-test", {"model": {"backbone": 5}})


def test_unknown_top_level_section_is_rejected() -> None:
    with pytest.raises(ConfigError, match="trian"):
        load_config("tiny-test", {"trian": {"epochs_phase1": 3}})


def test_direct_construction_validates() -> None:
    cfg = load_config("tiny-test").model
    with pytest.raises(ConfigError, match=r"backbone\.image_size=113"):
        replace(cfg, backbone=replace(cfg.backbone, image_size=113))
    with pytest.raises(ConfigError, match=r"heads\.mdci_layers"):
        ModelConfig(backbone=cfg.backbone, fewshot=cfg.fewshot, heads=replace(cfg.heads, mdci_layers=(1,)))


def test_feature_layers_is_union_of_linear_and_memory_layers() -> None:
    cfg = load_config(
        "tiny-test", {"model": {"heads": {"linear_layers": [4, 2]}, "fewshot": {"memory_layers": [3, 2]}}}
    ).model
    assert cfg.feature_layers == (2, 3, 4)


@pytest.mark.parametrize(
    ("name", "text", "needle"),
    [
        ("bad.yaml", "model: [unclosed\n", "is not valid YAML"),
        ("bad.json", "{not json", "is not valid JSON"),
        ("python.yaml", "model: !!python/object/apply:os.system ['echo hi']\n", "is not valid YAML"),
        ("list.yaml", "- a\n- b\n", "mapping at the top level"),
    ],
)
def test_a_bad_config_file_is_one_config_error_naming_it(tmp_path: Path, name: str, text: str, needle: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match=needle) as caught:
        load_config(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
