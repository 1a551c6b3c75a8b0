"""The plugin's spec (``cpp_ext/deformConv2dPlugin/spec.json``) and golden files (``.../golden/*.npz``).

* The spec states what the C++ states: identity and fields (``deformConv2dPluginInfo.h``), field defaults
  (``DeformConv2dAttributes`` in ``deformConv2dPlugin.h``), inputs, outputs, types and formats
  (``deformConv2dPlugin.cpp``), the ONNX node (the exporter's constants), the tolerances (``cases.FP32_ATOL``);
  the source is parsed, so a change on either side fails here until the other follows.
* The CPU build matches every golden output within the spec's tolerance; the golden files are what the
  current torch op gives (regenerated into a temporary folder) and cover the features they claim to.
* ``check_golden.py`` (what a device runs) passes without torch and fails on a tampered or broken file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from tests.cpp_ext.cases import FP32_ATOL
from tests.helpers.cpp_ext import CPP_EXT_DIR, load_tool

golden_io = load_tool("golden_io")
PLUGIN_DIR = CPP_EXT_DIR / "deformConv2dPlugin"
CHECKER = CPP_EXT_DIR / "tools" / "check_golden.py"
GOLDEN_PATHS = golden_io.golden_paths()


@pytest.fixture(scope="module")
def spec() -> Any:
    return golden_io.load_spec()


def _source(name: str) -> str:
    return (PLUGIN_DIR / name).read_text()


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def _function_body(source: str, signature: str) -> str:
    start = source.index(signature)
    return source[start : source.index("\n}\n", start)]


# ---------------------------------------------------------------------------------------------- spec vs source


def test_spec_identity_and_fields_match_the_plugin_info_header(spec: Any) -> None:
    header = _source("deformConv2dPluginInfo.h")
    constants = dict(re.findall(r'constexpr char const\* (k\w+) = "([^"]*)";', header))
    assert (spec.name, spec.version, spec.namespace) == (
        constants["kDeformConv2dPluginName"],
        constants["kDeformConv2dPluginVersion"],
        constants["kDeformConv2dPluginNamespace"],
    )
    table = re.search(r"kDeformConv2dFields\[\] = \{(.*?)\};", header, re.S)
    assert table is not None, "deformConv2dPluginInfo.h: the kDeformConv2dFields table was not found"
    header_fields = [(constants[c], int(n)) for c, n in re.findall(r"\{(kField\w+), (\d+)\}", table.group(1))]
    assert header_fields, "deformConv2dPluginInfo.h: no {kFieldX, n} entries parsed"
    assert [(f.name, f.count) for f in spec.fields] == header_fields  # names, counts and order
    assert all(f.type == "INT32" for f in spec.fields)


def test_spec_defaults_match_the_plugin_attributes_struct(spec: Any) -> None:
    struct = re.search(r"struct DeformConv2dAttributes\s*\{(.*?)\n\};", _source("deformConv2dPlugin.h"), re.S)
    assert struct is not None, "deformConv2dPlugin.h: struct DeformConv2dAttributes was not found"
    members = {
        _snake(name): (int(count or 1), [int(v) for v in values.split(",")])
        for name, count, values in re.findall(r"int32_t (\w+)(?:\[(\d+)\])?\{([^}]*)\};", struct.group(1))
    }
    assert "bool hasKernelShape{false};" in struct.group(1)  # kernel_shape has no default: it comes from W
    for field in spec.fields:
        count, values = members[field.name]
        assert count == field.count, f"{field.name}: {count} values in the struct, {field.count} in the spec"
        if field.name == "kernel_shape":
            assert field.default is None
        else:
            expected = field.default if isinstance(field.default, list) else [field.default]
            assert values == expected, f"{field.name}: default {values} in the struct, {field.default} in the spec"


def test_spec_inputs_outputs_and_formats_match_the_plugin_source(spec: Any) -> None:
    source = _source("deformConv2dPlugin.cpp")
    names = re.search(r"kInputNames\[kNbInputs\] = \{([^}]*)\}", source)
    assert names is not None
    assert tuple(re.findall(r'"(\w+)"', names.group(1))) == spec.input_names
    counts = dict(re.findall(r"constexpr int32_t (kNb\w+) = (\d+);", source))
    assert counts == {"kNbInputs": str(len(spec.input_names)), "kNbOutputs": str(len(spec.output_names))}

    body = _function_body(source, "DeformConv2dPlugin::supportsFormatCombination(")
    assert set(re.findall(r"DataType::k(\w+)", body)) == {f["type"] for f in spec.raw["formats"]}
    assert set(re.findall(r"TensorFormat::k(\w+)", body)) == {f["format"] for f in spec.raw["formats"]}
    assert "desc.type == inOut[0].desc.type" in body and spec.raw["same_type_for_all_tensors"] is True

    read_ints = _function_body(source, "bool readInts(")
    assert set(re.findall(r"PluginFieldType::k(\w+)", read_ints)) == set(spec.raw["field_types_accepted"])
    parse = _function_body(source, "bool parseAttributes(")
    assert set(re.findall(r'name != "(\w+)"', parse)) == set(spec.raw["ignored_node_attributes"])


def test_spec_matches_the_compiled_contract(spec: Any, cpu_lib: Any) -> None:
    name, version, namespace, fields = cpu_lib.plugin_contract()
    assert (name, version, namespace) == (spec.name, spec.version, spec.namespace)
    assert fields == {f.name: f.count for f in spec.fields}


def test_spec_onnx_node_matches_the_exporter(spec: Any) -> None:
    from fgad.export import deform_flavours

    node = spec.raw["onnx_node"]
    assert (node["op_type"], node["domain"], node["domain_version"]) == (
        deform_flavours.PLUGIN_OP,
        deform_flavours.PLUGIN_DOMAIN,
        deform_flavours.PLUGIN_OPSET,
    )
    assert node["attributes"] == {
        "plugin_namespace": deform_flavours.PLUGIN_NAMESPACE,
        "plugin_version": deform_flavours.PLUGIN_VERSION,
    }
    assert node["op_type"] == spec.name and node["attributes"]["plugin_namespace"] == spec.namespace


def test_spec_tolerances_are_the_tests_tolerances(spec: Any) -> None:
    assert spec.precisions == ("fp32", "fp16")
    assert spec.tolerance("fp32") == golden_io.Tolerance(FP32_ATOL, 0.0)
    assert spec.tolerance("fp16") == golden_io.Tolerance(FP32_ATOL, 2.0**-11)  # as test_cpu_build's fp16 test


def test_spec_shapes_are_the_readme_shapes(spec: Any) -> None:
    readme = _source("README.md")
    for entry in [*spec.raw["inputs"], *spec.raw["outputs"]]:
        row = f"| {entry['index']} | `{entry['name']}` | `[{', '.join(entry['shape'])}]"
        assert row in readme, f"README.md has no table row starting {row!r}"


def test_golden_fields_are_spec_fields(spec: Any) -> None:
    counts = {f.name: f.count for f in spec.fields}
    assert set(golden_io.FIELD_NAMES) == set(counts) - {"kernel_shape"}
    for path in GOLDEN_PATHS:
        case = golden_io.load_golden(path)
        assert set(case.fields) == set(golden_io.FIELD_NAMES), path.name
        for name, value in case.fields.items():
            assert len(value if isinstance(value, list) else [value]) == counts[name], f"{path.name}: {name}"


# ---------------------------------------------------------------------------------------------- golden files


def _sample_positions(case: Any) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) sampling positions of every tap, ``[N, offset_group, taps, Ho, Wo]`` (the spec's formula)."""
    offset, w = case.inputs["offset"].astype(np.float64), case.inputs["W"]
    n, _, ho, wo = offset.shape
    kh, kw = w.shape[2:]
    og = case.fields["offset_group"]
    (sh, sw), (pt, pl, _, _), (dh, dw) = case.fields["strides"], case.fields["pads"], case.fields["dilations"]
    off = offset.reshape(n, og, kh * kw, 2, ho, wo)
    i, j = np.divmod(np.arange(kh * kw), kw)
    base_y = np.arange(ho)[None, :, None] * sh - pt + i[:, None, None] * dh
    base_x = np.arange(wo)[None, None, :] * sw - pl + j[:, None, None] * dw
    return base_y + off[:, :, :, 0], base_x + off[:, :, :, 1]


