"""Write an archadapt ONNX model into a Triton Inference Server model repository.

The entry has Triton's layout for the onnxruntime backend::

    REPO/NAME/config.pbtxt      model configuration (protobuf text format)
    REPO/NAME/labels.txt        class names, one per line, in label order
    REPO/NAME/VERSION/model.onnx

Example:
    >>> from archadapt_client.triton import write_triton_model
    >>> write_triton_model("model.onnx", "model_repository", "flowers")  # doctest: +SKIP
    PosixPath('model_repository/flowers')
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from archadapt_client.onnx_model import OnnxModelInfo, TensorInfo, read_onnx_info

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.pbtxt"
LABELS_FILE = "labels.txt"
MODEL_FILE = "model.onnx"
DEFAULT_MAX_BATCH_SIZE = 64

# ONNX element type names and the Triton DataType of each.
TRITON_DATA_TYPES = {
    "BOOL": "TYPE_BOOL",
    "UINT8": "TYPE_UINT8",
    "UINT16": "TYPE_UINT16",
    "UINT32": "TYPE_UINT32",
    "UINT64": "TYPE_UINT64",
    "INT8": "TYPE_INT8",
    "INT16": "TYPE_INT16",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
    "FLOAT16": "TYPE_FP16",
    "FLOAT": "TYPE_FP32",
    "DOUBLE": "TYPE_FP64",
    "STRING": "TYPE_STRING",
    "BFLOAT16": "TYPE_BF16",
}

# Triton takes any directory name; this keeps names portable and free of quoting.
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


class TritonExportError(ValueError):
    """The model, name or target cannot make a Triton model repository entry."""


def check_model_name(name: str) -> None:
    """Raise TritonExportError unless ``name`` is a portable Triton model directory name."""
    if not _MODEL_NAME.fullmatch(name):
        raise TritonExportError(
            f"invalid Triton model name {name!r}; use 1 to 128 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )


def _quote(text: str) -> str:
    """Quote ``text`` as a protobuf text-format string."""
    if not text.isprintable():
        raise TritonExportError(f"{text!r} contains control characters; Triton config strings cannot hold them")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _batched_dims(tensor: TensorInfo) -> list[int]:
    """Return the dims of ``tensor`` without its leading batch axis, which must be dynamic."""
    if not tensor.dims:
        raise TritonExportError(f"tensor {tensor.name!r} has no shape; Triton needs its dims")
    batch, *rest = tensor.dims
    if isinstance(batch, int):
        raise TritonExportError(
            f"tensor {tensor.name!r} has a fixed first axis of size {batch}; "
            "a batched Triton model needs a dynamic batch axis"
        )
    dims = []
    for dim in rest:
        # -1 marks a variable size in a Triton config.
        dims.append(dim if isinstance(dim, int) else -1)
    return dims


def _data_type(tensor: TensorInfo) -> str:
    try:
        return TRITON_DATA_TYPES[tensor.element_type]
    except KeyError:
        raise TritonExportError(
            f"tensor {tensor.name!r} has ONNX type {tensor.element_type}, which Triton's onnxruntime backend does not take"
        ) from None


def _tensor_block(tensor: TensorInfo, extra: str = "") -> str:
    dims = ", ".join(str(dim) for dim in _batched_dims(tensor))
    return (
        "  {\n"
        f"    name: {_quote(tensor.name)}\n"
        f"    data_type: {_data_type(tensor)}\n"
        f"    dims: [ {dims} ]\n"
        f"{extra}"
        "  }"
    )


def triton_config(info: OnnxModelInfo, name: str, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE) -> str:
    """Return the config.pbtxt text of a model with the given inputs and outputs.

    Dims leave out the batch axis because ``max_batch_size`` is positive. The first output
    gets ``label_filename: "labels.txt"``, so Triton's classification extension names classes.
    """
    if not 0 < max_batch_size <= 2**31 - 1:
        raise TritonExportError(f"invalid max_batch_size {max_batch_size}; expected 1 to {2**31 - 1}")
    if not info.inputs or not info.outputs:
        raise TritonExportError("the ONNX model has no graph inputs or outputs")
    inputs = ",\n".join(_tensor_block(tensor) for tensor in info.inputs)
    outputs = []
    for index, tensor in enumerate(info.outputs):
        extra = f"    label_filename: {_quote(LABELS_FILE)}\n" if index == 0 else ""
        outputs.append(_tensor_block(tensor, extra))
    return (
        f"name: {_quote(name)}\n"
        'platform: "onnxruntime_onnx"\n'
        'backend: "onnxruntime"\n'
        f"max_batch_size: {max_batch_size}\n"
        f"input [\n{inputs}\n]\n"
        f"output [\n" + ",\n".join(outputs) + "\n]\n"
    )


def write_triton_model(
    model: bytes | str | os.PathLike[str],
    repository: str | os.PathLike[str],
    name: str,
    *,
    version: int = 1,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` (ONNX bytes or a path) as entry ``name`` of the Triton repository ``repository``.

    Returns the entry's directory. Raises TritonExportError when the name is invalid, the model
    lacks archadapt's class names or a dynamic batch axis, or the version already exists and
    ``overwrite`` is False.
    """
    check_model_name(name)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise TritonExportError(f"invalid model version {version!r}; expected an int of at least 1")

    model_bytes = model if isinstance(model, bytes) else Path(model).read_bytes()
    info = read_onnx_info(model_bytes)
    class_names = info.class_names()
    for index, class_name in enumerate(class_names):
        if not class_name or "\n" in class_name or "\r" in class_name:
            raise TritonExportError(f"class name {index} ({class_name!r}) is empty or spans lines; labels.txt needs one line per class")
    config = triton_config(info, name, max_batch_size)

    entry = Path(repository) / name
    version_dir = entry / str(version)
    if (version_dir / MODEL_FILE).exists() and not overwrite:
        raise TritonExportError(f"{version_dir / MODEL_FILE} already exists; pass overwrite=True or choose another version")
    version_dir.mkdir(parents=True, exist_ok=True)
    (version_dir / MODEL_FILE).write_bytes(model_bytes)
    (entry / LABELS_FILE).write_text("".join(f"{class_name}\n" for class_name in class_names), encoding="utf-8")
    (entry / CONFIG_FILE).write_text(config, encoding="utf-8")
    logger.info("wrote Triton model %s version %d with %d classes to %s", name, version, len(class_names), entry)
    return entry
