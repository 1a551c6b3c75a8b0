"""Check a build of the FgadDeformConv2d plugin against the committed golden files, without torch.

Needs numpy only (plus a C++ compiler, or a prebuilt CPU library). Run from anywhere, e.g. on a Jetson::

    python cpp_ext/tools/check_golden.py                                   # CPU build; TensorRT if available
    python cpp_ext/tools/check_golden.py --cpu-lib cpp_ext/build/libfgad_deform_cpu.so \\
        --plugin cpp_ext/build/libfgad_trt_plugin.so --trt require

For every golden file (``cpp_ext/deformConv2dPlugin/golden/*.npz``) it runs

* the CPU build of the kernels' math (``deformConv2dCpu.cpp`` through ``deform_ctypes.py``; compiled with
  g++ into a temporary folder unless ``--cpu-lib`` names one): both algorithms in fp32 against ``Y``, and
  the fp16-I/O emulation against ``Y_fp16``;
* with ``--trt auto`` (default) when ``tensorrt`` and ``onnx`` are importable and the plugin library exists,
  or always with ``--trt require``: a TensorRT engine of a one-node ONNX graph with the plugin
  (``golden_trt.py``), fp32 against ``Y`` and fp16 against ``Y_fp16``. That path is written against the
  TensorRT 10 Python API but has not been run yet (it was written where there is no GPU or TensorRT).

Each check prints the largest |difference| and the spec's tolerance (``spec.json``: fp32 ``atol``; fp16
``atol + rtol * |ref|`` elementwise). Exit status: 0 when every check passes, 1 when one fails or a file or
library is unusable, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np


def _load_sibling(stem: str) -> ModuleType:
    """A module of this folder by path (the folder is not a package), once per process."""
    name = f"fgad_cpp_ext_{stem}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{stem}.py"))
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {stem}.py next to {Path(__file__).name}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


golden_io = _load_sibling("golden_io")
deform_ctypes = _load_sibling("deform_ctypes")

DEFAULT_PLUGIN = golden_io.PLUGIN_DIR.parent / "build" / "libfgad_trt_plugin.so"


@dataclass(frozen=True)
class Result:
    case: str
    backend: str
    precision: str
    max_abs_diff: float
    allowed: str
    passed: bool
    note: str = ""


def _compare(case: Any, backend: str, precision: str, tolerance: Any, run: Callable[[], np.ndarray]) -> Result:
    reference = case.expected if precision == "fp32" else case.expected_fp16
    try:
        got = run()
    except Exception as exc:  # noqa: BLE001 - any failure of a backend is a failed check, reported with its text
        return Result(case.name, backend, precision, float("nan"), tolerance.describe(), False,
                      f"{type(exc).__name__}: {exc}")
    comparison = tolerance.compare(got, reference)
    note = comparison.problem or (f"{comparison.worst_ratio:.2f} of the bound" if tolerance.rtol else "")
    return Result(case.name, backend, precision, comparison.max_abs_diff, tolerance.describe(), comparison.passed, note)


def cpu_results(spec: Any, cases: list[Any], library: Any) -> list[Result]:
    """Both algorithms in fp32, the tiled one (what AUTO picks) with fp16 I/O."""

    def runner(case: Any, dtype: type[np.floating[Any]], algo: int) -> Callable[[], np.ndarray]:
        def run() -> np.ndarray:
            arrays = case.inputs_as(dtype)
            shape = library.make_shape(arrays["X"].shape, arrays["W"].shape, case.fields["strides"],
                                       case.fields["pads"], case.fields["dilations"], case.fields["group"],
                                       case.fields["offset_group"])
            return library.run_cpu(shape, arrays["X"], arrays["W"], arrays["offset"], arrays["B"], arrays["mask"],
                                   algo=algo)

        return run

    results = []
    for case in cases:
        for label, algo in (("tiled", deform_ctypes.ALGO_TILED), ("direct", deform_ctypes.ALGO_DIRECT)):
            results.append(_compare(case, f"cpu/{label}", "fp32", spec.tolerance("fp32"),
                                    runner(case, np.float32, algo)))
        results.append(_compare(case, "cpu/tiled", "fp16", spec.tolerance("fp16"),
                                runner(case, np.float16, deform_ctypes.ALGO_TILED)))
    return results


def trt_results(spec: Any, cases: list[Any], plugin: Path, precisions: list[str]) -> list[Result]:
    golden_trt = _load_sibling("golden_trt")
    return [
        _compare(case, "tensorrt", precision, spec.tolerance(precision),
                 lambda case=case, precision=precision: golden_trt.run_case(spec, case, plugin, precision))
        for case in cases
        for precision in precisions
    ]


def contract_problems(spec: Any, library: Any) -> list[str]:
    """Where the library's compiled-in plugin identity and fields disagree with the spec (empty: agree)."""
    name, version, namespace, fields = library.plugin_contract()
    problems = [
        f"plugin {what} is {got!r} in {library.path}, {want!r} in {spec.path}"
        for what, got, want in (("name", name, spec.name), ("version", version, spec.version),
                                ("namespace", namespace, spec.namespace))
        if got != want
    ]
    spec_fields = {f.name: f.count for f in spec.fields}
    if fields != spec_fields:
        problems.append(f"plugin fields are {fields} in {library.path}, {spec_fields} in {spec.path}")
    return problems


