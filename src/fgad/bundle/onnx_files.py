"""The files an ONNX graph makes onnxruntime read besides itself: its external-data files, read from the graph.

A graph above protobuf's 2 GB limit keeps its weights in files next to it (``model.onnx.data``); each tensor
stored that way names its file in ``external_data`` (key ``location``) and has ``data_location = EXTERNAL``.
:func:`external_data_files` finds them without the ``onnx`` package (the runtime does not install it): a
small reader of the protobuf wire format walks the model -> graph -> initializers, sparse initializers and
node attributes (subgraphs included) and skips everything else by its length, so a 1 GB graph with embedded
weights costs one pass over its field headers. Malformed input raises ``ValueError``.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator

__all__ = ["external_data_files"]

# field numbers of onnx.proto (ONNX IR version 9/10)
_MODEL_GRAPH, _MODEL_FUNCTIONS = 7, 25
_FUNCTION_NODE = 7
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_SPARSE_INITIALIZER = 1, 5, 15
_NODE_ATTRIBUTE = 5
_ATTR_T, _ATTR_G, _ATTR_TENSORS, _ATTR_GRAPHS, _ATTR_SPARSE, _ATTR_SPARSES = 5, 6, 10, 11, 22, 23
_SPARSE_VALUES, _SPARSE_INDICES = 1, 2
_TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 13, 14
_ENTRY_KEY, _ENTRY_VALUE = 1, 2
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL
_MAX_DEPTH = 64  # nested subgraphs (If/Loop bodies) deeper than this are refused as malformed


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise ValueError("truncated or malformed varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, value or payload start, payload end) of each field in ``buf[start:end]``."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value, pos
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise ValueError("a length-delimited field runs past its message")
            yield number, wire, pos, pos + length
            pos += length
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if pos > end:
            raise ValueError("a fixed-size field runs past its message")


def _tensor(buf: memoryview, start: int, end: int, found: set[str]) -> None:
    location, external = None, False
    for number, wire, a, b in _fields(buf, start, end):
        if number == _TENSOR_DATA_LOCATION and wire == 0:
            external = a == _EXTERNAL
        elif number == _TENSOR_EXTERNAL_DATA and wire == 2:
            key = value = None
            for n, w, x, y in _fields(buf, a, b):
                if w == 2 and n == _ENTRY_KEY:
                    key = bytes(buf[x:y]).decode("utf-8", "replace")
                elif w == 2 and n == _ENTRY_VALUE:
                    value = bytes(buf[x:y]).decode("utf-8", "replace")
            if key == "location":
                location = value
    if external and location is not None:
        found.add(location)


def _sparse(buf: memoryview, start: int, end: int, found: set[str]) -> None:
    for number, wire, a, b in _fields(buf, start, end):
        if wire == 2 and number in (_SPARSE_VALUES, _SPARSE_INDICES):
            _tensor(buf, a, b, found)


def _node(buf: memoryview, start: int, end: int, found: set[str], depth: int) -> None:
    for number, wire, a, b in _fields(buf, start, end):
        if number != _NODE_ATTRIBUTE or wire != 2:
            continue
        for n, w, x, y in _fields(buf, a, b):
            if w != 2:
                continue
            if n in (_ATTR_T, _ATTR_TENSORS):
                _tensor(buf, x, y, found)
            elif n in (_ATTR_G, _ATTR_GRAPHS):
                _graph(buf, x, y, found, depth + 1)
            elif n in (_ATTR_SPARSE, _ATTR_SPARSES):
                _sparse(buf, x, y, found)


def _graph(buf: memoryview, start: int, end: int, found: set[str], depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise ValueError(f"subgraphs nested deeper than {_MAX_DEPTH}")
    for number, wire, a, b in _fields(buf, start, end):
        if wire != 2:
            continue
        if number == _GRAPH_INITIALIZER:
            _tensor(buf, a, b, found)
        elif number == _GRAPH_SPARSE_INITIALIZER:
            _sparse(buf, a, b, found)
        elif number == _GRAPH_NODE:
            _node(buf, a, b, found, depth)


def external_data_files(path: str | os.PathLike[str]) -> set[str]:
    """The ``location`` of every tensor of the ONNX model at ``path`` whose data is stored externally.

    Locations are as the graph records them (relative to the graph's folder). Raises ``ValueError`` when the
    file is not a well-formed protobuf message.
    """
    found: set[str] = set()
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            raise ValueError("empty file")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            buf = memoryview(mapped)
            try:
                for number, wire, a, b in _fields(buf, 0, size):
                    if wire != 2:
                        continue
                    if number == _MODEL_GRAPH:
                        _graph(buf, a, b, found, 0)
                    elif number == _MODEL_FUNCTIONS:
                        for n, w, x, y in _fields(buf, a, b):
                            if n == _FUNCTION_NODE and w == 2:
                                _node(buf, x, y, found, 0)
            finally:
                buf.release()
    return found
