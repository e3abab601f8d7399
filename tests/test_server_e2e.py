"""End-to-end tests of the archadapt server with a real checkpoint, server, client and ONNX model.

One in-process gRPC server on 127.0.0.1 serves a tiny checkpoint written by a fixture: a small
search space whose prior comes from a freshly initialised supernet after two outer steps on
synthetic episodes. The real client (library and command line) talks to it, and the returned
ONNX models run in onnxruntime on held-out images. The last tests start the server's own
command line as a subprocess.

The serving config is shortened (5 inner steps, 60 fine-tuning steps) so that one adaptation
takes well under a minute on a CPU. The accuracy thresholds (0.4 on 10-way Fashion-MNIST, 0.5
on a 5-way glyph task) are far above chance and below what these settings reached (0.62 and
0.70), so they catch a broken pipeline rather than small changes in quality.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from google.rpc import code_pb2, error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from PIL import Image

import archadapt
from archadapt.adaptation import PHASES, ServingConfig
from archadapt.checkpoint import TENSORS_FILE, Checkpoint, load_checkpoint
from archadapt.config import FinetuneConfig
from archadapt.cost_model import CostModel
from archadapt.derivation import smallest_cost
from archadapt.genotype import Genotype
from archadapt_client import ArchadaptError, Client, ProgressUpdate, load_dataset
from archadapt_client.cli import format_server_info
from archadapt_client.v1 import archadapt_pb2 as pb
from archadapt_client.v1 import archadapt_pb2_grpc as pb_grpc
from meta_trainer.glyphs import DEFAULT_FONT_DIR, load_or_build_glyph_bank, load_script_splits
from meta_trainer.task_distribution import EpisodeSampler
from server.app import SERVICE_NAME, RunningServer, create_server
from server.request_decoding import RequestLimits
from tiny_checkpoint import CHECKPOINT_ID, SPACE, SPEC

REPO_ROOT = Path(__file__).resolve().parent.parent
FASHION_DIR = REPO_ROOT / "examples" / "fashion-mnist"

INNER_STEPS = 5
FINETUNE_STEPS = 60
SERVING = ServingConfig(
    inner=dataclasses.replace(ServingConfig().inner, inner_steps=INNER_STEPS),
    finetune=FinetuneConfig(steps=FINETUNE_STEPS),
    validation_fraction=0.15,
    progress_interval_seconds=0.0,  # every step reports, so the checks below see each one
)
# Differs from the defaults, so the test checks that GetServerInfo reports the server's own limits.
LIMITS = RequestLimits(max_images=1000, max_classes=50)

# Two meta_test scripts with 8 classes each: no class of them is seen in meta-training.
GLYPH_SCRIPTS = ("Armn", "Olck")
GLYPH_WAY, GLYPH_SHOT, GLYPH_QUERY_PER_CLASS = 5, 5, 10

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CALL_TIMEOUT_S = 300.0


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(checkpoint: Checkpoint) -> Iterator[RunningServer]:
    running = create_server("127.0.0.1:0", checkpoint, torch.device("cpu"), LIMITS, SERVING, max_workers=4)
    yield running
    running.stop(grace=1.0)


@pytest.fixture(scope="module")
def address(server: RunningServer) -> str:
    return f"127.0.0.1:{server.port}"


@pytest.fixture
def client(address: str) -> Iterator[Client]:
    with Client(address, timeout=CALL_TIMEOUT_S) as connected:
        yield connected


@pytest.fixture
def channel(address: str) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(address) as opened:
        yield opened


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def run_onnx(model: bytes, images: np.ndarray) -> np.ndarray:
    """Return the logits of `model` on float32 images (N, 1, 28, 28) in [0, 1]."""
    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    return session.run(["logits"], {"images": images.astype(np.float32)})[0]


def uint8_to_model_input(images: np.ndarray) -> np.ndarray:
    """Convert uint8 images (N, 28, 28) to float32 (N, 1, 28, 28) in [0, 1]."""
    return (images.astype(np.float32) / 255.0)[:, None]


def check_result(result, num_classes: int, class_names: list[str], progress: list[ProgressUpdate]) -> None:
    """Check what holds for every successful adaptation by the module's server."""
    # Progress: the phases in contract order, with the step counts of the serving config.
    phases = [update.phase for update in progress]
    assert [p for i, p in enumerate(phases) if i == 0 or p != phases[i - 1]] == list(PHASES)
    adapt_steps = [u.step for u in progress if u.phase == "adapt"]
    assert adapt_steps == list(range(1, len(adapt_steps) + 1))
    assert all(u.total_steps == len(adapt_steps) for u in progress if u.phase == "adapt")
    finetune_steps = [u.step for u in progress if u.phase == "finetune"]
    assert finetune_steps == list(range(1, len(finetune_steps) + 1))
    assert all(np.isfinite(u.loss) for u in progress)
    assert all(u.loss > 0 for u in progress if u.phase in ("adapt", "finetune"))
    elapsed = [u.elapsed_seconds for u in progress]
    assert elapsed == sorted(elapsed)
    assert elapsed[0] >= 0

    # Genotype: two (primitive, input) pairs per intermediate node, inputs distinct and earlier.
    assert set(result.genotype) == {"normal", "reduce"}
    for cell_type, pairs in result.genotype.items():
        assert len(pairs) == 2 * SPACE.nodes, cell_type
        for k in range(SPACE.nodes):
            node_pairs = pairs[2 * k : 2 * k + 2]
            inputs = [source for _, source in node_pairs]
            assert len(set(inputs)) == 2, (cell_type, node_pairs)
            assert all(0 <= s < k + 2 for s in inputs), (cell_type, node_pairs)
            assert all(p in SPACE.primitives and p != "none" for p, _ in node_pairs), (cell_type, node_pairs)

    assert len(result.edge_probabilities) == 2 * SPACE.num_edges
    for edge in result.edge_probabilities:
        assert edge.cell_type in ("normal", "reduce")
        assert len(edge.probabilities) == len(SPACE.primitives)
        assert sum(edge.probabilities) == pytest.approx(1.0, abs=1e-4)
        assert (edge.source, edge.target) == (SPACE.edges[edge.edge].source, SPACE.edges[edge.edge].target)

    metrics = result.metrics
    assert metrics.support_examples > 0
    assert metrics.support_examples + metrics.validation_examples > 0
    if metrics.validation_examples:
        assert 0.0 <= metrics.validation_accuracy <= 1.0
        assert metrics.validation_loss > 0
    assert 0.0 <= metrics.onnx_max_abs_diff < 1e-3
    assert set(result.timings) == set(PHASES)
    assert all(seconds >= 0 for seconds in result.timings.values())
    assert result.parameter_count > 0
    assert result.multiply_accumulates > result.parameter_count
    assert result.class_names == class_names
    assert result.checkpoint_id == CHECKPOINT_ID
    assert len(result.request_id) > 0
    assert result.model_sha256 == hashlib.sha256(result.onnx_model).hexdigest()

    model = onnx.load(io.BytesIO(result.onnx_model))
    metadata = {entry.key: entry.value for entry in model.metadata_props}
    assert json.loads(metadata["class_names"]) == class_names
    assert metadata["checkpoint_id"] == CHECKPOINT_ID
    assert json.loads(metadata["genotype"]) == result.genotype
    assert json.loads(metadata["input_spec"]) == SPEC.to_dict()
    assert model.graph.output[0].type.tensor_type.shape.dim[1].dim_value == num_classes


