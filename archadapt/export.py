"""ONNX export of a derived network, with metadata and a parity check in onnxruntime."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import threading
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import onnx
import torch

from archadapt import __version__
from archadapt.errors import ExportError
from archadapt.network import DerivedNetwork
from archadapt.search_space import InputSpec

logger = logging.getLogger(__name__)

# The exporter logs one warning per torchvision operator it cannot register when torchvision is
# absent; archadapt never uses those operators.
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
# onnxscript and onnx_ir log every optimization pass at INFO, about 100 lines per export.
for _name in ("onnxscript", "onnx_ir"):
    logging.getLogger(_name).setLevel(logging.WARNING)

# torch.export keeps its dispatch modes, and the warnings module its filters, in process-wide
# state, so two exports in threads of one process break each other ("ProxyTorchDispatchMode slot
# already occupied"). Exports therefore take turns.
_EXPORT_LOCK = threading.Lock()

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
OPSET = 18


@dataclass(frozen=True)
class ExportedModel:
    onnx_bytes: bytes
    max_abs_diff: float  # largest |ONNX - PyTorch| over the parity batches


def export_onnx(
    network: DerivedNetwork,
    spec: InputSpec,
    class_names: list[str],
    checkpoint_id: str,
    parity_images: torch.Tensor | None = None,
    tolerance: float = 1e-3,
) -> ExportedModel:
    """Export `network` to ONNX, attach metadata and check it against PyTorch.

    The graph takes `images`, float32 (N, C, H, W) in [0, 1] with a dynamic batch N, and
    returns `logits` (N, classes). The model is checked in onnxruntime at batch 1 and at a
    larger batch; ExportError is raised when any logit differs by more than `tolerance`.
    """
    network = network.eval().to("cpu")
    example = torch.rand(2, spec.channels, spec.height, spec.width, generator=torch.Generator().manual_seed(0))
    batch = torch.export.Dim("batch", min=1, max=65536)
    with _one_export_at_a_time(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter warns about its own internals
        program = torch.onnx.export(
            network,
            (example,),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes={"images": {0: batch}},
            opset_version=OPSET,
            dynamo=True,
            verbose=False,
        )
    model = program.model_proto
    remove_exporter_annotations(model)
    metadata = {
        "archadapt_version": __version__,
        "checkpoint_id": checkpoint_id,
        "class_names": json.dumps(class_names),
        "input_spec": json.dumps(spec.to_dict()),
        "genotype": network.genotype.to_json(),
    }
    del model.metadata_props[:]
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name = "archadapt"
    model.producer_version = __version__
    onnx.checker.check_model(model)
    onnx_bytes = model.SerializeToString()

    if parity_images is None:
        parity_images = torch.rand(8, spec.channels, spec.height, spec.width, generator=torch.Generator().manual_seed(1))
    max_abs_diff = check_parity(network, onnx_bytes, parity_images.cpu(), tolerance)
    return ExportedModel(onnx_bytes=onnx_bytes, max_abs_diff=max_abs_diff)


def remove_exporter_annotations(model: onnx.ModelProto) -> None:
    """Delete the metadata that the exporter attaches to graphs, functions, nodes and values.

    The annotations are for debugging the exporter: FX node names, module paths and stack traces
    that contain absolute paths of the source files. Without them the model's bytes depend only
    on the network and the model-level metadata, not on where archadapt is installed.
    """
    _remove_graph_annotations(model.graph)
    for function in model.functions:
        del function.metadata_props[:]
        _remove_node_annotations(function.node)


def _remove_graph_annotations(graph: onnx.GraphProto) -> None:
    del graph.metadata_props[:]
    for value in [*graph.input, *graph.output, *graph.value_info, *graph.initializer]:
        del value.metadata_props[:]
    _remove_node_annotations(graph.node)


def _remove_node_annotations(nodes: Iterable[onnx.NodeProto]) -> None:
    for node in nodes:
        del node.metadata_props[:]
        for attribute in node.attribute:
            subgraphs = list(attribute.graphs)
            if attribute.HasField("g"):
                subgraphs.append(attribute.g)
            for subgraph in subgraphs:
                _remove_graph_annotations(subgraph)


def check_parity(network: torch.nn.Module, onnx_bytes: bytes, images: torch.Tensor, tolerance: float) -> float:
    """Compare onnxruntime with PyTorch at batch 1 and at the full batch; return the max |diff|."""
    import onnxruntime

    session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch in (images[:1], images):
        with torch.no_grad():
            expected = network(batch).numpy()
        actual = session.run([OUTPUT_NAME], {INPUT_NAME: batch.numpy().astype(np.float32)})[0]
        if actual.shape != expected.shape:
            raise ExportError(f"ONNX output shape {actual.shape} differs from PyTorch {expected.shape}")
        worst = max(worst, float(np.abs(actual - expected).max()))
    if worst > tolerance:
        raise ExportError(f"ONNX logits differ from PyTorch by {worst:.2e}; the tolerance is {tolerance:.0e}")
    return worst


def read_metadata(onnx_bytes: bytes) -> dict[str, str]:
    model = onnx.load_model(io.BytesIO(onnx_bytes))
    return {entry.key: entry.value for entry in model.metadata_props}


@contextlib.contextmanager
def _one_export_at_a_time() -> Iterator[None]:
    """Hold the export lock, waiting in short slices so that the waiting thread stays interruptible."""
    while not _EXPORT_LOCK.acquire(timeout=0.1):
        pass
    try:
        yield
    finally:
        _EXPORT_LOCK.release()
