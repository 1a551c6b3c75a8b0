"""The docs run: every fgad command in a shell block of README.md and docs/*.md parses against its click command
(a renamed or removed option, a wrong choice, a missing subcommand fail here), every Python snippet's imports
work, every console script answers --help, and every option says what it does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import pytest

from tests.docs.doc_commands import (
    REPO,
    SHELL_LANGUAGES,
    Block,
    check_invocation,
    console_scripts,
    doc_files,
    fenced_blocks,
    fgad_invocation,
    load_command,
    python_imports,
    shell_commands,
)

SCRIPTS = console_scripts()
BLOCKS = [block for path in doc_files() for block in fenced_blocks(path)]
FGAD_COMMANDS = [(cmd, inv) for block in BLOCKS if block.language in SHELL_LANGUAGES
                 for cmd in shell_commands(block) if (inv := fgad_invocation(cmd.words, SCRIPTS)) is not None]
PY_BLOCKS = [block for block in BLOCKS if block.language in ("python", "py", "python3")]


def test_the_docs_hold_fgad_commands_and_python_snippets() -> None:
    """The extraction itself works: the README's quick-start scripts are found (else every check passes vacuously)."""
    found = {script for _, (script, _) in FGAD_COMMANDS}
    assert {"fgad-train", "fgad-eval", "fgad-export", "fgad-run"} <= found, found
    assert len(FGAD_COMMANDS) > 20 and PY_BLOCKS


@pytest.mark.parametrize(("where", "script", "args"), [(c.where, s, a) for c, (s, a) in FGAD_COMMANDS],
                         ids=[f"{c.where}:{s}" for c, (s, _) in FGAD_COMMANDS])
def test_every_documented_command_parses(where: str, script: str, args: list[str]) -> None:
    problems = check_invocation(load_command(SCRIPTS[script]), args, script)
    assert not problems, f"{where}: {'; '.join(problems)}"


@pytest.mark.parametrize("block", PY_BLOCKS, ids=[f"{b.path.name}:{b.line}" for b in PY_BLOCKS])
def test_every_python_snippet_imports(block: Block) -> None:
    statements = python_imports(block)
    assert statements, f"{block.path.name}:{block.line}: a Python block without imports"
    for statement in statements:
        try:
            exec(compile(statement, f"{block.path.name}:{block.line}", "exec"), {})
        except ImportError as err:
            pytest.fail(f"{block.path.name}:{block.line}: `{statement}` fails: {err}")


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_console_script_answers_help(script: str) -> None:
    """``python -m`` each script's module with --help, as a fresh process: the module's __main__ guard works."""
    module = SCRIPTS[script].split(":")[0]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, env=env,
                          timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Usage:"), proc.stdout[:200]


def test_every_main_guard_is_the_last_statement() -> None:
    """``python -m fgad.cli.X`` runs the module top to bottom: code after the guard is not defined yet."""
    late = []
    for target in SCRIPTS.values():
        path = REPO / "src" / (target.split(":")[0].replace(".", "/") + ".py")
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        guard = [i for i, line in enumerate(lines) if line.startswith("if __name__ == ")]
        if guard and guard[-1] != len(lines) - 2:
            late.append(str(path.relative_to(REPO)))
    assert not late, f"the __main__ guard is not at the end of {', '.join(late)}"


def _leaf_commands(name: str, command: click.Command) -> list[tuple[str, click.Command]]:
    if isinstance(command, click.Group):
        return [leaf for sub, c in sorted(command.commands.items()) for leaf in _leaf_commands(f"{name} {sub}", c)]
    return [(name, command)]


def test_every_option_of_every_command_has_help() -> None:
    missing = [f"{name} {'/'.join(p.opts + p.secondary_opts)}"
               for script, target in sorted(SCRIPTS.items())
               for name, command in _leaf_commands(script, load_command(target))
               for p in command.params if isinstance(p, click.Option) and not p.help]
    assert not missing, "options without help text: " + ", ".join(missing)


# ------------------------------------------------------------------ the check can fail


def _check_markdown(tmp_path: Path, text: str) -> list[str]:
    doc = tmp_path / "doc.md"
    doc.write_text(text)
    problems = []
    for block in fenced_blocks(doc):
        for cmd in shell_commands(block):
            inv = fgad_invocation(cmd.words, SCRIPTS)
            if inv is not None:
                problems += check_invocation(load_command(SCRIPTS[inv[0]]), inv[1], inv[0])
    return problems


@pytest.mark.parametrize(("line", "problem"), [
    ("fgad-run --bundle b --imagez 'x/*.png'", "no option --imagez"),
    ("fgad-run --bundle b --images x --knn annoy", "annoy not in"),
    ("fgad-export --checkpoint c --class-name x --engine fp32|fp8 --out o", "fp8 not in"),
    ("fgad-sign keymake k.pem", "no subcommand 'keymake'"),
    ("cd /tmp && python -m fgad.cli.eval --checkpoint c --data d --out o --shotz 4", "no option --shotz"),
    ("fgad-run --bundle b \\\n    --camera 0 --jsonl", "--jsonl needs a value"),
])
def test_a_wrong_command_in_the_docs_is_caught(tmp_path: Path, line: str, problem: str) -> None:
    problems = _check_markdown(tmp_path, f"text\n\n```bash\n# a comment\n{line}   # trailing comment\n```\n")
    assert any(problem in p for p in problems), problems


def test_documentation_notation_is_not_a_problem(tmp_path: Path) -> None:
    text = ("```bash\nfgad-export --checkpoint c --class-name x --out o \\\n"
            "    --engine fp32|fp16|int8 [--deform decomposed|native|plugin] [--plugin PATH] [--workspace GB]\n"
            "fgad-export ... --out bundles/bottle --sign ~/.fgad/signing.pem\n"
            "make demo && FGAD_X=1 .venv/bin/fgad-run --bundle b --images i --threshold auto\n```\n")
    assert _check_markdown(tmp_path, text) == []


def test_a_python_snippet_with_a_missing_name_fails(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text("```python\nfrom fgad.runtime import Detektor\nresult = ...\n```\n")
    (block,) = fenced_blocks(doc)
    (statement,) = python_imports(block)
    with pytest.raises(ImportError):
        exec(compile(statement, "doc.md", "exec"), {})
