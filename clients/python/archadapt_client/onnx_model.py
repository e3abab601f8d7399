"""Read the metadata, inputs and outputs of an ONNX model without the onnx package.

An ONNX file is a serialized ``onnx.ModelProto``. This module walks its protobuf wire format and
decodes only the fields below (numbers from onnx/onnx.proto), skipping everything else, so the
client needs neither onnx nor onnxruntime to read a model's genotype or to describe its tensors:

- ModelProto: graph = 7, metadata_props = 14 (StringStringEntryProto: key = 1, value = 2);
- GraphProto: input = 11, output = 12, initializer = 5 (TensorProto: name = 8);
- ValueInfoProto: name = 1, type = 2; TypeProto: tensor_type = 1;
- TypeProto.Tensor: elem_type = 1, shape = 2; TensorShapeProto: dim = 1;
- TensorShapeProto.Dimension: dim_value = 1, dim_param = 2.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Wire types of the protobuf encoding.
_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5

# onnx.TensorProto.DataType values and their names.
ELEMENT_TYPES = {
    1: "FLOAT",
    2: "UINT8",
    3: "INT8",
    4: "UINT16",
    5: "INT16",
    6: "INT32",
    7: "INT64",
    8: "STRING",
    9: "BOOL",
    10: "FLOAT16",
    11: "DOUBLE",
    12: "UINT32",
    13: "UINT64",
    16: "BFLOAT16",
}

GENOTYPE_KEY = "genotype"
CLASS_NAMES_KEY = "class_names"
INPUT_SPEC_KEY = "input_spec"


class OnnxFormatError(ValueError):
    """The bytes are not a readable ONNX model."""


@dataclass(frozen=True)
class TensorInfo:
    """One graph input or output.

    Attributes:
        name: Tensor name, e.g. "images".
        element_type: ONNX element type name, e.g. "FLOAT".
        dims: One entry per axis: an int for a fixed size, or the symbolic name (str) of a
            dynamic axis such as the batch axis.
    """

    name: str
    element_type: str
    dims: tuple[int | str, ...]


@dataclass(frozen=True)
class OnnxModelInfo:
    """The parts of an ONNX model that archadapt's client reads."""

    metadata: dict[str, str]
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]

    def genotype(self) -> dict[str, Any]:
        """Return the genotype stored in the metadata; raise OnnxFormatError when it is missing or invalid."""
        genotype: dict[str, Any] = _json_metadata(self.metadata, GENOTYPE_KEY, dict)
        return genotype

    def class_names(self) -> list[str]:
        """Return the class names stored in the metadata; raise OnnxFormatError when they are missing."""
        return [str(name) for name in _json_metadata(self.metadata, CLASS_NAMES_KEY, list)]


def _json_metadata(metadata: dict[str, str], key: str, expected: type) -> Any:
    if key not in metadata:
        raise OnnxFormatError(
            f"the model has no {key!r} metadata (keys: {sorted(metadata)}); is it a model returned by archadapt?"
        )
    try:
        value = json.loads(metadata[key])
    except json.JSONDecodeError as error:
        raise OnnxFormatError(f"the {key!r} metadata is not valid JSON: {error}") from error
    if not isinstance(value, expected):
        raise OnnxFormatError(f"the {key!r} metadata is a {type(value).__name__}; expected a {expected.__name__}")
    return value


