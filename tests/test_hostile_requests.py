"""A corpus of malformed and hostile requests against a real server on loopback.

Each case sends one bad request to one RPC and expects one status code. After every case the
server must still return GetServerInfo and report SERVING, and at the end it must still run a
job to success. The server's limits are set low (50 images, 10 classes, 2 MiB messages), so
oversized requests stay cheap to build.

A second corpus sends bad authorization metadata to a server that requires a bearer token.
"""

from __future__ import annotations

import base64
import io
import logging
import math
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from archadapt.checkpoint import Checkpoint
from archadapt_client import Client
from archadapt_client.v1 import archadapt_pb2 as pb
from archadapt_client.v1 import archadapt_pb2_grpc as pb_grpc
from server.app import RunningServer, create_server
from server.jobs import JobLimits
from server.request_decoding import RequestLimits
from server.security import BearerTokenInterceptor, ServerSecurity

LIMITS = RequestLimits(
    max_images=50, max_classes=10, max_image_side=256, max_image_pixels=200 * 200,
    max_request_bytes=2 * 1024 * 1024, max_dataset_bytes=3 * 1024 * 1024,
)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MIB = 1024 * 1024
QUICK = pb.AdaptOptions(seed=1, inner_steps=1, finetune_steps=2)
INVALID = grpc.StatusCode.INVALID_ARGUMENT


# ---------------------------------------------------------------------------------------------
# Building blocks of bad requests
# ---------------------------------------------------------------------------------------------


def noise(seed: int, shape: tuple[int, ...] = (28, 28)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def raw(image: np.ndarray) -> pb.Image:
    dtype = pb.FLOAT32 if image.dtype == np.float32 else pb.UINT8
    return pb.Image(raw=pb.RawArray(dtype=dtype, shape=list(image.shape), data=image.astype(image.dtype.newbyteorder("<")).tobytes()))


def encoded(image: np.ndarray, image_format: str) -> pb.Image:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=image_format)
    return pb.Image(encoded=buffer.getvalue())


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_declaring(width: int, height: int) -> pb.Image:
    """A PNG whose header declares width x height pixels, followed by a few bytes of pixel data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    data = PNG_SIGNATURE + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + png_chunk(b"IEND", b"")
    return pb.Image(encoded=data)


def images_with(index: int, image: pb.Image, count: int = 6) -> list[pb.Image]:
    images = [raw(noise(i)) for i in range(count)]
    images[index] = image
    return images


def adapt_request(
    images: list[pb.Image] | None = None, labels: list[int] | None = None, class_names: list[str] | None = None,
    options: pb.AdaptOptions = QUICK,
) -> pb.AdaptRequest:
    return pb.AdaptRequest(
        images=images if images is not None else [raw(noise(i)) for i in range(6)],
        labels=labels if labels is not None else [0, 0, 0, 1, 1, 1],
        class_names=class_names or [], options=options,
    )


def dataset(request: pb.AdaptRequest) -> pb.Dataset:
    return pb.Dataset(images=request.images, labels=request.labels, class_names=request.class_names)


# ---------------------------------------------------------------------------------------------
# Server and calls
# ---------------------------------------------------------------------------------------------


@dataclass
class Target:
    server: RunningServer
    channel: grpc.Channel
    stub: pb_grpc.AdaptationStub
    finished_job_id: str  # SUCCEEDED
    failed_job_id: str  # FAILED, so it has no model
    queued_job_id: str  # QUEUED behind the blocker
    blocker_job_id: str  # RUNNING until the last test cancels it


@pytest.fixture(scope="module")
def target(checkpoint: Checkpoint, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    server = create_server(
        "127.0.0.1:0", checkpoint, torch.device("cpu"), LIMITS,
        data_dir=tmp_path_factory.mktemp("hostile-data"), job_limits=JobLimits(),
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}", options=[("grpc.max_send_message_length", 16 * MIB)])
    stub = pb_grpc.AdaptationStub(channel)
    finished = stub.SubmitJob(pb.SubmitJobRequest(inline_dataset=dataset(adapt_request()), options=QUICK), timeout=60)
    failed = stub.SubmitJob(
        pb.SubmitJobRequest(inline_dataset=dataset(adapt_request()), options=pb.AdaptOptions(finetune_steps=10_000), deadline_seconds=0.001),
        timeout=60,
    )
    with Client(f"127.0.0.1:{server.port}", timeout=120) as client:
        assert client.wait_for_job(finished.job_id).state == pb.SUCCEEDED
        assert client.wait_for_job(failed.job_id).state == pb.FAILED
    blocker = stub.SubmitJob(pb.SubmitJobRequest(inline_dataset=dataset(adapt_request()), options=pb.AdaptOptions(finetune_steps=10_000)), timeout=60)
    queued = stub.SubmitJob(pb.SubmitJobRequest(inline_dataset=dataset(adapt_request()), options=QUICK), timeout=60)
    yield Target(server, channel, stub, finished.job_id, failed.job_id, queued.job_id, blocker.job_id)
    channel.close()
    server.stop(grace=1.0)


def call_adapt(request: pb.AdaptRequest) -> Callable[[Target], object]:
    return lambda t: list(t.stub.Adapt(request, timeout=60))


def call_submit(request: pb.SubmitJobRequest) -> Callable[[Target], object]:
    return lambda t: t.stub.SubmitJob(request, timeout=60)


def call_upload(chunks: Callable[[], list[bytes]]) -> Callable[[Target], object]:
    return lambda t: t.stub.UploadDataset(iter([pb.DatasetChunk(data=data) for data in chunks()]), timeout=60)


def call_raw(method: str, payload: bytes, streaming: bool = False) -> Callable[[Target], object]:
    """Send `payload` as the serialized request of `method`, bypassing the stubs' types."""

    def send(t: Target) -> object:
        path = f"/archadapt.v1.Adaptation/{method}"
        if streaming:
            return list(t.channel.unary_stream(path)(payload, timeout=60))
        return t.channel.unary_unary(path)(payload, timeout=60)

    return send


