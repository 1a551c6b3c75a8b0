"""TensorRT engine building: options, the errors without TensorRT, what we ask of TensorRT, the bundle install.

TensorRT cannot be installed on the development and CI machines, so the tests are in three groups:

* without TensorRT (every machine): the errors name what to install, and the ONNX bundle is written / left as
  it was;
* with a *recording stand-in* for the ``tensorrt`` module: it checks what :func:`build_engine` asks of
  TensorRT (flags per precision, plugin libraries loaded before parsing, the batch profile, layers kept fp32,
  the timing cache read and written, parser errors named by node, the plan written byte for byte). It says
  nothing about what TensorRT does with those requests;
* on a GPU with TensorRT (``@pytest.mark.gpu``, skipped elsewhere): a real build, parity and run.
"""

from __future__ import annotations

import hashlib
import json
import sys
import types
from importlib.machinery import ModuleSpec
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

import fgad.bundle as manifest_mod
from fgad.bundle import engine as manifest_engine
from fgad.cli.export import main as export_main
from fgad.export import engine_bundle, tensorrt_build
from fgad.export.engine_bundle import ENGINE_FILE, add_engine, compare_engine
from fgad.export.tensorrt_build import (
    EngineBuildError,
    EngineBuildOptions,
    TensorRTUnavailableError,
    build_engine,
)
from tests.helpers.fake_bundle import make_bundle
from tests.helpers.tensorrt import HAVE_TRT, hide_tensorrt


