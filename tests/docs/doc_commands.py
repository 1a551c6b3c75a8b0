"""What the docs tell a user to run, checked against the commands themselves.

Reads the fenced blocks of ``README.md`` and ``docs/*.md``: in shell blocks (bash, sh, shell, console, and
blocks without a language), every
command whose first word is an fgad console script (``[project.scripts]`` of pyproject.toml, or
``python -m fgad.cli.<module>``); in Python blocks, the import statements. A command is checked against its click
command, read at test time: so an option renamed, removed or added (by anyone) is checked without a list here.

Documentation notation is understood: ``[--opt VALUE]`` (optional), ``a|b|c`` (alternatives of one value),
``...`` (more arguments), upper-case placeholders (``FILE``, ``N``) and ``{image}`` templates.
"""

from __future__ import annotations

import ast
import importlib
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click

REPO = Path(__file__).resolve().parents[2]
#: Blocks read for commands; "" (a block without a language) too, since docs show commands in plain blocks.
SHELL_LANGUAGES = frozenset({"bash", "sh", "shell", "console", "zsh", ""})
_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
_CHAIN = frozenset({"&&", "||", ";", "|"})


@dataclass(frozen=True)
class Block:
    """One fenced block: its file, the line of its opening fence, its language and its text."""

    path: Path
    line: int
    language: str
    text: str


@dataclass(frozen=True)
class Command:
    """One command line of a shell block (continuations joined), as words."""

    where: str  # "docs/runtime.md:23"
    words: tuple[str, ...]


def doc_files(repo: Path = REPO) -> list[Path]:
    return [repo / "README.md", *sorted((repo / "docs").glob("*.md"))]


def fenced_blocks(path: Path) -> Iterator[Block]:
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence, language = match.groups()
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence[0] * len(fence)):
            body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j])
            j += 1
        yield Block(path, i + 1, language.lower(), "\n".join(body))
        i = j + 1


def console_scripts(repo: Path = REPO) -> dict[str, str]:
    """Script name -> ``module:attribute``, from the ``[project.scripts]`` table of pyproject.toml (read as text:
    tomllib is Python 3.11+, and the installed entry points may be those of another checkout)."""
    scripts: dict[str, str] = {}
    in_table = False
    for line in (repo / "pyproject.toml").read_text(encoding="utf-8").splitlines():
        stripped = line.split("#", 1)[0].strip()
        if stripped.startswith("["):
            in_table = stripped == "[project.scripts]"
        elif in_table and "=" in stripped:
            name, _, target = stripped.partition("=")
            scripts[name.strip().strip('"')] = target.strip().strip('"')
    return scripts


def load_command(target: str) -> click.Command:
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


def shell_commands(block: Block) -> Iterator[Command]:
    """The commands of a shell block: continuations joined, comments and prompts dropped, chains split."""
    lines = block.text.splitlines()
    start, buffer = 0, ""
    for n, line in enumerate(lines):
        if not buffer:
            start = n
        stripped = line.rstrip()
        if stripped.endswith("\\"):
            buffer += stripped[:-1] + " "
            continue
        buffer += line
        text, buffer = buffer.strip(), ""
        if text.startswith("$ "):
            text = text[2:]
        if not text or text.startswith("#"):
            continue
        try:
            words = shlex.split(text, comments=True)
        except ValueError as err:  # an unbalanced quote: an error in a shell block; prose in a plain one
            if not block.language:
                continue
            raise ValueError(f"{block.path.name}:{block.line + 1 + start}: cannot split {text!r}: {err}") from None
        where = f"{block.path.relative_to(REPO) if block.path.is_relative_to(REPO) else block.path}:" \
                f"{block.line + 1 + start}"
        part: list[str] = []
        for word in [*words, ";"]:
            if word in _CHAIN:
                if part:
                    yield Command(where, tuple(part))
                part = []
            else:
                part.append(word)


def fgad_invocation(words: tuple[str, ...], scripts: dict[str, str]) -> tuple[str, list[str]] | None:
    """``(script, arguments)`` when the command runs an fgad console script, else None."""
    rest = list(words)
    while rest and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", rest[0]):  # VAR=value prefixes
        rest.pop(0)
    if not rest:
        return None
    first = Path(rest[0]).name
    if first in scripts:
        return first, rest[1:]
    if re.fullmatch(r"python[0-9.]*", first) and len(rest) >= 3 and rest[1] == "-m":
        for script, target in scripts.items():
            if target.split(":")[0] == rest[2]:
                return script, rest[3:]
    return None


def _is_placeholder(value: str) -> bool:
    return bool(re.fullmatch(r"[A-Z][A-Z0-9_]*", value)) or "{" in value or "$" in value or value == "..."


def check_invocation(command: click.Command, args: list[str], name: str) -> list[str]:
    """What is wrong with ``name args`` for ``command`` (an empty list when the docs are right)."""
    words = []
    for word in args:
        word = word.strip("[]")
        if word and word != "...":
            words.append(word)
    if isinstance(command, click.Group):
        sub = next((w for w in words if not w.startswith("-")), None)
        if sub is None:
            return [] if any(w in ("-h", "--help") for w in words) else [f"{name}: no subcommand"]
        if sub not in command.commands:
            return [f"{name}: no subcommand {sub!r} (it has {', '.join(sorted(command.commands))})"]
        return check_invocation(command.commands[sub], words[words.index(sub) + 1:], f"{name} {sub}")

    options: dict[str, click.Option] = {}
    for param in command.params:
        if isinstance(param, click.Option):
            for opt in (*param.opts, *param.secondary_opts):
                options[opt] = param
    ctx = click.Context(command)
    options.update({opt: None for opt in command.get_help_option_names(ctx)})  # type: ignore[misc]
    arguments = [p for p in command.params if isinstance(p, click.Argument)]
    max_positionals = None if any(a.nargs == -1 for a in arguments) else sum(a.nargs for a in arguments)

    problems: list[str] = []
    positionals = 0
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if not word.startswith("-") or word == "-":
            positionals += 1
            continue
        opt, _, inline = word.partition("=")
        if opt not in options:
            problems.append(f"{name}: no option {opt}")
            continue
        param = options[opt]
        if param is None or param.is_flag or param.count:
            continue
        if not inline:
            if i >= len(words):
                problems.append(f"{name}: {opt} needs a value")
                break
            inline = words[i]
            i += 1
        if isinstance(param.type, click.Choice) and not _is_placeholder(inline):
            bad = [v for v in inline.split("|") if v not in param.type.choices]
            if bad:
                problems.append(f"{name}: {opt} {inline}: {', '.join(bad)} not in {', '.join(param.type.choices)}")
    if max_positionals is not None and positionals > max_positionals:
        problems.append(f"{name}: {positionals} positional arguments, takes {max_positionals}")
    return problems


def python_imports(block: Block) -> list[str]:
    """The import statements of a Python block, each as source text."""
    try:
        tree = ast.parse(block.text)
    except SyntaxError:  # a snippet with placeholders: its import lines one by one
        statements = []
        for line in block.text.splitlines():
            if re.match(r"\s*(import|from)\s+\w", line):
                try:
                    statements.extend(ast.parse(line.strip()).body)
                except SyntaxError:
                    continue
        return [ast.unparse(s) for s in statements if isinstance(s, ast.Import | ast.ImportFrom)]
    return [ast.unparse(node) for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)]
