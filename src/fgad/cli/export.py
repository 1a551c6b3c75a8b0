"""fgad-export: a checkpoint + one class (+ good reference images) -> a bundle for fgad-run.

With ``--engine fp32|fp16|int8`` the bundle also gets a TensorRT engine, built on this machine (the one it
will run on); ``--bundle DIR --engine ...`` builds the engine for an existing bundle (no checkpoint, no
torch: the path on a Jetson, docs/jetson.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import numpy as np

from fgad.cli.common import check_outputs, friendly_errors, setup_logging
from fgad.cli.export_settings import DEFAULT_OPSET, DEFAULT_TEXT_MODE, EngineRequest, NewExport, export_settings

ENGINES = ("onnx", "fp32", "fp16", "int8")
#: --deform names: native = ONNX DeformConv (TensorRT >= 10.1 imports it); onnx is kept as its old name
DEFORM_CHOICES = ("decomposed", "native", "plugin", "onnx")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--checkpoint", "checkpoint", type=click.Path(path_type=Path), default=None,
              help="fgad-train output directory (required unless --bundle).")
@click.option("--class-name", default=None,
              help="Product class the bundle is for (its prompts are frozen in; required unless --bundle).")
@click.option("--bundle", "bundle_dir", type=click.Path(path_type=Path), default=None,
              help="An existing bundle: build its TensorRT engine (--engine fp32|fp16|int8) without a checkpoint "
                   "or torch, e.g. on the device after copying the ONNX bundle there.")
@click.option("--refs", "refs_dir", type=click.Path(path_type=Path), default=None,
              help="Folder of good images of the class, the bundle's references. FiLo++: CoCoOp conditioning, prompt "
                   "filtering and the few-shot memory (without it the bundle is zero-shot). FineGrainedAD: the "
                   "few-shot galleries (default: the training shots).")
@click.option("--engine", type=click.Choice(ENGINES), default="onnx", show_default=True,
              help="onnx: the ONNX bundle only. fp32/fp16/int8: also a TensorRT engine (model.engine), built here, "
                   "for this GPU and TensorRT version, and checked against onnxruntime.")
@click.option("--deform", type=click.Choice(DEFORM_CHOICES), default=None,
              help="Deformable conv as GridSample+MatMul (decomposed, the default), the ONNX DeformConv op (native, "
                   "or its other name onnx; opset 19; TensorRT >= 10.1) or our TensorRT plugin's node (plugin: "
                   "model.onnx keeps DeformConv for onnxruntime, the engine gets the plugin node; needs --plugin). "
                   "With --bundle: default as exported.")
@click.option("--plugin", "plugins", multiple=True, type=click.Path(path_type=Path),
              help="TensorRT plugin library (built from cpp_ext on this device); copied into the bundle.")
@click.option("--workspace", "workspace_gb", type=click.FloatRange(min=0, min_open=True), default=None,
              help="TensorRT builder workspace limit in GiB (default: TensorRT's).")
@click.option("--timing-cache", type=click.Path(path_type=Path), default=None,
              help="TensorRT timing cache file: read if it exists, updated after the build (faster rebuilds).")
@click.option("--max-batch", type=click.IntRange(min=1), default=8, show_default=True,
              help="Largest batch the engine accepts (its optimization profile is 1..max, tuned for 1).")
@click.option("--calib-dir", type=click.Path(path_type=Path), default=None,
              help="--engine int8: folder of normal images to calibrate on (default: the reference images); an "
                   "unreadable image is refused by name, not skipped.")
@click.option("--calib-method", type=click.Choice(["entropy", "percentile", "minmax"]), default="entropy",
              show_default=True, help="--engine int8: how activation ranges are chosen.")
@click.option("--allow-unsupported", is_flag=True,
              help="Build the engine even when the TensorRT coverage check finds unsupported nodes.")
@click.option("--text", "text_mode", type=click.Choice(["frozen", "bank"]), default=DEFAULT_TEXT_MODE,
              show_default=True,
              help="frozen: one filtered text pair; bank: all prompt embeddings, filtered per image in the graph.")
@click.option("--image-size", type=click.IntRange(min=1), default=None,
              help="Input size of the bundle (default: the checkpoint's); the position grid is resized.")
@click.option("--measure-on", "measure_dir", type=click.Path(path_type=Path), default=None,
              help="Folder (searched recursively) of images, good and defective, not the references, on which the "
                   "frozen-text approximation recorded in the manifest is measured. Default: the references.")
@click.option("--box-prior", type=click.Choice(["none", "objectness", "grounding-dino"]), default=None,
              help="Box prior inside the graph (default: the config's post.box_prior). grounding-dino runs on the "
                   "PyTorch path only (fgad-eval) and is refused here.")
@click.option("--bank", "banks", multiple=True, help="Extra description bank (JSON {class: [phrases]}).")
@click.option("--opset", type=click.IntRange(16, None), default=DEFAULT_OPSET, show_default=True,
              help="ONNX opset of model.onnx (--deform native needs 19 or later).")
@click.option("--knn", type=click.Choice(["runtime", "graph"]), default="runtime", show_default=True,
              help="Where the few-shot search runs. runtime: fgad-run searches references.npz (FAISS or numpy; "
                   "fgad-run --refs can replace it). graph: the reference memory becomes constants of the graph, "
                   "which computes the nearest-reference similarities itself (TensorRT/onnxruntime, no FAISS on the "
                   "device; needs --refs; new references need a new export). docs/bundle.md.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Bundle directory to write (required unless --bundle).")
@click.option("--sign", "sign_key", type=click.Path(path_type=Path), default=None,
              help="Ed25519 private key (PEM; fgad-sign keygen) that signs the bundle's manifest digest "
                   "(manifest.sig), for fgad-run --trust. Needs fgad[sign].")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging (also the libraries' INFO lines).")
@friendly_errors
def main(**options: Any) -> None:
    """Write model.onnx, references.npz and manifest.json to OUT (docs/bundle.md); with --engine, model.engine."""
    settings = export_settings(options)
    from fgad.bundle.staging import signing_key

    key = signing_key(settings.sign_key)  # a bad key or a missing cryptography fails before any work
    timing_cache = ("--timing-cache", settings.engine.timing_cache, "file")
    if settings.bundle_dir is not None:  # the engine is written into the bundle (a missing one: load_manifest says so)
        check_outputs(("--bundle", settings.bundle_dir if settings.bundle_dir.is_dir() else None, "dir"), timing_cache)
        setup_logging(settings.verbose)
        _engine_for_bundle(settings.bundle_dir, settings.engine, settings.refs_dir, None, sign=key)
        return
    assert settings.export is not None
    check_outputs(("--out", settings.export.out_dir, "bundle"), timing_cache)  # before torch and the checkpoint load
    _export_new_bundle(settings.export, settings.engine, settings.refs_dir, settings.verbose, sign=key)


def _export_new_bundle(export: NewExport, build: EngineRequest, refs_dir: Path | None, verbose: bool,
                       sign: Any = None) -> None:
    """A checkpoint -> a bundle, its report, then its engine (or, for --engine onnx, a TensorRT coverage note)."""
    if export.box_prior == "grounding-dino":
        from fgad.methods.filo.priors.grounding import NEEDS_TORCH_MESSAGE

        raise click.ClickException(NEEDS_TORCH_MESSAGE)
    export_deform = build.export_flavour()
    if build.engine != "onnx":
        build.warn_early()
    setup_logging(verbose)
    bundle, refs = _write_new_bundle(export, refs_dir, export_deform, sign)
    manifest = _report_new_bundle(bundle)
    if build.engine == "onnx":
        _coverage_note(bundle / manifest["engine"]["file"], build)
    else:
        _engine_for_bundle(bundle, build, None, refs, written=True, sign=sign)


def _write_new_bundle(export: NewExport, refs_dir: Path | None,
                      export_deform: str, sign: Any = None) -> tuple[Path, list[Path] | None]:
    """Load the checkpoint (torch), write the bundle; returns it and the reference images it was given."""
    # The library calls below keep their argument names as local variables, so that changes made to those
    # calls elsewhere apply to this block unchanged.
    checkpoint, class_name, out_dir = export.checkpoint, export.class_name, export.out_dir
    text_mode, image_size, measure_dir = export.text_mode, export.image_size, export.measure_dir
    box_prior, banks, opset = export.box_prior, export.banks, export.opset
    import torch

    from fgad.backbone.checkpoint import WEIGHTS_FILE
    from fgad.export.bundle import export_bundle, list_reference_images, resize_model, sha256_file
    from fgad.export.onnx_export import ExportError
    from fgad.methods.registry import get_method, load_any_checkpoint

    refs = list_reference_images(refs_dir) if refs_dir is not None else None
    measure_on = (list_reference_images(measure_dir, recursive=True, what="images to measure on")
                  if measure_dir is not None else None)
    with torch.no_grad():
        model, _, meta = load_any_checkpoint(checkpoint, combine=False)  # any method's, by the checkpoint
        method = get_method(model.cfg.method)
        if not method.box_priors and box_prior not in (None, "none"):
            raise click.UsageError(f"--box-prior {box_prior}: box priors belong to FiLo++ (DefLoc); "
                                   f"{checkpoint} is a {method.title} checkpoint: drop --box-prior")
        if banks:
            model.prompts.add_banks(banks)
        checkpoint_meta = {
            "checkpoint": str(checkpoint),
            "checkpoint_sha256": sha256_file(checkpoint / WEIGHTS_FILE),
            "pretrained": meta.get("pretrained"),
            "backbone_fingerprint": meta.get("backbone_fingerprint"),
        }
        if image_size is not None and image_size != model.cfg.backbone.image_size:
            model, note = resize_model(model, image_size, meta.get("pretrained"))
            checkpoint_meta["image_size_override"] = note
            checkpoint_meta["backbone_fingerprint"] = None  # the resized backbone has its own fingerprint
            click.echo(f"image size {note['trained']} -> {note['exported']}: position grid {note['position_grid']}")
    try:
        bundle = export_bundle(out_dir, model, model.cfg, class_name, refs, text_mode=text_mode,
                              deform=export_deform, checkpoint_meta=checkpoint_meta, opset=opset,
                              approximation_images=measure_on, box_prior=box_prior, sign=sign,
                              fewshot_search=export.knn)
    except (ExportError, FileExistsError) as err:
        raise click.ClickException(str(err)) from err
    return bundle, refs


def _report_new_bundle(bundle: Path) -> dict[str, Any]:
    """Print the parity and frozen-text figures the manifest records; returns the manifest."""
    import json

    manifest: dict[str, Any] = json.loads((bundle / "manifest.json").read_text())
    parity = manifest["parity"]
    click.echo(f"parity onnxruntime vs torch on {parity['images']} {parity['inputs']}:")
    for key, value in parity.items():
        if key.startswith("max_abs_diff_"):
            click.echo(f"  {key[len('max_abs_diff_'):]}: max |diff| {value:.3g}")
    click.echo(f"  best_description: {parity['best_description_mismatches']} mismatches")
    if "knn_graph" in parity:
        knn = parity["knn_graph"]
        click.echo(f"few-shot search in the graph vs the runtime's search on {knn['images']} images: score max |diff| "
                   f"{knn['max_abs_diff_score']:.3g}, map {knn['max_abs_diff_anomaly_map']:.3g}; threshold auto "
                   f"(leave-one-out at export): {manifest['thresholds'].get('auto')}")
    approx = manifest["text"]["approximation"]
    click.echo(f"frozen text ({manifest['text']['mode']}, {manifest['text']['conditioning']}) vs the exact model: "
               f"anomaly map max {approx['max_abs_diff_anomaly_map']:.3g} "
               f"(mean {approx['mean_abs_diff_anomaly_map']:.3g}), "
               f"image score max {approx['max_abs_diff_image_score']:.3g} "
               f"(mean {approx['mean_abs_diff_image_score']:.3g})")
    click.echo(f"bundle: {bundle}")
    return manifest


# ---------------------------------------------------------------------------------- TensorRT engines


def _preprocessed(paths: Sequence[Path], manifest: Any) -> np.ndarray:
    from fgad.calibration.images import preprocess_images

    spec = manifest.input
    return preprocess_images(paths, spec.size, spec.mean, spec.std, progress=False, what="reference images")


def _check_images(bundle: Path, manifest: Any, refs_dir: Path | None,
                  ref_paths: Sequence[Path] | None) -> tuple[np.ndarray | None, str]:
    """Images to compare the engine with onnxruntime on: the references (given, or those recorded in
    references.npz when they still exist here), else None (seeded synthetic inputs)."""
    if ref_paths:
        return _preprocessed(ref_paths, manifest), f"{len(ref_paths)} reference images"
    if refs_dir is not None:
        from fgad.runtime.sources import expand_image_spec

        paths = expand_image_spec(refs_dir)
        return _preprocessed(paths, manifest), f"{len(paths)} images of {refs_dir}"
    if manifest.fewshot.file:
        with np.load(bundle / manifest.fewshot.file, allow_pickle=False) as data:
            recorded = [Path(str(p)) for p in data["paths"]] if "paths" in data.files else []
        if recorded and all(p.is_file() for p in recorded):
            return _preprocessed(recorded, manifest), f"{len(recorded)} reference images"
    return None, "synthetic images"


def _engine_for_bundle(bundle: Path, build: EngineRequest, refs_dir: Path | None,
                       ref_paths: Sequence[Path] | None, written: bool = False, sign: Any = None) -> None:
    from fgad.bundle import load_manifest
    from fgad.export.engine_bundle import add_engine
    from fgad.export.tensorrt_build import EngineBuildError, TensorRTUnavailableError

    manifest = load_manifest(bundle)
    images, what = _check_images(bundle, manifest, refs_dir, ref_paths)
    calibration = None
    if build.engine == "int8":
        if build.calib_dir is not None:
            from fgad.export.engine_bundle import _import_calibration

            _, read_calibration_images = _import_calibration()
            spec = manifest.input
            calibration = read_calibration_images(build.calib_dir, spec.size, spec.mean, spec.std)
        elif images is not None:
            calibration = images
        else:
            raise click.ClickException("--engine int8 needs calibration images of normal parts: --calib-dir DIR "
                                       "(or --refs DIR)")
    try:
        result = add_engine(bundle, build.options(), deform=build.deform, check_images=images,
                            calibration=calibration, calibration_method=build.calib_method,
                            coverage="warn" if build.allow_unsupported else "fail", sign=sign)
    except TensorRTUnavailableError as err:
        raise click.ClickException(
            f"{err}\nThe ONNX bundle {bundle} {'was still written and ' if written else ''}is complete (fgad-run "
            f"runs it with onnxruntime); build its engine on the machine that will run it: "
            f"{build.rebuild_hint(bundle)}") from err
    except EngineBuildError as err:
        raise click.ClickException(f"{err}\nThe ONNX bundle {bundle} is unchanged.") from err
    info, parity = result.info, result.parity
    click.echo(f"engine: {bundle / info.path.name} ({info.precision}, TensorRT {info.tensorrt_version}, sm "
               f"{info.compute_capability}, {info.layers} layers, {info.engine_bytes / 1e6:.1f} MB, batch "
               f"{info.min_batch}..{info.max_batch}, built in {info.build_seconds:.0f} s)")
    click.echo(f"parity TensorRT {info.precision} vs onnxruntime on {what}:")
    from fgad.bundle.staging import parity_tolerance

    for key, value in parity.items():
        if key.startswith("max_abs_diff_"):
            name = key[len("max_abs_diff_"):]
            limit = parity_tolerance(name, parity["tolerances"], 0.0)
            click.echo(f"  {name}: max |diff| {value:.3g} (tolerance {limit:.3g})")
        elif key.startswith("agreement_"):
            click.echo(f"  {key[len('agreement_'):]}: {value:.1%} agree")



def _coverage_note(onnx_path: Path, build: EngineRequest) -> None:
    """One line on whether TensorRT will take the exported graph (the bundle is useful either way)."""
    from fgad.export.op_coverage import check_tensorrt_coverage

    try:
        report = check_tensorrt_coverage(onnx_path, plugins=())
    except (ImportError, OSError, ValueError) as err:
        click.echo(f"TensorRT coverage not checked: {err}", err=True)
        return
    lines = report.summary(limit=5).splitlines()
    click.echo(lines[0])
    for line in lines[1:]:
        click.echo(line)


if __name__ == "__main__":
    main()
