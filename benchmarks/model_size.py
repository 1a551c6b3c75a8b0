"""Parameter count by part, and one timed forward, for a model variant with random weights.

    python benchmarks/model_size.py --config filo-vitl14-336 --out benchmarks/results/cpu/model_size_vitl14_518.json

Random weights (no download): this measures size and plumbing, not accuracy.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import torch


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="filo-vitl14-336")
    parser.add_argument("--class-name", default="bottle")
    parser.add_argument("--image-size", type=int, default=None, help="override backbone.image_size")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    logging.getLogger("root").setLevel(logging.ERROR)

    from fgad.config import load_config
    from fgad.core.atomic import atomic_write_json
    from fgad.methods.filo.build import build_model

    overrides = {"model": {"backbone": {"pretrained": None}}}
    if args.image_size:
        overrides["model"]["backbone"]["image_size"] = args.image_size
    cfg = load_config(args.config, overrides).model
    t0 = time.perf_counter()
    model = build_model(cfg).eval()
    build_s = time.perf_counter() - t0

    parts = {
        "image_encoder": count(model.backbone),
        "text_encoder": count(model.text_encoder),
        "prompt_learner": sum(
            p.numel() for n, p in model.prompts.named_parameters() if not n.startswith("text_encoder.")
        ),
        "linear_heads": count(model.linear_heads),
        "mdci": count(model.mdci),
        "mdci_main_weights": sum(k.weight.numel() for s in model.mdci.stages for k in s.kernels),
        "adapter": count(model.adapter) if model.adapter is not None else 0,
    }
    total = sum(v for k, v in parts.items() if k != "mdci_main_weights")
    s = cfg.backbone.image_size
    x = torch.randn(1, 3, s, s, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        t0 = time.perf_counter()
        out = model(x, args.class_name)
        forward_s = time.perf_counter() - t0
    result = {
        "config": args.config,
        "image_size": s,
        "grid": cfg.backbone.grid,
        "parameters": parts,
        "total_parameters": total,
        "mdci_share_of_total": parts["mdci"] / total,
        "build_seconds": build_s,
        "forward_seconds_batch1": forward_s,
        "anomaly_map_shape": list(out.anomaly_map.shape),
        "image_score": float(out.image_score[0]),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
