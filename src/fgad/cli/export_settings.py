"""fgad-export's command line as frozen settings, built once from click's arguments by :func:`export_settings`.

Two modes share the command: a new export from a checkpoint (:class:`NewExport`) or, with ``--bundle``, the
TensorRT engine of an existing bundle; both carry the engine options (:class:`EngineRequest`). The flag
combinations that make no sense are refused here, with the usage errors (exit code 2) the command has always
given. Nothing heavy is imported at module level: ``--bundle`` runs without torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

#: the export options' values when not given: ``--bundle`` refuses any other value
DEFAULT_TEXT_MODE = "frozen"
DEFAULT_OPSET = 19
DEFAULT_KNN = "runtime"  # --knn: where the few-shot search runs (graph: inside the exported graph)


@dataclass(frozen=True)
class EngineRequest:
    """The engine options of the command line, and what follows from them."""

    engine: str
    deform: str | None
    plugins: tuple[Path, ...]
    workspace_gb: float | None
    timing_cache: Path | None
    max_batch: int
    calib_dir: Path | None
    calib_method: str
    allow_unsupported: bool
    verbose: bool

    def export_flavour(self) -> str:
        """The flavour of model.onnx: the plugin flavour is made for the engine only (model.onnx keeps DeformConv,
        which onnxruntime runs: the runtime's fallback)."""
        from fgad.export.deform_flavours import normalize_deform

        flavour = normalize_deform(self.deform or "decomposed")
        if flavour == "plugin" and self.engine == "onnx":
            click.echo("--deform plugin: model.onnx uses ONNX DeformConv (onnxruntime runs it); the plugin nodes are "
                       "made when the engine is built: fgad-export --bundle OUT --engine fp16 --deform plugin "
                       "--plugin LIB", err=True)
        return "onnx" if flavour == "plugin" else flavour

    def warn_early(self) -> None:
        """Before a long export: say now what will stop the engine build later."""
        from fgad.export.tensorrt_build import INSTALL_TENSORRT, tensorrt_installed

        if self.deform == "plugin" and not self.plugins:
            raise click.UsageError("--deform plugin needs --plugin PATH (the library built from cpp_ext)")
        if not tensorrt_installed():
            click.echo(f"warning: {INSTALL_TENSORRT}\nThe ONNX bundle will be written; the engine cannot be built "
                       "on this machine.", err=True)

    def options(self) -> Any:
        """The TensorRT builder's options (an ``EngineBuildOptions``; its module is imported only here)."""
        from fgad.export.tensorrt_build import EngineBuildOptions

        return EngineBuildOptions(precision=self.engine, workspace_gb=self.workspace_gb,
                                  timing_cache=self.timing_cache, plugin_libraries=self.plugins,
                                  max_batch=self.max_batch, verbose=self.verbose)

    def rebuild_hint(self, bundle: Path) -> str:
        """The fgad-export command that builds this engine for ``bundle`` on another machine."""
        parts = [f"fgad-export --bundle {bundle} --engine {self.engine}"]
        if self.deform:
            parts.append(f"--deform {self.deform}")
        parts += [f"--plugin {p}" for p in self.plugins] or (["--plugin LIB"] if self.deform == "plugin" else [])
        return " ".join(parts)


@dataclass(frozen=True)
class NewExport:
    """The options of a new export from a checkpoint (refused with ``--bundle``)."""

    checkpoint: Path
    class_name: str
    out_dir: Path
    text_mode: str = DEFAULT_TEXT_MODE
    image_size: int | None = None
    measure_dir: Path | None = None
    box_prior: str | None = None
    banks: tuple[str, ...] = ()
    opset: int = DEFAULT_OPSET
    knn: str = DEFAULT_KNN


@dataclass(frozen=True)
class ExportSettings:
    """One fgad-export invocation: exactly one of ``export`` (a new bundle) and ``bundle_dir`` (the engine of an
    existing one) is set."""

    engine: EngineRequest
    refs_dir: Path | None
    verbose: bool
    export: NewExport | None = None
    bundle_dir: Path | None = None
    sign_key: Path | None = None  # Ed25519 private key (PEM) that signs the written manifest

    def __post_init__(self) -> None:
        if (self.export is None) == (self.bundle_dir is None):
            raise ValueError("ExportSettings needs exactly one of export and bundle_dir")


def export_settings(options: Mapping[str, Any]) -> ExportSettings:
    """The settings of fgad-export from click's keyword arguments (the parameter names of its options).

    Raises click.UsageError for the flag combinations the command refuses, and TypeError (a bug, not a user
    error) when ``options`` holds names that no setting takes.
    """
    opts = dict(options)
    verbose = bool(opts.pop("verbose"))
    build = EngineRequest(
        engine=opts.pop("engine"),
        deform=opts.pop("deform"),
        plugins=tuple(opts.pop("plugins")),
        workspace_gb=opts.pop("workspace_gb"),
        timing_cache=opts.pop("timing_cache"),
        max_batch=opts.pop("max_batch"),
        calib_dir=opts.pop("calib_dir"),
        calib_method=opts.pop("calib_method"),
        allow_unsupported=bool(opts.pop("allow_unsupported")),
        verbose=verbose,
    )
    bundle_dir: Path | None = opts.pop("bundle_dir")
    refs_dir: Path | None = opts.pop("refs_dir")
    checkpoint: Path | None = opts.pop("checkpoint")
    class_name: str | None = opts.pop("class_name")
    out_dir: Path | None = opts.pop("out_dir")
    text_mode: str = opts.pop("text_mode")
    image_size: int | None = opts.pop("image_size")
    measure_dir: Path | None = opts.pop("measure_dir")
    box_prior: str | None = opts.pop("box_prior")
    banks = tuple(opts.pop("banks"))
    opset: int = opts.pop("opset")
    sign_key: Path | None = opts.pop("sign_key")
    knn: str = opts.pop("knn", DEFAULT_KNN)
    if opts:
        raise TypeError(f"export_settings: unknown options {', '.join(sorted(opts))}")

    if bundle_dir is not None:
        given = [name for name, value in (("--checkpoint", checkpoint), ("--class-name", class_name),
                                          ("--out", out_dir), ("--image-size", image_size), ("--box-prior", box_prior),
                                          ("--measure-on", measure_dir)) if value is not None]
        if knn != DEFAULT_KNN:
            given.append("--knn")
        if given or banks or text_mode != DEFAULT_TEXT_MODE or opset != DEFAULT_OPSET:
            what = ", ".join(given) or "the export options"
            raise click.UsageError(f"--bundle builds the engine of an existing bundle; {what} belong to a new "
                                   "export (use --out for that)")
        if build.engine == "onnx":
            raise click.UsageError("--bundle builds a TensorRT engine: give --engine fp32, fp16 or int8")
        return ExportSettings(engine=build, refs_dir=refs_dir, verbose=verbose, bundle_dir=bundle_dir,
                              sign_key=sign_key)

    missing = [name for name, value in (("--checkpoint", checkpoint), ("--class-name", class_name),
                                        ("--out", out_dir)) if value is None]
    if missing:
        raise click.UsageError(f"missing {', '.join(missing)} (or give --bundle DIR to build an existing bundle's "
                               "engine)")
    assert checkpoint is not None and class_name is not None and out_dir is not None
    if knn == "graph" and refs_dir is None:
        raise click.UsageError("--knn graph puts the reference memory into the graph: give the good images with "
                               "--refs DIR")
    export = NewExport(checkpoint=checkpoint, class_name=class_name, out_dir=out_dir, text_mode=text_mode,
                       image_size=image_size, measure_dir=measure_dir, box_prior=box_prior, banks=banks, opset=opset,
                       knn=knn)
    return ExportSettings(engine=build, refs_dir=refs_dir, verbose=verbose, export=export, sign_key=sign_key)
