"""The wheels a GPU machine needs beyond its own stack, fetched here (``make gpu-wheels``) and size-checked.

The lent machine has torch, torchvision, numpy, onnx, onnxruntime, opencv, click and pytest, and no
network. A random-weight model needs open_clip and what open_clip and fgad import at module level (ftfy,
wcwidth, regex, tqdm); timm, huggingface_hub, transformers and safetensors are only imported for pretrained
weights or timm/HF towers, so they stay behind. faiss-cpu (the runtime's search, the few-shot reference row)
and pytest-timeout (the suite's per-test timeout) are small enough to carry too. Versions are the pins of
constraints.txt. A call carries at most :data:`CARRY_LIMIT` of ignored files, and the wheels must stay under
:data:`WHEELS_LIMIT` so the working tree itself fits beside them.

    python -m fgad.bench.gpucheck.wheels --dest .gpu-wheels          # download, then check
    python -m fgad.bench.gpucheck.wheels --dest .gpu-wheels --check  # check only
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import click

__all__ = ["CARRY_LIMIT", "PACKAGES", "PLATFORMS", "WHEELS_LIMIT", "SizeReport", "check_sizes", "download_command",
           "missing_packages", "pinned", "tree_bytes", "worktree_bytes"]

MIB = 2**20
#: what one device call may carry in all (device documentation)
CARRY_LIMIT = 64 * MIB
#: the wheel folder's own limit (issue 14): leaves room for the working tree in the same call
WHEELS_LIMIT = 60 * MIB
#: distributions carried to the GPU machine (pinned in constraints.txt)
PACKAGES = ("open_clip_torch", "ftfy", "wcwidth", "regex", "tqdm", "faiss-cpu", "pytest-timeout")
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64")
PYTHON_VERSION = "3.12"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned(packages: Sequence[str], constraints: str) -> list[str]:
    """``name==version`` for each of ``packages`` from the text of a constraints file; a missing pin is an error."""
    pins: dict[str, str] = {}
    for line in constraints.splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, _, version = line.partition("==")
            pins[_canonical(name)] = version.strip()
    missing = [p for p in packages if _canonical(p) not in pins]
    if missing:
        raise ValueError(f"no pin for {', '.join(missing)} in constraints.txt: add 'name==version' lines")
    return [f"{p}=={pins[_canonical(p)]}" for p in packages]


def download_command(dest: Path, requirements: Iterable[str], python: str = sys.executable) -> list[str]:
    """``pip download`` of binary wheels for the GPU machine (CPython 3.12, manylinux x86_64), no dependencies."""
    cmd = [python, "-m", "pip", "download", "--only-binary=:all:", "--no-deps", "--python-version", PYTHON_VERSION,
           "-d", str(dest)]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    return cmd + list(requirements)


def tree_bytes(paths: Iterable[Path]) -> int:
    """Total size of the regular files among ``paths`` (folders are walked)."""
    total = 0
    for path in paths:
        if path.is_dir():
            total += sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
        elif path.is_file():
            total += path.stat().st_size
    return total


def worktree_bytes(repo: Path) -> int:
    """Bytes of what a device call copies of the checkout: tracked files and untracked files git does not ignore."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                         capture_output=True, check=True, timeout=60).stdout
    names = {n for n in out.decode(errors="replace").split("\0") if n}
    return tree_bytes(repo / n for n in names)


@dataclass(frozen=True)
class SizeReport:
    wheels: dict[str, int]  # file name -> bytes
    worktree: int | None  # bytes; None when not measured

    @property
    def wheels_total(self) -> int:
        return sum(self.wheels.values())

    @property
    def carry_total(self) -> int:
        return self.wheels_total + (self.worktree or 0)

    def problems(self, wheels_limit: int = WHEELS_LIMIT, carry_limit: int = CARRY_LIMIT) -> list[str]:
        """What breaks a limit (empty: it fits)."""
        out = []
        if self.wheels_total > wheels_limit:
            out.append(f"the wheels take {self.wheels_total / MIB:.1f} MiB, over the {wheels_limit / MIB:.0f} MiB "
                       "limit: drop the largest optional one (faiss-cpu) from PACKAGES")
        if self.worktree is not None and self.carry_total > carry_limit:
            out.append(f"wheels + working tree take {self.carry_total / MIB:.1f} MiB, over the {carry_limit / MIB:.0f}"
                       " MiB a device call carries: remove large untracked files from the checkout")
        return out

    def lines(self) -> list[str]:
        rows = [f"  {size / MIB:8.2f} MiB  {name}" for name, size in sorted(self.wheels.items())]
        rows.append(f"  {self.wheels_total / MIB:8.2f} MiB  wheels in all (limit {WHEELS_LIMIT / MIB:.0f} MiB)")
        if self.worktree is not None:
            rows.append(f"  {self.worktree / MIB:8.2f} MiB  working tree (tracked + untracked, not ignored)")
            rows.append(f"  {self.carry_total / MIB:8.2f} MiB  one device call carries (limit {CARRY_LIMIT / MIB:.0f}"
                        " MiB)")
        return rows


def check_sizes(dest: Path, repo: Path | None = None) -> SizeReport:
    """Sizes of the wheels in ``dest`` (and of the checkout at ``repo``, when given)."""
    wheels = {p.name: p.stat().st_size for p in sorted(Path(dest).glob("*.whl"))}
    return SizeReport(wheels, worktree_bytes(repo) if repo is not None else None)


def missing_packages(dest: Path, packages: Sequence[str] = PACKAGES) -> list[str]:
    """The packages of ``packages`` with no wheel in ``dest``."""
    have = {_canonical(p.name.split("-", 1)[0]) for p in Path(dest).glob("*.whl")}
    return [p for p in packages if _canonical(p) not in have]


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--dest", type=click.Path(path_type=Path, file_okay=False), default=Path(".gpu-wheels"),
              show_default=True, help="Folder of the wheels (ignored by git; carried to the device).")
@click.option("--constraints", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              default=Path("constraints.txt"), show_default=True)
@click.option("--check", "check_only", is_flag=True, help="Only check the folder's sizes and contents.")
@click.option("--repo", type=click.Path(path_type=Path, file_okay=False), default=Path("."), show_default=True,
              help="The checkout a device call copies (its size counts against the carry limit).")
def main(dest: Path, constraints: Path, check_only: bool, repo: Path) -> None:
    """Fetch the GPU machine's extra wheels into DEST and check them against the size limits."""
    if not check_only:
        dest.mkdir(parents=True, exist_ok=True)
        cmd = download_command(dest, pinned(PACKAGES, constraints.read_text()))
        click.echo("$ " + " ".join(cmd), err=True)
        if subprocess.run(cmd, check=False, timeout=600, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
                          ).returncode != 0:
            raise click.ClickException("pip download failed (see above): is PyPI reachable?")
    missing = missing_packages(dest)
    report = check_sizes(dest, repo)
    click.echo("\n".join(report.lines()))
    problems = report.problems() + ([f"no wheel for {', '.join(missing)} in {dest}: run make gpu-wheels"]
                                    if missing else [])
    if problems:
        raise click.ClickException("; ".join(problems))


if __name__ == "__main__":
    main()