def call_raw_stream(method: str, payloads: list[bytes]) -> Callable[[Target], object]:
    """Send `payloads` as the serialized messages of a client stream, bypassing the stubs' types."""
    return lambda t: t.channel.stream_unary(f"/archadapt.v1.Adaptation/{method}")(iter(payloads), timeout=60)


def with_job(build: Callable[[Target], Callable[[Target], object]]) -> Callable[[Target], object]:
    """A call that needs one of the target's job ids."""
    return lambda t: build(t)(t)


# ---------------------------------------------------------------------------------------------
# The corpus: (case id, call, expected code, text the status message must contain)
# ---------------------------------------------------------------------------------------------


def too_many_images() -> pb.AdaptRequest:
    return adapt_request(images=[raw(noise(i, (4, 4))) for i in range(51)], labels=[i % 2 for i in range(51)])


def hostile_cases() -> list[tuple[str, Callable[[Target], object], grpc.StatusCode, str]]:
    nan_image = np.full((28, 28), 0.5, dtype=np.float32)
    nan_image[1, 1] = np.nan
    bright = np.full((28, 28), 2.0, dtype=np.float32)
    negative_infinity = np.full((28, 28), -np.inf, dtype=np.float32)
    truncated_jpeg = encoded(noise(3, (40, 40)), "JPEG").encoded[:100]
    oversized = adapt_request(images=[raw(noise(i, (256, 256))) for i in range(40)], labels=[i % 2 for i in range(40)])
    return [
        # Adapt: counts and labels
        ("adapt-empty-dataset", call_adapt(pb.AdaptRequest()), INVALID, "empty"),
        ("adapt-fewer-labels", call_adapt(adapt_request(labels=[0, 0, 0, 1, 1])), INVALID, "labels"),
        ("adapt-more-labels", call_adapt(adapt_request(labels=[0, 0, 0, 1, 1, 1, 1])), INVALID, "labels"),
        ("adapt-negative-label", call_adapt(adapt_request(labels=[0, 0, -5, 1, 1, 1])), INVALID, "labels[2]"),
        ("adapt-single-class", call_adapt(adapt_request(labels=[1] * 6)), INVALID, "at least 2"),
        ("adapt-class-gap", call_adapt(adapt_request(labels=[0, 0, 0, 3, 3, 3])), INVALID, "have no image"),
        ("adapt-too-many-images", call_adapt(too_many_images()), INVALID, "max_images"),
        ("adapt-too-many-classes", call_adapt(adapt_request(labels=[0, 1, 2, 3, 4, 10])), INVALID, "max_classes"),
        ("adapt-huge-label", call_adapt(adapt_request(labels=[0, 0, 0, 1, 1, 2**31 - 1])), INVALID, "max_classes"),
        ("adapt-too-few-class-names", call_adapt(adapt_request(labels=[0, 0, 1, 1, 2, 2], class_names=["a", "b"])), INVALID, "class_names"),
        ("adapt-blank-class-name", call_adapt(adapt_request(class_names=["a", "  "])), INVALID, "class names"),
        ("adapt-steps-too-many", call_adapt(adapt_request(options=pb.AdaptOptions(inner_steps=10_001))), INVALID, "inner_steps"),
        ("adapt-finetune-too-many", call_adapt(adapt_request(options=pb.AdaptOptions(finetune_steps=2**32 - 1))), INVALID, "finetune_steps"),
        # Adapt: encoded images
        ("image-without-content", call_adapt(adapt_request(images_with(5, pb.Image()))), INVALID, "images[5]"),
        ("encoded-empty", call_adapt(adapt_request(images_with(0, pb.Image(encoded=b"")))), INVALID, "images[0]"),
        ("encoded-garbage", call_adapt(adapt_request(images_with(1, pb.Image(encoded=bytes(range(256)) * 4)))), INVALID, "images[1].encoded"),
        ("png-signature-then-garbage", call_adapt(adapt_request(images_with(2, pb.Image(encoded=PNG_SIGNATURE + b"\x00" * 200)))), INVALID, "images[2].encoded"),
        ("png-truncated", call_adapt(adapt_request(images_with(3, pb.Image(encoded=encoded(noise(3), "PNG").encoded[:50])))), INVALID, "images[3].encoded"),
        ("png-declares-100000-square", call_adapt(adapt_request(images_with(4, png_declaring(100_000, 100_000)))), INVALID, "images[4].encoded"),
        ("png-declares-wide-strip", call_adapt(adapt_request(images_with(0, png_declaring(2**31 - 1, 1)))), INVALID, "images[0].encoded"),
        ("png-declares-side-over-limit", call_adapt(adapt_request(images_with(1, png_declaring(300, 10)))), INVALID, "max_image_side"),
        ("png-declares-pixels-over-limit", call_adapt(adapt_request(images_with(2, png_declaring(250, 250)))), INVALID, "max_image_pixels"),
        ("png-declares-zero-width", call_adapt(adapt_request(images_with(3, png_declaring(0, 10)))), INVALID, "images[3].encoded"),
        ("gif-not-allowed", call_adapt(adapt_request(images_with(4, encoded(noise(4), "GIF")))), INVALID, "GIF"),
        ("bmp-not-allowed", call_adapt(adapt_request(images_with(5, encoded(noise(5), "BMP")))), INVALID, "BMP"),
        ("jpeg-truncated", call_adapt(adapt_request(images_with(0, pb.Image(encoded=truncated_jpeg)))), INVALID, "images[0].encoded"),
        # Adapt: raw arrays
        ("raw-dtype-unspecified", call_adapt(adapt_request(images_with(0, pb.Image(raw=pb.RawArray(shape=[28, 28], data=bytes(784)))))), INVALID, "dtype"),
        ("raw-dtype-unknown", call_adapt(adapt_request(images_with(0, pb.Image(raw=pb.RawArray(dtype=77, shape=[28, 28], data=bytes(784)))))), INVALID, "dtype"),
        ("raw-shape-1d", call_adapt(adapt_request(images_with(1, pb.Image(raw=pb.RawArray(dtype=pb.UINT8, shape=[784], data=bytes(784)))))), INVALID, "shape"),
        ("raw-shape-4d", call_adapt(adapt_request(images_with(1, pb.Image(raw=pb.RawArray(dtype=pb.UINT8, shape=[1, 28, 28, 1], data=bytes(784)))))), INVALID, "shape"),
        ("raw-two-channels", call_adapt(adapt_request(images_with(2, pb.Image(raw=pb.RawArray(dtype=pb.UINT8, shape=[28, 28, 2], data=bytes(1568)))))), INVALID, "shape"),
        ("raw-zero-height", call_adapt(adapt_request(images_with(2, pb.Image(raw=pb.RawArray(dtype=pb.UINT8, shape=[0, 28], data=b""))))), INVALID, "shape"),
        ("raw-declares-max-uint32-sides", call_adapt(adapt_request(images_with(3, pb.Image(raw=pb.RawArray(dtype=pb.UINT8, shape=[2**32 - 1, 2**32 - 1], data=bytes(16)))))), INVALID, "max_image_side"),
        ("raw-pixels-over-limit", call_adapt(adapt_request(images_with(3, raw(noise(3, (250, 250)))))), INVALID, "max_image_pixels"),
        ("raw-data-too-short", call_adapt(adapt_request(images_with(4, pb.Image(raw=pb.RawArray(dtype=pb.UINT8, shape=[28, 28], data=bytes(700)))))), INVALID, "images[4].raw.data"),
        ("raw-float-nan", call_adapt(adapt_request(images_with(5, raw(nan_image)))), INVALID, "NaN"),
        ("raw-float-above-one", call_adapt(adapt_request(images_with(5, raw(bright)))), INVALID, "range"),
        ("raw-float-negative-infinity", call_adapt(adapt_request(images_with(0, raw(negative_infinity)))), INVALID, "NaN or infinite"),
        # Messages the server cannot or will not read
        ("adapt-oversized-message", call_adapt(oversized), grpc.StatusCode.RESOURCE_EXHAUSTED, ""),
        ("adapt-truncated-protobuf", call_raw("Adapt", b"\x0a\xff\xff\xff\xff\x0f", streaming=True), INVALID, "not a valid message"),
        ("get-job-invalid-utf8", call_raw("GetJob", b"\x0a\x02\xff\xfe"), INVALID, "not a valid message"),
        ("list-jobs-truncated-varint", call_raw("ListJobs", b"\x08\xff"), INVALID, "not a valid message"),
        ("upload-chunk-truncated-protobuf", call_raw_stream("UploadDataset", [b"\x0a\x05ab"]), INVALID, "not a valid message"),
        # A known field with another wire type parses as an unknown field, so job_id stays empty.
        ("get-job-wrong-wire-type", call_raw("GetJob", b"\x0d\x01\x02\x03\x04"), INVALID, "job_id"),
        ("submit-wrong-message-type", call_raw("SubmitJob", pb.GetJobRequest(job_id="x" * 64).SerializeToString()), INVALID, "dataset_id"),
        # SubmitJob
        ("submit-without-dataset", call_submit(pb.SubmitJobRequest(options=QUICK)), INVALID, "dataset"),
        ("submit-dataset-id-not-hex", call_submit(pb.SubmitJobRequest(dataset_id="../../etc/passwd")), INVALID, "dataset_id"),
        ("submit-dataset-id-uppercase", call_submit(pb.SubmitJobRequest(dataset_id="A" * 64)), INVALID, "dataset_id"),
        ("submit-dataset-id-unknown", call_submit(pb.SubmitJobRequest(dataset_id="0" * 64)), grpc.StatusCode.NOT_FOUND, "not found"),
        ("submit-key-too-long", call_submit(pb.SubmitJobRequest(dataset_id="0" * 64, idempotency_key="k" * 129)), INVALID, "idempotency_key"),
        ("submit-deadline-negative", call_submit(pb.SubmitJobRequest(dataset_id="0" * 64, deadline_seconds=-1)), INVALID, "deadline_seconds"),
        ("submit-deadline-nan", call_submit(pb.SubmitJobRequest(dataset_id="0" * 64, deadline_seconds=math.nan)), INVALID, "deadline_seconds"),
        ("submit-deadline-infinite", call_submit(pb.SubmitJobRequest(dataset_id="0" * 64, deadline_seconds=math.inf)), INVALID, "deadline_seconds"),
        ("submit-inline-single-class", call_submit(pb.SubmitJobRequest(inline_dataset=dataset(adapt_request(labels=[0] * 6)))), INVALID, "labels"),
        ("submit-inline-truncated-png", call_submit(pb.SubmitJobRequest(inline_dataset=dataset(adapt_request(images_with(1, pb.Image(encoded=PNG_SIGNATURE)))))), INVALID, "images[1]"),
        ("submit-steps-too-many", call_submit(pb.SubmitJobRequest(dataset_id="0" * 64, options=pb.AdaptOptions(inner_steps=50_000))), INVALID, "inner_steps"),
        # Job ids
        ("get-empty-id", lambda t: t.stub.GetJob(pb.GetJobRequest(), timeout=30), INVALID, "job_id"),
        ("get-unknown-id", lambda t: t.stub.GetJob(pb.GetJobRequest(job_id="0" * 32), timeout=30), grpc.StatusCode.NOT_FOUND, "not found"),
        ("get-sql-injection-id", lambda t: t.stub.GetJob(pb.GetJobRequest(job_id="' OR 1=1; DROP TABLE jobs; --"), timeout=30), INVALID, "job_id"),
        ("get-huge-id", lambda t: t.stub.GetJob(pb.GetJobRequest(job_id="a" * 100_000), timeout=30), INVALID, "job_id"),
        ("cancel-unknown-id", lambda t: t.stub.CancelJob(pb.CancelJobRequest(job_id="e" * 32), timeout=30), grpc.StatusCode.NOT_FOUND, ""),
        ("watch-unknown-id", lambda t: list(t.stub.WatchJob(pb.WatchJobRequest(job_id="d" * 32), timeout=30)), grpc.StatusCode.NOT_FOUND, ""),
        ("watch-past-last-event", with_job(lambda t: lambda t2: list(t2.stub.WatchJob(pb.WatchJobRequest(job_id=t.finished_job_id, from_index=2**63), timeout=30))), grpc.StatusCode.OUT_OF_RANGE, "from_index"),
        ("watch-max-index-of-queued-job", with_job(lambda t: lambda t2: list(t2.stub.WatchJob(pb.WatchJobRequest(job_id=t.queued_job_id, from_index=2**64 - 1), timeout=30))), grpc.StatusCode.OUT_OF_RANGE, "from_index"),
        ("download-unknown-id", lambda t: list(t.stub.DownloadModel(pb.DownloadModelRequest(job_id="c" * 32), timeout=30)), grpc.StatusCode.NOT_FOUND, ""),
        ("download-past-end", with_job(lambda t: lambda t2: list(t2.stub.DownloadModel(pb.DownloadModelRequest(job_id=t.finished_job_id, offset=2**64 - 1), timeout=30))), grpc.StatusCode.OUT_OF_RANGE, "offset"),
        ("download-failed-job", with_job(lambda t: lambda t2: list(t2.stub.DownloadModel(pb.DownloadModelRequest(job_id=t.failed_job_id), timeout=30))), grpc.StatusCode.FAILED_PRECONDITION, "FAILED"),
        # ListJobs
        ("list-page-size-too-large", lambda t: t.stub.ListJobs(pb.ListJobsRequest(page_size=1001), timeout=30), INVALID, "page_size"),
        ("list-page-token-forged", lambda t: t.stub.ListJobs(pb.ListJobsRequest(page_token="1 UNION SELECT *"), timeout=30), INVALID, "page_token"),
        ("list-unknown-state", lambda t: t.stub.ListJobs(pb.ListJobsRequest(states=[99]), timeout=30), INVALID, "states"),
        # UploadDataset
        ("upload-empty", call_upload(lambda: []), INVALID, "empty"),
        ("upload-garbage", call_upload(lambda: [b"\xff" * 1000]), INVALID, "not a serialized"),
        ("upload-chunk-over-message-limit", call_upload(lambda: [bytes(3 * MIB)]), grpc.StatusCode.RESOURCE_EXHAUSTED, ""),
        ("upload-over-max-dataset-bytes", call_upload(lambda: [bytes(MIB)] * 4), INVALID, "max_dataset_bytes"),
        ("upload-single-class", call_upload(lambda: [dataset(adapt_request(labels=[0] * 6)).SerializeToString()]), INVALID, "labels"),
        ("upload-too-many-images", call_upload(lambda: [dataset(too_many_images()).SerializeToString()]), INVALID, "max_images"),
    ]


