"""Retries with exponential backoff: only on UNAVAILABLE, never after an Adapt stream has received data.

A stand-in server on 127.0.0.1 fails a set number of calls with a chosen status code and counts
every call it receives.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field

import grpc
import numpy as np
import pytest

from archadapt_client import ArchadaptError, Client, RetryPolicy
from archadapt_client.v1 import archadapt_pb2, archadapt_pb2_grpc

MODEL = b"model-bytes" * 20
IMAGES = np.zeros((2, 4, 4), np.uint8)
FAST_RETRY = RetryPolicy(max_attempts=4, initial_backoff=0.05, max_backoff=0.2, jitter=0.0)


@dataclass
class FlakyAdaptation(archadapt_pb2_grpc.AdaptationServicer):
    """Fail the first ``failures`` calls with ``code``; Adapt first sends ``events_before_failure`` events."""

    events: list[archadapt_pb2.AdaptEvent] = field(default_factory=list)
    code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    failures: int = 0
    events_before_failure: int = 0
    calls: list[str] = field(default_factory=list)

    def _should_fail(self, method: str) -> bool:
        self.calls.append(method)
        return len(self.calls) <= self.failures

    def GetServerInfo(self, request, context):  # noqa: N802 - the gRPC method name
        if self._should_fail("GetServerInfo"):
            context.abort(self.code, "try again later")
        return archadapt_pb2.ServerInfo(checkpoint_id="ckpt-test")

    def Adapt(self, request, context):  # noqa: N802 - the gRPC method name
        if self._should_fail("Adapt"):
            yield from self.events[: self.events_before_failure]
            context.abort(self.code, "try again later")
        yield from self.events


def serve(servicer: FlakyAdaptation, port: int = 0) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    archadapt_pb2_grpc.add_AdaptationServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server, bound


@pytest.fixture
def flaky(adapt_events) -> Iterator[tuple[FlakyAdaptation, str]]:
    servicer = FlakyAdaptation(events=adapt_events(MODEL))
    server, port = serve(servicer)
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


def test_info_retries_unavailable(flaky) -> None:
    servicer, address = flaky
    servicer.failures = 2

    with Client(address, timeout=30, retry=FAST_RETRY) as client:
        info = client.info()

    assert info.checkpoint_id == "ckpt-test"
    assert servicer.calls == ["GetServerInfo"] * 3


def test_info_gives_up_after_max_attempts(flaky) -> None:
    servicer, address = flaky
    servicer.failures = 10

    with Client(address, timeout=30, retry=FAST_RETRY) as client, pytest.raises(ArchadaptError) as raised:
        client.info()

    assert raised.value.code == grpc.StatusCode.UNAVAILABLE
    assert len(servicer.calls) == FAST_RETRY.max_attempts


@pytest.mark.parametrize(
    "code",
    [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.RESOURCE_EXHAUSTED],
)
def test_other_codes_not_retried(flaky, code: grpc.StatusCode) -> None:
    servicer, address = flaky
    servicer.failures, servicer.code = 1, code

    with Client(address, timeout=30, retry=FAST_RETRY) as client:
        with pytest.raises(ArchadaptError) as info_error:
            client.info()
        assert info_error.value.code == code
        assert client.info().checkpoint_id == "ckpt-test"

    assert servicer.calls == ["GetServerInfo", "GetServerInfo"]


def test_adapt_retries_before_first_event(flaky) -> None:
    servicer, address = flaky
    servicer.failures = 2

    with Client(address, timeout=30, retry=FAST_RETRY) as client:
        result = client.adapt(IMAGES, [0, 1])

    assert result.onnx_model == MODEL
    assert servicer.calls == ["Adapt"] * 3


def test_adapt_not_retried_after_data(flaky) -> None:
    servicer, address = flaky
    servicer.failures, servicer.events_before_failure = 1, 2
    progress = []

    with Client(address, timeout=30, retry=FAST_RETRY) as client, pytest.raises(ArchadaptError) as raised:
        client.adapt(IMAGES, [0, 1], on_progress=progress.append)

    assert raised.value.code == grpc.StatusCode.UNAVAILABLE
    assert servicer.calls == ["Adapt"]
    assert len(progress) == 2


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_retry_reaches_server_that_starts_late() -> None:
    """The first attempts find no server listening (UNAVAILABLE); a later one reaches it."""
    port = free_port()
    servicer = FlakyAdaptation()
    started: list[grpc.Server] = []
    timer = threading.Timer(0.6, lambda: started.append(serve(servicer, port)[0]))
    policy = RetryPolicy(max_attempts=8, initial_backoff=0.2, multiplier=1.5, max_backoff=1.0, jitter=0.0)
    timer.start()
    try:
        began = time.monotonic()
        with Client(f"127.0.0.1:{port}", timeout=30, retry=policy) as client:
            info = client.info()
        elapsed = time.monotonic() - began
    finally:
        timer.join()
        for server in started:
            server.stop(grace=None)

    assert info.checkpoint_id == "ckpt-test"
    assert elapsed >= 0.5
    assert servicer.calls == ["GetServerInfo"]


def test_deadline_bounds_all_retries() -> None:
    """With nothing listening, the retries stop when the call's deadline would pass."""
    policy = RetryPolicy(max_attempts=50, initial_backoff=0.2, max_backoff=0.2, jitter=0.0)
    began = time.monotonic()
    with Client(f"127.0.0.1:{free_port()}", timeout=1.0, retry=policy) as client, pytest.raises(ArchadaptError) as raised:
        client.info()
    elapsed = time.monotonic() - began

    assert raised.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    assert elapsed < 3.0