def test_golden_files_are_small() -> None:
    sizes = {p.name: p.stat().st_size for p in GOLDEN_PATHS}
    assert 3 <= len(sizes) <= 5
    assert max(sizes.values()) <= 6_000 and sum(sizes.values()) <= 16_000, sizes


def test_golden_files_cover_the_geometry_features() -> None:
    cases = [golden_io.load_golden(p) for p in GOLDEN_PATHS]
    fields = [c.fields for c in cases]
    assert any(f["strides"] != [1, 1] for f in fields)
    assert any(max(f["pads"]) > 0 for f in fields)
    assert any(f["dilations"] != [1, 1] for f in fields)
    assert any(f["group"] > 1 for f in fields) and any(f["offset_group"] > 1 for f in fields)
    assert {c.inputs["mask"] is None for c in cases} == {True, False}
    assert {c.inputs["B"] is None for c in cases} == {True, False}
    assert any(c.inputs["X"].shape[0] > 1 for c in cases)
    offsets = np.concatenate([c.inputs["offset"].ravel() for c in cases])
    assert (offsets != np.round(offsets)).any() and (offsets == np.round(offsets)).any()
    inside = partly = outside = 0
    for case in cases:
        y, x = _sample_positions(case)
        height, width = case.inputs["X"].shape[2:]
        # bilinear corners floor(p) and floor(p) + 1; the footprint misses the image when both corners are out
        misses = (y <= -1) | (y >= height) | (x <= -1) | (x >= width)
        all_in = (y >= 0) & (y <= height - 1) & (x >= 0) & (x <= width - 1)
        outside += int(misses.sum())
        inside += int(all_in.sum())
        partly += int((~misses & ~all_in).sum())
    assert inside > 0 and partly > 0 and outside > 0, (inside, partly, outside)
    for case in cases:
        assert np.abs(case.expected).max() > 1.0, f"{case.name}: near-zero outputs make a vacuous comparison"


