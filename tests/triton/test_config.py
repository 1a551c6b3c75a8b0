"""config.pbtxt: what fgad-triton writes parses back as Triton's ModelConfig, with the bundle's names and shapes."""

from __future__ import annotations

from pathlib import Path

import pytest

from fgad.bundle import load_manifest
from fgad.triton import model_config as mc
from fgad.triton.pbtxt import Enum, dumps
from tests.helpers.fake_bundle import make_bundle


def parse(text: str):  # noqa: ANN201 - a protobuf message
    pb = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="parsing back needs tritonclient")
    from google.protobuf import text_format

    return text_format.Parse(text, pb.ModelConfig())


def test_strings_are_escaped_and_round_trip() -> None:
    nasty = 'a "quoted" \\ back\nslash } parameters { key: "x"'
    config = parse(dumps({"name": "m", "parameters": [{"key": "k", "value": {"string_value": nasty}}]}))
    assert config.parameters["k"].string_value == nasty
    assert list(config.parameters) == ["k"]


def test_only_plain_values_are_written() -> None:
    with pytest.raises(TypeError):
        dumps({"name": object()})
    with pytest.raises(ValueError):
        dumps({"bad key": 1})
    with pytest.raises(ValueError):
        Enum("TYPE_FP32 } x {")


def test_python_form_config(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b")
    manifest = load_manifest(bundle.path)
    settings = mc.ServeSettings(instances=2, max_batch=4, queue_delay_us=500)
    config = parse(dumps(mc.pipeline_config("fgad_tile", manifest, settings, "f" * 64)))
    assert config.backend == "python" and config.max_batch_size == 4
    assert [(i.name, list(i.dims)) for i in config.input] == [("image", [3, 32, 32])]
    outputs = {o.name: list(o.dims) for o in config.output}
    assert outputs == {"score": [1], "anomaly_map": [32, 32], "global_prob": [1], "best_description": [1],
                       "is_anomalous": [1]}  # the fake bundle's manifest has a threshold
    assert list(config.dynamic_batching.preferred_batch_size) == [4]
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert config.instance_group[0].count == 2
    assert config.model_warmup[0].inputs["image"].zero_data
    assert config.parameters["fgad.class"].string_value == "tile"
    assert config.parameters["fgad.threshold"].string_value == "0.9"


def test_ensemble_configs(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b", layers=(3,))
    manifest = load_manifest(bundle.path)
    settings = mc.ServeSettings()
    encoder = parse(dumps(mc.encoder_config("enc", manifest, settings, "f" * 64, "onnxruntime")))
    assert encoder.backend == "onnxruntime" and encoder.default_model_filename == "model.onnx"
    dims = {o.name: (list(o.dims), o.HasField("reshape")) for o in encoder.output}
    assert dims == {"vl_map": ([32, 32], False), "global_prob": ([1], True), "best_description": ([1], True),
                    "tokens_3": ([16, 16], False)}
    trt = parse(dumps(mc.encoder_config("enc", manifest, settings, "f" * 64, "tensorrt")))
    assert trt.backend == "tensorrt" and trt.instance_group[0].kind == trt.instance_group[0].KIND_GPU
    post = parse(dumps(mc.post_config("post", manifest, settings, "f" * 64)))
    assert [i.name for i in post.input] == [o.name for o in encoder.output]
    ensemble = parse(dumps(mc.ensemble_config("fgad_tile", manifest, settings, "enc", "post", "f" * 64)))
    assert ensemble.platform == "ensemble"
    first, second = ensemble.ensemble_scheduling.step
    assert first.model_name == "enc" and second.model_name == "post"
    assert set(first.output_map.values()) == set(second.input_map.values())
    assert set(second.output_map) == {o.name for o in ensemble.output}


def test_model_names_are_sanitised() -> None:
    assert mc.model_name('bad "class"/../x') == "fgad_bad_class_x"
