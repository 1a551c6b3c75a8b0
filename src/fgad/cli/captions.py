"""fgad-captions: draft an MFSC caption record for a new product, or check record files.

``fgad-captions draft IMAGE --class-name NAME`` describes one normal image with mask-free
heuristics (and, with ``--llm-cmd``, a local language model) and writes a record marked as a
draft; ``fgad-captions check FILE...`` validates records and exits with status 1 on any error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from fgad.cli.common import check_outputs, friendly_errors, setup_logging

_DATASET_HELP = (
    "Description bank of the class, for its defect phrases: mvtec, visa, magnetic_tile, synthetic, or a bank "
    'JSON file {"class": ["phrase", ...]}. Default: the built-in banks in that order.'
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """MFSC caption records for FineGrainedAD (docs: METHOD.md 2.2)."""


@main.command()
@click.argument("image", type=click.Path(path_type=Path))
@click.option("--class-name", required=True, help="Class id of the product (e.g. my_bracket).")
@click.option("--out", "out_file", type=click.Path(path_type=Path), default=None,
              help="Record file to write (atomically). Default: print the JSON on stdout.")
@click.option("--foreground", default=None,
              help="Noun phrase for the product in the captions. Default: the class id with spaces.")
@click.option("--dataset", default=None, help=_DATASET_HELP)
@click.option("--llm-cmd", default=None,
              help="Local language-model command: reads a prompt on stdin, prints the record as JSON on stdout. "
                   "Run without a shell; '{image}' in an argument becomes the image path "
                   "(also in $FGAD_CAPTION_IMAGE).")
@click.option("--llm-timeout", type=click.FloatRange(min=1.0), default=300.0, show_default=True,
              help="Seconds the language-model command may run.")
@click.option("--strict", is_flag=True,
              help="Fail when the language model gives no valid record, instead of writing the heuristic draft.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging (also the libraries' INFO lines).")
@friendly_errors
def draft(image: Path, class_name: str, out_file: Path | None, foreground: str | None, dataset: str | None,
          llm_cmd: str | None, llm_timeout: float, strict: bool, verbose: bool) -> None:
    """Draft a caption record from one normal IMAGE of the product."""
    check_outputs(("--out", out_file, "file"))
    setup_logging(verbose)
    from fgad.core.io import ImageReadError, read_image
    from fgad.data.descriptions import BUILTIN_BANKS, display_name
    from fgad.methods.finegrained.captions.draft import draft_caption
    from fgad.methods.finegrained.captions.schema import CaptionError, defect_phrases

    try:
        pixels = read_image(image)
    except ImageReadError as err:
        raise click.ClickException(str(err)) from err
    noun = foreground or display_name(class_name)
    bank_name = dataset if dataset in BUILTIN_BANKS else None
    try:
        phrases = defect_phrases(class_name, dataset)
        click.echo(f"defect phrases of {class_name!r} from the description banks: {'; '.join(phrases)}", err=True)
    except CaptionError as err:
        phrases = ()
        click.echo(f"warning: {err} FineGrainedAD training of this class needs such phrases.", err=True)
    record: dict[str, Any] = draft_caption(pixels, class_name, foreground=noun, dataset=bank_name)
    source = "heuristic draft"
    if llm_cmd is not None:
        from fgad.methods.finegrained.captions.llm import LLMCommandError, llm_caption

        try:
            record = llm_caption(llm_cmd, image.resolve(), class_name, noun, hint=record, defect_phrases=phrases,
                                 timeout=llm_timeout, dataset=bank_name)
            source = "language model"
        except (CaptionError, LLMCommandError) as err:
            if strict:
                raise click.ClickException(f"--llm-cmd gave no usable record (--strict): {err}") from err
            click.echo(f"warning: --llm-cmd gave no usable record: {err}\n"
                       "warning: writing the heuristic draft instead.", err=True)
    if out_file is None:
        click.echo(json.dumps(record, indent=2, ensure_ascii=False))
    else:
        from fgad.core.atomic import atomic_write_json

        atomic_write_json(out_file, record)
        click.echo(f"wrote {out_file} ({source}); review every field, then delete \"draft\" "
                   f"and check it with `fgad-captions check {out_file}`.", err=True)


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@friendly_errors
def check(files: tuple[Path, ...]) -> None:
    """Validate caption record FILES; exit status 1 if any is invalid."""
    from fgad.methods.finegrained.captions.schema import CaptionError, read_caption_file

    failures = 0
    for path in files:
        try:
            record = read_caption_file(path)
        except (CaptionError, OSError) as err:
            failures += 1
            click.echo(f"FAIL {err}", err=True)
            continue
        note = " (still marked as a draft: review it, then delete \"draft\")" if _is_draft(path) else ""
        click.echo(f"ok   {path}: class {record.class_name!r}, {len(record.entities)} "
                   f"entit{'y' if len(record.entities) == 1 else 'ies'}{note}")
    if failures:
        click.echo(f"{failures} of {len(files)} file(s) invalid.", err=True)
        raise SystemExit(1)


def _is_draft(path: Path) -> bool:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("draft") is True


if __name__ == "__main__":
    main()
