"""Engine bundles in the runtime: manifest fields, the choice between model.engine and its ONNX fallback, the
TensorRT backend's errors, and (on a GPU with TensorRT) the backend itself. Torch-free.

An "engine bundle" here is a hand-made bundle (fake_bundle.py) given a TensorRT engine block, a plan file and a
plugin library as a manifest written by fgad-export would have them; the plan's bytes are never deserialized
unless TensorRT is really installed.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
import types
from importlib.machinery import ModuleSpec
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from fgad.bundle import BundleError, PluginSpec, load_manifest
from fgad.bundle import engine as manifest_engine
from fgad.runtime.backends import check_manifest, create_backend, resolve_engine
from fgad.runtime.backends.trt import TensorRTBackend
from fgad.runtime.pipeline import Detector
from tests.helpers.fake_bundle import FakeBundle, make_bundle, sha256
from tests.helpers.tensorrt import HAVE_TRT, hide_tensorrt

PLUGIN = "plugins/libfgad_plugins.so"


def as_engine_bundle(bundle: FakeBundle, version: str = "10.3.0", cc: str = "8.7") -> FakeBundle:
    """Give ``bundle`` a TensorRT engine with model.onnx as its fallback (the layout add_engine writes)."""
    (bundle.path / "model.engine").write_bytes(b"not a real plan")
    (bundle.path / "plugins").mkdir(exist_ok=True)
    (bundle.path / PLUGIN).write_bytes(b"\x7fELF plugin")
    data = bundle.manifest()
    data["engine"] = {
        "kind": "tensorrt", "file": "model.engine", "opset": 19, "precision": "fp16", "tensorrt_version": version,
        "compute_capability": cc, "deform": "plugin",
        "plugins": [{"file": PLUGIN, "ops": ["fgad::FgadDeformConv2d"], "sha256": sha256(bundle.path / PLUGIN)}],
        "fallback": {"kind": "onnx", "file": "model.onnx", "opset": 19, "precision": "fp32"},
    }
    data["sha256"]["model.engine"] = sha256(bundle.path / "model.engine")
    data["sha256"][PLUGIN] = sha256(bundle.path / PLUGIN)
    bundle.write_manifest(data)
    return bundle


@pytest.fixture()
def engine_bundle(tmp_path: Path, good_images: list[np.ndarray]) -> FakeBundle:
    return as_engine_bundle(make_bundle(tmp_path / "bundle", references=good_images[:2]))


@pytest.fixture()
def no_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    hide_tensorrt(monkeypatch)


@pytest.fixture()
def fake_tensorrt(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """An importable ``tensorrt`` that only has a version: enough for the manifest checks, never for running."""
    module = types.ModuleType("tensorrt")
    module.__spec__ = ModuleSpec("tensorrt", None)
    module.__version__ = "10.3.0.30"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    monkeypatch.setattr(manifest_engine, "detect_compute_capability", lambda: "8.7")
    return module


# ---------------------------------------------------------------------------------- manifest fields


def test_engine_fields_parse(engine_bundle: FakeBundle) -> None:
    m = load_manifest(engine_bundle.path)
    assert (m.engine.kind, m.engine.file, m.engine.precision, m.engine.deform) == ("tensorrt", "model.engine", "fp16",
                                                                                   "plugin")
    assert m.engine.plugins == (PluginSpec(PLUGIN, ("fgad::FgadDeformConv2d",)),)
    assert m.engine.fallback is not None and (m.engine.fallback.kind, m.engine.fallback.file) == ("onnx",
                                                                                                  "model.onnx")
    assert m.engine.fallback.fallback is None and m.engine.fallback.plugins == ()


def _bundle_error(bundle: FakeBundle, **kwargs: Any) -> BundleError:
    with pytest.raises(BundleError) as info:
        check_manifest(load_manifest(bundle.path), bundle.path, **kwargs)
    return info.value


@pytest.mark.parametrize(("change", "field", "words"), [
    (lambda d: d["engine"].update(plugins="libfoo.so"), "engine.plugins", "must be a list"),
    (lambda d: d["engine"]["plugins"][0].pop("file"), "engine.plugins[0].file", "missing"),
    (lambda d: d["engine"]["plugins"][0].update(ops="fgad::X"), "engine.plugins[0].ops", "list of op names"),
    (lambda d: d["engine"]["fallback"].update(fallback={"kind": "onnx", "file": "x"}), "engine.fallback.fallback",
     "cannot have a fallback"),
    (lambda d: d["engine"]["fallback"].pop("file"), "engine.fallback.file", "missing"),
    (lambda d: d["sha256"].pop(PLUGIN), "sha256", "engine.plugins[0].file"),
])
def test_engine_field_errors_name_the_field(engine_bundle: FakeBundle, no_tensorrt: None, change: Any, field: str,
                                            words: str) -> None:
    data = engine_bundle.manifest()
    change(data)
    engine_bundle.write_manifest(data)
    err = _bundle_error(engine_bundle)
    assert err.field == field and f"'{field}'" in str(err) and words in str(err), str(err)


def test_a_missing_plugin_file_is_named(engine_bundle: FakeBundle, no_tensorrt: None) -> None:
    (engine_bundle.path / PLUGIN).unlink()
    err = _bundle_error(engine_bundle)
    assert err.field == f"sha256.{PLUGIN}" and "does not exist" in str(err)


# ---------------------------------------------------------------------------------- engine or fallback


def _scores(detector: Detector, images: list[np.ndarray]) -> list[float]:
    return [r.score for r in detector.batch(images)]


def test_without_tensorrt_the_onnx_fallback_runs_with_a_log_line(
    engine_bundle: FakeBundle, no_tensorrt: None, caplog: pytest.LogCaptureFixture, test_images: list[np.ndarray],
    tmp_path: Path, good_images: list[np.ndarray],
) -> None:
    with caplog.at_level(logging.INFO, logger="fgad.runtime"):
        detector = Detector.from_bundle(engine_bundle.path)
    assert detector.backend.name == "onnxruntime"
    lines = [r.getMessage() for r in caplog.records if "engine.fallback" in r.getMessage()]
    assert len(lines) == 1 and "model.engine cannot run here" in lines[0] and "tensorrt package" in lines[0]
    plain = Detector.from_bundle(make_bundle(tmp_path / "plain", references=good_images[:2]).path)
    np.testing.assert_allclose(_scores(detector, test_images[:3]), _scores(plain, test_images[:3]), rtol=0, atol=0)


def test_backend_choice_for_an_engine_bundle(engine_bundle: FakeBundle, fake_tensorrt: types.ModuleType,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    m = load_manifest(engine_bundle.path)
    real = importlib.util.find_spec
    monkeypatch.setattr("importlib.util.find_spec",
                        lambda name, *a: ModuleSpec("cuda", None) if name == "cuda" else real(name, *a))
    assert resolve_engine(m, engine_bundle.path) == m.engine  # TensorRT, cuda-python, same major, same GPU
    assert resolve_engine(m, engine_bundle.path, "onnxruntime") == m.engine.fallback
    assert resolve_engine(m, engine_bundle.path, "tensorrt") == m.engine
    check_manifest(m, engine_bundle.path, backend="auto")
    assert create_backend(m, engine_bundle.path, "onnxruntime").name == "onnxruntime"


@pytest.mark.parametrize(("version", "cc", "cuda", "reason"), [
    ("8.6.1", "8.7", True, "engine.tensorrt_version"),
    ("10.3.0", "8.6", True, "compute capability 8.6"),
    ("10.3.0", "8.7", False, "cuda-python"),
])
def test_an_engine_that_cannot_run_here_falls_back_with_a_warning(
    tmp_path: Path, fake_tensorrt: types.ModuleType, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture, version: str, cc: str, cuda: bool, reason: str,
) -> None:
    bundle = as_engine_bundle(make_bundle(tmp_path / "b"), version=version, cc=cc)
    real = importlib.util.find_spec
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: (ModuleSpec("cuda", None) if cuda else None)
                        if name == "cuda" else real(name, *a))
    with caplog.at_level(logging.INFO, logger="fgad.runtime"):
        detector = Detector.from_bundle(bundle.path)
    assert detector.backend.name == "onnxruntime"
    record = next(r for r in caplog.records if "engine.fallback" in r.getMessage())
    assert reason in record.getMessage()
    assert record.levelno == (logging.INFO if reason == "cuda-python" else logging.WARNING)
    with pytest.raises(BundleError):  # insisting on TensorRT gives the error instead
        Detector.from_bundle(bundle.path, backend="tensorrt")


def test_a_plan_that_does_not_load_falls_back_too(engine_bundle: FakeBundle, fake_tensorrt: types.ModuleType,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr("importlib.util.find_spec",
                        lambda name, *a: ModuleSpec("cuda", None) if name == "cuda" else real(name, *a))
    seen: list[Any] = []

    def refuse(self: TensorRTBackend, path: Any, input_name: str = "image", threads: Any = None,
               plugins: Any = ()) -> None:
        seen.append((Path(path).name, [Path(p).name for p in plugins]))
        raise BundleError("field 'engine.file': TensorRT could not deserialize model.engine", "engine.file")

    monkeypatch.setattr(TensorRTBackend, "__init__", refuse)
    with caplog.at_level(logging.WARNING, logger="fgad.runtime"):
        detector = Detector.from_bundle(engine_bundle.path)
    assert detector.backend.name == "onnxruntime"
    assert seen == [("model.engine", ["libfgad_plugins.so"])]  # the engine was tried first, with its plugin
    assert any("could not deserialize" in r.getMessage() and "engine.fallback" in r.getMessage()
               for r in caplog.records)
    with pytest.raises(BundleError, match="could not deserialize"):
        Detector.from_bundle(engine_bundle.path, backend="tensorrt")


def test_insisting_on_tensorrt_without_it_is_one_clear_error(engine_bundle: FakeBundle, no_tensorrt: None) -> None:
    err = _bundle_error(engine_bundle, backend="tensorrt")
    assert err.field == "engine.kind" and "install it from JetPack/NVIDIA" in str(err)


def test_fgad_run_on_an_engine_bundle_without_tensorrt(engine_bundle: FakeBundle, no_tensorrt: None,
                                                       good_dir: Path, tmp_path: Path) -> None:
    from fgad.cli.run import main as run_main

    jsonl = tmp_path / "out.jsonl"
    result = CliRunner().invoke(run_main, ["--bundle", str(engine_bundle.path), "--images", str(good_dir),
                                           "--jsonl", str(jsonl)])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(lines) == len(list(good_dir.glob("*.png"))) and all(0.0 <= line["score"] for line in lines)


# ---------------------------------------------------------------------------------- the backend's own errors


def test_backend_errors_without_packages(tmp_path: Path, no_tensorrt: None) -> None:
    with pytest.raises(BundleError, match="install it from JetPack/NVIDIA") as info:
        TensorRTBackend(tmp_path / "model.engine")
    assert info.value.field == "engine.kind"
    assert not TensorRTBackend.is_available()


def test_backend_without_cuda_python_says_so(tmp_path: Path, fake_tensorrt: types.ModuleType,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "cuda" else real(name, *a))
    with pytest.raises(BundleError, match="pip install cuda-python") as info:
        TensorRTBackend(tmp_path / "model.engine")
    assert info.value.field == "engine.kind"


# ---------------------------------------------------------------------------------- real TensorRT


@pytest.mark.gpu
@pytest.mark.skipif(not HAVE_TRT, reason="needs TensorRT and cuda-python on a CUDA machine (not installable on CI)")
def test_real_backend_matches_onnxruntime_and_splits_large_batches(tmp_path: Path,
                                                                  good_images: list[np.ndarray]) -> None:
    from fgad.export.engine_bundle import add_engine
    from fgad.export.tensorrt_build import EngineBuildOptions
    from fgad.runtime.backends.ort import OrtBackend

    bundle = make_bundle(tmp_path / "bundle")
    add_engine(bundle.path, EngineBuildOptions(precision="fp32", max_batch=2))
    engine = TensorRTBackend(bundle.path / "model.engine", plugins=())
    onnx = OrtBackend(bundle.path / "model.onnx")
    assert engine.max_batch == 2 and set(engine.output_names) == set(onnx.output_names)
    assert engine.input_shapes["image"] == (None, 3, 32, 32)
    batch = np.random.default_rng(0).standard_normal((5, 3, 32, 32)).astype(np.float32)  # 5 > max batch 2
    got, want = engine.run(batch), onnx.run(batch)
    for name in want:
        assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape
        if np.issubdtype(want[name].dtype, np.floating):
            np.testing.assert_allclose(got[name], want[name], atol=1e-3, rtol=0)
    engine.close()
