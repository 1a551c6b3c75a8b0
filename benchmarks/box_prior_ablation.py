"""What each DefLoc box prior buys: accuracy (fgad.evaluation) and latency next to the rest of the pipeline.

    python benchmarks/box_prior_ablation.py --data ../shared/data/magnetic_tile --class-name magnetic_tile \
        --config tiny-test --max-images 40 --shots 2 --frames 10 \
        --out benchmarks/results/cpu/box_prior_ablation_tiny
    python benchmarks/box_prior_ablation.py --data ../shared/data/magnetic_tile --class-name magnetic_tile \
        --config vitb16-224 --max-images 120 --shots 2 --frames 20 --gdino-arch swin-t \
        --out benchmarks/results/cpu/box_prior_ablation_vitb16_224

For each prior (``none``, ``objectness``, ``grounding-dino``), one process and the same images:

* accuracy: image AUROC, pixel AUROC, AUPRO (and F1-max) of ``fgad.evaluation.evaluate_class`` with that
  prior, k-shot with the same reference images;
* latency, ONNX Runtime on the CPU, batch 1, medians over the same frames, interleaved after a warm-up:
  the torch-free runtime (``Detector``: preprocess, graph, few-shot search, smoothing) on a bundle without a
  prior and on one with ``objectness`` in the graph; the objectness cost is the difference of the two graph
  times. Grounding DINO runs as its own ONNX graph (its exporter permitting; else its PyTorch time is
  reported and said so), timed on the detector's input at ``post.grounding.image_size``, plus its
  box selection in Python.

Weights: without ``--pretrained`` the CLIP model is randomly initialised, and without ``--box-model`` the
detector is a randomly initialised Grounding DINO (``--gdino-arch tiny``: a toy; ``swin-t``: the Swin-T /
BERT-base architecture of the released detector, so its latency and size are real). Accuracies are then
those of random models: this is plumbing, not a result.
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

PRIORS = ("none", "objectness", "grounding-dino")
METRICS = ("image_auroc", "pixel_auroc", "aupro", "image_f1_max", "pixel_f1_max")


def _swin_t_grounding_dino(folder: Path) -> tuple[Any, Any]:
    """Grounding DINO with the released Swin-T / BERT-base architecture, random weights (latency, size)."""
    from fgad.backbone.compat import import_grounding_dino

    import_grounding_dino()
    import torch
    from transformers import BertTokenizer, GroundingDinoConfig, GroundingDinoForObjectDetection

    from fgad.methods.filo.priors.grounding import _tiny_vocab

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(_tiny_vocab(())) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer.from_pretrained(str(folder))
    config = GroundingDinoConfig(disable_custom_kernels=True)  # swin-tiny + bert-base, 900 queries, 256 tokens
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        detector = GroundingDinoForObjectDetection(config)
    return detector.eval(), tokenizer


def _detector_folder(args: argparse.Namespace, work: Path) -> str:
    """--box-model, or a random detector saved in transformers format (so the real loading path runs)."""
    if args.box_model:
        return str(args.box_model)
    from fgad.methods.filo.priors.grounding import tiny_random_grounding_dino

    folder = work / f"gdino-{args.gdino_arch}"
    if args.gdino_arch == "tiny":
        detector, tokenizer = tiny_random_grounding_dino(folder / "vocab", seed=0)
    else:
        detector, tokenizer = _swin_t_grounding_dino(folder / "vocab")
    detector.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def _file_mb(path: Path) -> float:
    total = path.stat().st_size
    data = path.with_name(path.name + ".data")
    if data.exists():
        total += data.stat().st_size
    return total / 1e6


def _median_ms(values: list[float]) -> float:
    return 1000.0 * statistics.median(values) if values else float("nan")


def _evaluate(model: Any, args: argparse.Namespace, prior: str, box_model: str | None) -> tuple[dict, dict]:
    from fgad.evaluation import EvalSettings, evaluate_class

    settings = EvalSettings(shots=args.shots, seed=args.seed, batch_size=args.batch_size, num_overlays=0,
                            box_prior=prior, box_model=box_model if prior == "grounding-dino" else None,
                            max_images=args.max_images)
    metrics, predictions, info = evaluate_class(model, args.data, args.class_name, settings, out_dir=None)
    cells: dict[str, int] = {}
    for p in predictions:
        if "position" in p:
            cells[p["position"]] = cells.get(p["position"], 0) + 1
    info = {**info, "positions_chosen": cells}
    return {k: float(metrics[k]) for k in METRICS if k in metrics}, info


def main() -> None:  # noqa: C901 - one measurement script, kept in one place
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="MVTec-layout root")
    parser.add_argument("--class-name", required=True)
    parser.add_argument("--config", default="tiny-test")
    parser.add_argument("--pretrained", default=None, help="CLIP weights (default: random init)")
    parser.add_argument("--box-model", default=None, help="Grounding DINO model id or folder (default: random)")
    parser.add_argument("--gdino-arch", choices=("tiny", "swin-t"), default="tiny",
                        help="architecture of the random detector when --box-model is not given")
    parser.add_argument("--priors", default=",".join(PRIORS))
    parser.add_argument("--shots", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-images", type=int, default=40, help="test images (spread over defect types)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--frames", type=int, default=10, help="frames timed per path")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="graph-with / graph-without pairs per frame")
    parser.add_argument("--out", type=Path, required=True, help="folder for box_prior_ablation.{json,md}")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("onnxscript", "onnx_ir", "torch.onnx", "torch.export", "torch._export", "root"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    priors = [p.strip() for p in args.priors.split(",") if p.strip()]
    unknown = sorted(set(priors) - set(PRIORS))
    if unknown:
        parser.error(f"--priors: unknown {unknown}; use {list(PRIORS)}")

    import torch
    from tqdm import tqdm

    from fgad.config import load_config
    from fgad.core.atomic import atomic_write_json, atomic_write_text
    from fgad.core.io import read_image
    from fgad.data.datasets import discover
    from fgad.evaluation import _subsample, choose_shots
    from fgad.export.bundle import export_bundle
    from fgad.methods.filo.build import build_model
    from fgad.methods.filo.priors.grounding import GroundingDinoPrior, export_grounding_onnx
    from fgad.runtime.pipeline import Detector

    overrides = {"model": {"backbone": {"pretrained": args.pretrained}}}
    cfg = load_config(args.config, overrides).model
    model = build_model(cfg, pretrained=args.pretrained or "none").eval()
    work = Path(tempfile.mkdtemp(prefix="box_prior_ablation_"))
    box_model = _detector_folder(args, work) if "grounding-dino" in priors else None

    # ------------------------------------------------------------------ accuracy
    accuracy: dict[str, Any] = {}
    for prior in priors:
        started = time.perf_counter()
        with torch.no_grad():
            metrics, info = _evaluate(model, args, prior, box_model)
        accuracy[prior] = {"metrics": metrics, "seconds": time.perf_counter() - started,
                           "images": info["images"], "positions_chosen": info["positions_chosen"]}
        print(f"{prior}: {metrics}", flush=True)
    model.clear_memory()

    # ------------------------------------------------------------------ latency
    train_good = discover(args.data, "train", [args.class_name])
    refs = [train_good[i].image_path for i in choose_shots(train_good, args.shots, args.seed)]
    tests = _subsample(discover(args.data, "test", [args.class_name]), args.frames + args.warmup)
    frames = [read_image(s.image_path) for s in tests]
    detectors: dict[str, Any] = {}
    export_s: dict[str, float] = {}
    for prior in [p for p in ("none", "objectness") if p in priors or p == "none"]:
        started = time.perf_counter()
        bundle = export_bundle(work / f"bundle-{prior}", model, cfg, args.class_name, refs, box_prior=prior)
        export_s[prior] = time.perf_counter() - started
        detectors[prior] = Detector.from_bundle(bundle)
    gdino: dict[str, Any] = {}
    gdino_session = gdino_prior = None
    if "grounding-dino" in priors:
        assert box_model is not None
        gdino_prior = GroundingDinoPrior.from_pretrained(box_model, cfg.post.grounding, cfg.backbone)
        gdino["parameters_m"] = sum(p.numel() for p in gdino_prior.detector.parameters()) / 1e6
        started = time.perf_counter()
        try:
            path = export_grounding_onnx(gdino_prior, args.class_name, work / "grounding_dino.onnx")
        except Exception as err:  # the exporter raises many types; the report says which and falls back to torch
            gdino.update(exported=False, export_error=f"{type(err).__name__}: {str(err).splitlines()[0][:300]}")
        else:
            import onnxruntime as ort

            gdino.update(exported=True, onnx_mb=round(_file_mb(path), 2),
                         export_seconds=round(time.perf_counter() - started, 1))
            gdino_session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    bb = cfg.backbone
    from fgad.core.transforms import preprocess

    def run_gdino(frame: np.ndarray) -> tuple[float, float]:
        """(detector seconds, box selection seconds) for one frame."""
        assert gdino_prior is not None
        x = torch.from_numpy(preprocess(frame, bb.image_size, bb.mean, bb.std))[None]
        pixels = gdino_prior.pixel_values(x)
        t0 = time.perf_counter()
        if gdino_session is not None:
            probs, boxes = (torch.from_numpy(a) for a in gdino_session.run(["probs", "boxes"],
                                                                           {"pixel_values": pixels.numpy()}))
        else:
            with torch.no_grad():
                probs, boxes = gdino_prior.detect(x, args.class_name)
        t1 = time.perf_counter()
        gdino_prior.select(probs, boxes, args.class_name)
        return t1 - t0, time.perf_counter() - t1

    def run_graph(prior: str, frame: np.ndarray) -> float:
        """Seconds of one call of the bundle's graph, asking for the outputs the Detector asks for."""
        det = detectors[prior]
        spec = det.manifest.input
        batch = preprocess(frame, spec.size, spec.mean, spec.std)[None]
        names = ["vl_map", "global_prob", "best_description", *det._token_names(), *det._prior_names()]
        t0 = time.perf_counter()
        det.backend.run(batch, names)
        return time.perf_counter() - t0

    stages: dict[str, dict[str, list[float]]] = {p: {} for p in detectors}
    totals: dict[str, list[float]] = {p: [] for p in detectors}
    graph: dict[str, list[float]] = {p: [] for p in detectors}
    paired: list[float] = []  # graph with objectness minus graph without, same frame, back to back
    gd_times: dict[str, list[float]] = {"detector": [], "selection": []}
    for i, frame in enumerate(tqdm(frames, desc="latency", leave=False)):
        timed = i >= args.warmup
        for prior, det in detectors.items():
            t0 = time.perf_counter()
            result = det(frame)
            if timed:
                totals[prior].append(time.perf_counter() - t0)
                for stage, ms in result.timings.items():
                    stages[prior].setdefault(stage, []).append(ms / 1000.0)
        for r in range(args.repeats):  # alternate the order so that neither graph always runs second
            order = list(detectors) if r % 2 == 0 else list(reversed(detectors))
            times = {prior: run_graph(prior, frame) for prior in order}
            if timed:
                for prior, t in times.items():
                    graph[prior].append(t)
                if "objectness" in times:
                    paired.append(times["objectness"] - times["none"])
        if gdino_prior is not None:
            d, s = run_gdino(frame)
            if timed:
                gd_times["detector"].append(d)
                gd_times["selection"].append(s)

    base_total = _median_ms(totals["none"])
    latency: dict[str, Any] = {"pipeline_none_ms": base_total, "graph_none_ms": _median_ms(graph["none"]),
                               "graph_none_min_ms": 1000.0 * min(graph["none"]),
                               "stages_none_ms": {k: _median_ms(v) for k, v in stages["none"].items()}}
    prior_cost: dict[str, Any] = {"none": {"extra_ms": 0.0, "relative_to_pipeline": 0.0, "how": "-"}}
    if "objectness" in detectors:
        extra = _median_ms(paired)
        prior_cost["objectness"] = {
            "extra_ms": extra, "relative_to_pipeline": extra / base_total,
            "graph_with_ms": _median_ms(graph["objectness"]), "graph_with_min_ms": 1000.0 * min(graph["objectness"]),
            "extra_min_ms": 1000.0 * (min(graph["objectness"]) - min(graph["none"])),
            "pipeline_with_ms": _median_ms(totals["objectness"]),
            "how": "median over back-to-back pairs of ONNX Runtime graph time with the prior minus without",
        }
    if gdino_prior is not None:
        extra = _median_ms(gd_times["detector"]) + _median_ms(gd_times["selection"])
        prior_cost["grounding-dino"] = {
            "extra_ms": extra, "relative_to_pipeline": extra / base_total,
            "detector_ms": _median_ms(gd_times["detector"]), "selection_ms": _median_ms(gd_times["selection"]),
            "how": ("its own ONNX graph in ONNX Runtime" if gdino_session is not None else "PyTorch (ONNX export "
                    "failed)") + f" at {cfg.post.grounding.image_size} px, plus the box selection in Python",
            **gdino,
        }
    result = {
        "class": args.class_name,
        "data": str(args.data),
        "config": args.config,
        "image_size": bb.image_size,
        "pretrained": args.pretrained,
        "detector": args.box_model or f"random {args.gdino_arch} Grounding DINO",
        "note": "random weights unless --pretrained/--box-model: accuracies are plumbing, not results",
        "shots": args.shots,
        "accuracy": accuracy,
        "latency": latency,
        "prior_cost": prior_cost,
        "frames_timed": len(totals["none"]),
        "graph_pairs_timed": len(paired),
        "bundle_export_seconds": export_s,
        "torch": torch.__version__,
        "onnxruntime": __import__("onnxruntime").__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "box_prior_ablation.json", result)
    atomic_write_text(args.out / "box_prior_ablation.md", _markdown(result))
    print(_markdown(result))