def _run_cpu(cpu_lib: Any, case: Any, dtype: type[np.floating[Any]], algo: int) -> np.ndarray:
    arrays = case.inputs_as(dtype)
    f = case.fields
    shape = cpu_lib.make_shape(arrays["X"].shape, arrays["W"].shape, f["strides"], f["pads"], f["dilations"],
                               f["group"], f["offset_group"])
    return cpu_lib.run_cpu(shape, arrays["X"], arrays["W"], arrays["offset"], arrays["B"], arrays["mask"], algo=algo)


@pytest.mark.parametrize("algo_name", ["tiled", "direct"])
@pytest.mark.parametrize("path", GOLDEN_PATHS, ids=lambda p: p.stem)
def test_cpu_build_matches_golden_fp32(
    cpu_lib: Any, deform_ctypes: ModuleType, spec: Any, path: Path, algo_name: str
) -> None:
    case = golden_io.load_golden(path)
    algo = {"tiled": deform_ctypes.ALGO_TILED, "direct": deform_ctypes.ALGO_DIRECT}[algo_name]
    got = _run_cpu(cpu_lib, case, np.float32, algo)
    assert got.dtype == np.float32 and got.shape == case.expected.shape
    comparison = spec.tolerance("fp32").compare(got, case.expected)
    assert comparison.passed, f"{path.name}: max |cpu - golden| = {comparison.max_abs_diff:.3g} > {FP32_ATOL}"


@pytest.mark.parametrize("path", GOLDEN_PATHS, ids=lambda p: p.stem)
def test_cpu_build_matches_golden_fp16(cpu_lib: Any, deform_ctypes: ModuleType, spec: Any, path: Path) -> None:
    case = golden_io.load_golden(path)
    got = _run_cpu(cpu_lib, case, np.float16, deform_ctypes.ALGO_TILED)
    assert got.dtype == np.float16
    comparison = spec.tolerance("fp16").compare(got, case.expected_fp16)
    assert comparison.passed, f"{path.name}: worst |cpu - golden| / bound = {comparison.worst_ratio:.3g} > 1"


