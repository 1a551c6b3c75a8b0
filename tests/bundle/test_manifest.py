"""Manifest parsing and the checks made before the first frame: every refusal names its field."""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from importlib.machinery import ModuleSpec
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fgad.bundle import BundleError, check_graph, load_manifest
from fgad.bundle import engine as manifest_engine
from fgad.runtime.backends import available_backends, backend_class, check_manifest, select_backend
from fgad.runtime.pipeline import Detector
from tests.helpers.fake_bundle import FakeBundle, make_bundle


def _check(bundle: FakeBundle, **kwargs: Any) -> None:
    check_manifest(load_manifest(bundle.path), bundle.path, **kwargs)


def _error(bundle: FakeBundle, **kwargs: Any) -> BundleError:
    with pytest.raises(BundleError) as info:
        _check(bundle, **kwargs)
    return info.value


def test_valid_bundle_parses_and_passes(bundle: FakeBundle) -> None:
    m = load_manifest(bundle.path)
    assert m.format_version == 1 and m.engine.kind == "onnx" and m.input.size == 32 and m.grid == 4
    assert m.fewshot.layers == (3, 6) and m.token_dim(3) == 16 and m.num_patches == 16
    assert m.outputs["vl_map"] == (None, 32, 32)
    assert m.description(1) == "hole in the part" and m.description(99) == "#99"
    _check(bundle)


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def apply(data: dict[str, Any]) -> None:
        keys = path.split(".")
        node = data
        for key in keys[:-1]:
            node = node[key]
        if value is _DELETE:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value

    return apply


_DELETE = object()

# (mutation of the manifest dict, field the error must name, words the message must contain)
MANIFEST_CASES = [
    (_set("format_version", 99), "format_version", "upgrade fgad"),
    (_set("format_version", _DELETE), "format_version", "missing"),
    (_set("engine.kind", "openvino"), "engine.kind", "cannot run"),
    (_set("engine.file", _DELETE), "engine.file", "missing"),
    (_set("input.resize", "bilinear"), "input.resize", "bicubic"),
    (_set("input.layout", "NHWC"), "input.layout", "NCHW"),
    (_set("input.mean", [0.5, 0.5]), "input.mean", "3 numbers"),
    (_set("input.size", "32"), "input.size", "integer"),
    (_set("post.sigma", _DELETE), "post.sigma", "missing"),
    (_set("post.sigma", -1), "post.sigma", "> 0"),
    (_set("outputs.tokens_6", _DELETE), "fewshot.layers", "tokens_6"),
    (_set("outputs.vl_map", [None, 64, 64]), "outputs.vl_map", "input.size"),
    (_set("outputs.global_prob", _DELETE), "outputs.global_prob", "missing"),
    (_set("outputs.tokens_3", [None, 25, 16]), "outputs.tokens_3", "grid"),
    (_set("grid", 5), "outputs.tokens_3", "grid"),
    (_set("grid", 64), "grid", "input.size"),
    (_set("fewshot.layers", [3, 3]), "fewshot.layers", "twice"),
    (_set("sha256", {}), "sha256", "engine.file"),
    (_set("sha256.model.onnx", "abc"), "sha256.model.onnx", "hex"),
    (_set("engine.compute_capability", "eight"), "engine.compute_capability", "8.7"),
]


@pytest.mark.parametrize(("mutate", "field", "words"), MANIFEST_CASES, ids=[c[1] + ":" + c[2] for c in MANIFEST_CASES])
def test_manifest_errors_name_the_field(bundle: FakeBundle, mutate: Callable, field: str, words: str) -> None:
    data = bundle.manifest()
    if field == "sha256.model.onnx":  # the key has a dot of its own
        data["sha256"]["model.onnx"] = "abc"
    else:
        mutate(data)
    bundle.write_manifest(data)
    err = _error(bundle)
    assert err.field == field
    assert f"'{field}'" in str(err) and words in str(err)
    assert "fgad-export" in str(err) or "upgrade" in str(err) or "re-export" in str(err)


def test_missing_file_is_named(bundle: FakeBundle) -> None:
    (bundle.path / "model.onnx").unlink()
    err = _error(bundle)
    assert err.field == "sha256.model.onnx" and "does not exist" in str(err)