def test_backoff_grows_exponentially_to_cap() -> None:
    policy = RetryPolicy(initial_backoff=0.5, multiplier=2.0, max_backoff=3.0)
    assert [policy.backoff(retry) for retry in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"max_attempts": 0}, "invalid max_attempts 0"),
        ({"initial_backoff": 0}, "invalid initial_backoff 0"),
        ({"multiplier": 0.5}, "invalid multiplier 0.5"),
        ({"initial_backoff": 2.0, "max_backoff": 1.0}, "invalid max_backoff 1.0"),
        ({"jitter": 1.5}, "invalid jitter 1.5"),
    ],
)
def test_retry_policy_rejects_invalid(arguments: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetryPolicy(**arguments)


def test_token_sent_as_bearer_metadata() -> None:
    seen: list[tuple[tuple[str, str], ...]] = []

    class RecordingAdaptation(archadapt_pb2_grpc.AdaptationServicer):
        def GetServerInfo(self, request, context):  # noqa: N802 - the gRPC method name
            seen.append(tuple((item.key, item.value) for item in context.invocation_metadata()))
            return archadapt_pb2.ServerInfo(checkpoint_id="recorded")

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    archadapt_pb2_grpc.add_AdaptationServicer_to_server(RecordingAdaptation(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with Client(f"127.0.0.1:{port}", timeout=30, token="abc.DEF-123") as client:
            assert client.info().checkpoint_id == "recorded"
    finally:
        server.stop(grace=None)

    assert ("authorization", "Bearer abc.DEF-123") in seen[0]


@pytest.mark.parametrize("token", ["", "two words", "Bearer\tx"])
def test_client_rejects_invalid_token(token: str) -> None:
    with pytest.raises(ValueError, match="invalid token"):
        Client("127.0.0.1:1", token=token)


def test_client_rejects_half_client_certificate(tmp_path) -> None:
    with pytest.raises(ValueError, match="certificate_chain and private_key must be given together"):
        Client("127.0.0.1:1", certificate_chain=b"-----BEGIN CERTIFICATE-----")


def test_client_rejects_non_pem_root(tmp_path) -> None:
    path = tmp_path / "ca.pem"
    path.write_text("not pem")
    with pytest.raises(ValueError, match="root_certificates is not PEM data"):
        Client("127.0.0.1:1", root_certificates=path)
