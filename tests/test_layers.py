"""The package's import structure: no cycles, layers only import downwards, the torch-free layers stay torch-free.

The scanner reads every module under ``src/fgad`` with :mod:`ast` (nothing is imported) and records every
``import`` and ``from ... import`` node, wherever it is: at module level, inside functions, under
``if TYPE_CHECKING:``, inside ``try``; ``importlib.import_module("x")`` and ``__import__("x")`` with a literal
name count as imports too. Every import counts for every rule. A function-local import still makes one module
depend on the other (it is how a cycle or an upward dependency gets hidden, not removed), and a
``TYPE_CHECKING`` import is a dependency of the annotations that type checkers and ``typing.get_type_hints``
follow. Messages say where an import sits ("in a function", "under TYPE_CHECKING") so the fix is easy to see.

Edges of the module graph go to the module an import actually names:

* ``import fgad.a.b`` and ``from fgad.a.b import name``: to ``fgad.a.b``;
* ``from fgad.a import b`` where ``b`` is a submodule: to ``fgad.a.b``; where ``b`` is a name defined in
  ``fgad/a/__init__.py``: to ``fgad.a``.

Importing ``fgad.a.b`` also runs the ``__init__`` of ``fgad`` and ``fgad.a``; those implied edges are not in
the graph. Python starts a package's ``__init__`` before any of its submodules, so the package is already in
``sys.modules`` when the submodule runs and the implied edge alone never makes an import fail; counted, it
would make every package that re-exports a submodule a false cycle with each sibling importing that
submodule. (An explicit ``from fgad.a import name`` of a name defined in ``fgad/a/__init__.py`` is an edge.)

For the layer rules the implied ``__init__`` imports are covered by requiring
(:func:`test_packages_are_not_above_their_modules`) that a package's layer is at most that of any module
inside it: importing a module then never runs code above the importer's layer.
"""

from __future__ import annotations

import ast
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "fgad"

# ---------------------------------------------------------------- the rules, as data

#: (pattern, layer, why). A pattern ``x.y`` names that one module or package ``__init__``; ``x.y.**`` names
#: ``x.y`` and everything inside it. The most specific pattern wins (an exact name beats any ``**``, a longer
#: ``**`` beats a shorter one). A module may import only modules of its own layer or lower.
LAYERS: tuple[tuple[str, int, str], ...] = (
    # L0: the torch-free primitives everything else is built on; they depend on nothing in fgad.
    ("fgad", 0, "the top-level package runs before every fgad import, so it may import nothing above L0"),
    ("fgad.core.**", 0, "torch-free primitives (io, transforms, cells, smoothing, metrics, atomic writes)"),
    ("fgad.configs.**", 0, "packaged YAML configs; the package holds data, no code"),
    # L1: the bundle contract, shared by the writers (export, calibration) and the reader (runtime).
    ("fgad.bundle.**", 1, "the torch-free bundle contract: spec, parser, checks, staged writing"),
    # L2: the edge runtime, the config schema and the method registry: what everything above resolves through.
    ("fgad.runtime.**", 2, "the torch-free runtime reads bundles; it needs only the contract and the primitives"),
    ("fgad.config", 2, "the config schema; it resolves method names through the registry"),
    ("fgad.methods", 2, "its __init__ runs whenever methods.registry or methods.base is imported"),
    ("fgad.methods.registry", 2, "a leaf that everything resolving a method by name may import"),
    ("fgad.methods.base", 2, "the interface the methods implement, next to the registry that lists them"),
    # L3: data and calibration: no model code, only the contract, configs and primitives below.
    ("fgad.data.**", 3, "datasets and synthetic data; the model code above reads them"),
    ("fgad.calibration.**", 3, "INT8 calibration of a written bundle; reads bundles, never the exporter"),
    ("fgad.triton.**", 3, "Triton model repositories of bundles and their client; serves the torch-free runtime"),
    # L4: the shared CLIP backbone the methods are built on.
    ("fgad.backbone.**", 4, "open_clip loading, dual path, deformable op, few-shot and post-processing"),
    # L5: method-independent export and evaluation, driven through the registry.
    ("fgad.export.**", 5, "ONNX/TensorRT export of any registered method"),
    ("fgad.evaluation", 5, "evaluation of any registered method"),
    # L6: the methods themselves; they may use export and evaluation helpers, never the reverse.
    ("fgad.methods.**", 6, "FiLo++ and FineGrainedAD, siblings behind the registry"),
    # L7: entry points that wire everything together.
    ("fgad.bench.**", 7, "benchmarks across methods and backends"),
    ("fgad.cli.**", 7, "the console scripts"),
)

