"""fgad-triton: write or update a Triton Inference Server model repository from bundles (docs/fleet.md).

``fgad-triton REPO BUNDLE [BUNDLE ...]`` writes one model per product class, ``fgad_<class>``: the python form
(default; the whole torch-free pipeline inside Triton) or ``--form ensemble`` (the graph as its own
onnxruntime/TensorRT model, shared by classes with identical weights, and a python post-processing step).
A re-export writes version N+1; a bundle equal to the newest version is left alone.
"""

from __future__ import annotations

from pathlib import Path

import click

from fgad.cli.common import friendly_errors, setup_logging


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("repo", type=click.Path(path_type=Path))
@click.argument("bundles", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--form", type=click.Choice(["python", "ensemble"]), default="python", show_default=True,
              help="python: the whole pipeline in one python-backend model; ensemble: encoder model + python "
              "post step.")
@click.option("--encoder", type=click.Choice(["onnxruntime", "tensorrt", "python"]), default="onnxruntime",
              show_default=True, help="Backend of the encoder model (--form ensemble); python: onnxruntime inside "
              "the python backend, for servers without the onnxruntime backend.")
@click.option("--instances", type=click.IntRange(min=1), default=1, show_default=True,
              help="Instances per model (instance_group count).")
@click.option("--kind", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True,
              help="Instance kind (a TensorRT encoder is always gpu).")
@click.option("--max-batch", type=click.IntRange(min=1), default=None,
              help="max_batch_size; default: the engine's optimisation profile maximum, else 8.")
@click.option("--queue-delay-us", type=click.IntRange(min=0), default=2000, show_default=True,
              help="Dynamic batching: longest wait to fill a batch.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="onnxruntime CPU threads per instance.")
@click.option("--threshold", type=float, default=None, help="Decision threshold (default: the manifest's).")
@click.option("--trust", "trust", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Public key (PEM) the bundles must be signed by, checked now and, by its absolute path, by the "
              "server at every load. Repeatable.")
@click.option("--no-warmup", is_flag=True, help="Leave model_warmup out of the configs.")
@click.option("--force", is_flag=True, help="Write a new version even when the bundle equals the newest one.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging (also the libraries' INFO lines).")
@friendly_errors
def main(repo: Path, bundles: tuple[Path, ...], form: str, encoder: str, instances: int, kind: str,
         max_batch: int | None, queue_delay_us: int, threads: int | None, threshold: float | None,
         trust: tuple[Path, ...], no_warmup: bool, force: bool, verbose: bool) -> None:
    """Write or update the Triton model repository REPO from BUNDLES (one per product class)."""
    setup_logging(verbose)
    from fgad.triton.model_config import ServeSettings
    from fgad.triton.repository import write_repository

    keys = tuple(str(p.resolve()) for p in trust)
    settings = ServeSettings(instances=instances, kind=kind, max_batch=max_batch, queue_delay_us=queue_delay_us,
                             threads=threads, threshold=threshold, trust=keys, warmup=not no_warmup)
    written = write_repository(repo, list(bundles), form=form, encoder=encoder, settings=settings,
                               trust=list(keys) or None, force=force)
    for model in written:
        click.echo(f"{model.name:40s} version {model.version}: {model.action} ({model.role})")
    click.echo(f"repository {repo}: tritonserver --model-repository {repo.resolve()} (docs/fleet.md)")


if __name__ == "__main__":
    main()