# ---------------------------------------------------------------------------------------------
# Server info, health checking and reflection
# ---------------------------------------------------------------------------------------------


def test_server_info_matches_checkpoint(client: Client) -> None:
    info = client.info()

    spec = info.input_spec
    assert (spec.channels, spec.height, spec.width) == (SPEC.channels, SPEC.height, SPEC.width)
    assert list(spec.mean) == pytest.approx(SPEC.mean)
    assert list(spec.std) == pytest.approx(SPEC.std)

    space = info.search_space
    assert tuple(space.primitives) == SPACE.primitives
    assert (space.nodes, space.cells, space.channels) == (SPACE.nodes, SPACE.cells, SPACE.channels)
    assert tuple(space.reduce_cells) == SPACE.reduce_cells

    assert info.limits == LIMITS.to_proto()
    assert info.limits.max_images == 1000
    assert info.limits.max_classes == 50

    assert info.archadapt_version == archadapt.__version__
    assert info.checkpoint_id == CHECKPOINT_ID
    assert info.device == "cpu"
    assert info.torch_version == torch.__version__
    assert info.onnxruntime_version == onnxruntime.__version__
    assert info.default_inner_steps == INNER_STEPS
    assert info.default_finetune_steps == FINETUNE_STEPS


@pytest.mark.parametrize("service", ["", SERVICE_NAME])
def test_health_check_reports_serving(channel: grpc.Channel, service: str) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_adaptation_service(channel: grpc.Channel) -> None:
    assert SERVICE_NAME == "archadapt.v1.Adaptation"
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10))
    assert len(responses) == 1
    names = {service.name for service in responses[0].list_services_response.service}
    assert {"archadapt.v1.Adaptation", "grpc.health.v1.Health"} <= names

    # The service's descriptor is served too, so generic tools can call it.
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="archadapt.v1.Adaptation")
    (response,) = stub.ServerReflectionInfo(iter([request]), timeout=10)
    assert response.WhichOneof("message_response") == "file_descriptor_response"
    assert response.file_descriptor_response.file_descriptor_proto