def _markdown(r: dict[str, Any]) -> str:
    nan = float("nan")
    lines = [
        f"# Box priors on {r['class']} ({r['config']}, {r['image_size']} px, {r['shots']}-shot)",
        "",
        f"CLIP weights: {r['pretrained'] or 'random'}; detector: {r['detector']}. {r['note']}.",
        "",
        "| prior | image AUROC | pixel AUROC | AUPRO | extra latency (ms) | vs pipeline | how |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for prior, acc in r["accuracy"].items():
        m = acc["metrics"]
        cost = r["prior_cost"].get(prior, {})
        lines.append(
            f"| {prior} | {100 * m.get('image_auroc', nan):.1f} | {100 * m.get('pixel_auroc', nan):.1f}"
            f" | {100 * m.get('aupro', nan):.1f} | {cost.get('extra_ms', nan):.2f}"
            f" | {100 * cost.get('relative_to_pipeline', nan):.1f} % | {cost.get('how', '')} |"
        )
    lat = r["latency"]
    stages = ", ".join(f"{k} {v:.1f}" for k, v in lat["stages_none_ms"].items())
    lines += [
        "",
        f"Pipeline without a prior (ONNX Runtime CPU, batch 1, median of {r['frames_timed']} frames): "
        f"{lat['pipeline_none_ms']:.1f} ms (stages: {stages});"
        f" the graph alone {lat['graph_none_ms']:.1f} ms (fastest {lat['graph_none_min_ms']:.1f} ms).",
    ]
    gd = r["prior_cost"].get("grounding-dino")
    if gd:
        size = f", {gd['onnx_mb']} MB ONNX" if gd.get("exported") else f"; ONNX export failed: {gd.get('export_error')}"
        lines.append(f"Grounding DINO: {gd['parameters_m']:.1f} M parameters{size}.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
