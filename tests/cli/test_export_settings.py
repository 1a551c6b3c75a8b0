"""fgad-export's settings: click's arguments -> ExportSettings, and the flag combinations it refuses (no torch)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from fgad.cli.export import main
from fgad.cli.export_settings import EngineRequest, ExportSettings, NewExport, export_settings

REPO = Path(__file__).resolve().parents[2]
NEW = ["--checkpoint", "ck", "--class-name", "bottle", "--out", "b"]


def _params(args: list[str]) -> dict[str, Any]:
    """The keyword arguments click passes to fgad-export's main for ``args``."""
    with main.make_context("fgad-export", list(args)) as ctx:
        return dict(ctx.params)


def _settings(args: list[str]) -> ExportSettings:
    return export_settings(_params(args))


def test_defaults_of_a_new_export() -> None:
    settings = _settings(NEW)
    assert settings == ExportSettings(
        engine=EngineRequest(engine="onnx", deform=None, plugins=(), workspace_gb=None, timing_cache=None,
                             max_batch=8, calib_dir=None, calib_method="entropy", allow_unsupported=False,
                             verbose=False),
        refs_dir=None,
        verbose=False,
        export=NewExport(checkpoint=Path("ck"), class_name="bottle", out_dir=Path("b")),
    )
    assert settings.export is not None
    assert (settings.export.text_mode, settings.export.opset, settings.export.banks) == ("frozen", 19, ())
    assert settings.bundle_dir is None


def test_every_option_lands_in_the_settings() -> None:
    settings = _settings(NEW + ["--refs", "r", "--engine", "int8", "--deform", "plugin", "--plugin", "a.so",
                                "--plugin", "b.so", "--workspace", "2.5", "--timing-cache", "t.cache",
                                "--max-batch", "4", "--calib-dir", "c", "--calib-method", "minmax",
                                "--allow-unsupported", "--text", "bank", "--image-size", "96", "--measure-on", "m",
                                "--box-prior", "objectness", "--bank", "x.json", "--bank", "y.json", "--opset", "20",
                                "--sign", "key.pem", "-v"])
    assert settings.engine == EngineRequest(engine="int8", deform="plugin", plugins=(Path("a.so"), Path("b.so")),
                                            workspace_gb=2.5, timing_cache=Path("t.cache"), max_batch=4,
                                            calib_dir=Path("c"), calib_method="minmax", allow_unsupported=True,
                                            verbose=True)
    assert settings.export == NewExport(checkpoint=Path("ck"), class_name="bottle", out_dir=Path("b"),
                                        text_mode="bank", image_size=96, measure_dir=Path("m"),
                                        box_prior="objectness", banks=("x.json", "y.json"), opset=20)
    assert settings.refs_dir == Path("r") and settings.verbose and settings.sign_key == Path("key.pem")


def test_bundle_mode() -> None:
    settings = _settings(["--bundle", "bun", "--engine", "fp16", "--refs", "r", "--deform", "native", "--sign", "k"])
    assert settings.bundle_dir == Path("bun") and settings.export is None and settings.sign_key == Path("k")
    assert settings.refs_dir == Path("r")
    assert (settings.engine.engine, settings.engine.deform) == ("fp16", "native")


@pytest.mark.parametrize(("extra", "what"), [
    (["--checkpoint", "ck"], "--checkpoint"),
    (["--class-name", "bottle"], "--class-name"),
    (["--out", "b"], "--out"),
    (["--image-size", "96"], "--image-size"),
    (["--box-prior", "none"], "--box-prior"),
    (["--measure-on", "m"], "--measure-on"),
    (NEW + ["--image-size", "96"], "--checkpoint, --class-name, --out, --image-size"),
    (["--bank", "x.json"], "the export options"),
    (["--text", "bank"], "the export options"),
    (["--opset", "18"], "the export options"),
])
def test_bundle_mode_refuses_export_options(extra: list[str], what: str) -> None:
    with pytest.raises(click.UsageError) as info:
        _settings(["--bundle", "bun", "--engine", "fp16"] + extra)
    assert info.value.format_message() == (f"--bundle builds the engine of an existing bundle; {what} belong to a "
                                           "new export (use --out for that)")