#: The runtime's own rule, stricter than its layer: the edge install carries no config or method code.
#: ``fgad`` itself is allowed: its ``__init__`` runs before any fgad import anyway.
RUNTIME_MAY_IMPORT: tuple[str, ...] = ("fgad", "fgad.core.**", "fgad.bundle.**", "fgad.runtime.**")

#: Layers that must install and run from the base dependencies only.
TORCH_FREE: tuple[str, ...] = ("fgad.core.**", "fgad.bundle.**", "fgad.runtime.**", "fgad.triton.**")
#: Third-party top-level packages of the train/export/detect extras.
TRAINING_STACK: frozenset[str] = frozenset({"torch", "torchvision", "open_clip", "onnx", "onnxscript",
                                            "transformers"})

#: A method's name as a string literal belongs to the method, its registry entry and the packaged configs;
#: anywhere else it is dispatch by name that should go through the registry.
METHOD_NAME_LITERALS: dict[str, tuple[str, ...]] = {
    "finegrained": ("fgad.methods.**", "fgad.configs.**"),
}


# ---------------------------------------------------------------- the scanner


@dataclass(frozen=True)
class Import:
    """One import node of one module, resolved to the modules it names."""

    module: str  #: the importing module
    line: int
    text: str  #: the statement as written, e.g. ``from fgad.a import b``
    where: str  #: "module level", "in a function", "under TYPE_CHECKING", ...
    targets: tuple[str, ...]  #: fgad modules it names (see the module docstring)
    top_level: str | None  #: the first name of a non-fgad absolute import (``torch`` for ``import torch.nn``)

    def describe(self) -> str:
        return f"'{self.text}' (line {self.line}, {self.where})"


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    is_package: bool
    tree: ast.Module


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def load_modules(root: Path, package: str) -> dict[str, Module]:
    """Every ``.py`` file under ``root/package``, parsed, by dotted module name."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        name = module_name(root, path)
        modules[name] = Module(name, path, path.name == "__init__.py", ast.parse(path.read_text(), str(path)))
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk_with_context(node: ast.AST, where: str = "module level") -> Iterator[tuple[ast.AST, str]]:
    """Every node below ``node`` with a word on where it sits."""
    for child in ast.iter_child_nodes(node):
        here = where
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            here = "in a function"
        elif isinstance(node, ast.If) and _is_type_checking(node.test) and child in node.body:
            here = "under TYPE_CHECKING" if where == "module level" else f"{where}, under TYPE_CHECKING"
        yield child, here
        yield from _walk_with_context(child, here)


def _resolve_relative(importer: Module, level: int, name: str | None) -> str:
    """The absolute name of ``from <level dots><name> import ...`` in ``importer``."""
    parts = importer.name.split(".")
    base = parts if importer.is_package else parts[:-1]
    if level - 1 > len(base) - 1:
        raise ValueError(f"{importer.name}: relative import beyond the top-level package")
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def _in_package(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _dynamic_import_name(node: ast.Call) -> str | None:
    """``importlib.import_module("x")`` / ``import_module("x")`` / ``__import__("x")`` with a literal name."""
    func = node.func
    called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if called not in ("import_module", "__import__") or not node.args:
        return None
    first = node.args[0]
    if isinstance(first, ast.Constant) and isinstance(first.value, str) and not first.value.startswith("."):
        return first.value
    return None


def _imports_of(module: Module, modules: dict[str, Module], package: str) -> Iterator[Import]:
    for node, where in _walk_with_context(module.tree):
        text = ast.unparse(node) if isinstance(node, (ast.Import, ast.ImportFrom)) else ""
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield _absolute_import(module, node.lineno, text, where, alias.name, package)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_relative(module, node.level, node.module) if node.level else (node.module or "")
            if not _in_package(base, package):
                yield Import(module.name, node.lineno, text, where, (), base.split(".")[0])
                continue
            targets = []
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.append(sub if sub in modules else base)  # a submodule, else a name in ``base``
            yield Import(module.name, node.lineno, text, where, tuple(dict.fromkeys(targets)), None)
        elif isinstance(node, ast.Call) and (name := _dynamic_import_name(node)):
            yield _absolute_import(module, node.lineno, ast.unparse(node), where, name, package)


def _absolute_import(module: Module, line: int, text: str, where: str, name: str, package: str) -> Import:
    if _in_package(name, package):
        return Import(module.name, line, text, where, (name,), None)
    return Import(module.name, line, text, where, (), name.split(".")[0])


def scan(root: Path, package: str) -> tuple[dict[str, Module], list[Import]]:
    modules = load_modules(root, package)
    imports = [imp for module in modules.values() for imp in _imports_of(module, modules, package)]
    return modules, imports


def matches(pattern: str, name: str) -> bool:
    if pattern.endswith(".**"):
        return _in_package(name, pattern[: -len(".**")])
    return name == pattern


def matches_any(patterns: Iterable[str], name: str) -> bool:
    return any(matches(p, name) for p in patterns)


def _specificity(pattern: str) -> tuple[int, int]:
    return (0, pattern.count(".") - 1) if pattern.endswith(".**") else (1, pattern.count("."))


def layer_of(name: str, layers: tuple[tuple[str, int, str], ...] = LAYERS) -> int | None:
    hits = [(pattern, layer) for pattern, layer, _ in layers if matches(pattern, name)]
    if not hits:
        return None
    return max(hits, key=lambda hit: _specificity(hit[0]))[1]


# ---------------------------------------------------------------- the checks (each returns its violations)


def unresolved_imports(modules: dict[str, Module], imports: list[Import]) -> list[str]:
    return [f"{imp.module} imports {target}, which is not a module under src/: {imp.describe()}"
            for imp in imports for target in imp.targets if target not in modules]


def unplaced_modules(modules: dict[str, Module], layers: tuple[tuple[str, int, str], ...] = LAYERS) -> list[str]:
    return [f"{name} ({module.path}) has no layer: add it to LAYERS" for name, module in modules.items()
            if layer_of(name, layers) is None]


def misplaced_packages(modules: dict[str, Module], layers: tuple[tuple[str, int, str], ...] = LAYERS) -> list[str]:
    """Packages above a module inside them: importing that module would run the package's code from above."""
    found = []
    for name in modules:
        parts = name.split(".")
        for i in range(1, len(parts)):
            parent = ".".join(parts[:i])
            own, above = layer_of(name, layers), layer_of(parent, layers)
            if own is not None and above is not None and above > own:
                found.append(f"package {parent} (L{above}) is above its module {name} (L{own}): importing "
                             f"{name} runs {parent}/__init__.py")
    return found