# ---------------------------------------------------------------------------------------------
# Adaptation of an unseen domain and of unseen glyph classes
# ---------------------------------------------------------------------------------------------


def test_adapt_fashion_mnist_beats_chance(client: Client, tmp_path: Path) -> None:
    support = load_dataset(FASHION_DIR / "support.npz")
    with np.load(FASHION_DIR / "heldout.npz") as heldout_file:
        heldout_images, heldout_labels = heldout_file["images"], heldout_file["labels"]
        heldout_names = [str(name) for name in heldout_file["class_names"]]
    assert support.class_names == heldout_names
    assert len(support.class_names) == 10

    progress: list[ProgressUpdate] = []
    result = client.adapt(support.images, support.labels, support.class_names, on_progress=progress.append, seed=1)

    check_result(result, 10, support.class_names, progress)
    assert sum(u.phase == "adapt" for u in progress) == INNER_STEPS
    assert sum(u.phase == "finetune" for u in progress) == FINETUNE_STEPS
    # 20 images per class: 15 % (3 per class) are held out for validation.
    assert (result.metrics.support_examples, result.metrics.validation_examples) == (170, 30)

    logits = run_onnx(result.onnx_model, uint8_to_model_input(heldout_images))
    assert logits.shape == (len(heldout_labels), 10)
    accuracy = float((logits.argmax(axis=1) == heldout_labels).mean())
    print(f"\nFashion-MNIST held-out accuracy: {accuracy:.3f} on {len(heldout_labels)} images "
          f"(validation {result.metrics.validation_accuracy:.3f}, timings {result.timings})")
    assert accuracy >= 0.4, f"held-out accuracy {accuracy:.3f}; chance is 0.1"

    saved = result.save(tmp_path / "fashion.onnx")
    assert saved.read_bytes() == result.onnx_model


@pytest.mark.skipif(not DEFAULT_FONT_DIR.is_dir(), reason=f"{DEFAULT_FONT_DIR} not found; install fonts-noto-core")
def test_adapt_glyph_task_beats_chance(client: Client, tmp_path: Path) -> None:
    meta_test_scripts = load_script_splits()["meta_test"]
    assert set(GLYPH_SCRIPTS) <= set(meta_test_scripts)
    bank = load_or_build_glyph_bank(tmp_path / "glyphs", scripts=GLYPH_SCRIPTS, max_classes_per_script=8, workers=1)
    assert set(bank.scripts) == set(GLYPH_SCRIPTS)
    sampler = EpisodeSampler(bank, min_way=2, max_way=GLYPH_WAY, query_per_class=GLYPH_QUERY_PER_CLASS)
    episode = sampler.sample(np.random.default_rng(0), way=GLYPH_WAY, shot=GLYPH_SHOT)

    support_images = (episode.support_images[:, 0].numpy() * 255.0).round().astype(np.uint8)  # (N, 28, 28)
    assert support_images.shape == (GLYPH_WAY * GLYPH_SHOT, 28, 28)
    progress: list[ProgressUpdate] = []
    result = client.adapt(
        support_images, episode.support_labels.numpy(), episode.class_names, on_progress=progress.append, seed=2
    )
    check_result(result, GLYPH_WAY, episode.class_names, progress)

    logits = run_onnx(result.onnx_model, episode.query_images.numpy())
    accuracy = float((logits.argmax(axis=1) == episode.query_labels.numpy()).mean())
    print(f"\nglyph {GLYPH_WAY}-way {GLYPH_SHOT}-shot query accuracy: {accuracy:.3f} on "
          f"{len(episode.query_labels)} images of {episode.class_names}")
    assert accuracy >= 0.5, f"query accuracy {accuracy:.3f}; chance is {1 / GLYPH_WAY:.2f}"