def _cpu_library(path: Path | None, scratch: Path) -> Any:
    if path is not None:
        if not path.is_file():
            raise FileNotFoundError(f"CPU library {path} does not exist")
        return deform_ctypes.DeformLibrary(path)
    compiler = deform_ctypes.find_cxx()
    if compiler is None:
        raise RuntimeError("no C++ compiler (g++/c++ or $CXX) to build the CPU library; pass --cpu-lib PATH")
    return deform_ctypes.DeformLibrary(deform_ctypes.build_cpu_library(scratch, compiler))


def _trt_plan(mode: str, plugin: Path) -> str | None:
    """None to run the TensorRT checks, else why they are skipped; raises when ``require`` cannot be met."""
    if mode == "skip":
        return "--trt skip"
    reason = _load_sibling("golden_trt").unavailable_reason()
    if reason is None and not plugin.is_file():
        reason = f"plugin library {plugin} does not exist"
    if reason is not None and mode == "require":
        raise RuntimeError(f"--trt require, but {reason}")
    return reason


def _print(results: list[Result]) -> None:
    print(f"{'case':<26} {'backend':<11} {'prec':<5} {'max|diff|':>10}  {'allowed':<24} result")
    for r in results:
        status = "ok" if r.passed else "FAIL"
        print(f"{r.case:<26} {r.backend:<11} {r.precision:<5} {r.max_abs_diff:>10.3g}  {r.allowed:<24} {status}"
              + (f"  ({r.note})" if r.note else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--golden", type=Path, default=golden_io.GOLDEN_DIR, help="folder of golden .npz files")
    parser.add_argument("--spec", type=Path, default=golden_io.SPEC_PATH, help="the plugin's spec.json")
    parser.add_argument("--cpu-lib", type=Path, default=None,
                        help="prebuilt libfgad_deform_cpu.so (default: compile deformConv2dCpu.cpp into a temp dir)")
    parser.add_argument("--plugin", type=Path, default=DEFAULT_PLUGIN, help="libfgad_trt_plugin.so")
    parser.add_argument("--trt", choices=("auto", "require", "skip"), default="auto",
                        help="TensorRT engine checks: when available (auto), always (require) or never (skip)")
    parser.add_argument("--precision", choices=("fp32", "fp16"), action="append", default=None,
                        help="TensorRT engine precision(s) (repeatable; default both)")
    args = parser.parse_args(argv)
    try:
        spec = golden_io.load_spec(args.spec)
        cases = [golden_io.load_golden(p) for p in golden_io.golden_paths(args.golden)]
        skip_trt = _trt_plan(args.trt, args.plugin)
        with tempfile.TemporaryDirectory(prefix="fgad_golden_") as scratch:
            library = _cpu_library(args.cpu_lib, Path(scratch))
            problems = contract_problems(spec, library)
            results = cpu_results(spec, cases, library)
        if skip_trt is None:
            results += trt_results(spec, cases, args.plugin, args.precision or ["fp32", "fp16"])
    except (golden_io.GoldenError, OSError, RuntimeError) as exc:
        print(f"check_golden: {exc}", file=sys.stderr)
        return 1
    _print(results)
    for problem in problems:
        print(f"contract FAIL: {problem}")
    failed = [r for r in results if not r.passed]
    print(f"{spec.name} v{spec.version}: {len(results)} checks on {len(cases)} golden files, {len(failed)} failed"
          + (f", {len(problems)} contract mismatches" if problems else "")
          + (f"; TensorRT skipped: {skip_trt}" if skip_trt else ""))
    return 1 if failed or problems else 0


if __name__ == "__main__":
    sys.exit(main())