def test_sha256_tamper_is_detected(bundle: FakeBundle) -> None:
    model = bundle.path / "model.onnx"
    raw = bytearray(model.read_bytes())
    raw[-1] ^= 0xFF
    model.write_bytes(bytes(raw))
    err = _error(bundle)
    assert err.field == "sha256.model.onnx" and "sha256" in str(err) and "changed after export" in str(err)
    _check(bundle, verify_hashes=False)  # presence-only check still passes
    with pytest.raises(BundleError, match="sha256"):
        Detector.from_bundle(bundle.path)


def test_references_tamper_and_shapes(tmp_path: Path, good_images: list[np.ndarray]) -> None:
    b = make_bundle(tmp_path / "b", references=good_images[:2])
    _check(b)
    npz = b.path / "references.npz"
    with np.load(npz) as data:
        arrays = {k: data[k] for k in data.files}
    np.savez(npz, **{**arrays, "layer_3": arrays["layer_3"][:, :8]})
    assert _error(b).field == "sha256.references.npz"
    b.write_manifest(b.manifest(), rehash=True)
    err = _error(b)
    assert err.field == "fewshot.file" and "layer_3" in str(err)

    np.savez(npz, **arrays)
    data = b.manifest()
    data["fewshot"]["num_references"] = 5
    b.write_manifest(data, rehash=True)
    err = _error(b)
    assert err.field == "fewshot.num_references" and "holds 2 images" in str(err)


def test_references_positional_names_are_accepted(tmp_path: Path, good_images: list[np.ndarray]) -> None:
    b = make_bundle(tmp_path / "b", references=good_images[:2])
    npz = b.path / "references.npz"
    with np.load(npz) as data:
        arrays = {k: data[k] for k in data.files}
    np.savez(npz, layer_0=arrays["layer_3"], layer_1=arrays["layer_6"], paths=arrays["paths"])
    b.write_manifest(b.manifest(), rehash=True)
    _check(b)
    det = Detector.from_bundle(b.path)
    assert det.num_references == 2
    assert np.allclose(det.memory.indexes[6].rows(), arrays["layer_6"], atol=1e-6)


def test_file_outside_the_bundle_is_refused(bundle: FakeBundle) -> None:
    data = bundle.manifest()
    data["sha256"]["../escape.bin"] = "0" * 64
    bundle.write_manifest(data)
    err = _error(bundle)
    assert err.field == "sha256.../escape.bin" and "not a file inside the bundle" in str(err)