# ---------------------------------------------------------------------------------------------
# Invalid requests
# ---------------------------------------------------------------------------------------------


def noise_u8(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(28, 28), dtype=np.uint8)


def raw_u8(seed: int) -> pb.Image:
    image = noise_u8(seed)
    return pb.Image(raw=pb.RawArray(dtype=pb.UINT8, shape=list(image.shape), data=image.tobytes()))


def raw_f32(values: np.ndarray) -> pb.Image:
    return pb.Image(raw=pb.RawArray(dtype=pb.FLOAT32, shape=list(values.shape), data=values.astype("<f4").tobytes()))


def encode(image: np.ndarray, image_format: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=image_format)
    return buffer.getvalue()


def png_bytes(seed: int) -> bytes:
    return encode(noise_u8(seed), "PNG")


def small_request(images: list[pb.Image] | None = None, labels: list[int] | None = None, class_names: list[str] | None = None) -> pb.AdaptRequest:
    """Build a request of 2 classes x 3 noise images with few steps, replacing the parts given."""
    images = images if images is not None else [raw_u8(i) for i in range(6)]
    labels = labels if labels is not None else [0, 0, 0, 1, 1, 1]
    return pb.AdaptRequest(
        images=images, labels=labels, class_names=class_names or [],
        options=pb.AdaptOptions(seed=3, inner_steps=1, finetune_steps=2),
    )


def with_image(index: int, image: pb.Image) -> list[pb.Image]:
    images = [raw_u8(i) for i in range(6)]
    images[index] = image
    return images


def float_image_with(value: float) -> pb.Image:
    values = np.full((28, 28), 0.5, dtype=np.float32)
    values[3, 4] = value
    return raw_f32(values)


def invalid_requests() -> list[tuple[str, pb.AdaptRequest, str]]:
    """Return (case id, request, field the violation must name) triples. Each request has one fault."""
    garbage = np.random.default_rng(7).integers(0, 256, size=300, dtype=np.uint8).tobytes()
    wrong_size = pb.Image(raw=pb.RawArray(dtype=pb.UINT8, shape=[28, 28], data=bytes(700)))
    return [
        ("empty-dataset", pb.AdaptRequest(), "images"),
        ("fewer-labels-than-images", small_request(labels=[0, 0, 0, 1, 1]), "labels"),
        ("more-labels-than-images", small_request(labels=[0, 0, 0, 1, 1, 1, 1]), "labels"),
        ("label-without-image", small_request(labels=[0, 0, 0, 2, 2, 2]), "labels"),
        ("class-name-without-images", small_request(class_names=["cat", "dog", "bird"]), "labels"),
        ("single-class", small_request(labels=[0] * 6), "labels"),
        ("png-signature-then-garbage", small_request(images=with_image(2, pb.Image(encoded=PNG_SIGNATURE + garbage))), "images[2].encoded"),
        ("truncated-png", small_request(images=with_image(3, pb.Image(encoded=png_bytes(3)[:60]))), "images[3].encoded"),
        ("garbage-bytes", small_request(images=with_image(4, pb.Image(encoded=garbage))), "images[4].encoded"),
        ("float32-nan", small_request(images=with_image(1, float_image_with(np.nan))), "images[1].raw.data"),
        ("float32-infinity", small_request(images=with_image(1, float_image_with(np.inf))), "images[1].raw.data"),
        ("float32-negative-infinity", small_request(images=with_image(5, float_image_with(-np.inf))), "images[5].raw.data"),
        ("raw-shape-does-not-match-bytes", small_request(images=with_image(3, wrong_size)), "images[3].raw.data"),
        ("negative-label", small_request(labels=[0, 0, -1, 1, 1, 1]), "labels[2]"),
        (
            "unspecified-dtype",
            small_request(images=with_image(0, pb.Image(raw=pb.RawArray(dtype=pb.DTYPE_UNSPECIFIED, shape=[28, 28], data=bytes(784))))),
            "images[0].raw.dtype",
        ),
        (
            "unknown-dtype",
            small_request(images=with_image(0, pb.Image(raw=pb.RawArray(dtype=9, shape=[28, 28], data=bytes(784))))),
            "images[0].raw.dtype",
        ),
        ("image-without-content", small_request(images=with_image(5, pb.Image())), "images[5]"),
        ("too-many-genotype-samples", with_options(small_request(), genotype_samples=65), "options.genotype_samples"),
        ("parameter-budget-of-one", with_options(small_request(), max_parameters=1), "options.max_parameters"),
    ]


