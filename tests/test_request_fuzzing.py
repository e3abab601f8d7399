"""Property-based fuzzing of request decoding with hypothesis.

The property: decoding any request either returns a dataset in the input spec or raises
InvalidRequest, which the service maps to INVALID_ARGUMENT. No other exception escapes, because
any other one would reach the client as INTERNAL. A second test sends generated datasets to a
real server's UploadDataset, which decodes them the same way without running a job.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from archadapt.checkpoint import Checkpoint
from archadapt.search_space import InputSpec
from archadapt_client.v1 import archadapt_pb2 as pb
from archadapt_client.v1 import archadapt_pb2_grpc as pb_grpc
from server.app import RunningServer, create_server
from server.request_decoding import InvalidRequest, RequestLimits, decode_request

SPEC = InputSpec()
LIMITS = RequestLimits(max_images=20, max_classes=8, max_image_side=64, max_image_pixels=48 * 48, max_request_bytes=4 * 1024 * 1024)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_header(width: int, height: int, bit_depth: int, color_type: int) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    chunk = struct.pack(">I", len(header)) + b"IHDR" + header + struct.pack(">I", zlib.crc32(b"IHDR" + header) & 0xFFFFFFFF)
    return PNG_SIGNATURE + chunk


@st.composite
def raw_images(draw: st.DrawFn) -> pb.Image:
    """Raw arrays whose dtype, shape and byte count may or may not agree."""
    dtype = draw(st.sampled_from([pb.DTYPE_UNSPECIFIED, pb.UINT8, pb.FLOAT32, 5]))
    shape = draw(st.lists(st.integers(0, 80) | st.sampled_from([2**32 - 1, 2**31]), min_size=0, max_size=4))
    if draw(st.booleans()) and dtype in (pb.UINT8, pb.FLOAT32) and len(shape) in (2, 3) and np.prod(shape, dtype=np.float64) < 40_000:
        itemsize = 1 if dtype == pb.UINT8 else 4
        size = int(np.prod(shape)) * itemsize
        if dtype == pb.FLOAT32:
            values = draw(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=1, max_size=4))
            data = np.resize(np.array(values, dtype="<f4"), size // 4).tobytes()
        else:
            data = draw(st.binary(min_size=min(size, 8), max_size=min(size, 8))) * (size // 8) if size >= 8 else bytes(size)
            data = data.ljust(size, b"\x00")[:size]
    else:
        data = draw(st.binary(max_size=200))
    return pb.Image(raw=pb.RawArray(dtype=dtype, shape=shape, data=data))


@st.composite
def encoded_images(draw: st.DrawFn) -> pb.Image:
    """Valid PNG and JPEG files, PNG headers with arbitrary declared sizes, and mangled bytes."""
    kind = draw(st.sampled_from(["valid", "header", "mangled", "random"]))
    if kind == "random":
        return pb.Image(encoded=draw(st.binary(max_size=300)))
    if kind == "header":
        width, height = draw(st.integers(0, 2**31 - 1)), draw(st.integers(0, 2**31 - 1))
        header = png_header(width, height, draw(st.sampled_from([1, 8, 16, 3])), draw(st.sampled_from([0, 2, 3, 4, 6, 7])))
        return pb.Image(encoded=header + draw(st.binary(max_size=100)))
    height, width = draw(st.integers(1, 70)), draw(st.integers(1, 70))
    channels = draw(st.sampled_from([None, 3, 4]))
    shape = (height, width) if channels is None else (height, width, channels)
    array = np.random.default_rng(draw(st.integers(0, 2**16))).integers(0, 256, size=shape, dtype=np.uint8)
    image_format = "JPEG" if channels != 4 and draw(st.booleans()) else "PNG"
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=image_format)
    data = buffer.getvalue()
    if kind == "mangled":
        cut = draw(st.integers(0, len(data)))
        data = data[:cut] + draw(st.binary(max_size=20))
    return pb.Image(encoded=data)


@st.composite
def datasets(draw: st.DrawFn) -> pb.AdaptRequest:
    images = draw(st.lists(raw_images() | encoded_images() | st.just(pb.Image()), max_size=8))
    labels = draw(st.lists(st.integers(-3, 12) | st.sampled_from([2**31 - 1, -(2**31)]), min_size=max(0, len(images) - 1), max_size=len(images) + 1))
    class_names = draw(st.lists(st.text(max_size=5), max_size=4))
    return pb.AdaptRequest(images=images, labels=labels, class_names=class_names)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=datasets())
def test_decoding_returns_dataset_or_invalid_request(request: pb.AdaptRequest) -> None:
    try:
        data = decode_request(request, SPEC, LIMITS)
    except InvalidRequest as error:
        assert error.violations
        assert all(field and description for field, description in error.violations)
        return

    assert data.images.shape == (len(request.images), SPEC.channels, SPEC.height, SPEC.width)
    assert data.images.dtype == torch.float32
    assert float(data.images.min()) >= 0.0
    assert float(data.images.max()) <= 1.0
    assert data.labels.tolist() == list(request.labels)
    assert 2 <= data.num_classes <= LIMITS.max_classes


@st.composite
def valid_images(draw: st.DrawFn) -> pb.Image:
    """Images within the limits: raw uint8 or float32 arrays, or PNG and JPEG files."""
    height, width = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    channels = draw(st.sampled_from([None, 1, 3, 4]))
    shape = (height, width) if channels is None else (height, width, channels)
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    kind = draw(st.sampled_from(["uint8", "float32", "encoded"]))
    if kind == "float32":
        values = rng.random(shape, dtype=np.float32)
        return pb.Image(raw=pb.RawArray(dtype=pb.FLOAT32, shape=list(shape), data=values.astype("<f4").tobytes()))
    values = rng.integers(0, 256, size=shape, dtype=np.uint8)
    if kind == "uint8":
        return pb.Image(raw=pb.RawArray(dtype=pb.UINT8, shape=list(shape), data=values.tobytes()))
    if channels == 1:
        values = values[:, :, 0]
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, format="PNG" if channels == 4 or draw(st.booleans()) else "JPEG")
    return pb.Image(encoded=buffer.getvalue())


@st.composite
def valid_datasets(draw: st.DrawFn) -> pb.AdaptRequest:
    classes = draw(st.integers(2, 4))
    labels = [label for label in range(classes) for _ in range(draw(st.integers(1, 3)))]
    images = [draw(valid_images()) for _ in labels]
    names = draw(st.one_of(st.just([]), st.lists(st.text(min_size=1, max_size=5).filter(str.strip), min_size=classes, max_size=classes)))
    return pb.AdaptRequest(images=images, labels=labels, class_names=names)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=valid_datasets())
def test_decoding_accepts_every_valid_dataset(request: pb.AdaptRequest) -> None:
    data = decode_request(request, SPEC, LIMITS)
    assert data.images.shape == (len(request.images), SPEC.channels, SPEC.height, SPEC.width)
    assert data.labels.tolist() == list(request.labels)
    assert data.class_names == (list(request.class_names) or [f"class_{c}" for c in range(data.num_classes)])


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=400))
def test_decoding_arbitrary_bytes_never_crashes(data: bytes) -> None:
    """Arbitrary bytes as one encoded image, and parsed as a whole request when they parse."""
    request = pb.AdaptRequest(images=[pb.Image(encoded=data), pb.Image(encoded=data)], labels=[0, 1])
    with pytest.raises(InvalidRequest):
        decode_request(request, SPEC, LIMITS)
    parsed = pb.AdaptRequest()
    try:
        parsed.ParseFromString(data)
    except Exception:  # protobuf's DecodeError; the server maps it to INVALID_ARGUMENT as well
        return
    try:
        decode_request(parsed, SPEC, LIMITS)
    except InvalidRequest:
        pass


@pytest.fixture(scope="module")
def stub(checkpoint: Checkpoint, tmp_path_factory: pytest.TempPathFactory) -> Iterator[pb_grpc.AdaptationStub]:
    server: RunningServer = create_server(
        "127.0.0.1:0", checkpoint, torch.device("cpu"), LIMITS, data_dir=tmp_path_factory.mktemp("fuzz-data")
    )
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield pb_grpc.AdaptationStub(channel)
    server.stop(grace=1.0)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(request=datasets())
def test_upload_answers_ok_or_invalid_argument(stub: pb_grpc.AdaptationStub, request: pb.AdaptRequest) -> None:
    payload = request.SerializeToString()
    chunks = [pb.DatasetChunk(data=payload[i : i + 97]) for i in range(0, len(payload), 97)]
    try:
        info = stub.UploadDataset(iter(chunks), timeout=60)
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        return
    assert info.images == len(request.images)
    assert len(info.dataset_id) == 64
