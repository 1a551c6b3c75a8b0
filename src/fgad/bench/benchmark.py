"""One benchmark run: plan the rows (backend x variant x precision x shots), prepare the bundles, time
them with the harness, and assemble the result (rows, ratios, FLOPs, peak fractions, device).

``--config`` mode builds a random-weight model, exports *one* bundle from it (with the largest shot
count's references), and runs PyTorch, ONNX Runtime (fp32, int8) and TensorRT on the same weights and
the same frozen text, so every ratio compares like with like and is measured in the same run.
``--bundle`` mode times an existing bundle (no torch needed; the torch rows are skipped, since a
bundle holds no PyTorch model).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fgad.bench.device import cpu_info, device_record, git_commit, peak_for
from fgad.bench.flops import MLP_RATIO, FlopsBreakdown, model_flops
from fgad.bench.harness import HarnessSettings, Measurement, measure
from fgad.bench.workload import SYNTHETIC_CLASS, Workload, folder_workload, synthetic_workload

__all__ = ["BACKENDS", "PRECISIONS", "SCHEMA", "BenchSpec", "plan_rows", "run_benchmark"]

log = logging.getLogger(__name__)

SCHEMA = "fgad-bench/1"
BACKENDS = ("torch", "ort", "trt")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
#: backends that time a bundle (the others run the PyTorch model and need no export)
BUNDLE_BACKENDS = ("ort", "trt")
#: the baselines every row's speedup is given against (same shots, same run)
BASELINES = {"torch-eager-fp32": ("torch", "eager", "fp32"), "ort-fp32": ("ort", "session", "fp32")}


@dataclass(frozen=True)
class BenchSpec:
    """Everything a benchmark run needs (the CLI's options)."""

    bundle: Path | None = None
    config: str | None = None
    backends: tuple[str, ...] = ("torch", "ort")
    precisions: tuple[str, ...] = ("fp32",)
    shots: tuple[int, ...] = (0, 4)
    image_size: int | None = None
    batch: int = 1
    frames: int = 20
    warmup: int = 3
    images: Path | None = None
    refs: Path | None = None
    calib: Path | None = None
    calib_limit: int | None = None
    calib_method: str = "entropy"
    class_name: str | None = None
    device: str = "auto"  # auto | cpu | cuda
    threads: int | None = None
    compile: bool = True  # also time torch.compile
    compile_precisions: tuple[str, ...] | None = None  # torch.compile only these (None: every precision)
    torch_model: bool = True  # also time FiLoPlusPlus.forward (text encoded per image)
    deform: str = "decomposed"
    seed: int = 0
    peak_tflops: float | None = None
    progress: bool = True
    command: str = ""

    def __post_init__(self) -> None:
        if (self.bundle is None) == (self.config is None):
            raise ValueError("give exactly one of --bundle or --config")
        bad = [b for b in self.backends if b not in BACKENDS]
        if bad or not self.backends:
            raise ValueError(f"--backends {','.join(self.backends)}: choose from {','.join(BACKENDS)}")
        bad = [p for p in self.precisions if p not in PRECISIONS]
        if bad or not self.precisions:
            raise ValueError(f"--precisions {','.join(self.precisions)}: choose from {','.join(PRECISIONS)}")
        bad = [p for p in (self.compile_precisions or ()) if p not in self.precisions]
        if bad:
            raise ValueError(f"--compile-precisions {','.join(bad)}: not among --precisions "
                             f"{','.join(self.precisions)}")
        if not self.shots or min(self.shots) < 0:
            raise ValueError(f"--shots must be a list of counts >= 0, got {list(self.shots)}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"--device must be auto, cpu or cuda, got {self.device!r}")
        HarnessSettings(frames=self.frames, warmup=self.warmup, batch=self.batch)  # validates the counts


@dataclass
class _Row:
    backend: str
    variant: str
    precision: str
    reason: str | None = None  # set: skipped for this reason
    failure: str | None = None  # set: its set-up failed with this error
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.backend}-{self.variant}-{self.precision}"


def _target(spec: BenchSpec) -> str:
    """Where the timed work runs: "cuda" when asked for (and there) or, with "auto", when torch sees a GPU."""
    if spec.device == "cpu":
        return "cpu"
    cuda = False
    if importlib.util.find_spec("torch") is not None:
        import torch

        cuda = torch.cuda.is_available()
    if spec.device == "cuda" and not cuda:
        raise ValueError("--device cuda: torch sees no CUDA device here (install a CUDA build of torch, or use "
                         "--device cpu)")
    return "cuda" if cuda else "cpu"


def plan_rows(spec: BenchSpec, target: str) -> list[_Row]:
    """Every (backend, variant, precision) the spec asks for, with a skip reason where it cannot run here."""
    rows: list[_Row] = []
    for backend in spec.backends:
        for precision in spec.precisions:
            if backend == "torch":
                no_model = "the torch backend needs the PyTorch model: use --config" if spec.bundle else None
                if precision == "int8":
                    rows.append(_Row("torch", "eager", precision, "no int8 PyTorch path: int8 runs as a Q/DQ "
                                     "bundle on ONNX Runtime or TensorRT"))
                    continue
                if precision == "fp16" and target != "cuda":
                    rows.append(_Row("torch", "eager", precision, "fp16 PyTorch is timed on CUDA only (no GPU)"))
                    continue
                rows.append(_Row("torch", "eager", precision, no_model))
                if spec.compile and (spec.compile_precisions is None or precision in spec.compile_precisions):
                    rows.append(_Row("torch", "compile", precision, no_model))
                if spec.torch_model and precision == "fp32":
                    rows.append(_Row("torch", "model", precision, no_model))
            elif precision == "bf16":
                rows.append(_Row(backend, "session" if backend == "ort" else "engine", precision,
                                 "bf16 is timed in PyTorch only (torch.autocast): fgad exports no bf16 bundle or "
                                 "engine"))
            elif backend == "ort":
                if precision == "fp16":
                    rows.append(_Row("ort", "session", precision, "no fp16 ONNX bundle: fp16 is a TensorRT "
                                     "engine precision (and PyTorch's on CUDA)"))
                else:
                    rows.append(_Row("ort", "session", precision))
            else:
                rows.append(_Row("trt", "engine", precision))
    return rows


def _utc_now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def _mlp_ratio(model: Any) -> float:
    try:
        block = model.backbone.blocks[0]
        return float(block.mlp.c_fc.out_features) / float(model.cfg.backbone.width)
    except AttributeError:
        return MLP_RATIO


def _speedups(rows: list[dict[str, Any]]) -> None:
    """Fill each ok row's speedups against the baselines (same shots) and its score agreement with torch."""
    ok = {(r["backend"], r["variant"], r["precision"], r["shots"]): r for r in rows if r["status"] == "ok"}
    for row in rows:
        if row["status"] != "ok":
            continue
        row["speedup"] = {}
        for name, (backend, variant, precision) in BASELINES.items():
            base = ok.get((backend, variant, precision, row["shots"]))
            if base is not None:
                row["speedup"][f"vs_{name}"] = base["latency_ms"]["median"] / row["latency_ms"]["median"]
        base = ok.get(("torch", "eager", "fp32", row["shots"]))
        if base is not None and len(base["_scores"]) == len(row["_scores"]) and row["_scores"]:
            diffs = [abs(a - b) for a, b in zip(base["_scores"], row["_scores"], strict=True)]
            row["score_max_abs_diff_vs_torch_eager_fp32"] = max(diffs)
    for row in rows:
        row.pop("_scores", None)


def _peak_fraction(row: dict[str, Any], flops: FlopsBreakdown | None, peak: dict[str, Any]) -> None:
    row["peak"] = peak
    if flops is None or row["status"] != "ok" or peak.get("flops_per_s") is None:
        row["peak_fraction"] = None
        return
    if row["variant"] == "model":
        row["peak_fraction"] = None
        row["peak_fraction_note"] = "full model: its per-image text encoding is not in the FLOPs count"
        return
    engine = row["stages_ms"].get("engine", {}).get("median")
    latency = row["latency_ms"]["median"]
    out: dict[str, float | None] = {}
    if engine:
        out["engine"] = flops.engine / (engine / 1000.0) / peak["flops_per_s"]
        row["achieved_tflops_engine"] = flops.engine / (engine / 1000.0) / 1e12
    fewshot = row["stages_ms"].get("fewshot", {}).get("median")
    if fewshot and flops.fewshot:
        out["fewshot"] = flops.fewshot / (fewshot / 1000.0) / peak["flops_per_s"]
    out["end_to_end"] = flops.total / (latency / 1000.0) / peak["flops_per_s"]
    row["peak_fraction"] = out


def run_benchmark(spec: BenchSpec, work_dir: Path | None = None) -> dict[str, Any]:
    """Run the benchmark ``spec`` describes and return the result (see :mod:`fgad.bench.report`)."""
    own_tmp = work_dir is None
    work = Path(tempfile.mkdtemp(prefix="fgad-bench-")) if work_dir is None else Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    try:
        return _run(spec, work)
    finally:
        if own_tmp:
            shutil.rmtree(work, ignore_errors=True)


def _run(spec: BenchSpec, work: Path) -> dict[str, Any]:
    target = _target(spec)
    if spec.threads is not None and "torch" in spec.backends and spec.config:
        import torch

        torch.set_num_threads(spec.threads)
    max_shots = max(spec.shots)
    notes: list[str] = []
    timings: dict[str, float] = {}
    model = text = None
    cfg = None
    abnormal_prompts = 0

    # ------------------------------------------------------------ model, images and the fp32 bundle
    if spec.config is not None:
        banks: tuple[str, ...]
        if spec.images is not None:
            if not spec.class_name:
                raise ValueError("--images needs --class-name (the class whose prompts the bundle freezes)")
            workload = folder_workload(spec.images, spec.refs, spec.frames, max_shots, spec.calib)
            class_name, banks = spec.class_name, ()
        else:
            class_name, banks = SYNTHETIC_CLASS, ("synthetic",)
        from fgad.bench.bundles import build_random_model, export_bundle

        t0 = time.perf_counter()
        model = build_random_model(spec.config, spec.image_size, spec.seed, banks)
        timings["build_model_s"] = time.perf_counter() - t0
        cfg = model.cfg
        if spec.images is None:
            workload = synthetic_workload(work / "data", cfg.backbone.image_size, spec.frames, max_shots,
                                          calib=spec.calib_limit or 16, seed=spec.seed)
        bundle = work / "bundle-fp32"
        if any(b in BUNDLE_BACKENDS for b in spec.backends):
            t0 = time.perf_counter()
            bundle = export_bundle(model, class_name, workload.refs, bundle, deform=spec.deform)
            timings["export_s"] = time.perf_counter() - t0
        else:  # the torch rows run the model itself: an ONNX export (minutes at ViT-L size) would be unused
            notes.append("no bundle exported: only the torch backend was asked for")
        from fgad.export.bundle import load_reference_images
        from fgad.methods.filo.frozen_text import freeze_text

        ref_tensor = load_reference_images(workload.refs, cfg) if workload.refs else None
        text = freeze_text(model, class_name, ref_tensor)
        abnormal_prompts = text.num_abnormal
        source = {"mode": "config", "config": spec.config, "model": cfg.backbone.model_name,
                  "image_size": cfg.backbone.image_size, "class_name": class_name,
                  "weights": f"random (init_seed {cfg.backbone.init_seed}, head seed {spec.seed})",
                  "deform": spec.deform}
    else:
        assert spec.bundle is not None
        bundle = Path(spec.bundle)
        from fgad.bundle import load_manifest

        manifest = load_manifest(bundle)
        size = manifest.input.size
        if spec.image_size is not None and spec.image_size != size:
            raise ValueError(f"--image-size {spec.image_size}: the bundle's input size is {size} (fixed at export); "
                             "re-export it with fgad-export --image-size")
        class_name = manifest.class_name
        if spec.images is not None:
            workload = folder_workload(spec.images, spec.refs, spec.frames, max_shots, spec.calib)
        else:
            workload = synthetic_workload(work / "data", size, spec.frames, max_shots,
                                          calib=spec.calib_limit or 16, seed=spec.seed)
            notes.append(f"frames are synthetic '{SYNTHETIC_CLASS}' images, not of the bundle's class "
                         f"'{class_name}': latency does not depend on the content")
        raw = _manifest_raw(bundle)
        cfg, why = _bundle_config(raw, size)
        if cfg is None:
            notes.append(f"no FLOPs: {why}")
        abnormal_prompts = int(raw.get("text", {}).get("num_abnormal") or 0)
        source = {"mode": "bundle", "bundle": str(bundle), "config": raw.get("model", {}).get("config"),
                  "model": raw.get("model", {}).get("backbone"), "image_size": size, "class_name": class_name,
                  "weights": raw.get("model", {}).get("pretrained") or "recorded in the bundle",
                  "deform": raw.get("deform")}
    source["workload"] = workload.description

    # ------------------------------------------------------------ runners
    rows_plan = plan_rows(spec, target)
    runners: dict[str, Any] = {}
    prepared: dict[str, tuple[Path | None, str | None]] = {}
    for row in rows_plan:
        if row.reason is not None:
            continue
        try:
            runners[row.key] = _make_runner(row, spec, target, model, text, class_name, bundle, workload, work,
                                            timings, prepared)
        except _Skip as skip:
            row.reason = str(skip)
        except Exception as exc:  # one configuration failing to set up is a result, not the end of the run
            log.warning("%s: set-up failed: %s", row.key, exc)
            row.failure = f"set-up failed: {type(exc).__name__}: {str(exc).strip()[:300]}"

    # ------------------------------------------------------------ timing, per shot count
    settings = HarnessSettings(frames=spec.frames, warmup=spec.warmup, batch=spec.batch)
    device = device_record(target)
    cpu = cpu_info()
    if spec.threads is not None:  # the peak of the cores the run may use
        cpu = dataclasses.replace(cpu, cores=min(cpu.cores, spec.threads))
    peaks = {p: peak_for(device, p, spec.peak_tflops, cpu=cpu).to_dict() for p in spec.precisions}
    flops_by_shots: dict[int, FlopsBreakdown] = {}
    rows: list[dict[str, Any]] = []
    for shots in spec.shots:
        refs = workload.refs[:shots]
        if shots > len(workload.refs):
            raise ValueError(f"--shots {shots}: only {len(workload.refs)} reference images are available")
        active: dict[str, Any] = {}
        failed: dict[str, str] = {}
        for key, runner in runners.items():
            try:
                runner.set_references(refs)
                active[key] = runner
            except Exception as exc:  # recorded as the row's failure
                failed[key] = f"setting {shots} references failed: {type(exc).__name__}: {exc}"
        measured = measure(active, workload.frames, settings, progress=spec.progress, desc=f"{shots}-shot")
        if cfg is not None:
            flops_by_shots[shots] = model_flops(cfg, shots=shots, batch=spec.batch, abnormal_prompts=abnormal_prompts,
                                                mlp_ratio=_mlp_ratio(model) if model is not None else MLP_RATIO)
        for plan in rows_plan:
            rows.append(_row_dict(plan, shots, target, measured.get(plan.key), failed.get(plan.key), runners))
    _speedups(rows)
    for row_dict in rows:
        _peak_fraction(row_dict, flops_by_shots.get(row_dict["shots"]), peaks[row_dict["precision"]])

    return {
        "schema": SCHEMA,
        "created": _utc_now(),
        "command": spec.command,
        "git": git_commit(),
        "source": source,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(spec).items()
                     if k not in ("command", "progress")},
        "device": device,
        "peaks": peaks,
        "flops": {str(k): v.to_dict() for k, v in flops_by_shots.items()},
        "preparation_seconds": timings,
        "rows": rows,
        "notes": notes,
    }