def with_options(request: pb.AdaptRequest, **options: int) -> pb.AdaptRequest:
    request.options.CopyFrom(pb.AdaptOptions(**options))
    return request


INVALID_REQUESTS = invalid_requests()


def send_invalid(stub: pb_grpc.AdaptationStub, request: pb.AdaptRequest) -> grpc.RpcError:
    """Send the request and return the error that ends its stream before any event arrives."""
    events = []
    with pytest.raises(grpc.RpcError) as caught:
        for event in stub.Adapt(request, timeout=60):
            events.append(event)
    assert events == []
    return caught.value


def violations_of(error: grpc.RpcError) -> list[error_details_pb2.BadRequest.FieldViolation]:
    status = rpc_status.from_call(error)
    assert status is not None, "the error has no grpc-status-details-bin trailer"
    assert status.code == code_pb2.INVALID_ARGUMENT
    assert status.message == error.details()
    violations = []
    for detail in status.details:
        assert detail.Is(error_details_pb2.BadRequest.DESCRIPTOR), detail.type_url
        bad_request = error_details_pb2.BadRequest()
        detail.Unpack(bad_request)
        violations.extend(bad_request.field_violations)
    return violations


@pytest.mark.parametrize(("request_message", "field"), [case[1:] for case in INVALID_REQUESTS], ids=[case[0] for case in INVALID_REQUESTS])
def test_invalid_request_names_field(channel: grpc.Channel, request_message: pb.AdaptRequest, field: str) -> None:
    error = send_invalid(pb_grpc.AdaptationStub(channel), request_message)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    violations = violations_of(error)
    assert [v.field for v in violations] == [field], [(v.field, v.description) for v in violations]
    assert violations[0].description
    assert field in error.details()


def test_client_reports_server_field_violations(client: Client) -> None:
    """Faults the client library passes on come back as ArchadaptError with the violations."""
    images = np.stack([noise_u8(i) for i in range(6)])
    with pytest.raises(ArchadaptError) as caught:
        client.adapt(images, [0, 0, 0, 2, 2, 2], inner_steps=1, finetune_steps=2)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.code_name == "INVALID_ARGUMENT"
    assert [field for field, _ in caught.value.field_violations] == ["labels"]
    assert "have no image" in caught.value.message


def test_server_keeps_serving_after_invalid_requests(client: Client, channel: grpc.Channel) -> None:
    stub = pb_grpc.AdaptationStub(channel)
    for case_id, request, _ in INVALID_REQUESTS:
        assert send_invalid(stub, request).code() == grpc.StatusCode.INVALID_ARGUMENT, case_id

    assert client.info().checkpoint_id == CHECKPOINT_ID
    # A valid request with every kind of image: encoded PNG and JPEG, raw RGBA, raw float32,
    # sizes other than the input spec's.
    rng = np.random.default_rng(5)
    images = [
        encode(rng.integers(0, 256, size=(40, 30, 3), dtype=np.uint8), "PNG"),
        encode(rng.integers(0, 256, size=(50, 50, 3), dtype=np.uint8), "JPEG"),
        rng.integers(0, 256, size=(20, 20, 4), dtype=np.uint8),
        rng.random((28, 28, 1), dtype=np.float32),
        encode(rng.integers(0, 256, size=(1, 1), dtype=np.uint8), "PNG"),
        noise_u8(5),
    ]
    progress: list[ProgressUpdate] = []
    result = client.adapt(images, [0, 1, 0, 1, 0, 1], ["a", "b"], on_progress=progress.append, inner_steps=1, finetune_steps=2)
    check_result(result, 2, ["a", "b"], progress)
    # Three images per class are too few to hold any out.
    assert (result.metrics.support_examples, result.metrics.validation_examples) == (6, 0)
    assert run_onnx(result.onnx_model, np.random.default_rng(6).random((3, 1, 28, 28))).shape == (3, 2)