def upward_imports(imports: list[Import], layers: tuple[tuple[str, int, str], ...] = LAYERS) -> list[str]:
    found = []
    for imp in imports:
        own = layer_of(imp.module, layers)
        for target in imp.targets:
            theirs = layer_of(target, layers)
            if own is not None and theirs is not None and theirs > own:
                found.append(f"{imp.module} (L{own}) imports {target} (L{theirs}): {imp.describe()}")
    return found


def runtime_imports_outside(imports: list[Import], allowed: tuple[str, ...] = RUNTIME_MAY_IMPORT) -> list[str]:
    return [f"{imp.module} imports {target}; the runtime may import only core/, bundle/ and runtime/: "
            f"{imp.describe()}"
            for imp in imports if matches("fgad.runtime.**", imp.module)
            for target in imp.targets if not matches_any(allowed, target)]


def calibration_imports_export(imports: list[Import]) -> list[str]:
    return [f"{imp.module} imports {target}; calibration reads bundles through fgad.bundle, not the exporter: "
            f"{imp.describe()}"
            for imp in imports if matches("fgad.calibration.**", imp.module)
            for target in imp.targets if matches("fgad.export.**", target)]


def training_stack_imports(imports: list[Import], scope: tuple[str, ...] = TORCH_FREE,
                           forbidden: frozenset[str] = TRAINING_STACK) -> list[str]:
    return [f"{imp.module} imports {imp.top_level}, which is not in the base install: {imp.describe()}"
            for imp in imports if matches_any(scope, imp.module) and imp.top_level in forbidden]


