"""The fp16 story as data: how far the exported graph's maps and scores move from fp32 in fp16, and which
layers leave fp16's range.

The graph is the export module (:class:`~fgad.methods.filo.export_module.FiloExportModule`, text frozen as
in a bundle) with the runtime's few-shot search, fusion, smoothing and score, as
:class:`~fgad.bench.runners.TorchGraphRunner` runs it; ``torch.autocast`` fp16 stands in for a TensorRT
fp16 engine (TensorRT keeps the same layers' inputs in fp16; it may fuse and reorder more). For each
config, on the same synthetic frames with 0 and 4 shots:

* **distances**: max and mean |map_low - map_fp32|, max |score_low - score_fp32|, non-finite values;
* **overflow_fp16**: modules whose fp32 outputs exceed fp16's largest finite value (65504): an fp16
  engine that stores those activations in fp16 overflows there (name them to keep them fp32);
* **headroom**: every module's fp32 max |output| divided by 65504, the ten closest to overflowing;
* **non_finite_modules**: modules whose low-precision outputs hold inf/NaN.

Module hooks see ``nn.Module`` outputs; functional ops inside a module (attention's ``q k^T``) are
covered by their module's output only.

    python -m fgad.bench.gpucheck.fp16 --json fp16.json --config vitb16-224 --config filo-vitl14-336@518
    python -m fgad.bench.gpucheck.fp16 --json fp16.json --config tiny-test --device cpu   # dry run (bf16)
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

__all__ = ["FP16_MAX", "LayerRecorder", "parse_config", "study"]

FP16_MAX = 65504.0


def parse_config(text: str) -> tuple[str, int | None]:
    """``name`` or ``name@size`` -> (name, size or None)."""
    name, _, size = text.partition("@")
    return name, int(size) if size else None


class LayerRecorder:
    """Forward hooks on every leaf module: per precision, the max |output| and the modules with inf/NaN outputs.

    Set :attr:`current` to the precision whose forward runs next; several runners may share modules (on the
    CPU they share the model's), so one recorder serves all of them and hooks each module once.
    """

    def __init__(self) -> None:
        self.current = "fp32"
        self.max_abs: dict[str, dict[str, float]] = {}
        self.non_finite: dict[str, set[str]] = {}
        self._hooked: set[int] = set()
        self._handles: list[Any] = []

    def attach(self, module: Any) -> None:
        for name, m in module.named_modules():
            if name and id(m) not in self._hooked and not any(True for _ in m.children()):
                self._hooked.add(id(m))
                self._handles.append(m.register_forward_hook(self._hook(name)))

    def _hook(self, name: str) -> Any:
        def hook(_module: Any, _inputs: Any, output: Any) -> None:
            import torch

            outs = output if isinstance(output, (tuple, list)) else (output,)
            for out in outs:
                if not isinstance(out, torch.Tensor) or not out.is_floating_point() or out.numel() == 0:
                    continue
                finite = torch.isfinite(out)
                if not bool(finite.all()):
                    self.non_finite.setdefault(self.current, set()).add(name)
                value = float(out.detach().abs().where(finite, 0).amax())
                table = self.max_abs.setdefault(self.current, {})
                table[name] = max(table.get(name, 0.0), value)
        return hook

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def _distances(ref: tuple[Any, Any], low: tuple[Any, Any]) -> dict[str, Any]:
    import torch

    (map_ref, score_ref), (map_low, score_low) = ref, low
    non_finite = int((~torch.isfinite(map_low)).sum()) + int((~torch.isfinite(score_low)).sum())
    dmap = (map_low - map_ref).abs()
    span = float(map_ref.amax() - map_ref.amin())
    return {"map_max_abs": float(dmap.nan_to_num(math.inf).amax()), "map_mean_abs": float(dmap.nan_to_num(0).mean()),
            "map_range_fp32": span, "score_max_abs": float((score_low - score_ref).abs().nan_to_num(math.inf).amax()),
            "non_finite": non_finite}


def study(config: str, image_size: int | None, device: str, precisions: Sequence[str], frames: int = 4,
          shots: int = 4, seed: int = 0) -> dict[str, Any]:
    """fp32 against each of ``precisions`` for one config (see the module docstring)."""
    import torch

    from fgad.bench.bundles import build_random_model
    from fgad.bench.runners import TorchGraphRunner
    from fgad.bench.workload import SYNTHETIC_CLASS, synthetic_workload
    from fgad.core.io import read_image
    from fgad.methods.filo.frozen_text import freeze_text

    model = build_random_model(config, image_size, seed, ("synthetic",))
    text = freeze_text(model, SYNTHETIC_CLASS, None)
    size = model.cfg.backbone.image_size
    with tempfile.TemporaryDirectory(prefix="fgad-fp16-") as tmp:
        work = synthetic_workload(Path(tmp), size, frames, shots, calib=1, seed=seed)
        runners = {p: TorchGraphRunner(model, text, device=device, precision=p) for p in ("fp32", *precisions)}
        x = runners["fp32"]._batch([read_image(p) for p in work.frames])
        recorder = LayerRecorder()
        for runner in runners.values():
            recorder.attach(runner.module)
        outputs: dict[int, dict[str, tuple[Any, Any]]] = {}
        for k in (0, shots):
            outputs[k] = {}
            for p, runner in runners.items():
                recorder.current = p
                runner.set_references(work.refs[:k])
                outputs[k][p] = runner.forward(x)
        recorder.close()
    fp32 = recorder.max_abs["fp32"]
    headroom = sorted(((v / FP16_MAX, n) for n, v in fp32.items()), reverse=True)[:10]
    result: dict[str, Any] = {
        "config": f"{config}@{size}", "device": device, "frames": frames, "shots": [0, shots],
        "stand_in": "torch.autocast (fp32 weights; matmuls and convolutions in the low precision)",
        "distances": {f"{p} {k}-shot": _distances(outputs[k]["fp32"], outputs[k][p])
                      for k in outputs for p in precisions},
        "overflow_fp16": sorted(n for n, v in fp32.items() if v > FP16_MAX),
        "headroom": [{"module": n, "fp32_max_abs": fp32[n], "fraction_of_fp16_max": f} for f, n in headroom],
        "non_finite_modules": {p: sorted(recorder.non_finite.get(p, ())) for p in precisions},
        "modules_hooked": len(fp32),
    }
    del runners, model
    if device == "cuda":
        torch.cuda.empty_cache()
    return result


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--json", "json_path", required=True, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--config", "configs", multiple=True, required=True, help="name or name@image_size (repeatable).")
@click.option("--device", type=click.Choice(["cuda", "cpu"]), default="cuda", show_default=True)
@click.option("--frames", type=click.IntRange(min=1), default=4, show_default=True)
def main(json_path: Path, configs: tuple[str, ...], device: str, frames: int) -> None:
    """Distances of fp16 (and bf16) from fp32 for each config; the layers that overflow in fp16."""
    from fgad.core.atomic import atomic_write_json

    precisions = ("fp16", "bf16") if device == "cuda" else ("bf16",)
    out: dict[str, Any] = {"precisions": list(precisions), "configs": []}
    for text in configs:
        name, size = parse_config(text)
        click.echo(f"{text}: fp32 vs {', '.join(precisions)} on {device}")
        result = study(name, size, device, precisions, frames=frames)
        out["configs"].append(result)
        atomic_write_json(json_path, out)  # what is done so far survives a timeout
        for key, d in result["distances"].items():
            click.echo(f"  {key}: map max|d| {d['map_max_abs']:.3g} (range {d['map_range_fp32']:.3g}), "
                       f"score max|d| {d['score_max_abs']:.3g}, non-finite {d['non_finite']}")
        click.echo(f"  over fp16's range in fp32: {', '.join(result['overflow_fp16']) or 'none'}; "
                   f"closest: {result['headroom'][0]['module'] if result['headroom'] else '-'}")


if __name__ == "__main__":
    main()