def test_golden_files_are_reproducible_from_the_torch_op(tmp_path: Path) -> None:
    make_golden = load_tool("make_golden")
    fresh = {p.name: p for p in make_golden.write_all(tmp_path)}
    assert set(fresh) == {p.name for p in GOLDEN_PATHS}, "regenerate the committed files with make_golden.py"
    for path in GOLDEN_PATHS:
        committed, regenerated = golden_io.load_golden(path), golden_io.load_golden(fresh[path.name])
        assert (committed.name, committed.seed, committed.fields) == (regenerated.name, regenerated.seed,
                                                                      regenerated.fields)
        for key, array in committed.inputs.items():
            other = regenerated.inputs[key]
            assert (array is None) == (other is None), f"{path.name}: {key}"
            if array is not None:
                np.testing.assert_array_equal(array, other, err_msg=f"{path.name}: input {key}")
        np.testing.assert_allclose(regenerated.expected, committed.expected, rtol=0, atol=1e-12,
                                   err_msg=f"{path.name}: Y")
        np.testing.assert_allclose(regenerated.expected_fp16, committed.expected_fp16, rtol=0, atol=1e-12,
                                   err_msg=f"{path.name}: Y_fp16")


def test_load_golden_names_the_bad_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not a zip file")
    with pytest.raises(golden_io.GoldenError, match=re.escape(str(broken))):
        golden_io.load_golden(broken)
    case = golden_io.load_golden(GOLDEN_PATHS[0])
    case.inputs["offset"] = case.inputs["offset"][:, :-2]
    with pytest.raises(golden_io.GoldenError, match="'offset' has shape"):
        golden_io.save_golden(case, tmp_path / "bad.npz")


@pytest.mark.parametrize("path", GOLDEN_PATHS, ids=lambda p: p.stem)
def test_engine_graph_is_the_exporters_plugin_node(spec: Any, path: Path) -> None:
    """The one-node graph check_golden.py hands TensorRT (TensorRT itself is not here): the node carries the
    spec's op type, domain and attributes, and swapped back to ONNX DeformConv (as the exporter does for
    onnxruntime) it computes the golden output."""
    import onnx
    import onnxruntime as ort

    from fgad.export import deform_flavours

    golden_trt = load_tool("golden_trt")
    case = golden_io.load_golden(path)
    inputs = case.explicit_inputs(np.float32)
    model = onnx.load_from_string(golden_trt.plugin_onnx_model(spec, inputs, case.fields, case.expected.shape))
    onnx.checker.check_model(model)
    (node,) = model.graph.node
    assert (node.op_type, node.domain) == (spec.onnx_op_type, spec.onnx_domain)
    assert list(node.input) == list(spec.input_names) and list(node.output) == list(spec.output_names)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    selectors = {k: attrs.pop(k).decode() for k in spec.raw["ignored_node_attributes"]}
    assert selectors == spec.raw["onnx_node"]["attributes"]
    assert set(attrs) == {f.name for f in spec.fields}
    assert deform_flavours.plugin_to_deformconv(model) == 1
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, inputs)
    comparison = spec.tolerance("fp32").compare(got, case.expected)
    assert comparison.passed, f"{path.name}: onnxruntime DeformConv differs by {comparison.max_abs_diff:.3g}"


# ---------------------------------------------------------------------------------------------- check_golden.py


