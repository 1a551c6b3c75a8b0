"""Where an ONNX file's tensors keep their external data, and the check that it stays inside the file's folder.

An ONNX tensor can store its bytes in another file: ``external_data`` entries with a ``location`` relative to
the ``.onnx`` file. onnxruntime and TensorRT's parser open that path as written, so a crafted graph whose
location is ``../../home/user/.ssh/id_rsa`` or ``/etc/shadow`` makes them read (and feed to the network, and
so partly reveal) any file the user can read. :func:`check_external_data` refuses such a graph before either
of them opens it: every location must be a relative path without ``..``, and must resolve (symlinks
followed) to a regular file inside the graph's folder.

The file is read as protobuf wire format, without the ``onnx`` package (the runtime and the bundle checks are
torch- and onnx-free): a walk over the messages that can hold tensors (the graph, its nodes' attributes and
subgraphs, sparse initializers, functions, training info) that skips every other field by its length, on a
memory map, so a graph with gigabytes of inline weights costs no copy.
"""

from __future__ import annotations

import mmap
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

__all__ = ["ExternalDataError", "ExternalTensor", "check_external_data", "external_data_locations"]


class ExternalDataError(ValueError):
    """An ONNX file whose external data is outside its folder, missing, or whose bytes are not valid protobuf."""


@dataclass(frozen=True)
class ExternalTensor:
    tensor: str  # the tensor's name ("" when it has none)
    location: str  # the external_data "location" entry, as written


# Field numbers of onnx.proto (ModelProto, GraphProto, ...) that hold messages which can hold tensors.
_MODEL, _GRAPH, _NODE, _ATTRIBUTE, _TENSOR, _SPARSE, _FUNCTION, _TRAINING, _ENTRY = range(9)
_CHILDREN: dict[int, dict[int, int]] = {
    _MODEL: {7: _GRAPH, 20: _TRAINING, 25: _FUNCTION},  # graph, training_info, functions
    _GRAPH: {1: _NODE, 5: _TENSOR, 15: _SPARSE},  # node, initializer, sparse_initializer
    _NODE: {5: _ATTRIBUTE},  # attribute
    _ATTRIBUTE: {5: _TENSOR, 6: _GRAPH, 10: _TENSOR, 11: _GRAPH, 22: _SPARSE, 23: _SPARSE},  # t g tensors graphs
    _SPARSE: {1: _TENSOR, 2: _TENSOR},  # values, indices
    _FUNCTION: {7: _NODE, 11: _ATTRIBUTE},  # node, attribute_proto (default values)
    _TRAINING: {1: _GRAPH, 2: _GRAPH},  # initialization, algorithm
}
_TENSOR_NAME, _TENSOR_EXTERNAL = 8, 13  # TensorProto.name, TensorProto.external_data
_ENTRY_KEY, _ENTRY_VALUE = 1, 2  # StringStringEntryProto


class _Malformed(Exception):
    pass


def _varint(buf: memoryview | bytes, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Malformed
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(buf: memoryview | bytes, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """``(field number, start, stop)`` of each length-delimited field of the message in ``buf[start:end]``."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(buf, pos, end)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise _Malformed
            yield number, pos, pos + length
            pos += length
        else:  # groups (3, 4) are not in onnx.proto; 6, 7 do not exist
            raise _Malformed
        if pos > end:
            raise _Malformed


def _text(buf: memoryview | bytes, start: int, stop: int) -> str:
    return bytes(buf[start:stop]).decode("utf-8", errors="replace")


def _tensor(buf: memoryview | bytes, start: int, end: int) -> ExternalTensor | None:
    name, location = "", None
    for number, a, b in _fields(buf, start, end):
        if number == _TENSOR_NAME:
            name = _text(buf, a, b)
        elif number == _TENSOR_EXTERNAL:
            key = value = None
            for entry_field, c, d in _fields(buf, a, b):
                if entry_field == _ENTRY_KEY:
                    key = _text(buf, c, d)
                elif entry_field == _ENTRY_VALUE:
                    value = _text(buf, c, d)
            if key == "location":
                location = value or ""
    return None if location is None else ExternalTensor(name, location)


def _walk(buf: memoryview | bytes) -> list[ExternalTensor]:
    found: list[ExternalTensor] = []
    stack = [(_MODEL, 0, len(buf))]
    while stack:
        kind, start, end = stack.pop()
        if kind == _TENSOR:
            tensor = _tensor(buf, start, end)
            if tensor is not None:
                found.append(tensor)
            continue
        children = _CHILDREN[kind]
        for number, a, b in _fields(buf, start, end):
            child = children.get(number)
            if child is not None:
                stack.append((child, a, b))
    return found


def external_data_locations(path: str | os.PathLike[str]) -> list[ExternalTensor]:
    """Every tensor of the ONNX file at ``path`` that has an external-data ``location`` (its name and location).

    Raises :class:`ExternalDataError` when the file is not valid protobuf, ``OSError`` when it cannot be read.
    """
    file = Path(path)
    with open(file, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            raise ExternalDataError(f"{file}: an empty file, not an ONNX graph; re-export it")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            view = memoryview(mapped)
            try:
                return _walk(view)
            except _Malformed:
                raise ExternalDataError(
                    f"{file}: not a valid ONNX file (its protobuf encoding is broken); re-export it"
                ) from None
            finally:
                view.release()


def _outside(location: str) -> bool:
    text = location.replace("\\", "/")
    rel = PurePosixPath(text)
    return (not location or rel.is_absolute() or ".." in rel.parts or re.match(r"^[A-Za-z]:", location) is not None
            or "\x00" in location)


def check_external_data(path: str | os.PathLike[str]) -> list[Path]:
    """The external-data files of the ONNX file at ``path``, each checked to be a regular file inside its folder.

    Refuses (:class:`ExternalDataError`, naming the file, the tensor and the location) an absolute location, one
    with ``..``, one that resolves through a symlink to outside the folder, and one that does not exist. Call it
    before handing a graph from disk to onnxruntime, TensorRT or ``onnx.load``.
    """
    file = Path(path)
    folder = file.parent
    root = folder.resolve()
    files: list[Path] = []
    for entry in external_data_locations(file):
        where = f"{file}: tensor '{entry.tensor}' keeps its data at '{entry.location}'"
        if _outside(entry.location):
            raise ExternalDataError(
                f"{where}, which is not a file inside {folder}; an ONNX graph may only read weights from files "
                "next to it. Do not run this graph unless you trust where it came from; re-export it with fgad-export"
            )
        target = folder.joinpath(*PurePosixPath(entry.location.replace("\\", "/")).parts)
        resolved = target.resolve()
        if resolved != root and root not in resolved.parents:
            raise ExternalDataError(
                f"{where}, which resolves to {resolved}, outside {folder} (a symbolic link); an ONNX graph may only "
                "read weights from files next to it. Replace the link with the file itself, or re-export the graph"
            )
        if not resolved.is_file():
            raise ExternalDataError(
                f"{where}, which does not exist; copy the whole folder again (the weights file travels with the "
                "graph) or re-export it"
            )
        if resolved not in files:
            files.append(resolved)
    return files