def _images(count: int, seed: int = 0) -> list[np.ndarray]:
    """RGB uint8 images for the hand-made bundles (their graph takes any 32 px image)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (40, 48, 3), dtype=np.uint8) for _ in range(count)]


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def no_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    hide_tensorrt(monkeypatch)


def _graph(tmp_path: Path, extra: list[Any] | None = None, dynamic_hw: bool = False) -> Path:
    """image [N, 3, 8, 8] -> LayerNormalization -> Relu -> out, optionally with extra nodes."""
    scale = helper.make_tensor("scale", TensorProto.FLOAT, [8], [1.0] * 8)
    bias = helper.make_tensor("bias", TensorProto.FLOAT, [8], [0.0] * 8)
    nodes = [helper.make_node("LayerNormalization", ["image", "scale", "bias"], ["ln"], axis=-1, name="norm"),
             helper.make_node("Relu", ["ln"], ["out"], name="relu"), *(extra or [])]
    dims: list[Any] = ["N", 3, "H" if dynamic_hw else 8, 8]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, dims)],
                              initializer=[scale, bias])
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]), str(path))
    return path


# ---------------------------------------------------------------------------------- options


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="precision='bf16'"):
        EngineBuildOptions(precision="bf16")
    with pytest.raises(ValueError, match="min <= opt <= max"):
        EngineBuildOptions(min_batch=2, opt_batch=1, max_batch=4)
    with pytest.raises(ValueError, match="workspace_gb"):
        EngineBuildOptions(workspace_gb=0)
    opts = EngineBuildOptions(plugin_libraries=("a.so",), timing_cache="t.cache")  # type: ignore[arg-type]
    assert opts.plugin_libraries == (Path("a.so"),) and opts.timing_cache == Path("t.cache")


# ---------------------------------------------------------------------------------- without TensorRT


def test_build_without_tensorrt_names_what_to_install(tmp_path: Path, no_tensorrt: None) -> None:
    with pytest.raises(TensorRTUnavailableError) as info:
        build_engine(_graph(tmp_path), tmp_path / "x.engine", EngineBuildOptions())
    text = str(info.value)
    assert "JetPack" in text and "pip install tensorrt" in text and "--system-site-packages" in text
    assert not (tmp_path / "x.engine").exists()


def test_add_engine_without_tensorrt_leaves_the_bundle_as_it_was(tmp_path: Path, no_tensorrt: None) -> None:
    bundle = make_bundle(tmp_path / "bundle")
    before = _hashes(bundle.path)
    with pytest.raises(TensorRTUnavailableError, match="pip install tensorrt"):
        add_engine(bundle.path, EngineBuildOptions())
    assert _hashes(bundle.path) == before


def test_cli_bundle_path_without_tensorrt(tmp_path: Path, no_tensorrt: None) -> None:
    bundle = make_bundle(tmp_path / "bundle")
    before = _hashes(bundle.path)
    result = CliRunner().invoke(export_main, ["--bundle", str(bundle.path), "--engine", "fp16", "--max-batch", "4"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "pip install tensorrt" in result.output and "is complete" in result.output
    assert f"fgad-export --bundle {bundle.path} --engine fp16" in result.output
    assert _hashes(bundle.path) == before


def test_cli_argument_errors(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle")
    runner = CliRunner()
    result = runner.invoke(export_main, ["--bundle", str(bundle.path)])
    assert result.exit_code == 2 and "give --engine fp32, fp16 or int8" in result.output
    result = runner.invoke(export_main, ["--bundle", str(bundle.path), "--engine", "fp16", "--out", "x"])
    assert result.exit_code == 2 and "--out belong to a new export" in result.output
    result = runner.invoke(export_main, ["--engine", "fp16"])
    assert result.exit_code == 2 and "missing --checkpoint, --class-name, --out" in result.output
    result = runner.invoke(export_main, ["--bundle", str(bundle.path), "--engine", "fp16", "--deform", "plugin",
                                         "--plugin", str(tmp_path / "lib.so")])
    assert result.exit_code == 1 and "field 'deform' is 'decomposed'" in result.output
    assert "is unchanged" in result.output


@pytest.mark.slow
def test_cli_export_with_engine_but_no_tensorrt_still_writes_the_onnx_bundle(
    tmp_path: Path, refs_dir: Path, cocoop_model: Any, no_tensorrt: None
) -> None:
    from fgad.backbone.checkpoint import save_checkpoint
    from tests.helpers.tiny import CLASS_NAME, make_config

    checkpoint = save_checkpoint(tmp_path / "ckpt", cocoop_model, make_config(), pretrained=None)
    out = tmp_path / "bundle"
    result = CliRunner().invoke(export_main, ["--checkpoint", str(checkpoint), "--class-name", CLASS_NAME,
                                              "--refs", str(refs_dir), "--engine", "fp16", "--deform", "native",
                                              "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert "pip install tensorrt" in result.output and "was still written" in result.output
    assert f"fgad-export --bundle {out} --engine fp16 --deform native" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["engine"]["kind"] == "onnx" and manifest["deform"] == "onnx"
    assert sorted(p.name for p in out.iterdir()) == ["manifest.digest", "manifest.json", "model.onnx",
                                                     "references.npz"]
    from fgad.runtime.pipeline import Detector

    assert Detector.from_bundle(out).backend.name == "onnxruntime"


# ---------------------------------------------------------------------------------- recording stand-in


PLAN = bytes(range(256)) * 3  # what the stand-in "serializes": the file must hold exactly these bytes


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.fail_build = False
        self.refuse_library = False
        self.cache_blob = b"timing-cache-v1"


def _stand_in(rec: _Recorder) -> types.ModuleType:
    """A ``tensorrt`` module that records the calls build_engine makes (see the module docstring)."""
    trt = types.ModuleType("tensorrt")
    trt.__spec__ = ModuleSpec("tensorrt", None)  # find_spec("tensorrt") finds it
    trt.__version__ = "10.3.0.30"  # type: ignore[attr-defined]

    class Severity:
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

    class ILogger:
        def __init__(self) -> None:
            pass

    ILogger.Severity = Severity  # type: ignore[attr-defined]

    class IProgressMonitor:
        def __init__(self) -> None:
            pass

    flags = types.SimpleNamespace(FP16="FP16", INT8="INT8", TF32="TF32",
                                  PREFER_PRECISION_CONSTRAINTS="PREFER_PRECISION_CONSTRAINTS")

    class Layer:
        def __init__(self, kind: str) -> None:
            self.type, self.precision, self.num_outputs, self.output_types = kind, None, 1, {}

        def set_output_type(self, index: int, dtype: str) -> None:
            self.output_types[index] = dtype

    class Tensor:
        def __init__(self, name: str, shape: list[int]) -> None:
            self.name, self.shape = name, shape

    class Network:
        def __init__(self) -> None:
            self.inputs: list[Tensor] = []
            self.layers: list[Layer] = []

        num_inputs = property(lambda self: len(self.inputs))
        num_layers = property(lambda self: len(self.layers))

        def get_input(self, i: int) -> Tensor:
            return self.inputs[i]

        def get_layer(self, i: int) -> Layer:
            return self.layers[i]

    class ParserError:
        def __init__(self, node: str, op: str) -> None:
            self._node, self._op = node, op

        def node_name(self) -> str:
            return self._node

        def node_operator(self) -> str:
            return self._op

        def desc(self) -> str:
            return "no importer registered for op"

        def code(self) -> str:
            return "UNSUPPORTED_NODE"

    class OnnxParser:
        def __init__(self, network: Network, logger: Any) -> None:
            self.network, self.errors = network, []

        def parse_from_file(self, path: str) -> bool:
            rec.calls.append(("parse", path))
            model = onnx.load(path)
            for value in model.graph.input:
                dims = [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]
                self.network.inputs.append(Tensor(value.name, dims))
            for node in model.graph.node:
                if node.domain not in ("", "ai.onnx") and not any(c[0] == "load_library" for c in rec.calls):
                    self.errors.append(ParserError(node.name, node.op_type))
                kind = "NORMALIZATION" if node.op_type == "LayerNormalization" else "OTHER"
                self.network.layers.append(Layer(kind))
            return not self.errors

        num_errors = property(lambda self: len(self.errors))

        def get_error(self, i: int) -> ParserError:
            return self.errors[i]

    class TimingCache:
        def __init__(self, blob: bytes) -> None:
            self.blob = blob

        def serialize(self) -> bytes:
            return self.blob + b"+new"

    class Config:
        def __init__(self) -> None:
            self.flags: set[str] = set()
            self.cache: TimingCache | None = None
            self.profiles: list[Any] = []

        def set_flag(self, flag: str) -> None:
            self.flags.add(flag)

        def clear_flag(self, flag: str) -> None:
            rec.calls.append(("clear_flag", flag))
            self.flags.discard(flag)

        def set_memory_pool_limit(self, pool: str, size: int) -> None:
            rec.calls.append(("pool", pool, size))

        def create_timing_cache(self, blob: bytes) -> TimingCache:
            rec.calls.append(("timing_cache_in", bytes(blob)))
            return TimingCache(bytes(blob) or rec.cache_blob)

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            self.cache = cache
            return True

        def get_timing_cache(self) -> TimingCache | None:
            return self.cache

        def add_optimization_profile(self, profile: Any) -> int:
            self.profiles.append(profile)
            return 0

    class Profile:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple[Any, ...]] = {}

        def set_shape(self, name: str, lo: Any, opt: Any, hi: Any) -> None:
            self.shapes[name] = (list(lo), list(opt), list(hi))

    class Builder:
        def __init__(self, logger: Any) -> None:
            pass

        def create_network(self, flags: int) -> Network:
            rec.calls.append(("create_network", flags))
            return Network()

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: Config) -> bytes | None:
            rec.calls.append(("build", sorted(config.flags), network, [p.shapes for p in config.profiles]))
            return None if rec.fail_build else PLAN

    class Engine:
        num_layers = 7
        num_io_tensors = 2

        def get_tensor_name(self, i: int) -> str:
            return ["image", "out"][i]

        def get_tensor_shape(self, name: str) -> list[int]:
            return [-1, 3, 8, 8]

        def get_tensor_mode(self, name: str) -> str:
            return "INPUT" if name == "image" else "OUTPUT"

    class Runtime:
        def __init__(self, logger: Any) -> None:
            pass

        def deserialize_cuda_engine(self, data: bytes) -> Engine | None:
            return Engine() if data == PLAN else None

    class Registry:
        def load_library(self, path: str) -> Any:
            rec.calls.append(("load_library", path))
            return None if rec.refuse_library else object()

    registry = Registry()
    trt.ILogger, trt.IProgressMonitor, trt.Builder, trt.OnnxParser, trt.Runtime = (  # type: ignore[attr-defined]
        ILogger, IProgressMonitor, Builder, OnnxParser, Runtime)
    trt.BuilderFlag = flags  # type: ignore[attr-defined]
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")  # type: ignore[attr-defined]
    trt.LayerType = types.SimpleNamespace(NORMALIZATION="NORMALIZATION")  # type: ignore[attr-defined]
    trt.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")  # type: ignore[attr-defined]
    trt.float32 = "float32"  # type: ignore[attr-defined]
    trt.Dims = list  # type: ignore[attr-defined]
    trt.get_plugin_registry = lambda: registry  # type: ignore[attr-defined]
    trt.init_libnvinfer_plugins = lambda logger, ns: rec.calls.append(("init_plugins", ns))  # type: ignore[attr-defined]
    return trt


@pytest.fixture()
def stand_in(monkeypatch: pytest.MonkeyPatch) -> _Recorder:
    rec = _Recorder()
    module = _stand_in(rec)
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    # build_engine asks the package (fgad.bundle), the engine checks ask fgad.bundle.engine
    monkeypatch.setattr(manifest_mod, "detect_compute_capability", lambda: "8.7")
    monkeypatch.setattr(manifest_engine, "detect_compute_capability", lambda: "8.7")
    return rec


def _build_call(rec: _Recorder) -> tuple[Any, ...]:
    builds = [c for c in rec.calls if c[0] == "build"]
    assert len(builds) == 1
    return builds[0]


@pytest.mark.parametrize(("precision", "flags", "fp32_norms"), [
    ("fp32", [], False),
    ("fp16", ["FP16", "PREFER_PRECISION_CONSTRAINTS"], True),
    ("int8", ["FP16", "INT8", "PREFER_PRECISION_CONSTRAINTS"], True),
])
def test_what_build_engine_asks_of_tensorrt(tmp_path: Path, stand_in: _Recorder, precision: str, flags: list[str],
                                            fp32_norms: bool) -> None:
    cache = tmp_path / "timing.cache"
    options = EngineBuildOptions(precision=precision, workspace_gb=1.5, timing_cache=cache, min_batch=1,
                                 opt_batch=2, max_batch=6, progress=False)
    info = build_engine(_graph(tmp_path), tmp_path / "out" / "model.engine", options)
    assert (tmp_path / "out" / "model.engine").read_bytes() == PLAN  # a plain plan: no header, no footer
    _, set_flags, network, profiles = _build_call(stand_in)
    assert set_flags == flags
    assert (("clear_flag", "TF32") in stand_in.calls) == (precision == "fp32")
    assert ("create_network", 0) in stand_in.calls
    assert ("pool", "WORKSPACE", int(1.5 * (1 << 30))) in stand_in.calls
    assert profiles == [{"image": ([1, 3, 8, 8], [2, 3, 8, 8], [6, 3, 8, 8])}]
    norm, relu = network.layers
    assert (norm.precision, norm.output_types) == (("float32", {0: "float32"}) if fp32_norms else (None, {}))
    assert relu.precision is None
    assert cache.read_bytes() == b"timing-cache-v1+new"
    assert (info.tensorrt_version, info.compute_capability, info.precision) == ("10.3.0.30", "8.7", precision)
    assert (info.layers, info.network_layers, info.engine_bytes) == (7, 2, len(PLAN))
    assert info.inputs == {"image": [None, 3, 8, 8]} and info.outputs == {"out": [None, 3, 8, 8]}
    # a second build starts from the saved cache
    build_engine(_graph(tmp_path), tmp_path / "again.engine", options)
    assert ("timing_cache_in", b"timing-cache-v1+new") in stand_in.calls


def test_plugins_load_before_parsing_and_parser_errors_name_the_node(tmp_path: Path, stand_in: _Recorder) -> None:
    plugin_node = helper.make_node("FgadDeformConv2d", ["out"], ["y"], domain="fgad", name="mdci.0.k0")
    graph = _graph(tmp_path, [plugin_node])
    with pytest.raises(EngineBuildError, match=r"node 'mdci\.0\.k0' \(FgadDeformConv2d\).*--plugin PATH"):
        build_engine(graph, tmp_path / "a.engine", EngineBuildOptions(progress=False))
    assert not (tmp_path / "a.engine").exists()

    stand_in.calls.clear()
    library = tmp_path / "libfgad_plugins.so"
    library.write_bytes(b"\x7fELF")
    build_engine(graph, tmp_path / "b.engine", EngineBuildOptions(plugin_libraries=(library,), progress=False))
    order = [c[0] for c in stand_in.calls]
    assert order.index("load_library") < order.index("parse")
    assert ("load_library", str(library.resolve())) in stand_in.calls

    with pytest.raises(FileNotFoundError, match="missing.so"):
        build_engine(graph, tmp_path / "c.engine", EngineBuildOptions(plugin_libraries=(tmp_path / "missing.so",)))
    build_engine(graph, tmp_path / "b2.engine", EngineBuildOptions(plugin_libraries=(library,), progress=False))
    assert [c[0] for c in stand_in.calls].count("load_library") == 1  # once per process, not once per build
    stand_in.refuse_library = True
    broken = tmp_path / "libbroken.so"
    broken.write_bytes(b"\x7fELF")
    with pytest.raises(EngineBuildError, match="could not load the plugin library .*libbroken.so"):
        build_engine(graph, tmp_path / "d.engine", EngineBuildOptions(plugin_libraries=(broken,)))


def test_build_failures_write_nothing(tmp_path: Path, stand_in: _Recorder) -> None:
    cache = tmp_path / "t.cache"
    stand_in.fail_build = True
    with pytest.raises(EngineBuildError, match="could not build the fp16 engine.*swap"):
        build_engine(_graph(tmp_path), tmp_path / "x.engine", EngineBuildOptions(timing_cache=cache, progress=False))
    assert not (tmp_path / "x.engine").exists() and not cache.exists()
    with pytest.raises(EngineBuildError, match="only the batch axis may be dynamic"):
        build_engine(_graph(tmp_path, dynamic_hw=True), tmp_path / "y.engine", EngineBuildOptions(progress=False))


def test_add_engine_installs_engine_plugins_and_fallback(tmp_path: Path, stand_in: _Recorder,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The install step, with the build and the GPU parity replaced: files, manifest, sha256, rebuild."""
    bundle = make_bundle(tmp_path / "bundle", references=_images(2))
    before = _hashes(bundle.path)
    built: list[Path] = []

    def fake_build(source: Path, target: Path, options: EngineBuildOptions) -> Any:
        built.append(Path(source))
        target.write_bytes(PLAN)
        return tensorrt_build.EngineInfo(target, "10.3.0.30", "8.7", options.precision, 12.0, 7, 9, len(PLAN), 1, 1,
                                         options.max_batch)

    parity = {"images": 3, "precision": "fp16", "max_abs_diff_vl_map": 0.004, "tolerances": {"default": 0.03}}
    monkeypatch.setattr(engine_bundle, "build_engine", fake_build)
    monkeypatch.setattr(engine_bundle, "_parity", lambda *a, **k: dict(parity))
    library = tmp_path / "libfgad_plugins.so"
    library.write_bytes(b"\x7fELF-1")
    result = add_engine(bundle.path, EngineBuildOptions(plugin_libraries=(library,)))
    assert built == [bundle.path / "model.onnx"]  # decomposed bundle: TensorRT gets model.onnx as it is
    data = bundle.manifest()
    engine = data["engine"]
    assert engine["kind"] == "tensorrt" and engine["file"] == ENGINE_FILE and engine["precision"] == "fp16"
    assert (engine["tensorrt_version"], engine["compute_capability"], engine["deform"]) == ("10.3.0.30", "8.7",
                                                                                           "decomposed")
    assert engine["fallback"] == {"kind": "onnx", "file": "model.onnx", "opset": 19, "precision": "fp32"}
    assert engine["plugins"] == [{"file": "plugins/libfgad_plugins.so", "ops": ["fgad::FgadDeformConv2d"],
                                  "sha256": hashlib.sha256(b"\x7fELF-1").hexdigest()}]
    assert engine["parity"]["max_abs_diff_vl_map"] == 0.004 and engine["coverage"]["ok"] is True
    assert (bundle.path / ENGINE_FILE).read_bytes() == PLAN
    after = _hashes(bundle.path)
    protection = ("manifest.json", "manifest.digest")
    assert {k: after[k] for k in before if k not in protection} == {k: v for k, v in before.items()
                                                                     if k not in protection}
    assert data["sha256"] == {k: v for k, v in after.items() if k not in protection}
    assert sorted(result.files) == [ENGINE_FILE, "plugins/libfgad_plugins.so"]
    assert not [p for p in bundle.path.iterdir() if p.name.startswith(".")]  # no staging left

    # rebuilt with another plugin library: the old one is dropped from the bundle and the manifest
    other = tmp_path / "libfgad_plugins_v2.so"
    other.write_bytes(b"\x7fELF-2")
    add_engine(bundle.path, EngineBuildOptions(precision="fp32", plugin_libraries=(other,)))
    data = bundle.manifest()
    assert not (bundle.path / "plugins" / "libfgad_plugins.so").exists()
    assert "plugins/libfgad_plugins.so" not in data["sha256"] and "plugins/libfgad_plugins_v2.so" in data["sha256"]
    assert data["engine"]["fallback"]["file"] == "model.onnx" and data["engine"]["precision"] == "fp32"
    assert built[-1] == bundle.path / "model.onnx"