class _Skip(Exception):
    """A configuration that cannot run here; the message is the recorded reason."""


def _manifest_raw(bundle: Path) -> dict[str, Any]:
    import json

    return json.loads((Path(bundle) / "manifest.json").read_text())


def _bundle_config(raw: dict[str, Any], size: int) -> tuple[Any, str]:
    from fgad.config import ConfigError, load_config

    name = raw.get("model", {}).get("config")
    if not name:
        return None, "the manifest names no model config"
    try:
        return load_config(name, {"model": {"backbone": {"image_size": size}}}).model, ""
    except (ConfigError, OSError) as exc:
        return None, f"config {name!r} of the bundle cannot be loaded here ({exc})"


def _make_runner(row: _Row, spec: BenchSpec, target: str, model: Any, text: Any, class_name: str, bundle: Path,
                 workload: Workload, work: Path, timings: dict[str, float],
                 prepared: dict[str, tuple[Path | None, str | None]]) -> Any:
    from fgad.bench import runners

    if row.backend == "torch":
        if row.variant == "model":
            return runners.TorchModelRunner(model, class_name, device=target)
        if row.variant == "compile":
            import torch

            if not hasattr(torch, "compile"):
                raise _Skip("torch.compile is not available in this torch")
        return runners.TorchGraphRunner(model, text, device=target, precision=row.precision,
                                        compile=row.variant == "compile")
    from fgad.bench.bundles import int8_bundle, tensorrt_bundle
    from fgad.runtime.pipeline import Detector

    if row.backend == "trt":
        path, reason = tensorrt_bundle(bundle, work / f"bundle-trt-{row.precision}", row.precision,
                                       workload.calib_dir, spec.calib_limit)
        if path is None:
            raise _Skip(reason)
        if row.precision == "int8":
            row.extra["calibration"] = workload.description.get("calibration")
        detector = Detector.from_bundle(path, backend="tensorrt", threads=spec.threads)
    else:
        path = bundle
        if row.precision == "int8":
            if "int8" not in prepared:  # quantized once
                t0 = time.perf_counter()
                prepared["int8"] = int8_bundle(bundle, work / "bundle-int8", workload.calib_dir,
                                               method=spec.calib_method, limit=spec.calib_limit)
                timings["quantize_s"] = time.perf_counter() - t0
            quantized, reason = prepared["int8"]
            if quantized is None:
                raise _Skip(reason)
            path = quantized
            row.extra["calibration"] = workload.description.get("calibration")
        detector = Detector.from_bundle(path, backend="onnxruntime", threads=spec.threads)
    row.extra["providers"] = getattr(detector.backend, "providers", None)
    return runners.DetectorRunner(detector, row.key)


def _row_dict(plan: _Row, shots: int, target: str, measured: Measurement | None, failed: str | None,
              runners: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"id": f"{plan.key}-{shots}shot", "backend": plan.backend, "variant": plan.variant,
                           "precision": plan.precision, "shots": shots, **plan.extra}
    if plan.reason is not None:
        return {**row, "status": "skipped", "reason": plan.reason}
    failed = plan.failure or failed
    if failed is not None:
        return {**row, "status": "failed", "reason": failed}
    if measured is None or measured.error is not None:
        return {**row, "status": "failed", "reason": measured.error if measured else "not measured"}
    runner = runners.get(plan.key)
    return {**row, "status": "ok", "reason": None, "device": getattr(runner, "device", target),
            **measured.summary(), "_scores": list(measured.scores)}