def _read_varint(data: memoryview, position: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if position >= len(data):
            raise OnnxFormatError("truncated varint; the file is not a complete ONNX model")
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7
        if shift > 63:
            raise OnnxFormatError("varint longer than 10 bytes; the file is not an ONNX model")


def _fields(data: memoryview) -> Iterator[tuple[int, int, Any]]:
    """Yield (field number, wire type, value) for each field; values of length-delimited fields are memoryviews."""
    position = 0
    while position < len(data):
        key, position = _read_varint(data, position)
        number, wire_type = key >> 3, key & 0x7
        if number == 0:
            raise OnnxFormatError("field number 0; the file is not an ONNX model")
        value: int | memoryview
        if wire_type == _VARINT:
            value, position = _read_varint(data, position)
        elif wire_type == _FIXED64:
            value, position = data[position : position + 8], position + 8
        elif wire_type == _FIXED32:
            value, position = data[position : position + 4], position + 4
        elif wire_type == _LENGTH_DELIMITED:
            length, position = _read_varint(data, position)
            if position + length > len(data):
                raise OnnxFormatError("a field runs past the end of the data; the file is truncated or not ONNX")
            value, position = data[position : position + length], position + length
        else:
            raise OnnxFormatError(f"unsupported protobuf wire type {wire_type}; the file is not an ONNX model")
        yield number, wire_type, value


def _text(value: memoryview) -> str:
    return bytes(value).decode("utf-8", errors="replace")


def _metadata_entry(data: memoryview) -> tuple[str, str]:
    key = value = ""
    for number, wire_type, field_value in _fields(data):
        if wire_type != _LENGTH_DELIMITED:
            continue
        if number == 1:
            key = _text(field_value)
        elif number == 2:
            value = _text(field_value)
    return key, value


def _dimension(data: memoryview) -> int | str:
    for number, wire_type, value in _fields(data):
        if number == 1 and wire_type == _VARINT:
            return int(value)
        if number == 2 and wire_type == _LENGTH_DELIMITED:
            return _text(value)
    return "?"  # neither value nor name: an unknown size


def _tensor_type(data: memoryview) -> tuple[str, tuple[int | str, ...]]:
    element_type = "UNDEFINED"
    dims: list[int | str] = []
    for number, wire_type, value in _fields(data):
        if number == 1 and wire_type == _VARINT:
            element_type = ELEMENT_TYPES.get(int(value), f"TYPE_{value}")
        elif number == 2 and wire_type == _LENGTH_DELIMITED:
            dims = [_dimension(dim) for dim_number, dim_wire, dim in _fields(value) if dim_number == 1 and dim_wire == _LENGTH_DELIMITED]
    return element_type, tuple(dims)


def _value_info(data: memoryview) -> TensorInfo:
    name = ""
    element_type = "UNDEFINED"
    dims: tuple[int | str, ...] = ()
    for number, wire_type, value in _fields(data):
        if wire_type != _LENGTH_DELIMITED:
            continue
        if number == 1:
            name = _text(value)
        elif number == 2:
            for type_number, type_wire, type_value in _fields(value):
                if type_number == 1 and type_wire == _LENGTH_DELIMITED:
                    element_type, dims = _tensor_type(type_value)
    return TensorInfo(name=name, element_type=element_type, dims=dims)


def _initializer_name(data: memoryview) -> str:
    for number, wire_type, value in _fields(data):
        if number == 8 and wire_type == _LENGTH_DELIMITED:
            return _text(value)
    return ""


def read_onnx_info(model: bytes | str | os.PathLike[str]) -> OnnxModelInfo:
    """Read the metadata and the graph inputs and outputs of an ONNX model given as bytes or a path.

    Graph inputs that are initializers (weights listed as inputs by old exporters) are left out.
    Raises OnnxFormatError when the data is not an ONNX model and OSError when the file cannot be read.
    """
    data = model if isinstance(model, bytes) else Path(model).read_bytes()
    view = memoryview(data)
    metadata: dict[str, str] = {}
    inputs: list[TensorInfo] = []
    outputs: list[TensorInfo] = []
    initializers: set[str] = set()
    found_graph = False
    for number, wire_type, value in _fields(view):
        if number == 14 and wire_type == _LENGTH_DELIMITED:
            key, text = _metadata_entry(value)
            metadata[key] = text
        elif number == 7 and wire_type == _LENGTH_DELIMITED:
            found_graph = True
            for graph_number, graph_wire, graph_value in _fields(value):
                if graph_wire != _LENGTH_DELIMITED:
                    continue
                if graph_number == 11:
                    inputs.append(_value_info(graph_value))
                elif graph_number == 12:
                    outputs.append(_value_info(graph_value))
                elif graph_number == 5:
                    initializers.add(_initializer_name(graph_value))
    if not found_graph:
        raise OnnxFormatError("the data contains no ONNX graph; is it an .onnx file?")
    return OnnxModelInfo(
        metadata=metadata,
        inputs=tuple(tensor for tensor in inputs if tensor.name not in initializers),
        outputs=tuple(outputs),
    )