def test_bundle_mode_needs_a_tensorrt_engine() -> None:
    with pytest.raises(click.UsageError, match=r"^--bundle builds a TensorRT engine: give --engine fp32, fp16 or "
                                               r"int8$"):
        _settings(["--bundle", "bun"])
    # the export options are refused first, as before
    with pytest.raises(click.UsageError, match="--out belong to a new export"):
        _settings(["--bundle", "bun", "--out", "b"])


@pytest.mark.parametrize(("args", "missing"), [
    ([], "--checkpoint, --class-name, --out"),
    (["--checkpoint", "ck"], "--class-name, --out"),
    (["--checkpoint", "ck", "--out", "b"], "--class-name"),
    (["--class-name", "bottle", "--engine", "fp16"], "--checkpoint, --out"),
])
def test_a_new_export_needs_checkpoint_class_and_out(args: list[str], missing: str) -> None:
    with pytest.raises(click.UsageError) as info:
        _settings(args)
    assert info.value.format_message() == (f"missing {missing} (or give --bundle DIR to build an existing bundle's "
                                           "engine)")


def test_the_builder_takes_exactly_the_commands_options() -> None:
    params = _params(NEW)
    assert set(params) == {p.name for p in main.params}
    with pytest.raises(TypeError, match="unknown options colour"):
        export_settings({**params, "colour": "red"})
    del params["opset"]
    with pytest.raises(KeyError, match="opset"):
        export_settings(params)


def test_settings_are_frozen_and_have_one_mode() -> None:
    settings = _settings(NEW)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.verbose = True  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.engine.engine = "fp16"  # type: ignore[misc]
    with pytest.raises(ValueError, match="exactly one"):
        ExportSettings(engine=settings.engine, refs_dir=None, verbose=False)
    with pytest.raises(ValueError, match="exactly one"):
        dataclasses.replace(settings, bundle_dir=Path("bun"))


def test_rebuild_hint() -> None:
    engine = _settings(NEW + ["--engine", "fp16", "--deform", "plugin"]).engine
    assert engine.rebuild_hint(Path("b")) == "fgad-export --bundle b --engine fp16 --deform plugin --plugin LIB"
    engine = _settings(NEW + ["--engine", "int8", "--plugin", "a.so"]).engine
    assert engine.rebuild_hint(Path("b")) == "fgad-export --bundle b --engine int8 --plugin a.so"


@pytest.mark.parametrize(("args", "message"), [
    (["--bundle", "bun", "--engine", "fp16", "--checkpoint", "ck"],
     "Error: --bundle builds the engine of an existing bundle; --checkpoint belong to a new export (use --out for "
     "that)"),
    (["--bundle", "bun"], "Error: --bundle builds a TensorRT engine: give --engine fp32, fp16 or int8"),
    (["--class-name", "bottle"], "Error: missing --checkpoint, --out (or give --bundle DIR to build an existing "
                                 "bundle's engine)"),
    (["--checkpoint", "ck", "--class-name", "bottle", "--out", "o", "--knn", "graph"],
     "Error: --knn graph puts the reference memory into the graph: give the good images with --refs DIR"),
    (["--bundle", "bun", "--engine", "fp16", "--knn", "graph"],
     "Error: --bundle builds the engine of an existing bundle; --knn belong to a new export (use --out for that)"),
])
def test_command_usage_errors(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert result.output.rstrip().splitlines()[-1] == message


def test_settings_and_usage_errors_need_no_torch() -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from click.testing import CliRunner\n"
        "from fgad.cli.export import main\n"
        "result = CliRunner().invoke(main, ['--bundle', 'bun', '--engine', 'fp16', '--out', 'b'])\n"
        "assert result.exit_code == 2, result.output\n"
        "assert '--out belong to a new export' in result.output, result.output\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('onnx', 'fgad.export')))\n"
        "assert not bad, bad\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
