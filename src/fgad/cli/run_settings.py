"""fgad-run's command line as frozen settings, built once from click's arguments by :func:`run_settings`.

Three groups: where the frames come from (:class:`SourceSettings`), the detector made from the bundle
(:class:`DetectorSettings`) and what is done with each result (:class:`OutputSettings`). Torch-free, like
the command.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click


@dataclass(frozen=True)
class SourceSettings:
    """Exactly one of camera, video and images (as ``fgad.runtime.sources.open_source`` takes them)."""

    camera: int | None = None
    video: str | None = None
    images: str | None = None
    loop: bool = False


@dataclass(frozen=True)
class DetectorSettings:
    """The arguments of ``Detector.from_bundle`` (or of ``fgad.triton.Client`` with ``triton_url``)."""

    bundle_dir: Path | None
    refs: str | None = None
    threshold: float | str | None = None
    backend: str = "auto"
    threads: int | None = None
    knn: str = "auto"
    strict: bool = False  # refuse files the manifest does not list
    trust: tuple[Path, ...] = ()  # public keys the bundle must be signed with
    triton_url: str | None = None  # --triton: a model on a Triton server instead of a local bundle
    triton_model: str | None = None


@dataclass(frozen=True)
class OutputSettings:
    """What is done per frame and when the loop stops."""

    save_dir: Path | None = None
    jsonl_path: Path | None = None
    show: bool = False
    max_frames: int | None = None
    log_every: int = 100


@dataclass(frozen=True)
class RunSettings:
    """One fgad-run invocation."""

    source: SourceSettings
    detector: DetectorSettings
    output: OutputSettings
    verbose: bool = False


def run_settings(options: Mapping[str, Any]) -> RunSettings:
    """The settings of fgad-run from click's keyword arguments (the parameter names of its options).

    Raises click.UsageError unless exactly one source is given, and TypeError (a bug, not a user error) when
    ``options`` holds names that no setting takes.
    """
    opts = dict(options)
    source = SourceSettings(camera=opts.pop("camera"), video=opts.pop("video"), images=opts.pop("images"),
                            loop=bool(opts.pop("loop")))
    detector = DetectorSettings(bundle_dir=opts.pop("bundle_dir"), refs=opts.pop("refs"),
                                threshold=opts.pop("threshold"), backend=opts.pop("backend"),
                                threads=opts.pop("threads"), knn=opts.pop("knn"),
                                strict=bool(opts.pop("strict")), trust=tuple(opts.pop("trust")),
                                triton_url=opts.pop("triton_url", None), triton_model=opts.pop("triton_model", None))
    output = OutputSettings(save_dir=opts.pop("save_dir"), jsonl_path=opts.pop("jsonl_path"),
                            show=bool(opts.pop("show")), max_frames=opts.pop("max_frames"),
                            log_every=opts.pop("log_every"))
    verbose = bool(opts.pop("verbose"))
    if opts:
        raise TypeError(f"run_settings: unknown options {', '.join(sorted(opts))}")
    given = [n for n, v in (("--camera", source.camera), ("--video", source.video), ("--images", source.images))
             if v is not None]
    if len(given) != 1:
        raise click.UsageError(f"give exactly one of --camera, --video or --images (got {', '.join(given) or 'none'})")
    return RunSettings(source=source, detector=detector, output=output, verbose=verbose)
