"""fgad-run's settings: click's arguments -> RunSettings, and the source it insists on (no bundle needed)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from fgad.cli.run import main
from fgad.cli.run_line import LINE_OPTIONS, pop_line_settings
from fgad.cli.run_settings import DetectorSettings, OutputSettings, RunSettings, SourceSettings, run_settings


def _params(args: list[str]) -> dict[str, Any]:
    """The keyword arguments click passes to fgad-run's main for ``args``, less the multi-source options that
    main hands to the line (cli/run_line.py) before the single-stream settings are read."""
    with main.make_context("fgad-run", list(args)) as ctx:
        params = dict(ctx.params)
    pop_line_settings(params)
    return params


def _settings(args: list[str]) -> RunSettings:
    return run_settings(_params(args))


def test_defaults() -> None:
    assert _settings(["--bundle", "b", "--images", "imgs"]) == RunSettings(
        source=SourceSettings(camera=None, video=None, images="imgs", loop=False),
        detector=DetectorSettings(bundle_dir=Path("b"), refs=None, threshold=None, backend="auto", threads=None,
                                  knn="auto"),
        output=OutputSettings(save_dir=None, jsonl_path=None, show=False, max_frames=None, log_every=100),
        verbose=False,
    )


def test_every_option_lands_in_the_settings() -> None:
    settings = _settings(["--bundle", "b", "--video", "v.mp4", "--loop", "--refs", "r", "--threshold", "0.25",
                          "--save", "s", "--jsonl", "o.jsonl", "--show", "--max-frames", "7", "--log-every", "3",
                          "--backend", "onnxruntime", "--threads", "2", "--knn", "numpy", "--strict",
                          "--trust", "a.pub", "--trust", "b.pub", "-v"])
    assert settings == RunSettings(
        source=SourceSettings(video="v.mp4", loop=True),
        detector=DetectorSettings(bundle_dir=Path("b"), refs="r", threshold=0.25, backend="onnxruntime", threads=2,
                                  knn="numpy", strict=True, trust=(Path("a.pub"), Path("b.pub"))),
        output=OutputSettings(save_dir=Path("s"), jsonl_path=Path("o.jsonl"), show=True, max_frames=7, log_every=3),
        verbose=True,
    )
    assert _settings(["--bundle", "b", "--camera", "0", "--threshold", " AUTO "]).detector.threshold == "auto"
    assert _settings(["--bundle", "b", "--camera", "0"]).source.camera == 0


@pytest.mark.parametrize(("sources", "got"), [
    ([], "none"),
    (["--camera", "0", "--video", "v.mp4"], "--camera, --video"),
    (["--camera", "0", "--video", "v.mp4", "--images", "i"], "--camera, --video, --images"),
])
def test_exactly_one_source(sources: list[str], got: str) -> None:
    with pytest.raises(click.UsageError) as info:
        _settings(["--bundle", "b"] + sources)
    assert info.value.format_message() == f"give exactly one of --camera, --video or --images (got {got})"
    result = CliRunner().invoke(main, ["--bundle", "b"] + sources)
    assert result.exit_code == 2
    assert result.output.rstrip().splitlines()[-1] == (f"Error: give exactly one of --camera, --video or --images "
                                                       f"(got {got})")


def test_the_builder_takes_exactly_the_commands_options() -> None:
    with main.make_context("fgad-run", ["--bundle", "b", "--images", "i"]) as ctx:
        everything = dict(ctx.params)
    params = _params(["--bundle", "b", "--images", "i"])
    assert set(everything) == {p.name for p in main.params}
    # the line's options go to the line, every other option to run_settings
    line_names = set(everything) - set(params)
    assert line_names == set(LINE_OPTIONS)
    with pytest.raises(TypeError, match="unknown options fps"):
        run_settings({**params, "fps": 30})
    del params["knn"]
    with pytest.raises(KeyError, match="knn"):
        run_settings(params)


def test_settings_are_frozen() -> None:
    settings = _settings(["--bundle", "b", "--images", "i"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.output.show = True  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.source = SourceSettings(camera=1)  # type: ignore[misc]
