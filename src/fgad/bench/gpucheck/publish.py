"""File a ``make gpu-check`` result under ``benchmarks/results/h200/`` and regenerate the results README.

    python -m fgad.bench.gpucheck.publish --from OUT_DIR            # the files a device call brought back

Writes ``h200/<config>/bench.json`` (collected into the README like every bench result) with a NOTE.md
naming the commit and date of the run, ``h200/{kernels,knn,fp16,summary}.json``, the log, and
``h200/gpu_check.md`` (the summary table, collected after the other tables). A later run replaces the
earlier one (git keeps the history). Dry runs are refused: a GPU number comes only from a GPU.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import click

from fgad.bench.gpucheck.results import LOG_FILE, SUMMARY_FILE, load_json, summary_table
from fgad.core.atomic import atomic_write_text

__all__ = ["publish"]

RESULTS = Path("benchmarks/results")
EXTRA_FILES = ("kernels.json", "knn.json", "fp16.json", SUMMARY_FILE, LOG_FILE)


def _stamp(summary: dict[str, Any]) -> str:
    git = summary.get("git") or {}
    commit = git.get("commit") or "unknown commit (pass GPU_CHECK_COMMIT=<sha> to make gpu-check)"
    dirty = " (with uncommitted changes)" if git.get("dirty") else ""
    gpu = (summary.get("device") or {}).get("gpu") or {}
    verdict = "PASS" if not summary.get("failures") else "FAIL: " + "; ".join(summary["failures"])
    return (f"`make gpu-check` run of {summary.get('created')}, commit {commit}{dirty}, on {gpu.get('name')} "
            f"(driver {gpu.get('driver')}, CUDA {gpu.get('cuda')}). Verdict: {verdict}.")


def publish(source: Path, results: Path = RESULTS, dest_name: str = "h200") -> list[Path]:
    """Copy a check's files from ``source`` into ``results/dest_name`` and regenerate ``results/README.md``."""
    from fgad.bench.report import collect

    summary = load_json(source / SUMMARY_FILE)
    if summary is None:
        raise click.ClickException(f"{source}: no {SUMMARY_FILE}; is this the folder a gpu-check wrote?")
    if summary.get("dry"):
        raise click.ClickException(f"{source} holds a dry run (no GPU): only GPU runs are published")
    dest = results / dest_name
    dest.mkdir(parents=True, exist_ok=True)
    stamp = _stamp(summary)
    written = []
    for path in sorted(source.glob("bench-*.json")):
        folder = dest / path.stem.removeprefix("bench-")
        folder.mkdir(exist_ok=True)
        shutil.copyfile(path, folder / "bench.json")
        atomic_write_text(folder / "NOTE.md", stamp + "\n")
        written.append(folder / "bench.json")
    for name in EXTRA_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, dest / name)
            written.append(dest / name)
    table = "\n".join("    " + line for line in summary_table(summary).splitlines())
    atomic_write_text(dest / "gpu_check.md", f"# GPU check ({dest_name})\n\n{stamp}\n\n{table}\n")
    written.append(dest / "gpu_check.md")
    atomic_write_text(results / "README.md", collect(results))
    return written


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--from", "source", required=True, type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="The folder of a gpu-check's result files.")
@click.option("--results", type=click.Path(path_type=Path, file_okay=False), default=RESULTS, show_default=True)
@click.option("--name", "dest_name", default="h200", show_default=True, help="Subfolder of --results.")
def main(source: Path, results: Path, dest_name: str) -> None:
    """Publish a GPU check's results and regenerate the results README."""
    for path in publish(source, results, dest_name):
        click.echo(f"wrote {path}")
    click.echo(f"wrote {results / 'README.md'}")


if __name__ == "__main__":
    main()
