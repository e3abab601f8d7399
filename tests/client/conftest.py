"""A stand-in Adaptation server on 127.0.0.1 for the client tests.

It replays prepared events or aborts with a prepared status, so the tests
cover the client's side of the protocol. The real server has its own tests.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field

import grpc
import pytest
from google.rpc import status_pb2
from grpc_status import rpc_status

from archadapt_client.v1 import archadapt_pb2, archadapt_pb2_grpc

GENOTYPE = {
    "normal": [["sep_conv_3x3", 0], ["skip_connect", 1]],
    "reduce": [["max_pool_3x3", 0], ["avg_pool_3x3", 1]],
}


def make_server_info() -> archadapt_pb2.ServerInfo:
    return archadapt_pb2.ServerInfo(
        input_spec=archadapt_pb2.InputSpec(channels=3, height=32, width=32, mean=[0.5] * 3, std=[0.25] * 3),
        search_space=archadapt_pb2.SearchSpace(
            primitives=["none", "skip_connect", "sep_conv_3x3"], nodes=4, cells=5, reduce_cells=[1, 3], channels=16
        ),
        limits=archadapt_pb2.RequestLimits(
            max_images=1000, min_classes=2, max_classes=20, max_image_side=512, max_request_bytes=32 << 20
        ),
        archadapt_version="0.1.0",
        checkpoint_id="ckpt-test",
        device="cpu",
        torch_version="2.0.0",
        onnxruntime_version="1.17.0",
        default_inner_steps=10,
        default_finetune_steps=20,
    )


def make_adapt_events(model: bytes, chunk_size: int = 7, **result_fields: object) -> list[archadapt_pb2.AdaptEvent]:
    """Progress events, then ``model`` in chunks, then a result whose fields ``result_fields`` override."""
    events = [
        archadapt_pb2.AdaptEvent(
            progress=archadapt_pb2.Progress(phase=archadapt_pb2.PHASE_VALIDATE, elapsed_seconds=0.1)
        ),
        archadapt_pb2.AdaptEvent(
            progress=archadapt_pb2.Progress(
                phase=archadapt_pb2.PHASE_ADAPT, step=1, total_steps=2, loss=2.5, elapsed_seconds=0.2
            )
        ),
        archadapt_pb2.AdaptEvent(
            progress=archadapt_pb2.Progress(
                phase=archadapt_pb2.PHASE_ADAPT, step=2, total_steps=2, loss=1.5, elapsed_seconds=0.3
            )
        ),
    ]
    for offset in range(0, len(model), chunk_size):
        events.append(
            archadapt_pb2.AdaptEvent(
                model_chunk=archadapt_pb2.ModelChunk(
                    offset=offset, data=model[offset : offset + chunk_size], total_bytes=len(model)
                )
            )
        )
    result = archadapt_pb2.AdaptResult(
        request_id="req-1",
        genotype_json=json.dumps(GENOTYPE),
        edge_probabilities=[
            archadapt_pb2.EdgeProbabilities(cell_type="normal", edge=0, source=0, target=2, probabilities=[0.25, 0.75])
        ],
        metrics=archadapt_pb2.Metrics(
            support_examples=8, validation_examples=4, validation_accuracy=0.75, validation_loss=0.5
        ),
        timings=[
            archadapt_pb2.PhaseTiming(phase=archadapt_pb2.PHASE_VALIDATE, seconds=0.5),
            archadapt_pb2.PhaseTiming(phase=archadapt_pb2.PHASE_ADAPT, seconds=2.0),
        ],
        parameter_count=1234,
        multiply_accumulates=56789,
        model_bytes=len(model),
        model_sha256=hashlib.sha256(model).hexdigest(),
        class_names=["cat", "dog"],
        checkpoint_id="ckpt-test",
    )
    for name, value in result_fields.items():
        setattr(result, name, value)
    events.append(archadapt_pb2.AdaptEvent(result=result))
    return events


@dataclass
class FakeAdaptation(archadapt_pb2_grpc.AdaptationServicer):
    """Servicer that records requests and replays ``events`` or aborts with ``abort_status``."""

    events: list[archadapt_pb2.AdaptEvent] = field(default_factory=list)
    abort_status: status_pb2.Status | None = None
    requests: list[archadapt_pb2.AdaptRequest] = field(default_factory=list)

    def Adapt(self, request, context):  # noqa: N802 - the gRPC method name
        self.requests.append(request)
        if self.abort_status is not None:
            context.abort_with_status(rpc_status.to_status(self.abort_status))
        yield from self.events

    def GetServerInfo(self, request, context):  # noqa: N802 - the gRPC method name
        if self.abort_status is not None:
            context.abort_with_status(rpc_status.to_status(self.abort_status))
        return make_server_info()


@pytest.fixture
def adapt_events() -> Callable[..., list[archadapt_pb2.AdaptEvent]]:
    """The make_adapt_events function, for tests that cannot import this conftest module."""
    return make_adapt_events


@pytest.fixture
def genotype() -> dict[str, list[list[object]]]:
    """The genotype that make_adapt_events puts into the result."""
    return GENOTYPE


@dataclass
class RunningServer:
    servicer: FakeAdaptation
    address: str


@pytest.fixture
def fake_server() -> Iterator[RunningServer]:
    """Start a FakeAdaptation server on 127.0.0.1 with a free port and stop it after the test."""
    servicer = FakeAdaptation()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    archadapt_pb2_grpc.add_AdaptationServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield RunningServer(servicer=servicer, address=f"127.0.0.1:{port}")
    finally:
        server.stop(grace=None)
