"""MFSC caption records: the schema, its error messages, the shipped records and the defect phrases."""

from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from fgad.data.descriptions import BUILTIN_BANKS, load_bank
from fgad.methods.finegrained.captions.schema import (
    COLORS,
    LOCATIONS,
    NUMBERS,
    SHAPES,
    TEXTURES,
    CaptionError,
    CaptionRecord,
    Entity,
    available_captions,
    caption_from_dict,
    caption_to_dict,
    defect_phrases,
    load_caption,
    read_caption_file,
)

MVTEC = [
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
]
VISA = [
    "candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2",
    "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum",
]
SHIPPED = {"mvtec": MVTEC, "visa": VISA, "magnetic_tile": ["magnetic_tile"], "synthetic": ["tile", "disc", "mesh"]}
ALL = [(ds, cls) for ds, names in SHIPPED.items() for cls in names]


def _raw_files() -> dict[tuple[str, str], dict[str, Any]]:
    folder = resources.files("fgad.data").joinpath("captions")
    out = {}
    for ref in folder.iterdir():
        if ref.name.endswith(".json") and ref.name != "vocabulary.json":
            data = json.loads(ref.read_text(encoding="utf-8"))
            out[(data["dataset"], data["class_name"])] = data
    return out


def _atoms(field: str) -> list[str]:
    return [part.strip() for part in field.split(" and ")]


def _valid() -> dict[str, Any]:
    """A small valid record written out by hand (two entities)."""
    return {
        "class_name": "widget",
        "Level_1": [{"foreground": "widget", "background": "pure black"}],
        "Level_2": [{
            "entity": ["widget body", "screws"],
            "number": ["one", "two"],
            "location": ["center", "both sides"],
            "relation": "Two screws hold the widget body on both sides.",
        }],
        "Level_3": [{
            "direction": ["", "vertical"],
            "color": ["blue and white", "silver"],
            "texture": ["smooth", "metallic"],
            "shape": ["rectangular", "round"],
            "entity_caption": ["A blue and white widget body sits in the center.", "Two round screws flank it."],
        }],
        "caption": "A blue and white widget held by two screws on a pure black background.",
    }


