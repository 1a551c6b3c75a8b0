"""Per-frame latency of the torch-free runtime (ONNX Runtime, CPU) against the PyTorch model.

    python benchmarks/runtime_latency.py --config tiny-test --class-name tile \
        --out benchmarks/results/cpu/runtime_latency_tiny.json
    python benchmarks/runtime_latency.py --config vitb16-224 --class-name magnetic_tile \
        --images ../shared/data/magnetic_tile/magnetic_tile/test \
        --refs ../shared/data/magnetic_tile/magnetic_tile/train/good \
        --out benchmarks/results/cpu/runtime_latency_vitb16_224.json

All paths run in one process on the same frames, one frame at a time (batch 1, as a camera
delivers them), after a warm-up, and report medians so that the ratios are taken on the same
machine at the same moment:

* ``torch``: the PyTorch model as trained (FiLoPlusPlus.forward: CoCoOp text encoded per image),
  with the same numpy preprocessing;
* ``torch-frozen``: the exported graph's own PyTorch module (text frozen into constants) with the
  contract's finishing steps in torch: the same computation as ``ort``, so ``torch-frozen / ort``
  is the engine's gain and ``torch / torch-frozen`` the gain of freezing the text;
* ``ort``: ``fgad.runtime.Detector`` on the bundle (preprocess, ONNX Runtime, few-shot search,
  smoothing), i.e. what ``fgad-run`` does per frame.

Random weights (``--pretrained none``): latency does not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def _frames(args: argparse.Namespace, size: int) -> tuple[list[np.ndarray], list[Path]]:
    from fgad.core.io import IMAGE_EXTENSIONS, read_image

    if args.images:
        paths = sorted(p for p in Path(args.images).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        step = max(1, len(paths) // args.frames)
        frames = [read_image(p) for p in paths[::step][: args.frames]]
        refs = sorted(p for p in Path(args.refs).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)[: args.shots]
        return frames, refs
    from fgad.data.synthetic import make_synthetic_dataset

    root = make_synthetic_dataset(Path(tempfile.mkdtemp()) / "syn", classes=(args.class_name,), n_train_good=args.shots,
                                  n_test_good=args.frames // 2, n_test_defect=max(1, args.frames // 6),
                                  image_size=max(size, 64), seed=0)
    test = sorted((root / args.class_name / "test").rglob("*.png"))[: args.frames]
    refs = sorted((root / args.class_name / "train" / "good").glob("*.png"))[: args.shots]
    return [read_image(p) for p in test], refs


def _max_diff(a: list[float], b: list[float]) -> float:
    return float(np.max(np.abs(np.array(a) - np.array(b))))


def _median_ms(values: list[float]) -> float:
    return 1000.0 * statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny-test")
    parser.add_argument("--class-name", default="tile")
    parser.add_argument("--images", default=None, help="folder of frames (default: synthetic)")
    parser.add_argument("--refs", default=None, help="folder of good reference images (with --images)")
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)

    import torch

    from fgad.config import load_config
    from fgad.core.atomic import atomic_write_json
    from fgad.core.io import read_image
    from fgad.core.transforms import preprocess
    from fgad.export.bundle import export_bundle, load_reference_images
    from fgad.methods.filo.build import build_model
    from fgad.methods.filo.export_module import FiloExportModule
    from fgad.methods.filo.frozen_text import freeze_text
    from fgad.runtime.pipeline import Detector

    banks: dict = {"model": {"prompts": {"banks": ["synthetic"]}}} if not args.images else {}
    overrides = {"model": {**banks.get("model", {}), "backbone": {"pretrained": None}}}
    cfg = load_config(args.config, overrides).model
    bb = cfg.backbone
    model = build_model(cfg).eval()
    frames, refs = _frames(args, bb.image_size)
    bundle = Path(tempfile.mkdtemp()) / "bundle"
    t0 = time.perf_counter()
    export_bundle(bundle, model, cfg, args.class_name, refs)
    export_s = time.perf_counter() - t0

    detector = Detector.from_bundle(bundle)
    ref_arrays = torch.from_numpy(np.stack([preprocess(read_image(p), bb.image_size, bb.mean, bb.std) for p in refs]))
    model.set_reference_images(ref_arrays)
    frozen = FiloExportModule(model, freeze_text(model, args.class_name, load_reference_images(refs, cfg))).eval()

    def run_torch(frame: np.ndarray) -> float:
        x = torch.from_numpy(preprocess(frame, bb.image_size, bb.mean, bb.std))[None]
        return float(model(x, args.class_name).image_score[0])

    def run_torch_frozen(frame: np.ndarray) -> float:
        x = torch.from_numpy(preprocess(frame, bb.image_size, bb.mean, bb.std))[None]
        vl, prob, *_ = frozen(x)
        few = model.fewshot_map(model.encode_images(x))
        amap = model.blur(((vl + few) / 2).unsqueeze(1))[:, 0]
        return float(0.5 * (prob + amap.flatten(1).amax(dim=1))[0])

    def run_ort(frame: np.ndarray) -> float:
        return float(detector(frame).score)

    timings: dict[str, list[float]] = {"torch": [], "torch-frozen": [], "ort": []}
    stage_ms: dict[str, list[float]] = {}
    scores: dict[str, list[float]] = {"torch": [], "torch-frozen": [], "ort": []}
    with torch.no_grad():
        for fn in (run_torch, run_torch_frozen, run_ort):
            for frame in frames[: args.warmup]:
                fn(frame)
        for frame in frames:  # interleaved, so both see the same machine state
            for name, fn in (("torch", run_torch), ("torch-frozen", run_torch_frozen), ("ort", run_ort)):
                t = time.perf_counter()
                scores[name].append(fn(frame))
                timings[name].append(time.perf_counter() - t)
            for stage, ms in detector(frame).timings.items():
                stage_ms.setdefault(stage, []).append(ms)

    med = {k: _median_ms(v) for k, v in timings.items()}
    result = {
        "config": args.config,
        "image_size": bb.image_size,
        "shots": len(refs),
        "frames": len(frames),
        "median_ms": med,
        "p90_ms": {k: 1000.0 * float(np.percentile(v, 90)) for k, v in timings.items()},
        "ort_stage_median_ms": {k: statistics.median(v) for k, v in stage_ms.items()},
        "speedup_ort_vs_torch": med["torch"] / med["ort"],
        "speedup_ort_vs_torch_frozen": med["torch-frozen"] / med["ort"],
        "speedup_frozen_text": med["torch"] / med["torch-frozen"],
        "score_max_abs_diff_torch_frozen_vs_ort": _max_diff(scores["torch-frozen"], scores["ort"]),
        "score_max_abs_diff_torch_vs_ort": _max_diff(scores["torch"], scores["ort"]),
        "note": "torch encodes the CoCoOp text per image; the bundle freezes it (see docs/bundle.md); "
        "score differences torch vs ort are the frozen-text approximation, torch-frozen vs ort the engine's",
        "export_seconds": export_s,
        "torch": torch.__version__,
        "onnxruntime": __import__("onnxruntime").__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