# ---------------------------------------------------------------------------------------------
# Cancellation and image decoding
# ---------------------------------------------------------------------------------------------


def test_cancelled_adaptation_frees_server(client: Client, address: str) -> None:
    """An exception in on_progress cancels the call, so the server stops the work and takes the next request."""

    class StopAdaptation(Exception):
        pass

    def stop_in_finetuning(update: ProgressUpdate) -> None:
        if update.phase == "finetune" and update.step == 2:
            raise StopAdaptation

    images = np.stack([noise_u8(i) for i in range(6)])
    started = time.monotonic()
    with pytest.raises(StopAdaptation):
        client.adapt(images, [0, 0, 0, 1, 1, 1], on_progress=stop_in_finetuning, inner_steps=1, finetune_steps=10_000)
    assert time.monotonic() - started < 60

    # Had the 10,000 fine-tuning steps kept running, they would hold the device past this deadline.
    with Client(address, timeout=120) as next_client:
        result = next_client.adapt(images, [0, 0, 0, 1, 1, 1], inner_steps=1, finetune_steps=2)
    assert result.metrics.support_examples == 6


def test_png_16_bit_scaled_like_raw(client: Client) -> None:
    """A 16-bit grayscale PNG is scaled to 8 bits (value / 257) as the client's loaders do.

    The same seed and data give the same model, so equal models show that the server saw equal
    pixels for the PNG files and for the raw arrays.
    """
    wide = np.random.default_rng(16).integers(0, 65536, size=(6, 28, 28), dtype=np.uint16)
    encoded = [encode(image, "PNG") for image in wide]
    assert all(Image.open(io.BytesIO(data)).mode.startswith("I") for data in encoded)
    scaled = np.round(wide / 257.0).astype(np.uint8)
    labels = [0, 0, 0, 1, 1, 1]

    from_png = client.adapt(encoded, labels, seed=4, inner_steps=1, finetune_steps=2)
    from_raw = client.adapt(scaled, labels, seed=4, inner_steps=1, finetune_steps=2)
    assert from_png.model_sha256 == from_raw.model_sha256


# ---------------------------------------------------------------------------------------------
# The client's command line
# ---------------------------------------------------------------------------------------------


def run_cli(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "archadapt_client", *arguments],
        capture_output=True, text=True, timeout=CALL_TIMEOUT_S, cwd=REPO_ROOT,
    )


def test_cli_info_prints_server_info(address: str) -> None:
    completed = run_cli("info", "--server", address)
    assert completed.returncode == 0, completed.stderr
    assert f"checkpoint: {CHECKPOINT_ID}" in completed.stdout
    assert f"cells: {SPACE.cells} (reduction cells at 0)" in completed.stdout
    assert f"channels of the first cell: {SPACE.channels}" in completed.stdout
    assert "images: at most 1000" in completed.stdout
    assert f"fine-tuning steps: {FINETUNE_STEPS}" in completed.stdout


def test_cli_adapt_writes_model(address: str, tmp_path: Path) -> None:
    out = tmp_path / "model.onnx"
    completed = run_cli(
        "adapt", "--server", address, "--data", str(FASHION_DIR / "support.npz"), "--out", str(out),
        "--inner-steps", "2", "--finetune-steps", "10",
    )
    assert completed.returncode == 0, completed.stderr
    assert out.is_file()
    assert out.stat().st_size > 0
    assert f"model: {out}" in completed.stdout
    assert f"checkpoint: {CHECKPOINT_ID}" in completed.stdout
    assert "validation accuracy:" in completed.stdout
    assert run_onnx(out.read_bytes(), np.zeros((2, 1, 28, 28), np.float32)).shape == (2, 10)