def string_literals_outside(modules: dict[str, Module], literal: str, allowed: tuple[str, ...]) -> list[str]:
    found = []
    for name, module in modules.items():
        if matches_any(allowed, name):
            continue
        for node in ast.walk(module.tree):
            if isinstance(node, ast.Constant) and node.value == literal:
                found.append(f"{name} ({module.path.name}:{node.lineno}) has the literal {literal!r}; "
                             f"only {', '.join(allowed)} may name the method (elsewhere: ask the registry)")
    return found


def _graph(imports: list[Import]) -> dict[str, dict[str, Import]]:
    """importer -> imported -> the first import making that edge (self-imports are no edges)."""
    graph: dict[str, dict[str, Import]] = {}
    for imp in imports:
        for target in imp.targets:
            if target != imp.module:
                graph.setdefault(imp.module, {}).setdefault(target, imp)
    return graph


def _strongly_connected(graph: dict[str, dict[str, Import]]) -> list[list[str]]:
    """Tarjan's components with more than one module, iteratively (no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    nodes = sorted(set(graph) | {t for edges in graph.values() for t in edges})
    for start in nodes:
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, {}))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        components.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.get(child, {})))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return components


def _shortest_cycle(graph: dict[str, dict[str, Import]], start: str, members: set[str]) -> list[str]:
    """The shortest path start -> ... -> start inside one component (breadth first)."""
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(graph.get(node, {})):
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return [*reversed(path), start]
            if child in members and child not in came_from:
                came_from[child] = node
                queue.append(child)
    raise AssertionError(f"{start} is in a component but on no cycle")


def import_cycles(imports: list[Import]) -> list[str]:
    graph = _graph(imports)
    found = []
    for component in _strongly_connected(graph):
        chain = _shortest_cycle(graph, component[0], set(component))
        steps = "\n".join(f"    {a} -> {b}: {graph[a][b].describe()}" for a, b in pairwise(chain))
        others = sorted(set(component) - set(chain))
        also = f"\n    (same cycle group: {', '.join(others)})" if others else ""
        found.append(f"import cycle {' -> '.join(chain)}\n{steps}{also}")
    return found


def report(violations: list[str]) -> str:
    return f"{len(violations)} violation(s):\n" + "\n".join(f"- {v}" for v in violations)


# ---------------------------------------------------------------- the tests on src/fgad


@pytest.fixture(scope="module")
def scanned() -> tuple[dict[str, Module], list[Import]]:
    return scan(SRC, PACKAGE)


def test_every_module_has_a_layer(scanned: tuple[dict[str, Module], list[Import]]) -> None:
    modules, _ = scanned
    assert not (found := unplaced_modules(modules)), report(found)


def test_packages_are_not_above_their_modules(scanned: tuple[dict[str, Module], list[Import]]) -> None:
    modules, _ = scanned
    assert not (found := misplaced_packages(modules)), report(found)


def test_fgad_imports_name_existing_modules(scanned: tuple[dict[str, Module], list[Import]]) -> None:
    modules, imports = scanned
    assert not (found := unresolved_imports(modules, imports)), report(found)


def test_no_import_cycles(scanned: tuple[dict[str, Module], list[Import]]) -> None:
    _, imports = scanned
    assert not (found := import_cycles(imports)), report(found)


def test_modules_import_only_their_layer_or_lower(scanned: tuple[dict[str, Module], list[Import]]) -> None:
    _, imports = scanned
    assert not (found := upward_imports(imports)), report(found)


def test_runtime_imports_only_core_bundle_and_itself(scanned: tuple[dict[str, Module], list[Import]]) -> None:
    _, imports = scanned
    assert not (found := runtime_imports_outside(imports)), report(found)


def test_calibration_does_not_import_export(scanned: tuple[dict[str, Module], list[Import]]) -> None:
    _, imports = scanned
    assert not (found := calibration_imports_export(imports)), report(found)


def test_core_bundle_runtime_import_no_training_stack(scanned: tuple[dict[str, Module], list[Import]]) -> None:
    _, imports = scanned
    assert not (found := training_stack_imports(imports)), report(found)


@pytest.mark.parametrize("literal", sorted(METHOD_NAME_LITERALS))
def test_method_names_are_literals_only_in_their_method(
        scanned: tuple[dict[str, Module], list[Import]], literal: str) -> None:
    modules, _ = scanned
    assert not (found := string_literals_outside(modules, literal, METHOD_NAME_LITERALS[literal])), report(found)


# ---------------------------------------------------------------- the scanner finds what it should


SYNTHETIC: dict[str, str] = {
    "fgad/__init__.py": "",
    "fgad/core/__init__.py": "",
    "fgad/core/a.py": "import torch.nn\nfrom fgad.core import b\n",
    "fgad/core/b.py": "def f():\n    from . import a\n",
    "fgad/core/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from fgad.cli.main import run\n",
    "fgad/core/d.py": "import importlib\nX = importlib.import_module('onnx')\nNAME = 'finegrained'\n",
    "fgad/bundle/__init__.py": "from fgad.bundle.spec import Spec\n",
    "fgad/bundle/spec.py": "from fgad.bundle import errors\nfrom ..core import a\nclass Spec: ...\n",
    "fgad/bundle/errors.py": "",
    "fgad/runtime/__init__.py": "",
    "fgad/runtime/pipe.py": "from fgad.config import Cfg\nfrom fgad.bundle import Spec\nimport fgad.gone\n",
    "fgad/config.py": "Cfg = 1\n",
    "fgad/calibration/__init__.py": "from fgad.export.writer import write\n",
    "fgad/export/__init__.py": "",
    "fgad/export/writer.py": "def write(): ...\n",
    "fgad/methods/__init__.py": "from fgad.methods.filo import model\n",
    "fgad/methods/filo/__init__.py": "",
    "fgad/methods/filo/model.py": "NAME = 'finegrained'\n",
    "fgad/cli/__init__.py": "",
    "fgad/cli/main.py": "from fgad.methods.filo.model import NAME\ndef run(): ...\n",
    "fgad/data/__init__.py": "ROOT = 'data'\nfrom fgad.data.sets import load\n",
    "fgad/data/sets.py": "from fgad.data import ROOT\ndef load(): ...\n",
    "fgad/extra.py": "",
}


@pytest.fixture()
def synthetic(tmp_path: Path) -> tuple[dict[str, Module], list[Import]]:
    for rel, text in SYNTHETIC.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return scan(tmp_path, "fgad")


def test_scanner_resolves_submodules_and_names(synthetic: tuple[dict[str, Module], list[Import]]) -> None:
    _, imports = synthetic
    targets = {(imp.module, imp.line): imp.targets for imp in imports}
    assert targets[("fgad.core.a", 2)] == ("fgad.core.b",)  # from a package: the submodule
    assert targets[("fgad.bundle.spec", 1)] == ("fgad.bundle.errors",)
    assert targets[("fgad.bundle.spec", 2)] == ("fgad.core.a",)  # relative, two levels
    assert targets[("fgad.runtime.pipe", 2)] == ("fgad.bundle",)  # a name defined in the package
    assert targets[("fgad.core.b", 2)] == ("fgad.core.a",)  # relative, inside a function


def test_scanner_finds_a_cycle_through_a_function_local_import(
        synthetic: tuple[dict[str, Module], list[Import]]) -> None:
    _, imports = synthetic
    found = [cycle for cycle in import_cycles(imports) if "fgad.core" in cycle]
    assert len(found) == 1, report(found)
    assert found[0].startswith("import cycle fgad.core.a -> fgad.core.b -> fgad.core.a"), found[0]
    assert "in a function" in found[0]


def test_scanner_finds_a_cycle_through_a_name_imported_from_the_package(
        synthetic: tuple[dict[str, Module], list[Import]]) -> None:
    # data/__init__ imports data.sets, which imports a name defined in data/__init__: a real cycle
    _, imports = synthetic
    found = [cycle for cycle in import_cycles(imports) if "fgad.data" in cycle]
    assert len(found) == 1, report(found)
    assert found[0].startswith("import cycle fgad.data -> fgad.data.sets -> fgad.data"), found[0]


def test_scanner_sees_no_cycle_through_an_implied_package_import(
        synthetic: tuple[dict[str, Module], list[Import]]) -> None:
    # bundle/__init__ imports bundle.spec, which imports its sibling bundle.errors: a re-export, no cycle
    _, imports = synthetic
    assert not any("fgad.bundle" in cycle for cycle in import_cycles(imports))


def test_scanner_finds_upward_imports(synthetic: tuple[dict[str, Module], list[Import]]) -> None:
    _, imports = synthetic
    found = upward_imports(imports)
    assert any(v.startswith("fgad.core.c (L0) imports fgad.cli.main (L7)") and "under TYPE_CHECKING" in v
               for v in found), report(found)
    assert any(v.startswith("fgad.calibration (L3) imports fgad.export.writer (L5)") for v in found), report(found)
    assert any(v.startswith("fgad.methods (L2) imports fgad.methods.filo.model (L6)") for v in found), report(found)
    assert len(found) == 3, report(found)


def test_scanner_finds_torch_and_onnx_in_core(synthetic: tuple[dict[str, Module], list[Import]]) -> None:
    _, imports = synthetic
    found = training_stack_imports(imports)
    assert [v.split(":")[0] for v in found] == [
        "fgad.core.a imports torch, which is not in the base install",
        "fgad.core.d imports onnx, which is not in the base install",
    ], report(found)


def test_scanner_finds_runtime_and_calibration_rules(synthetic: tuple[dict[str, Module], list[Import]]) -> None:
    modules, imports = synthetic
    runtime = runtime_imports_outside(imports)
    assert [v.split(";")[0] for v in runtime] == ["fgad.runtime.pipe imports fgad.config",
                                                  "fgad.runtime.pipe imports fgad.gone"], report(runtime)
    calibration = calibration_imports_export(imports)
    assert [v.split(";")[0] for v in calibration] == ["fgad.calibration imports fgad.export.writer"]
    assert [v.split(",")[0] for v in unresolved_imports(modules, imports)] == [
        "fgad.runtime.pipe imports fgad.gone"]


def test_scanner_finds_literals_and_unplaced_modules(synthetic: tuple[dict[str, Module], list[Import]]) -> None:
    modules, _ = synthetic
    literals = string_literals_outside(modules, "finegrained", METHOD_NAME_LITERALS["finegrained"])
    assert [v.split(" ")[0] for v in literals] == ["fgad.core.d"], report(literals)
    assert [v.split(" ")[0] for v in unplaced_modules(modules)] == ["fgad.extra"]


def test_layer_table_is_most_specific_first() -> None:
    assert layer_of("fgad") == 0
    assert layer_of("fgad.methods") == 2
    assert layer_of("fgad.methods.registry") == 2
    assert layer_of("fgad.methods.filo.model") == 6
    assert layer_of("fgad.runtime.backends.ort") == 2
    assert layer_of("fgad.evaluation") == 5
    assert layer_of("fgad.evaluation.sub") is None
    assert layer_of("fgad.unknown") is None