def _run_checker(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """check_golden.py in a fresh interpreter in which ``import torch`` fails (the script must not need it)."""
    blocker = tmp_path / "no_torch" / "torch"
    blocker.mkdir(parents=True, exist_ok=True)
    (blocker / "__init__.py").write_text('raise ImportError("check_golden.py must not import torch")\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker.parent), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, str(CHECKER), *args], capture_output=True, text=True, env=env,
                          timeout=120, check=False)


def test_check_golden_cpu_path_passes_without_torch(tmp_path: Path, cpu_lib: Any) -> None:
    result = _run_checker(tmp_path, "--cpu-lib", str(cpu_lib.path), "--trt", "skip")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for path in GOLDEN_PATHS:
        rows = [line for line in lines if line.startswith(path.stem + " ")]
        assert len(rows) == 3 and all(row.endswith("ok") or " ok  (" in row for row in rows), rows
    assert f"{3 * len(GOLDEN_PATHS)} checks on {len(GOLDEN_PATHS)} golden files, 0 failed" in result.stdout


def test_check_golden_fails_on_a_tampered_golden_file(tmp_path: Path, cpu_lib: Any) -> None:
    golden = tmp_path / "golden"
    shutil.copytree(golden_io.GOLDEN_DIR, golden)
    target = golden / GOLDEN_PATHS[0].name
    case = golden_io.load_golden(target)
    case.expected = case.expected.copy()
    case.expected.flat[3] += 1e-3
    golden_io.save_golden(case, target)
    result = _run_checker(tmp_path, "--golden", str(golden), "--cpu-lib", str(cpu_lib.path), "--trt", "skip")
    assert result.returncode == 1, result.stdout + result.stderr
    failing = [line for line in result.stdout.splitlines() if "FAIL" in line]
    assert len(failing) == 2 and all(line.startswith(case.name) and " fp32 " in line for line in failing), failing
    assert ", 2 failed" in result.stdout


def test_check_golden_names_an_unreadable_golden_file(tmp_path: Path, cpu_lib: Any) -> None:
    golden = tmp_path / "golden"
    shutil.copytree(golden_io.GOLDEN_DIR, golden)
    (golden / "zz_broken.npz").write_bytes(b"\x00" * 10)
    result = _run_checker(tmp_path, "--golden", str(golden), "--cpu-lib", str(cpu_lib.path), "--trt", "skip")
    assert result.returncode == 1
    assert str(golden / "zz_broken.npz") in result.stderr


def test_check_golden_require_trt_fails_when_it_cannot_run(tmp_path: Path, cpu_lib: Any) -> None:
    result = _run_checker(tmp_path, "--cpu-lib", str(cpu_lib.path), "--trt", "require",
                          "--plugin", str(tmp_path / "missing.so"))
    assert result.returncode == 1
    assert "--trt require, but" in result.stderr


def test_check_golden_reports_a_spec_that_disagrees_with_the_library(tmp_path: Path, cpu_lib: Any) -> None:
    document = json.loads(golden_io.SPEC_PATH.read_text())
    document["plugin"]["version"] = "2"
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(document))
    result = _run_checker(tmp_path, "--spec", str(spec_path), "--cpu-lib", str(cpu_lib.path), "--trt", "skip")
    assert result.returncode == 1
    assert "contract FAIL: plugin version is '1'" in result.stdout


def test_check_golden_reports_engine_results_per_case_and_precision(
    tmp_path: Path, cpu_lib: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The TensorRT branch's bookkeeping, with the engine replaced (there is no TensorRT here): one row per
    case and precision against Y / Y_fp16, and an engine error is a failed row carrying its message."""
    check_golden, golden_trt = load_tool("check_golden"), load_tool("golden_trt")
    plugin = tmp_path / "libfgad_trt_plugin.so"
    plugin.write_bytes(b"")
    broken = GOLDEN_PATHS[0].stem

    def fake_run_case(spec: Any, case: Any, library: Path, precision: str) -> np.ndarray:
        assert library == plugin
        if case.name == broken and precision == "fp16":
            raise RuntimeError("engine build failed")
        reference = case.expected if precision == "fp32" else case.expected_fp16
        return reference.astype(np.float32 if precision == "fp32" else np.float16)

    monkeypatch.setattr(golden_trt, "unavailable_reason", lambda: None)
    monkeypatch.setattr(golden_trt, "run_case", fake_run_case)
    code = check_golden.main(["--cpu-lib", str(cpu_lib.path), "--plugin", str(plugin)])
    out = capsys.readouterr().out
    assert code == 1
    rows = [line for line in out.splitlines() if " tensorrt " in line]
    assert len(rows) == 2 * len(GOLDEN_PATHS)
    (failed,) = [row for row in rows if "FAIL" in row]
    assert failed.startswith(broken) and " fp16 " in failed and "RuntimeError: engine build failed" in failed
    assert f"{5 * len(GOLDEN_PATHS)} checks on {len(GOLDEN_PATHS)} golden files, 1 failed" in out