def test_add_engine_rewrites_the_digest_and_signs(tmp_path: Path, stand_in: _Recorder,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine changes the manifest: its digest is rewritten, --sign signs it, an unsigned rebuild unsigns."""
    pytest.importorskip("cryptography", reason="signatures need the sign extra (cryptography)")
    from fgad.bundle import BundleError, load_manifest
    from fgad.bundle.signing import generate_key_pair
    from fgad.runtime.backends import check_manifest

    bundle = make_bundle(tmp_path / "bundle")
    key, public = generate_key_pair(tmp_path / "key.pem")

    def fake_build(source: Path, target: Path, options: EngineBuildOptions) -> Any:
        target.write_bytes(PLAN)
        return tensorrt_build.EngineInfo(target, "10.3.0.30", "8.7", options.precision, 1.0, 1, 1, len(PLAN), 1, 1,
                                         options.max_batch)

    monkeypatch.setattr(engine_bundle, "build_engine", fake_build)
    monkeypatch.setattr(engine_bundle, "_parity", lambda *a, **k: {"images": 1, "tolerances": {}})
    add_engine(bundle.path, EngineBuildOptions(), sign=key)
    check_manifest(load_manifest(bundle.path), bundle.path, backend="onnxruntime", trust=[public])
    (bundle.path / ENGINE_FILE).write_bytes(PLAN + b"x")  # the engine is hashed like every file
    with pytest.raises(BundleError, match="sha256.model.engine"):
        check_manifest(load_manifest(bundle.path), bundle.path, backend="onnxruntime")
    (bundle.path / ENGINE_FILE).write_bytes(PLAN)
    with pytest.raises(ValueError, match="cannot be read"):  # a bad key fails before anything is built
        add_engine(bundle.path, EngineBuildOptions(), sign=tmp_path / "missing.pem")
    add_engine(bundle.path, EngineBuildOptions(precision="fp32"))  # no key: unsigned, digest still rewritten
    assert not (bundle.path / "manifest.sig").exists()
    check_manifest(load_manifest(bundle.path), bundle.path, backend="onnxruntime")
    with pytest.raises(BundleError, match="not signed"):
        check_manifest(load_manifest(bundle.path), bundle.path, backend="onnxruntime", trust=[public])


def test_add_engine_refuses_before_building(tmp_path: Path, stand_in: _Recorder,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_bundle, "build_engine", lambda *a: pytest.fail("must not build"))
    bundle = make_bundle(tmp_path / "bundle")
    bundle.edit(deform="onnx")  # as if exported with --deform native
    with pytest.raises(EngineBuildError, match="needs the plugin library"):
        add_engine(bundle.path, EngineBuildOptions(), deform="plugin")
    with pytest.raises(EngineBuildError, match="int8 needs calibration images"):
        add_engine(bundle.path, EngineBuildOptions(precision="int8"))
    # a node TensorRT has no importer for stops the build unless the caller accepts it
    model = onnx.load(str(bundle.path / "model.onnx"))
    model.graph.node.append(helper.make_node("Unique", ["vl_map"], ["uniq"], name="odd_one"))
    onnx.save(model, str(bundle.path / "model.onnx"))
    bundle.write_manifest(bundle.manifest(), rehash=True)
    before = _hashes(bundle.path)
    with pytest.raises(EngineBuildError, match="(?s)node 'odd_one' \\(Unique\\).*--allow-unsupported"):
        add_engine(bundle.path, EngineBuildOptions())
    assert _hashes(bundle.path) == before
    # an int8 bundle of fgad-calibrate (model.onnx is the Q/DQ graph) builds only as int8, without re-quantizing
    model.graph.node.pop()
    scale = onnx.numpy_helper.from_array(np.array(0.01, np.float32), "q_scale")
    model.graph.initializer.append(scale)
    model.graph.node.append(helper.make_node("QuantizeLinear", ["vl_map", "q_scale"], ["vl_q"], name="q"))
    onnx.save(model, str(bundle.path / "model.onnx"))
    bundle.write_manifest(bundle.manifest(), rehash=True)
    with pytest.raises(EngineBuildError, match="is a Q/DQ \\(int8\\) graph: build it with --engine int8"):
        add_engine(bundle.path, EngineBuildOptions(precision="fp16"))


def test_compare_engine_reports_and_refuses() -> None:
    class Fixed:
        def __init__(self, shift: float, flip: bool = False) -> None:
            self.shift, self.flip = shift, flip

        def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
            best = np.arange(len(batch)) % 3
            return {"vl_map": batch[:, 0] + self.shift, "best_description": (best + 1) % 3 if self.flip else best}

    images = np.random.default_rng(0).standard_normal((5, 3, 4, 4)).astype(np.float32)
    report = compare_engine(Fixed(0.01), Fixed(0.0), images, "fp16")
    assert report["max_abs_diff_vl_map"] == pytest.approx(0.01, abs=1e-6)
    assert report["agreement_best_description"] == 1.0 and report["images"] == 5
    assert compare_engine(Fixed(0.0, flip=True), Fixed(0.0), images, "fp16")["agreement_best_description"] == 0.0
    with pytest.raises(engine_bundle.EngineParityError, match=r"'vl_map'.*> tolerance 0.001.*not installed"):
        compare_engine(Fixed(0.01), Fixed(0.0), images, "fp32")


# ---------------------------------------------------------------------------------- real TensorRT


@pytest.mark.gpu
@pytest.mark.skipif(not HAVE_TRT, reason="needs TensorRT and cuda-python on a CUDA machine (not installable on CI)")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_real_engine_build_parity_and_run(tmp_path: Path, precision: str) -> None:
    from fgad.runtime.pipeline import Detector

    good_images = _images(5, seed=1)
    bundle = make_bundle(tmp_path / "bundle", references=good_images[:3])
    result = add_engine(bundle.path, EngineBuildOptions(precision=precision, max_batch=4,
                                                        timing_cache=tmp_path / "t.cache"))
    plan = (bundle.path / ENGINE_FILE).read_bytes()
    import tensorrt as trt

    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan)
    assert engine is not None  # a plain plan: TensorRT itself reads the file as written
    assert result.parity["max_abs_diff_vl_map"] <= engine_bundle.ENGINE_TOLERANCES[precision]["vl_map"]
    gpu = Detector.from_bundle(bundle.path)
    cpu = Detector.from_bundle(bundle.path, backend="onnxruntime")
    assert gpu.backend.name == "tensorrt" and cpu.backend.name == "onnxruntime"
    batch = gpu.batch(good_images[3:] + good_images[:1])  # a different batch size than the engine was tuned for
    want = cpu.batch(good_images[3:] + good_images[:1])
    for got, ref in zip(batch, want, strict=True):
        assert abs(got.score - ref.score) <= 5 * engine_bundle.ENGINE_TOLERANCES[precision]["default"]