def test_cli_adapt_single_class_fails(address: str, tmp_path: Path) -> None:
    data = tmp_path / "one-class.npz"
    np.savez(data, images=np.stack([noise_u8(i) for i in range(4)]), labels=np.zeros(4, np.int64), class_names=np.array(["only"]))
    out = tmp_path / "never.onnx"
    completed = run_cli("adapt", "--server", address, "--data", str(data), "--out", str(out))
    assert completed.returncode != 0
    assert "INVALID_ARGUMENT" in completed.stderr
    assert "1 class(es) have images; at least 2 are needed" in completed.stderr
    assert "  labels: " in completed.stderr  # the field violation, on its own line
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# Budgets, ranked genotypes and genotype sampling
# ---------------------------------------------------------------------------------------------


def three_class_fashion(per_class: int = 10) -> tuple[np.ndarray, np.ndarray, list[str]]:
    support = load_dataset(FASHION_DIR / "support.npz")
    keep = np.concatenate([np.flatnonzero(support.labels == c)[:per_class] for c in range(3)])
    return support.images[keep], support.labels[keep], support.class_names[:3]


def test_adapt_respects_budgets(client: Client) -> None:
    images, labels, class_names = three_class_fashion()
    model = CostModel.build(SPACE, SPEC, 3)
    # The smallest network's parameter count leaves only the primitives without weights, and the
    # multiply-accumulates allow one small convolution more.
    max_parameters = smallest_cost(model, "parameters")
    max_macs = smallest_cost(model, "multiply_accumulates") + int(model.edge_costs["multiply_accumulates"]["normal"][2, SPACE.primitives.index("dil_conv_3x3")])

    result = client.adapt(
        images, labels, class_names, seed=3, inner_steps=2, finetune_steps=5,
        max_parameters=max_parameters, max_multiply_accumulates=max_macs, genotype_samples=3,
    )

    assert result.parameter_count <= max_parameters
    assert result.multiply_accumulates <= max_macs
    cost = model.genotype_cost(Genotype.from_dict(result.genotype))
    assert (cost.parameters, cost.multiply_accumulates) == (result.parameter_count, result.multiply_accumulates)

    ranked = result.top_genotypes
    assert len(ranked) == 5
    assert [r.probability for r in ranked] == sorted((r.probability for r in ranked), reverse=True)
    assert all(0.0 < r.probability <= 1.0 for r in ranked)
    for r in ranked:
        cost = model.genotype_cost(Genotype.from_dict(r.genotype))
        assert (cost.parameters, cost.multiply_accumulates) == (r.parameter_count, r.multiply_accumulates)


def test_impossible_budget_fails_at_admission(client: Client) -> None:
    images, labels, class_names = three_class_fashion()
    least = smallest_cost(CostModel.build(SPACE, SPEC, 3), "parameters")

    started = time.monotonic()
    with pytest.raises(ArchadaptError) as caught:
        client.adapt(images, labels, class_names, max_parameters=least - 1)
    assert time.monotonic() - started < 10.0  # rejected at admission, not after an adaptation
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in caught.value.field_violations] == ["options.max_parameters"]
    assert f"the smallest network for this task has {least} parameters; raise max_parameters to {least}" in caught.value.message

    info = client.upload_dataset(images, labels, class_names)
    jobs_before = len(list(client.list_jobs()))
    with pytest.raises(ArchadaptError) as caught:
        client.submit_job(info.dataset_id, max_multiply_accumulates=1)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in caught.value.field_violations] == ["options.max_multiply_accumulates"]
    assert "raise max_multiply_accumulates to" in caught.value.message
    assert len(list(client.list_jobs())) == jobs_before


def test_cli_adapt_budget_json(address: str, tmp_path: Path) -> None:
    data = tmp_path / "three-classes.npz"
    images, labels, class_names = three_class_fashion()
    np.savez(data, images=images, labels=labels, class_names=np.array(class_names))
    max_parameters = smallest_cost(CostModel.build(SPACE, SPEC, 3), "parameters") + 500
    out = tmp_path / "budget.onnx"

    completed = run_cli(
        "--no-progress", "adapt", "--server", address, "--data", str(data), "--out", str(out), "--inner-steps", "2",
        "--finetune-steps", "5", "--max-parameters", str(max_parameters), "--json",
    )

    assert completed.returncode == 0, completed.stderr
    document = json.loads(completed.stdout)
    assert document["parameter_count"] <= max_parameters
    assert len(document["top_genotypes"]) == 5
    assert set(document["top_genotypes"][0]) == {"genotype", "probability", "parameter_count", "multiply_accumulates"}
    result_json = tmp_path / "result.json"
    result_json.write_text(completed.stdout)
    drawn = run_cli("show", str(result_json), "--out", str(tmp_path / "cells.png"))
    assert drawn.returncode == 0, drawn.stderr
    assert (tmp_path / "cells.png").read_bytes().startswith(PNG_SIGNATURE)

    too_small = run_cli("adapt", "--server", address, "--data", str(data), "--out", str(out), "--max-parameters", "10")
    assert too_small.returncode != 0
    assert "raise max_parameters to" in too_small.stderr


