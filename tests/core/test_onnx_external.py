"""fgad.core.onnx_external: external-data locations read without onnx, refused outside the graph's folder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from fgad.core.onnx_external import ExternalDataError, check_external_data, external_data_locations

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def _external(tensor, location: str, length: int) -> None:  # noqa: ANN001
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


def _add_model(folder: Path, location: str = "weights.bin", name: str = "model.onnx") -> Path:
    """y = x + w, ``w`` (2x2 float) kept in ``location``; that file is written when it is inside ``folder``."""
    w = np.arange(4, dtype=np.float32).reshape(2, 2)
    init = numpy_helper.from_array(w, "w")
    _external(init, location, w.nbytes)
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])], [init])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    folder.mkdir(parents=True, exist_ok=True)
    if location and not os.path.isabs(location) and ".." not in location and ":" not in location:
        w.tofile(folder / location)
    path = folder / name
    onnx.save(model, str(path))
    return path


def test_locations_are_found_wherever_onnx_allows_tensors(tmp_path: Path) -> None:
    """Initializers, sparse initializers, node attributes, subgraphs and functions: the same list onnx sees."""
    def ext(name: str, location: str) -> TensorProto:
        t = numpy_helper.from_array(np.ones(2, dtype=np.float32), name)
        _external(t, location, 8)
        return t

    const = helper.make_node("Constant", [], ["c"], value=ext("in_attr", "a.bin"))
    branch = helper.make_graph([helper.make_node("Constant", [], ["b"], value=ext("in_branch", "b.bin"))], "then",
                               [], [helper.make_tensor_value_info("b", TensorProto.FLOAT, [2])])
    if_node = helper.make_node("If", ["cond"], ["o"], then_branch=branch, else_branch=branch)
    sparse = helper.make_sparse_tensor(ext("sparse_values", "s.bin"),
                                       numpy_helper.from_array(np.array([0, 1], dtype=np.int64), "idx"), [4])
    graph = helper.make_graph([const, if_node], "g", [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("o", TensorProto.FLOAT, [2])],
                              [ext("plain", "w.bin"), numpy_helper.from_array(np.zeros(3, np.float32), "inline")],
                              sparse_initializer=[sparse])
    fn_node = helper.make_node("Constant", [], ["k"], value=ext("in_function", "f.bin"))
    function = helper.make_function("custom", "F", [], ["k"], [fn_node], [helper.make_opsetid("", 17)])
    model = helper.make_model(graph, functions=[function], opset_imports=[helper.make_opsetid("", 17),
                                                                          helper.make_opsetid("custom", 1)])
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))

    found = {(t.tensor, t.location) for t in external_data_locations(path)}
    assert found == {("plain", "w.bin"), ("in_attr", "a.bin"), ("in_branch", "b.bin"),
                     ("sparse_values", "s.bin"), ("in_function", "f.bin")}


def test_a_graph_saved_with_external_data_passes(tmp_path: Path) -> None:
    path = _add_model(tmp_path / "bundle")
    assert check_external_data(path) == [(tmp_path / "bundle" / "weights.bin").resolve()]
    model = onnx.load(str(path))  # and onnx agrees on what it reads
    assert numpy_helper.to_array(model.graph.initializer[0]).tolist() == [[0, 1], [2, 3]]


def test_a_graph_without_external_data_passes(tmp_path: Path) -> None:
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
                              [numpy_helper.from_array(np.ones((64, 64), np.float32), "big_inline")])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), str(path))
    assert external_data_locations(path) == [] and check_external_data(path) == []


@pytest.mark.parametrize("location", ["../secret.bin", "sub/../../secret.bin", "/etc/passwd", "C:\\secret.bin",
                                      "..\\secret.bin", ""])
def test_a_location_outside_the_folder_is_refused(tmp_path: Path, location: str) -> None:
    (tmp_path / "secret.bin").write_bytes(b"\0" * 16)
    path = _add_model(tmp_path / "bundle", location)
    with pytest.raises(ExternalDataError) as caught:
        check_external_data(path)
    message = str(caught.value)
    assert str(path) in message and "tensor 'w'" in message and f"'{location}'" in message
    assert "not a file inside" in message


def test_a_symlink_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "secret.bin").write_bytes(b"\0" * 16)
    path = _add_model(tmp_path / "bundle", "link.bin")
    (tmp_path / "bundle" / "link.bin").unlink()
    (tmp_path / "bundle" / "link.bin").symlink_to(tmp_path / "secret.bin")
    with pytest.raises(ExternalDataError, match="outside .*symbolic link"):
        check_external_data(path)


def test_a_missing_external_file_is_named(tmp_path: Path) -> None:
    path = _add_model(tmp_path / "bundle")
    (tmp_path / "bundle" / "weights.bin").unlink()
    with pytest.raises(ExternalDataError, match="weights.bin.*does not exist.*copy the whole folder"):
        check_external_data(path)


def test_broken_protobuf_is_an_external_data_error(tmp_path: Path) -> None:
    path = _add_model(tmp_path / "bundle")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ExternalDataError, match="not a valid ONNX file"):
        check_external_data(path)


def test_the_runtime_refuses_before_onnxruntime_opens_the_graph(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    ort = pytest.importorskip("onnxruntime")
    from fgad.bundle import BundleError
    from fgad.runtime.backends.ort import OrtBackend

    good = _add_model(tmp_path / "good")
    assert OrtBackend(good, input_name="x").run(np.ones((2, 2), np.float32))["y"].tolist() == [[1, 2], [3, 4]]

    (tmp_path / "secret.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    evil = _add_model(tmp_path / "evil", "../secret.bin")

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("onnxruntime was handed the graph")

    monkeypatch.setattr(ort, "InferenceSession", never)
    with pytest.raises(BundleError, match=r"engine.file.*'\.\./secret\.bin'.*not a file inside") as caught:
        OrtBackend(evil, input_name="x")
    assert caught.value.field == "engine.file"