def _write(tmp_path: Path, data: object, name: str = "widget.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- vocabulary


def test_vocabulary_sizes_follow_the_method() -> None:
    # METHOD.md 2.2: COLORS 16, TEXTURES 10, SHAPES about 17, LOCATIONS 17.
    assert (len(COLORS), len(TEXTURES), len(LOCATIONS)) == (16, 10, 17)
    assert 15 <= len(SHAPES) <= 19


@pytest.mark.parametrize("vocab", [COLORS, TEXTURES, SHAPES, LOCATIONS, NUMBERS])
def test_vocabulary_words_are_unique_lowercase_and_trimmed(vocab: tuple[str, ...]) -> None:
    assert len(set(vocab)) == len(vocab)
    assert all(w == " ".join(w.lower().split()) and w for w in vocab)


def test_joinable_vocabularies_have_no_word_and() -> None:
    for vocab in (COLORS, TEXTURES, SHAPES):
        assert not any("and" in w.split() for w in vocab)


# --------------------------------------------------------------------------- shipped records


def test_every_bank_class_has_exactly_one_shipped_record() -> None:
    for ds in BUILTIN_BANKS:
        assert available_captions(ds) == sorted(load_bank(ds)) == sorted(SHIPPED[ds]), ds
    assert sorted(_raw_files()) == sorted(ALL)
    assert available_captions() == sorted({cls for _, cls in ALL})


@pytest.mark.parametrize(("dataset", "class_name"), ALL)
def test_shipped_record_validates_and_round_trips(dataset: str, class_name: str) -> None:
    record = load_caption(class_name, dataset=dataset)
    assert isinstance(record, CaptionRecord) and record.class_name == class_name
    as_dict = caption_to_dict(record)
    assert caption_from_dict(copy.deepcopy(as_dict), "round trip") == record
    raw = _raw_files()[(dataset, class_name)]
    assert {k: v for k, v in raw.items() if k not in ("dataset",) and not k.startswith("_")} == as_dict
    assert json.loads(json.dumps(as_dict)) == as_dict  # plain JSON types only


@pytest.mark.parametrize(("dataset", "class_name"), ALL)
def test_shipped_record_values_are_vocabulary_words(dataset: str, class_name: str) -> None:
    record = load_caption(class_name, dataset=dataset)
    assert 1 <= len(record.entities) <= 4
    assert record.foreground in record.caption
    assert any(e.name in record.relation for e in record.entities)
    for e in record.entities:
        assert e.number in NUMBERS and e.location in LOCATIONS
        assert all(c in COLORS for c in _atoms(e.color)), e
        assert all(t in TEXTURES for t in _atoms(e.texture)), e
        assert all(s in SHAPES for s in _atoms(e.shape)), e
        assert e.name.lower() in e.caption.lower()
    assert set(record.colors) == {c for e in record.entities for c in _atoms(e.color)}


def test_shipped_records_are_not_copies_of_each_other() -> None:
    captions = [load_caption(c, dataset=d).caption for d, c in ALL]
    assert len(set(captions)) == len(captions)


def test_shared_class_name_resolves_like_the_description_banks() -> None:
    mvtec_tile = load_caption("tile")
    assert mvtec_tile == load_caption("tile", dataset="mvtec")
    synthetic_tile = load_caption("tile", dataset="synthetic")
    assert synthetic_tile != mvtec_tile and synthetic_tile.class_name == "tile"
    assert load_caption("disc") == load_caption("disc", dataset="synthetic")
    assert load_caption("Bottle") == load_caption("bottle")


def test_unknown_class_error_suggests_and_explains() -> None:
    with pytest.raises(CaptionError, match=r"'botle'.*Did you mean 'bottle'.*fgad-captions draft"):
        load_caption("botle")
    with pytest.raises(CaptionError, match="in dataset 'visa'"):
        load_caption("bottle", dataset="visa")
    assert issubclass(CaptionError, ValueError)


# --------------------------------------------------------------------------- record properties


def test_attribute_properties_split_deduplicate_and_keep_order() -> None:
    def entity(color: str, texture: str, shape: str) -> Entity:
        return Entity("part", "one", "center", "", color, texture, shape, "the part")

    record = CaptionRecord("x", "x", "black", (entity("blue and white", "smooth", "round"),
                                              entity("white and red", "smooth and glossy", "round")), "r", "x")
    assert record.colors == ("blue", "white", "red")
    assert record.textures == ("smooth", "glossy")
    assert record.shapes == ("round",)


def test_hand_written_record_and_normalisation() -> None:
    data = _valid()
    data["Level_3"][0]["color"][0] = "Blue  And white"  # case and spacing are normalised
    record = caption_from_dict(data, "hand")
    assert record.entities[0].color == "blue and white"
    assert [e.name for e in record.entities] == ["widget body", "screws"]
    assert record.entities[1].direction == "vertical" and record.entities[0].direction == ""
    bare = _valid()
    for level in ("Level_1", "Level_2", "Level_3"):
        bare[level] = bare[level][0]  # a bare object instead of a one-item list is accepted
    assert caption_from_dict(bare, "bare") == caption_from_dict(_valid(), "hand")


# --------------------------------------------------------------------------- schema errors


def _error(tmp_path: Path, data: object) -> str:
    path = _write(tmp_path, data)
    with pytest.raises(CaptionError) as info:
        read_caption_file(path)
    message = str(info.value)
    assert str(path) in message  # every schema error names the file
    return message


def test_missing_level_is_named(tmp_path: Path) -> None:
    data = _valid()
    del data["Level_2"]
    assert "Level_2: missing" in _error(tmp_path, data)


def test_missing_field_inside_a_level_is_named(tmp_path: Path) -> None:
    data = _valid()
    del data["Level_3"][0]["shape"]
    assert "Level_3.shape: missing" in _error(tmp_path, data)


def test_entity_count_mismatch_names_the_list_and_the_entities(tmp_path: Path) -> None:
    data = _valid()
    data["Level_3"][0]["color"] = ["blue"]
    message = _error(tmp_path, data)
    assert "Level_3.color" in message and "1 value" in message and "'widget body', 'screws'" in message


def test_unknown_colour_names_field_entity_and_choices(tmp_path: Path) -> None:
    data = _valid()
    data["Level_3"][0]["color"][1] = "silver and teal"
    message = _error(tmp_path, data)
    assert "Level_3.color[1] (entity 'screws')" in message and "'teal'" in message and "silver" in message


@pytest.mark.parametrize(("field", "index", "value"), [("number", 0, "eleventy"), ("location", 1, "middle"),
                                                        ("texture", 0, "fuzzy"), ("shape", 1, "blobby")])
def test_other_vocabulary_fields_are_checked(tmp_path: Path, field: str, index: int, value: str) -> None:
    data = _valid()
    level = "Level_2" if field in ("number", "location") else "Level_3"
    data[level][0][field][index] = value
    message = _error(tmp_path, data)
    assert f"{level}.{field}[{index}]" in message and repr(value) in message


def test_caption_without_foreground(tmp_path: Path) -> None:
    data = _valid()
    data["caption"] = "A blue gadget on black."
    message = _error(tmp_path, data)
    assert "caption" in message and "'widget'" in message


def test_entity_caption_without_its_name(tmp_path: Path) -> None:
    data = _valid()
    data["Level_3"][0]["entity_caption"][1] = "Two round bolts flank it."
    assert "Level_3.entity_caption[1] (entity 'screws')" in _error(tmp_path, data)


def test_relation_without_any_entity(tmp_path: Path) -> None:
    data = _valid()
    data["Level_2"][0]["relation"] = "Everything is in place."
    assert "Level_2.relation" in _error(tmp_path, data)


@pytest.mark.parametrize("count", [0, 5])
def test_entity_count_limits(tmp_path: Path, count: int) -> None:
    data = _valid()
    names = [f"part {i}" for i in range(count)]
    data["Level_2"][0].update(entity=names, number=["one"] * count, location=["center"] * count)
    data["Level_3"][0].update(direction=[""] * count, color=["red"] * count, texture=["smooth"] * count,
                              shape=["round"] * count, entity_caption=[f"The {n}." for n in names])
    assert "1 to 4 entities" in _error(tmp_path, data)


def test_structural_errors(tmp_path: Path) -> None:
    data = _valid()
    data["Level1"] = data.pop("Level_1")
    assert "Level_1" in _error(tmp_path, data)
    data = _valid()
    data["Level_2"][0]["entity"] = "widget body"
    assert "Level_2.entity" in _error(tmp_path, data)
    data = _valid()
    data["Level_1"] = [data["Level_1"][0], data["Level_1"][0]]
    assert "exactly one object" in _error(tmp_path, data)
    data = _valid()
    data["Level_2"][0]["entity"][1] = "Widget Body"
    assert "listed twice" in _error(tmp_path, data)
    data = _valid()
    data["draft"] = "yes"
    assert "draft" in _error(tmp_path, data)
    data = _valid()
    data["Level_3"][0]["colour"] = data["Level_3"][0]["color"]
    assert "Did you mean 'color'" in _error(tmp_path, data)
    assert "top level is list" in _error(tmp_path, [_valid()])
    assert "not a caption record" in _error(tmp_path, {"colors": ["red"]})


def test_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "broken.json"
    bad.write_text('{"Level_1": [', encoding="utf-8")
    with pytest.raises(CaptionError, match=r"broken\.json: not valid JSON \(line 1"):
        read_caption_file(bad)
    with pytest.raises(FileNotFoundError, match="fgad-captions draft"):
        load_caption("widget", tmp_path / "missing.json")
    path = _write(tmp_path, _valid())
    with pytest.raises(CaptionError, match="describes 'widget' but class 'gadget' was requested"):
        load_caption("gadget", path)
    assert load_caption("widget", path) == caption_from_dict(_valid(), "x")


def test_class_name_defaults_to_the_argument_or_the_file_stem(tmp_path: Path) -> None:
    data = _valid()
    del data["class_name"]
    path = _write(tmp_path, data, "my_part.json")
    assert read_caption_file(path).class_name == "my_part"
    assert load_caption("gadget", path).class_name == "gadget"
    with pytest.raises(CaptionError, match="class_name: missing"):
        caption_from_dict(data, "dict")


# --------------------------------------------------------------------------- defect phrases


@pytest.mark.parametrize(("dataset", "class_name"), ALL)
def test_defect_phrases_come_from_the_bank(dataset: str, class_name: str) -> None:
    phrases = defect_phrases(class_name, dataset)
    assert 2 <= len(phrases) <= 7
    assert all(p.startswith("with ") for p in phrases)
    bank = load_bank(dataset)[class_name]
    stripped = [p.removeprefix("with ") for p in phrases]
    # In bank order: a prefix of the bank (the bank lists no duplicates).
    assert stripped == bank[: len(stripped)]
    assert len(stripped) == min(len(bank), 7)


def test_defect_phrases_default_search_order_and_dataset_restriction() -> None:
    assert defect_phrases("tile") == defect_phrases("tile", "mvtec")
    assert defect_phrases("tile", "synthetic") != defect_phrases("tile")
    assert len(load_bank("mvtec_oracle")["cable"]) == 8 and len(defect_phrases("cable", "mvtec_oracle")) == 7
    assert defect_phrases("cable", "mvtec_oracle") != defect_phrases("cable")  # the oracle is never the default


def test_defect_phrases_from_a_user_bank(tmp_path: Path) -> None:
    bank = tmp_path / "bank.json"
    bank.write_text(json.dumps({"widget": ["a bent pin"], "gizmo": ["with a crack", "a dent"]}))
    one = defect_phrases("widget", str(bank))
    assert one[0] == "with a bent pin" and len(one) == 2 and one[1].startswith("with ")
    assert defect_phrases("gizmo", str(bank)) == ("with a crack", "with a dent")


def test_defect_phrases_unknown_class() -> None:
    with pytest.raises(CaptionError, match=r"'widget'.*description bank JSON.*--dataset"):
        defect_phrases("widget")
    with pytest.raises(CaptionError, match=r"searched: visa\)"):
        defect_phrases("bottle", "visa")