def test_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not a folder"):
        load_manifest(tmp_path / "nope")
    with pytest.raises(BundleError, match="no manifest.json"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not readable JSON"):
        load_manifest(tmp_path)


# --------------------------------------------------------------------------- engine kinds / TensorRT


def test_onnx_backend_is_available_and_tensorrt_is_lazy() -> None:
    assert "onnxruntime" in available_backends()
    assert backend_class("ort").is_available()
    assert "tensorrt" not in sys.modules  # asking is_available() imports nothing


@pytest.fixture()
def no_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    real = manifest_engine.importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name.split(".")[0] == "tensorrt" else real(name, *args)

    monkeypatch.setattr("importlib.util.find_spec", find_spec)


@pytest.fixture()
def fake_tensorrt(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    module = types.ModuleType("tensorrt")
    module.__spec__ = ModuleSpec("tensorrt", None)
    module.__version__ = "10.3.0"
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    return module


def _as_tensorrt(bundle: FakeBundle, version: str | None = "10.3.0", cc: Any = "8.7") -> None:
    bundle.edit(engine__kind="tensorrt", engine__tensorrt_version=version, engine__compute_capability=cc)


def test_tensorrt_bundle_without_tensorrt(bundle: FakeBundle, no_tensorrt: None) -> None:
    _as_tensorrt(bundle)
    err = _error(bundle)
    assert err.field == "engine.kind"
    assert "TensorRT engines need the tensorrt package; install it from JetPack/NVIDIA" in str(err)


def test_tensorrt_major_version_mismatch(bundle: FakeBundle, fake_tensorrt: types.ModuleType,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manifest_engine, "detect_compute_capability", lambda: "8.7")
    _as_tensorrt(bundle, version="8.6.1")
    err = _error(bundle)
    assert err.field == "engine.tensorrt_version" and "8.6.1" in str(err) and "10.3.0" in str(err)
    _as_tensorrt(bundle, version="10.0.1")  # same major: accepted
    _check(bundle)
    _as_tensorrt(bundle, version=None)
    assert _error(bundle).field == "engine.tensorrt_version"


def test_tensorrt_compute_capability_mismatch(bundle: FakeBundle, fake_tensorrt: types.ModuleType,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manifest_engine, "detect_compute_capability", lambda: "8.6")
    _as_tensorrt(bundle, cc=[8, 7])
    err = _error(bundle)
    assert err.field == "engine.compute_capability" and "8.7" in str(err) and "8.6" in str(err)
    _as_tensorrt(bundle, cc="sm_86")
    _check(bundle)
    _as_tensorrt(bundle, cc=None)
    assert _error(bundle).field == "engine.compute_capability"


def test_tensorrt_checks_are_skipped_for_onnx(bundle: FakeBundle, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> str:
        raise AssertionError("compute capability must not be queried for an onnx bundle")

    monkeypatch.setattr(manifest_engine, "detect_compute_capability", boom)
    _check(bundle)


def test_backend_mismatch_and_placeholder(bundle: FakeBundle, no_tensorrt: None) -> None:
    with pytest.raises(BundleError, match="--backend onnxruntime") as info:
        _check(bundle, backend="tensorrt")
    assert info.value.field == "engine.kind"
    with pytest.raises(ValueError, match="unknown backend"):
        select_backend("onnx", "openvino")
    from fgad.runtime.backends.trt import TensorRTBackend

    with pytest.raises(BundleError, match="install it from JetPack/NVIDIA"):
        TensorRTBackend(bundle.path / "model.onnx")


# --------------------------------------------------------------------------- graph vs manifest


def test_graph_shapes_must_match_the_manifest(bundle: FakeBundle) -> None:
    m = load_manifest(bundle.path)
    inputs = {"image": (None, 3, 32, 32)}
    outputs = {"vl_map": (None, 32, 32), "global_prob": (None,), "best_description": (None,),
               "tokens_3": (None, 16, 16), "tokens_6": (None, 16, 16)}
    check_graph(m, inputs, outputs)
    with pytest.raises(BundleError) as info:
        check_graph(m, {"image": (None, 3, 64, 64)}, outputs)
    assert info.value.field == "input.size"
    with pytest.raises(BundleError) as info:
        check_graph(m, {"pixels": (None, 3, 32, 32)}, outputs)
    assert info.value.field == "input.name"
    with pytest.raises(BundleError) as info:
        check_graph(m, inputs, {**outputs, "tokens_3": (None, 25, 16)})
    assert info.value.field == "outputs.tokens_3" and "grid" in str(info.value)
    missing = dict(outputs)
    del missing["tokens_6"]
    with pytest.raises(BundleError) as info:
        check_graph(m, inputs, missing)
    assert info.value.field == "fewshot.layers"


def test_manifest_consistent_but_graph_differs(bundle: FakeBundle) -> None:
    """A manifest edited to another size stays self-consistent; the graph check catches it."""
    data = bundle.manifest()
    data["input"]["size"] = 64
    data["outputs"]["vl_map"] = [None, 64, 64]
    data["grid"] = 8
    data["outputs"]["tokens_3"] = [None, 64, 16]
    data["outputs"]["tokens_6"] = [None, 64, 16]
    bundle.write_manifest(data)
    _check(bundle)
    with pytest.raises(BundleError) as info:
        Detector.from_bundle(bundle.path)
    assert info.value.field == "input.size" and "[?, 3, 32, 32]" in str(info.value)


def test_onnx_bundle_without_onnxruntime(bundle: FakeBundle, monkeypatch: pytest.MonkeyPatch) -> None:
    real = manifest_engine.importlib.util.find_spec
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    err = _error(bundle)
    assert err.field == "engine.kind" and "no installed backend" in str(err) and "pip install onnxruntime" in str(err)