# ---------------------------------------------------------------------------------------------
# The server's command line
# ---------------------------------------------------------------------------------------------


def wait_for_port(port_file: Path, process: subprocess.Popen, log: Path, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_file.is_file() and port_file.read_text().endswith("\n"):
            return int(port_file.read_text())
        if process.poll() is not None:
            pytest.fail(f"the server exited with {process.returncode} before it was ready:\n{log.read_text()}")
        time.sleep(0.2)
    pytest.fail(f"the server did not write {port_file} within {timeout:.0f} s:\n{log.read_text()}")


def test_server_command_stops_on_sigterm(checkpoint_dir: Path, tmp_path: Path) -> None:
    port_file, log = tmp_path / "port", tmp_path / "server.log"
    with open(log, "w") as log_handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "server", "--port", "0", "--port-file", str(port_file), "--checkpoint", str(checkpoint_dir),
             "--max-images", "123", "--data-dir", str(tmp_path / "data")],
            stdout=log_handle, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
        )
    try:
        port = wait_for_port(port_file, process, log, CALL_TIMEOUT_S)
        with Client(f"127.0.0.1:{port}", timeout=30) as subprocess_client:
            info = subprocess_client.info()
        assert info.checkpoint_id == CHECKPOINT_ID
        assert tuple(info.search_space.reduce_cells) == SPACE.reduce_cells
        assert info.limits == RequestLimits(max_images=123).to_proto()
        assert info.default_finetune_steps == ServingConfig().finetune.steps

        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output = log.read_text()
    assert returncode == 0, output
    assert f"serving checkpoint {CHECKPOINT_ID}" in output
    assert f"127.0.0.1:{port}; device {info.device} (" in output
    assert f"onnxruntime {onnxruntime.__version__} providers [" in output
    assert "CPUExecutionProvider" in output
    assert "shutting down" in output


def test_server_command_rejects_altered_checkpoint(checkpoint_dir: Path, tmp_path: Path) -> None:
    altered = tmp_path / "altered"
    shutil.copytree(checkpoint_dir, altered)
    tensors = altered / TENSORS_FILE
    content = bytearray(tensors.read_bytes())
    content[-1] ^= 0xFF  # the last byte of the file belongs to tensor data
    tensors.write_bytes(bytes(content))

    port_file = tmp_path / "port"
    completed = subprocess.run(
        [sys.executable, "-m", "server", "--port", "0", "--port-file", str(port_file), "--checkpoint", str(altered),
         "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=CALL_TIMEOUT_S, cwd=REPO_ROOT,
    )
    assert completed.returncode != 0
    assert str(tensors) in completed.stderr
    assert "SHA-256" in completed.stderr
    assert not port_file.exists()


def test_info_reports_none_sampling_and_final_relu() -> None:
    """ServerInfo and `archadapt info` report that the committed checkpoint never samples none and pools after a ReLU."""
    checkpoint = load_checkpoint(REPO_ROOT / "checkpoints" / "default")
    running = create_server("127.0.0.1:0", checkpoint, torch.device("cpu"))
    try:
        with Client(f"127.0.0.1:{running.port}", timeout=30) as info_client:
            info = info_client.info()
    finally:
        running.stop()
    assert info.search_space.never_sample_none == (not checkpoint.space.sample_none)
    assert info.search_space.final_relu == checkpoint.space.final_relu
    assert info.search_space.sample_two_inputs == checkpoint.space.sample_two_inputs
    assert info.search_space.constant_channels == checkpoint.space.constant_channels
    assert info.search_space.never_sample_none and info.search_space.final_relu
    text = format_server_info(info)
    assert "samples none: no" in text
    assert f"reduction cells double the channels: {'no' if checkpoint.space.constant_channels else 'yes'}" in text
    assert "ReLU before pooling: yes" in text