HOSTILE_CASES = hostile_cases()


def test_corpus_is_large() -> None:
    assert len(HOSTILE_CASES) >= 40
    assert len({case[0] for case in HOSTILE_CASES}) == len(HOSTILE_CASES)


def assert_server_serves(target: Target) -> None:
    info = target.stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=30)
    assert info.limits == LIMITS.to_proto()
    health = health_pb2_grpc.HealthStub(target.channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=30)
    assert health.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize(("call", "code", "text"), [case[1:] for case in HOSTILE_CASES], ids=[case[0] for case in HOSTILE_CASES])
def test_hostile_request_rejected(target: Target, call: Callable[[Target], object], code: grpc.StatusCode, text: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        call(target)
    assert caught.value.code() == code, caught.value.details()
    assert text in (caught.value.details() or "")
    assert_server_serves(target)


def test_server_still_adapts_after_corpus(target: Target, tmp_path: Path) -> None:
    for _, call, _, _ in HOSTILE_CASES:
        with pytest.raises(grpc.RpcError):
            call(target)
    assert_server_serves(target)
    with Client(f"127.0.0.1:{target.server.port}", timeout=120) as client:
        client.cancel_job(target.blocker_job_id)
        assert client.wait_for_job(target.queued_job_id).state == pb.SUCCEEDED
        result = client.adapt(np.stack([noise(i) for i in range(6)]), [0, 0, 0, 1, 1, 1], inner_steps=1, finetune_steps=2)
    assert result.metrics.support_examples == 6
    assert list(target.server.store.staging_dir.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# Bad credentials against a server that requires a bearer token
# ---------------------------------------------------------------------------------------------

TOKEN = "tok-hostile-9c4e1a7b3f"
AUTHENTICATED = (("authorization", f"Bearer {TOKEN}"),)
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
# gRPC (1.85) rejects metadata above 16 KiB (grpc.absolute_max_metadata_size) before any
# interceptor runs, and rejects a random share of metadata between 8 KiB and 16 KiB, so the
# cases stay below 8 KiB or far above 16 KiB.
HUGE_VALUE = "a" * (100 * 1024)
LARGE_TOKEN = "a" * 4096


@dataclass
class TokenTarget:
    server: RunningServer
    channel: grpc.Channel
    stub: pb_grpc.AdaptationStub


@pytest.fixture(scope="module")
def token_target(checkpoint: Checkpoint, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenTarget]:
    security = ServerSecurity(interceptors=(BearerTokenInterceptor([TOKEN.encode()]),))
    server = create_server(
        "127.0.0.1:0", checkpoint, torch.device("cpu"), LIMITS,
        security=security, data_dir=tmp_path_factory.mktemp("token-data"), job_limits=JobLimits(),
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    yield TokenTarget(server, channel, pb_grpc.AdaptationStub(channel))
    channel.close()
    server.stop(grace=1.0)


# (case id, metadata, expected code, text the status message must contain)
BAD_CREDENTIAL_CASES: list[tuple[str, tuple[tuple[str, str | bytes], ...], grpc.StatusCode, str]] = [
    ("missing-header", (), UNAUTHENTICATED, "missing authorization metadata"),
    ("token-under-other-key", (("x-api-key", TOKEN),), UNAUTHENTICATED, "missing authorization metadata"),
    ("binary-authorization-key", (("authorization-bin", TOKEN.encode()),), UNAUTHENTICATED, "missing authorization metadata"),
    ("wrong-token", (("authorization", "Bearer not-the-token"),), UNAUTHENTICATED, "invalid bearer token"),
    ("token-prefix", (("authorization", f"Bearer {TOKEN[:-1]}"),), UNAUTHENTICATED, "invalid bearer token"),
    ("token-with-trailing-junk", (("authorization", f"Bearer {TOKEN}junk"),), UNAUTHENTICATED, "invalid bearer token"),
    ("token-then-second-word", (("authorization", f"Bearer {TOKEN} junk"),), UNAUTHENTICATED, "invalid bearer token"),
    ("token-list", (("authorization", f"Bearer {TOKEN},{TOKEN}"),), UNAUTHENTICATED, "invalid bearer token"),
    ("empty-bearer", (("authorization", "Bearer "),), UNAUTHENTICATED, "invalid bearer token"),
    ("scheme-without-token", (("authorization", "Bearer"),), UNAUTHENTICATED, "not a bearer token"),
    ("empty-value", (("authorization", ""),), UNAUTHENTICATED, "not a bearer token"),
    ("token-without-scheme", (("authorization", TOKEN),), UNAUTHENTICATED, "not a bearer token"),
    ("basic-scheme-with-token", (("authorization", f"Basic {TOKEN}"),), UNAUTHENTICATED, "not a bearer token"),
    (
        "basic-credentials",
        (("authorization", "Basic " + base64.b64encode(f"user:{TOKEN}".encode()).decode()),),
        UNAUTHENTICATED,
        "not a bearer token",
    ),
    ("space-before-scheme", (("authorization", f" Bearer {TOKEN}"),), UNAUTHENTICATED, "not a bearer token"),
    ("two-headers-one-wrong", (AUTHENTICATED[0], ("authorization", "Bearer not-the-token")), UNAUTHENTICATED, "more than one"),
    ("two-valid-headers", (AUTHENTICATED[0], AUTHENTICATED[0]), UNAUTHENTICATED, "more than one"),
    ("large-wrong-token", (("authorization", f"Bearer {LARGE_TOKEN}"),), UNAUTHENTICATED, "invalid bearer token"),
    ("huge-authorization-header", (("authorization", f"Bearer {HUGE_VALUE}"),), grpc.StatusCode.RESOURCE_EXHAUSTED, "metadata size"),
    ("huge-header-beside-valid-token", (AUTHENTICATED[0], ("x-padding", HUGE_VALUE)), grpc.StatusCode.RESOURCE_EXHAUSTED, "metadata size"),
]


def assert_token_server_serves(target: TokenTarget) -> None:
    health = health_pb2_grpc.HealthStub(target.channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=30)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    info = target.stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=30, metadata=AUTHENTICATED)
    assert info.limits == LIMITS.to_proto()


def test_bad_credential_corpus_ids_unique() -> None:
    assert len({case[0] for case in BAD_CREDENTIAL_CASES}) == len(BAD_CREDENTIAL_CASES)


@pytest.mark.parametrize(
    ("metadata", "code", "text"), [case[1:] for case in BAD_CREDENTIAL_CASES], ids=[case[0] for case in BAD_CREDENTIAL_CASES]
)
def test_bad_credentials_rejected(
    token_target: TokenTarget, caplog: pytest.LogCaptureFixture,
    metadata: tuple[tuple[str, str | bytes], ...], code: grpc.StatusCode, text: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(grpc.RpcError) as caught:
        token_target.stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=30, metadata=metadata)
    assert caught.value.code() == code, caught.value.details()
    assert text in (caught.value.details() or "")
    assert TOKEN not in (caught.value.details() or "")
    assert_token_server_serves(token_target)

    # The log names the rejection, but never a presented credential.
    if code == UNAUTHENTICATED:
        assert "GetServerInfo from ipv4:127.0.0.1:" in caplog.text
        assert text in caplog.text
    assert TOKEN not in caplog.text
    assert "not-the-token" not in caplog.text
    assert LARGE_TOKEN not in caplog.text


@pytest.mark.parametrize(
    "value",
    [f"bearer {TOKEN}", f"BEARER {TOKEN}", f"Bearer  {TOKEN}", f"Bearer {TOKEN} "],
    ids=["lowercase-scheme", "uppercase-scheme", "two-spaces", "trailing-space"],
)
def test_bearer_variants_accepted(token_target: TokenTarget, value: str) -> None:
    """The interceptor matches the scheme in any case and strips whitespace around the token."""
    info = token_target.stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=30, metadata=(("authorization", value),))
    assert info.limits == LIMITS.to_proto()


def test_rejected_calls_change_nothing(token_target: TokenTarget) -> None:
    """A call without a valid token on any kind of RPC stores no dataset and queues no job."""
    request = adapt_request()
    wrong = (("authorization", "Bearer not-the-token"),)
    stub = token_target.stub
    calls = {
        "SubmitJob": lambda: stub.SubmitJob(pb.SubmitJobRequest(inline_dataset=dataset(request), options=QUICK), timeout=30, metadata=wrong),
        "UploadDataset": lambda: stub.UploadDataset(iter([pb.DatasetChunk(data=dataset(request).SerializeToString())]), timeout=30, metadata=wrong),
        "Adapt": lambda: list(stub.Adapt(request, timeout=30, metadata=wrong)),
        "ListJobs": lambda: stub.ListJobs(pb.ListJobsRequest(), timeout=30),
        "WatchJob": lambda: list(stub.WatchJob(pb.WatchJobRequest(job_id="0" * 32), timeout=30, metadata=wrong)),
        "DownloadModel": lambda: list(stub.DownloadModel(pb.DownloadModelRequest(job_id="0" * 32), timeout=30)),
    }
    for method, call in calls.items():
        with pytest.raises(grpc.RpcError) as caught:
            call()
        assert caught.value.code() == UNAUTHENTICATED, method
    assert_token_server_serves(token_target)

    listed = stub.ListJobs(pb.ListJobsRequest(), timeout=30, metadata=AUTHENTICATED)
    assert list(listed.jobs) == []
    assert list(token_target.server.store.datasets_dir.iterdir()) == []
    assert list(token_target.server.store.staging_dir.iterdir()) == []


def test_token_server_adapts_after_bad_credentials(token_target: TokenTarget) -> None:
    for _, metadata, _, _ in BAD_CREDENTIAL_CASES:
        with pytest.raises(grpc.RpcError):
            token_target.stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=30, metadata=metadata)
    assert_token_server_serves(token_target)
    with Client(f"127.0.0.1:{token_target.server.port}", timeout=120, token=TOKEN) as client:
        result = client.adapt(np.stack([noise(i) for i in range(6)]), [0, 0, 0, 1, 1, 1], inner_steps=1, finetune_steps=2)
        assert result.metrics.support_examples == 6
        assert client.get_job(result.request_id).state == pb.SUCCEEDED
