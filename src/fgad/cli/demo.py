"""fgad-demo (`make demo`): the whole pipeline on the embedded default, no downloads.

1. generates two synthetic MVTec-layout datasets: an auxiliary one (``tile``, ``disc``) to
   train on and a target one (``mesh``, a product never seen in training) to evaluate on;
2. builds the ``tiny-test`` model (a small random CLIP) and trains both phases briefly;
3. evaluates 0-shot and 2-shot on the target and prints the metrics tables;
4. exports the target product to a bundle (frozen text, ONNX, checked against PyTorch) and runs
   the torch-free runtime over the target's test images, as ``fgad-run`` would.
Overlays land in OUT/eval-*/overlays and OUT/run/overlays; runtime results in OUT/run/results.jsonl.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from fgad.cli.common import check_outputs, friendly_errors, setup_logging


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", "out_dir", default="demo_out", show_default=True, type=click.Path(path_type=Path),
              help="Folder for the datasets, checkpoints, metrics, bundle and overlays.")
@click.option("--config", "config_name", default="tiny-test", show_default=True,
              help="Model variant (built-in name or YAML file); the default needs no download.")
@click.option("--epochs", type=int, default=3, show_default=True, help="Phase-1 epochs (phase 2 gets one).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the synthetic data and the model.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show progress bars.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging (also the libraries' INFO lines).")
@friendly_errors
def main(out_dir: Path, config_name: str, epochs: int, seed: int, progress: bool, verbose: bool) -> None:
    """Synthetic parts -> train -> 0/2-shot evaluation -> tables and overlays."""
    check_outputs(("--out", out_dir, "dir"))
    setup_logging(verbose)
    import torch

    from fgad.config import load_config
    from fgad.data.synthetic import make_synthetic_dataset
    from fgad.evaluation import EvalSettings, evaluate
    from fgad.methods.filo.build import build_model
    from fgad.methods.filo.train import train

    started = time.perf_counter()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    data = out_dir / "data"
    aux, target = data / "aux", data / "target"
    if not aux.exists():
        make_synthetic_dataset(aux, classes=("tile", "disc"), n_train_good=4, n_test_good=6, n_test_defect=6,
                               image_size=160, seed=seed)
    if not target.exists():
        make_synthetic_dataset(target, classes=("mesh",), n_train_good=8, n_test_good=8, n_test_defect=4,
                               image_size=160, seed=seed + 1)
    click.echo(f"[1/4] synthetic data: {aux} (train), {target} (evaluate)")

    overrides = {
        "model": {"prompts": {"banks": ["synthetic"]}},
        "train": {"epochs_phase1": epochs, "epochs_phase2": 1, "seed": seed},
    }
    config = load_config(config_name, overrides)
    model = build_model(config.model, seed=seed)
    ckpt = out_dir / "checkpoint"
    result = train(model, config, aux, ckpt, pretrained=config.model.backbone.pretrained, resume=False,
                   progress=progress)
    curve = ", ".join(f"{r['loss']:.3f}" for r in result.losses if r["phase"] == 1)
    click.echo(f"[2/4] trained {config.model.name}: phase-1 loss per epoch {curve}; checkpoint {ckpt}")

    for shots in (0, 2):
        settings = EvalSettings(shots=shots, seed=seed, num_overlays=6, extra={"source": str(ckpt)})
        out = out_dir / f"eval-{shots}shot"
        with torch.no_grad():
            evaluate(model, target, out, None, settings, progress=progress)
        click.echo(f"\n[3/4] {shots}-shot on the unseen product ({out}):")
        click.echo((out / "metrics.md").read_text())
    _export_and_run(model, config, target, out_dir)
    seconds = time.perf_counter() - started
    click.echo(f"done in {seconds:.0f}s; overlays: {out_dir}/eval-*/overlays/, {out_dir}/run/overlays/")
    click.echo("The tiny model is random CLIP: these numbers show the pipeline works, not real accuracy.")


def _export_and_run(model, config, target: Path, out_dir: Path) -> None:  # noqa: ANN001
    """Step 4: bundle for the unseen product, then the torch-free Detector over its test images."""
    import json
    import shutil

    import numpy as np

    from fgad.core.io import read_image
    from fgad.core.metrics import image_auroc
    from fgad.data.datasets import discover
    from fgad.export.bundle import export_bundle
    from fgad.runtime.overlay import render_panel, save_image_rgb
    from fgad.runtime.pipeline import Detector

    refs = [s.image_path for s in discover(target, "train", ["mesh"])[:2]]
    bundle = out_dir / "bundle"
    if bundle.exists():
        shutil.rmtree(bundle)
    export_bundle(bundle, model, config.model, "mesh", refs)
    manifest = json.loads((bundle / "manifest.json").read_text())
    parity = manifest["parity"]
    detector = Detector.from_bundle(bundle, refs=refs, threshold="auto")  # leave-one-out over the references
    run_dir = out_dir / "run"
    (run_dir / "overlays").mkdir(parents=True, exist_ok=True)
    samples = discover(target, "test", ["mesh"])
    labels, scores, lines, latencies = [], [], [], []
    for sample in samples:
        image = read_image(sample.image_path)
        result = detector(image)
        latencies.append(sum(result.timings.values()))
        labels.append(sample.label)
        scores.append(result.score)
        lines.append(json.dumps({"frame": str(sample.image_path), **result.to_dict()}))
        panel = render_panel(image, result.anomaly_map, score=result.score,
                             label="ANOMALY" if result.is_anomalous else "ok")
        save_image_rgb(run_dir / "overlays" / f"{sample.defect_type}_{sample.image_path.stem}.png", panel)
    (run_dir / "results.jsonl").write_text("\n".join(lines) + "\n")
    auroc = 100 * image_auroc(np.array(labels), np.array(scores))
    click.echo(
        f"\n[4/4] exported {bundle} (ONNX vs PyTorch: vl_map max diff {parity['max_abs_diff_vl_map']:.1e}) "
        f"and ran the torch-free runtime on {len(samples)} images: image AUROC {auroc:.1f}, "
        f"median {np.median(latencies):.1f} ms per image, threshold {detector.threshold:.3f} (auto); "
        f"{run_dir}/results.jsonl"
    )


if __name__ == "__main__":
    main()
