"""Client calls against a stand-in server on 127.0.0.1: errors, stream reassembly and verification."""

from __future__ import annotations

import hashlib
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from archadapt_client import ArchadaptError, Client
from archadapt_client.client import ProgressUpdate
from archadapt_client.v1 import archadapt_pb2

MODEL = bytes(range(256)) * 3 + b"tail"
IMAGES = np.zeros((2, 4, 4), np.uint8)


def bad_request_status(message: str, violations: list[tuple[str, str]]) -> status_pb2.Status:
    detail = any_pb2.Any()
    detail.Pack(
        error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
                for field, description in violations
            ]
        )
    )
    return status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=message, details=[detail])


def test_bad_request_becomes_archadapt_error(fake_server) -> None:
    fake_server.servicer.abort_status = bad_request_status(
        "the request has 2 invalid fields",
        [("labels[1]", "label 7 is not below the 2 classes"), ("images[0].raw.shape", "has 2 channels")],
    )

    with Client(fake_server.address, timeout=30) as client, pytest.raises(ArchadaptError) as raised:
        client.adapt(IMAGES, [0, 1])

    error = raised.value
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.code_name == "INVALID_ARGUMENT"
    assert error.message == "the request has 2 invalid fields"
    assert error.field_violations == [
        ("labels[1]", "label 7 is not below the 2 classes"),
        ("images[0].raw.shape", "has 2 channels"),
    ]
    assert str(error) == "INVALID_ARGUMENT: the request has 2 invalid fields"
    assert isinstance(error.__cause__, grpc.RpcError)


def test_info_error_without_details(fake_server) -> None:
    fake_server.servicer.abort_status = status_pb2.Status(code=code_pb2.UNAVAILABLE, message="loading checkpoint")

    with Client(fake_server.address, timeout=30) as client, pytest.raises(ArchadaptError) as raised:
        client.info()

    assert raised.value.code is grpc.StatusCode.UNAVAILABLE
    assert raised.value.message == "loading checkpoint"
    assert raised.value.field_violations == []


def test_unreachable_server_error() -> None:
    with Client("127.0.0.1:1", timeout=5) as client, pytest.raises(ArchadaptError) as raised:
        client.info()

    assert raised.value.code is grpc.StatusCode.UNAVAILABLE


def test_info_returns_server_info(fake_server) -> None:
    with Client(fake_server.address, timeout=30) as client:
        info = client.info()

    assert info.checkpoint_id == "ckpt-test"
    assert info.input_spec.channels == 3
    assert list(info.search_space.reduce_cells) == [1, 3]


def test_adapt_reassembles_model(fake_server, genotype, adapt_events, tmp_path: Path) -> None:
    fake_server.servicer.events = adapt_events(MODEL)
    updates: list[ProgressUpdate] = []

    with Client(fake_server.address, timeout=30) as client:
        result = client.adapt(IMAGES, [0, 1], ["cat", "dog"], updates.append, seed=5, inner_steps=2)

    assert result.onnx_model == MODEL
    assert result.model_sha256 == hashlib.sha256(MODEL).hexdigest()
    assert result.genotype == genotype
    assert result.timings == {"validate": 0.5, "adapt": 2.0}
    assert result.metrics.validation_accuracy == 0.75
    assert result.metrics.validation_examples == 4
    assert result.parameter_count == 1234
    assert result.multiply_accumulates == 56789
    assert result.class_names == ["cat", "dog"]
    assert result.request_id == "req-1"
    assert result.checkpoint_id == "ckpt-test"
    assert result.edge_probabilities[0].probabilities == (0.25, 0.75)
    assert result.edge_probabilities[0].target == 2
    assert [(u.phase, u.step, u.total_steps) for u in updates] == [("validate", 0, 0), ("adapt", 1, 2), ("adapt", 2, 2)]
    assert updates[1].loss == 2.5

    request = fake_server.servicer.requests[0]
    assert request.options.seed == 5
    assert request.options.inner_steps == 2
    assert list(request.class_names) == ["cat", "dog"]

    saved = result.save(tmp_path / "model.onnx")
    assert saved.read_bytes() == MODEL


def test_adapt_sha_mismatch_error(fake_server, adapt_events) -> None:
    fake_server.servicer.events = adapt_events(MODEL, model_sha256="0" * 64)

    with Client(fake_server.address, timeout=30) as client, pytest.raises(ArchadaptError) as raised:
        client.adapt(IMAGES, [0, 1])

    assert raised.value.code is grpc.StatusCode.DATA_LOSS
    assert "SHA-256" in raised.value.message


def test_adapt_size_mismatch_error(fake_server, adapt_events) -> None:
    fake_server.servicer.events = adapt_events(MODEL, model_bytes=len(MODEL) + 1)

    with Client(fake_server.address, timeout=30) as client, pytest.raises(ArchadaptError) as raised:
        client.adapt(IMAGES, [0, 1])

    assert raised.value.code is grpc.StatusCode.DATA_LOSS
    assert f"received {len(MODEL)} model bytes" in raised.value.message


def test_adapt_missing_result_error(fake_server, adapt_events) -> None:
    fake_server.servicer.events = adapt_events(MODEL)[:-1]

    with Client(fake_server.address, timeout=30) as client, pytest.raises(ArchadaptError) as raised:
        client.adapt(IMAGES, [0, 1])

    assert raised.value.code is grpc.StatusCode.DATA_LOSS
    assert "ended without an AdaptResult" in raised.value.message


def test_adapt_chunk_gap_error(fake_server, adapt_events) -> None:
    events = adapt_events(MODEL)
    chunk_indices = [i for i, event in enumerate(events) if event.WhichOneof("event") == "model_chunk"]
    del events[chunk_indices[1]]
    fake_server.servicer.events = events

    with Client(fake_server.address, timeout=30) as client, pytest.raises(ArchadaptError) as raised:
        client.adapt(IMAGES, [0, 1])

    assert raised.value.code is grpc.StatusCode.DATA_LOSS
    assert "model chunk at offset 14 arrived after 7 bytes" in raised.value.message


def test_adapt_event_after_result_error(fake_server, adapt_events) -> None:
    events = adapt_events(MODEL)
    events.append(archadapt_pb2.AdaptEvent(progress=archadapt_pb2.Progress(phase=archadapt_pb2.PHASE_EXPORT)))
    fake_server.servicer.events = events

    with Client(fake_server.address, timeout=30) as client, pytest.raises(ArchadaptError) as raised:
        client.adapt(IMAGES, [0, 1])

    assert raised.value.code is grpc.StatusCode.DATA_LOSS
    assert "progress event after the AdaptResult" in raised.value.message


def test_progress_callback_error_propagates(fake_server, adapt_events) -> None:
    fake_server.servicer.events = adapt_events(MODEL)

    def fail(update: ProgressUpdate) -> None:
        raise RuntimeError(f"stop at {update.phase}")

    with Client(fake_server.address, timeout=30) as client, pytest.raises(RuntimeError, match="stop at validate"):
        client.adapt(IMAGES, [0, 1], on_progress=fail)


def test_request_over_message_limit_error(fake_server) -> None:
    images = np.zeros((4, 64, 64, 3), np.uint8)

    with Client(fake_server.address, timeout=30, max_message_bytes=1024) as client:
        with pytest.raises(ArchadaptError) as raised:
            client.adapt(images, [0, 1, 0, 1])

    assert raised.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_message_bytes=1024" in raised.value.message
    assert fake_server.servicer.requests == []


def test_invalid_address_error() -> None:
    with pytest.raises(ValueError, match=r"invalid server address ''"):
        Client("")
