"""Client of the archadapt.v1.Adaptation gRPC service."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
import numpy as np
from numpy.typing import NDArray

from archadapt_client.errors import ArchadaptError, translate_rpc_errors
from archadapt_client.loaders import (
    DatasetError,
    check_image_array,
    check_image_batch,
    check_labels,
    read_image_file,
)
from archadapt_client.v1 import archadapt_pb2, archadapt_pb2_grpc

logger = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""Default maximum size of one gRPC message in either direction, in bytes."""

UPLOAD_CHUNK_BYTES = 1024 * 1024
"""Size of the DatasetChunk messages of an upload, in bytes; the server accepts up to 4 MiB."""

_RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})

_UINT32_MAX = 2**32 - 1
_UINT64_MAX = 2**64 - 1
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SIGNATURE = b"\xff\xd8\xff"

ServerInfo = archadapt_pb2.ServerInfo

ImageInput = NDArray[Any] | bytes | bytearray | memoryview | str | os.PathLike[str]
"""One image: an array, the bytes of a PNG or JPEG file, or the path of an image file."""

ImagesInput = NDArray[Any] | Sequence[ImageInput]
"""A stacked (N, H, W[, C]) array, or a sequence of ImageInput items."""


def phase_name(phase: int) -> str:
    """Return the lowercase name of a Phase value without its prefix, e.g. ``"adapt"``.

    A value unknown to these stubs (a newer server) becomes ``"phase_<value>"``.
    """
    try:
        return str(archadapt_pb2.Phase.Name(phase)).removeprefix("PHASE_").lower()
    except ValueError:
        return f"phase_{phase}"


@dataclass(frozen=True)
class ProgressUpdate:
    """Progress of the running phase, as passed to ``on_progress``.

    Attributes:
        phase: Lowercase phase name, e.g. "validate", "adapt", "finetune".
        step: Steps done in this phase.
        total_steps: Steps of the whole phase, 0 when it has no steps.
        loss: Training loss of the last step, 0.0 when the phase has no loss.
        elapsed_seconds: Seconds since the server received the request.
    """

    phase: str
    step: int
    total_steps: int
    loss: float
    elapsed_seconds: float

    @classmethod
    def from_message(cls, message: archadapt_pb2.Progress) -> ProgressUpdate:
        return cls(
            phase=phase_name(message.phase),
            step=message.step,
            total_steps=message.total_steps,
            loss=message.loss,
            elapsed_seconds=message.elapsed_seconds,
        )


@dataclass(frozen=True)
class EdgeProbabilities:
    """Primitive probabilities on one edge of the adapted posterior.

    ``probabilities`` follows the order of ``ServerInfo.search_space.primitives``.
    Nodes 0 and 1 are the cell's inputs, node 2 the first intermediate node.
    """

    cell_type: str
    edge: int
    source: int
    target: int
    probabilities: tuple[float, ...]


@dataclass(frozen=True)
class RankedGenotype:
    """One of the most probable genotypes under the adapted posterior.

    Attributes:
        genotype: The genotype, in the form of ``AdaptResult.genotype``.
        probability: Probability under q(alpha) that every chosen edge
            carries its chosen primitive, in [0, 1].
        parameter_count: Trainable parameters of its network for this task.
        multiply_accumulates: Multiply-accumulates of one forward pass of
            that network on one image.
    """

    genotype: dict[str, Any]
    probability: float
    parameter_count: int
    multiply_accumulates: int


@dataclass(frozen=True)
class Metrics:
    """Measurements of the returned network.

    Attributes:
        support_examples: Images used for adaptation and fine-tuning.
        validation_examples: Held-out images; 0 when the dataset was too
            small to split, and then the validation fields are 0.
        validation_accuracy: Fraction of validation images classified
            correctly, in [0, 1].
        validation_loss: Mean cross-entropy on the validation images, in nats.
        onnx_max_abs_diff: Largest absolute difference between ONNX and
            PyTorch logits measured by the server.
    """

    support_examples: int
    validation_examples: int
    validation_accuracy: float
    validation_loss: float
    onnx_max_abs_diff: float


@dataclass(frozen=True)
class AdaptResult:
    """The outcome of one adaptation.

    Attributes:
        onnx_model: The ONNX model, checked against model_sha256.
        genotype: The derived genotype, ``{"normal": [[primitive, input],
            ...], "reduce": [...]}`` with two pairs per intermediate node.
        edge_probabilities: Primitive probabilities of every edge.
        metrics: Validation measurements of the returned network.
        timings: Wall time of each phase in seconds, keyed by lowercase
            phase name ("validate", "adapt", ...).
        parameter_count: Trainable parameters of the network.
        multiply_accumulates: Multiply-accumulates of one forward pass on
            one image.
        class_names: Class names in label order, as written into the model's
            metadata.
        request_id: Server-assigned id, also found in the server's logs.
        checkpoint_id: Id of the checkpoint the prior came from.
        model_sha256: Hex SHA-256 of onnx_model.
        top_genotypes: The most probable genotypes under the adapted
            posterior, best first, with their probabilities and costs.
            They are ranked without the request's budget.
    """

    onnx_model: bytes = field(repr=False)
    genotype: dict[str, Any]
    edge_probabilities: list[EdgeProbabilities]
    metrics: Metrics
    timings: dict[str, float]
    parameter_count: int
    multiply_accumulates: int
    class_names: list[str]
    request_id: str
    checkpoint_id: str
    model_sha256: str
    top_genotypes: list[RankedGenotype] = field(default_factory=list)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the ONNX model to ``path``, replacing an existing file, and return the path."""
        target = Path(path)
        target.write_bytes(self.onnx_model)
        return target


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff for calls that fail with UNAVAILABLE.

    Only UNAVAILABLE is retried: it means that the server was not reached or went away, so
    resending cannot repeat work. Every other code is raised at once. A streaming call (Adapt)
    is retried only while it has not received any event.

    Attributes:
        max_attempts: Attempts in total, including the first; 1 disables retries.
        initial_backoff: Seconds before the second attempt.
        multiplier: Factor by which the backoff grows after each retry.
        max_backoff: Upper bound of one backoff, in seconds.
        jitter: Fraction of each backoff removed at random, in [0, 1], so that many clients
            do not retry in step.

    Example:
        >>> policy = RetryPolicy(max_attempts=3, initial_backoff=0.5, jitter=0.0)
        >>> [policy.backoff(retry) for retry in range(3)]
        [0.5, 1.0, 2.0]
    """

    max_attempts: int = 4
    initial_backoff: float = 0.5
    multiplier: float = 2.0
    max_backoff: float = 8.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ValueError(f"invalid max_attempts {self.max_attempts!r}; expected an int of at least 1")
        if not self.initial_backoff > 0:
            raise ValueError(f"invalid initial_backoff {self.initial_backoff!r}; expected a positive number of seconds")
        if not self.multiplier >= 1:
            raise ValueError(f"invalid multiplier {self.multiplier!r}; expected a number of at least 1")
        if not self.max_backoff >= self.initial_backoff:
            raise ValueError(
                f"invalid max_backoff {self.max_backoff!r}; expected at least initial_backoff={self.initial_backoff}"
            )
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"invalid jitter {self.jitter!r}; expected a fraction from 0 to 1")

    def backoff(self, retry: int) -> float:
        """Return the seconds to wait before retry number ``retry`` (0 for the first retry), before jitter."""
        return float(min(self.max_backoff, self.initial_backoff * self.multiplier**retry))


NO_RETRIES = RetryPolicy(max_attempts=1)
"""A RetryPolicy that sends every call once."""

PemInput = bytes | str | os.PathLike[str]
"""PEM data as ``bytes``, or the path of a PEM file as ``str`` or ``os.PathLike``."""

_LOOPBACK_HOSTS = ("localhost", "127.", "[::1]", "::1")


def _read_pem(value: PemInput, name: str) -> bytes:
    if isinstance(value, bytes):
        data = value
    elif isinstance(value, (str, os.PathLike)):
        try:
            data = Path(value).read_bytes()
        except OSError as error:
            raise ValueError(f"cannot read {name} from {value}: {error}") from error
    else:
        raise TypeError(f"{name} is a {type(value).__name__}; expected PEM bytes or a file path")
    if b"-----BEGIN " not in data:
        raise ValueError(f"{name} is not PEM data; expected a '-----BEGIN ...' block")
    return data


def _check_token(token: str) -> str:
    if not isinstance(token, str):
        raise TypeError(f"token is a {type(token).__name__}; expected a str")
    if not token or any(character.isspace() for character in token):
        raise ValueError("invalid token: it is empty or contains whitespace; pass the token alone, without 'Bearer '")
    return token


class Client:
    """Connection to one archadapt server.

    Use it as a context manager or call ``close()``. Every failed call
    raises ArchadaptError; invalid arguments raise ValueError (DatasetError
    for images and labels) or TypeError before anything is sent.

    The channel is plaintext unless TLS is selected: ``tls=True`` verifies
    the server with the system's root certificates, ``root_certificates``
    with a CA bundle of your own, and ``certificate_chain`` with
    ``private_key`` add a client certificate for servers that require mutual
    TLS. ``token`` is sent with every call as ``authorization: Bearer <token>``
    metadata.

    Example:
        >>> with Client("localhost:50051", timeout=30, root_certificates="ca.pem", token="s3cret") as client:
        ...     print(client.info().checkpoint_id)  # doctest: +SKIP
    """

    def __init__(
        self,
        address: str,
        *,
        timeout: float | None = 600.0,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        retry: RetryPolicy = RetryPolicy(),
        tls: bool | None = None,
        root_certificates: PemInput | None = None,
        certificate_chain: PemInput | None = None,
        private_key: PemInput | None = None,
        server_name: str | None = None,
        token: str | None = None,
    ) -> None:
        """Open a channel to ``address`` ("host:port").

        ``timeout`` is the deadline of each call in seconds, covering the
        whole adaptation stream and every retry; None waits without a
        deadline. ``max_message_bytes`` caps the size of one message sent or
        received. ``retry`` sets how calls that fail with UNAVAILABLE are
        retried. ``tls`` defaults to True when any certificate option is
        given. ``server_name`` overrides the name checked against the
        server's certificate (default: the host of ``address``). The channel
        connects lazily, so an unreachable server is reported by the first
        call (code UNAVAILABLE).
        """
        if not address or not isinstance(address, str):
            raise ValueError(f"invalid server address {address!r}; expected 'host:port', e.g. 'localhost:50051'")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"invalid timeout {timeout!r}; expected a positive number of seconds or None")
        if max_message_bytes <= 0:
            raise ValueError(f"invalid max_message_bytes {max_message_bytes!r}; expected a positive byte count")
        if not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry is a {type(retry).__name__}; expected a RetryPolicy")
        if (certificate_chain is None) != (private_key is None):
            raise ValueError("certificate_chain and private_key must be given together for mutual TLS")
        has_certificates = any(value is not None for value in (root_certificates, certificate_chain))
        if tls is None:
            tls = has_certificates
        elif not tls and has_certificates:
            raise ValueError("tls=False contradicts the certificate options; drop them or set tls=True")

        self.address = address
        self.timeout = timeout
        self.max_message_bytes = max_message_bytes
        self.retry = retry
        self.tls = tls
        self._metadata: tuple[tuple[str, str], ...] = ()
        if token is not None:
            self._metadata = (("authorization", f"Bearer {_check_token(token)}"),)
            if not tls and not address.startswith(_LOOPBACK_HOSTS):
                logger.warning("sending a bearer token to %s over plaintext; anyone on the path can read it", address)

        options: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            # gRPC's default grows the wait between connection attempts to 120 s, so a channel
            # could stay down for minutes after its server is back. This caps it at 10 s.
            ("grpc.max_reconnect_backoff_ms", 10_000),
        ]
        if tls:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read_pem(root_certificates, "root_certificates") if root_certificates else None,
                private_key=_read_pem(private_key, "private_key") if private_key else None,
                certificate_chain=_read_pem(certificate_chain, "certificate_chain") if certificate_chain else None,
            )
            if server_name:
                options.append(("grpc.ssl_target_name_override", server_name))
            self._channel = grpc.secure_channel(address, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(address, options=options)
        self._stub = archadapt_pb2_grpc.AdaptationStub(self._channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel; calling it again has no effect."""
        self._channel.close()

    def _deadline(self) -> float | None:
        return None if self.timeout is None else time.monotonic() + self.timeout

    def _wait_before_retry(self, error: grpc.RpcError, attempt: int, deadline: float | None, method: str) -> bool:
        """Sleep before the next attempt and return True, or return False when ``error`` is final.

        ``attempt`` counts the attempts made so far, from 1.
        """
        code = error.code() if isinstance(error, grpc.Call) else None
        if code != grpc.StatusCode.UNAVAILABLE or attempt >= self.retry.max_attempts:
            return False
        delay = self.retry.backoff(attempt - 1) * (1.0 - self.retry.jitter * random.random())
        if deadline is not None and time.monotonic() + delay >= deadline:
            return False
        logger.warning(
            "%s to %s failed with UNAVAILABLE (%s); attempt %d of %d in %.2f s",
            method, self.address, error.details(), attempt + 1, self.retry.max_attempts, delay,
        )
        time.sleep(delay)
        return True

    @staticmethod
    def _remaining(deadline: float | None) -> float | None:
        return None if deadline is None else max(deadline - time.monotonic(), 0.001)

    @translate_rpc_errors
    def info(self) -> archadapt_pb2.ServerInfo:
        """Return the server's input spec, search space, request limits and versions.

        Example:
            >>> with Client("localhost:50051", timeout=10) as client:
            ...     info = client.info()  # doctest: +SKIP
            >>> info.input_spec.channels, info.input_spec.height  # doctest: +SKIP
            (1, 28)
        """
        deadline = self._deadline()
        attempt = 1
        while True:
            try:
                info: archadapt_pb2.ServerInfo = self._stub.GetServerInfo(
                    archadapt_pb2.GetServerInfoRequest(), timeout=self._remaining(deadline), metadata=self._metadata
                )
                return info
            except grpc.RpcError as error:
                if not self._wait_before_retry(error, attempt, deadline, "GetServerInfo"):
                    raise
                attempt += 1

    @translate_rpc_errors
    def adapt(
        self,
        images: ImagesInput,
        labels: Sequence[int] | NDArray[Any],
        class_names: Sequence[str] | None = None,
        on_progress: Callable[[ProgressUpdate], None] | None = None,
        *,
        seed: int = 0,
        inner_steps: int = 0,
        finetune_steps: int = 0,
        max_parameters: int = 0,
        max_multiply_accumulates: int = 0,
        genotype_samples: int = 0,
    ) -> AdaptResult:
        """Adapt the server's prior to a labeled dataset and return the ONNX classifier.

        ``images`` and ``labels`` are described in build_request. ``on_progress``
        is called in this thread with every progress event; an exception it
        raises cancels the call and propagates. ``seed`` (0 to 2**64 - 1)
        fixes every random choice of the server. ``inner_steps`` and
        ``finetune_steps`` (0 to 2**32 - 1) set the step counts, and 0 selects
        the server's default. ``max_parameters`` and ``max_multiply_accumulates``
        (0 to 2**64 - 1, 0 for no limit) bound the returned network's
        parameters and multiply-accumulates per image; a limit below the
        smallest possible network raises ArchadaptError with code
        INVALID_ARGUMENT, whose message gives that smallest value.
        ``genotype_samples`` (0 for the server's default) sets how many
        genotypes the server scores before it keeps one.

        Raises ArchadaptError with the server's status, or with code
        DATA_LOSS when the model chunks are out of order, the model's size or
        SHA-256 differs from the result, or the stream ends without a result.

        Example:
            >>> import numpy as np
            >>> images = np.random.default_rng(0).integers(0, 256, (20, 28, 28), dtype=np.uint8)
            >>> with Client("localhost:50051") as client:
            ...     result = client.adapt(images, [0, 1] * 10, ["even", "odd"], seed=1)  # doctest: +SKIP
            >>> result.save("model.onnx")  # doctest: +SKIP
        """
        request = build_request(
            images,
            labels,
            class_names,
            seed=seed,
            inner_steps=inner_steps,
            finetune_steps=finetune_steps,
            max_parameters=max_parameters,
            max_multiply_accumulates=max_multiply_accumulates,
            genotype_samples=genotype_samples,
        )
        request_bytes = request.ByteSize()
        if request_bytes > self.max_message_bytes:
            raise ArchadaptError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the request is {request_bytes} bytes, more than max_message_bytes={self.max_message_bytes}; "
                "send fewer or smaller images, or raise max_message_bytes up to the server's max_request_bytes",
            )
        logger.debug("sending Adapt request: %d images, %d bytes", len(request.images), request_bytes)

        deadline = self._deadline()
        attempt = 1
        while True:
            stream = self._stub.Adapt(request, timeout=self._remaining(deadline), metadata=self._metadata)
            received_events = _CountingIterator(stream)
            try:
                return _read_adapt_stream(received_events, on_progress)
            except grpc.RpcError as error:
                # A stream that delivered an event has started the server's work: never resend it.
                if received_events.count or not self._wait_before_retry(error, attempt, deadline, "Adapt"):
                    raise
                attempt += 1
            finally:
                # Cancelling stops the server's work when the loop was left early.
                # It has no effect once the call has finished.
                stream.cancel()


    # -- Jobs: adaptations that outlive the call, a disconnect and a server restart ------------

    @translate_rpc_errors
    def upload_dataset(
        self,
        images: ImagesInput,
        labels: Sequence[int] | NDArray[Any],
        class_names: Sequence[str] | None = None,
        *,
        chunk_bytes: int = UPLOAD_CHUNK_BYTES,
        on_bytes: Callable[[int, int], None] | None = None,
    ) -> archadapt_pb2.DatasetInfo:
        """Upload a dataset in chunks and return its DatasetInfo; ``dataset_id`` is its SHA-256.

        ``images``, ``labels`` and ``class_names`` are described in build_request. A dataset
        may be larger than one message, up to the server's ``limits.max_dataset_bytes``.
        Uploading the same dataset twice returns the same id. ``on_bytes(sent, total)`` is
        called as each chunk is handed to gRPC.
        """
        if not 1 <= chunk_bytes <= UPLOAD_CHUNK_BYTES:
            raise ValueError(f"invalid chunk_bytes {chunk_bytes!r}; expected 1 to {UPLOAD_CHUNK_BYTES}")
        data = dataset_bytes(images, labels, class_names)
        logger.debug("uploading a dataset of %d bytes in chunks of %d", len(data), chunk_bytes)

        def chunks() -> Iterator[archadapt_pb2.DatasetChunk]:
            for offset in range(0, len(data), chunk_bytes):
                chunk = data[offset : offset + chunk_bytes]
                yield archadapt_pb2.DatasetChunk(data=chunk)
                if on_bytes is not None:
                    on_bytes(offset + len(chunk), len(data))

        return self._stub.UploadDataset(chunks(), timeout=self.timeout, metadata=self._metadata)

    @translate_rpc_errors
    def submit_job(
        self,
        dataset_id: str,
        *,
        seed: int = 0,
        inner_steps: int = 0,
        finetune_steps: int = 0,
        max_parameters: int = 0,
        max_multiply_accumulates: int = 0,
        genotype_samples: int = 0,
        idempotency_key: str = "",
        deadline_seconds: float = 0.0,
        retries: int = 3,
    ) -> archadapt_pb2.Job:
        """Queue an adaptation of an uploaded dataset and return the Job (state QUEUED).

        With an ``idempotency_key`` a submit that fails with UNAVAILABLE or DEADLINE_EXCEEDED
        is retried up to ``retries`` times, because the server returns the same job for the
        same key. ``deadline_seconds`` (0: none) bounds the job's run from submission.
        ``max_parameters``, ``max_multiply_accumulates`` and ``genotype_samples`` are
        described in adapt.
        A full queue raises ArchadaptError with code RESOURCE_EXHAUSTED and ``retry_delay``.
        """
        request = archadapt_pb2.SubmitJobRequest(
            dataset_id=dataset_id,
            options=adapt_options(
                seed=seed,
                inner_steps=inner_steps,
                finetune_steps=finetune_steps,
                max_parameters=max_parameters,
                max_multiply_accumulates=max_multiply_accumulates,
                genotype_samples=genotype_samples,
            ),
            idempotency_key=idempotency_key,
            deadline_seconds=deadline_seconds,
        )
        attempts = 1 + max(0, retries) if idempotency_key else 1
        for attempt in range(1, attempts + 1):
            try:
                return self._stub.SubmitJob(request, timeout=self.timeout, metadata=self._metadata)
            except grpc.RpcError as error:
                if attempt == attempts or error.code() not in _RETRYABLE_CODES:
                    raise
                logger.warning("submit attempt %d failed with %s; retrying with the same idempotency key", attempt, error.code().name)
                time.sleep(min(2.0**attempt, 10.0))
        raise AssertionError("unreachable")

    @translate_rpc_errors
    def get_job(self, job_id: str) -> archadapt_pb2.Job:
        """Return the job's state, progress count, error or result."""
        return self._stub.GetJob(archadapt_pb2.GetJobRequest(job_id=job_id), timeout=self.timeout, metadata=self._metadata)

    @translate_rpc_errors
    def cancel_job(self, job_id: str) -> archadapt_pb2.Job:
        """Cancel a queued or running job and return it; a running job ends CANCELLED within about a second."""
        return self._stub.CancelJob(archadapt_pb2.CancelJobRequest(job_id=job_id), timeout=self.timeout, metadata=self._metadata)

    def list_jobs(self, states: Sequence[int] = (), page_size: int = 100) -> Iterator[archadapt_pb2.Job]:
        """Yield every job, newest first, optionally only those in ``states`` (JobState values)."""
        token = ""
        while True:
            request = archadapt_pb2.ListJobsRequest(page_size=page_size, page_token=token, states=list(states))
            try:
                response = self._stub.ListJobs(request, timeout=self.timeout, metadata=self._metadata)
            except grpc.RpcError as error:
                raise ArchadaptError.from_rpc_error(error) from error
            yield from response.jobs
            token = response.next_page_token
            if not token:
                return

    def watch_job(
        self,
        job_id: str,
        from_index: int = 0,
        *,
        reconnects: int = 10,
        reconnect_delay: float = 1.0,
        max_reconnect_delay: float = 10.0,
    ) -> Iterator[archadapt_pb2.JobEvent]:
        """Yield the job's events from ``from_index`` until the one that puts it in a final state.

        When the stream breaks with UNAVAILABLE (a lost connection or a restarting server),
        the watch reattaches from the index after the last event received, so no event is lost
        or repeated. It tries up to ``reconnects`` times in a row, waiting ``reconnect_delay``
        seconds before the first try and twice as long before each next one, at most
        ``max_reconnect_delay``. The defaults wait 75 s in all, enough for a server to restart.
        The stream has no deadline.
        """
        next_index, failures = from_index, 0
        while True:
            stream = self._stub.WatchJob(archadapt_pb2.WatchJobRequest(job_id=job_id, from_index=next_index), metadata=self._metadata)
            try:
                for event in stream:
                    failures = 0
                    next_index = event.index + 1
                    yield event
                return
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE or failures >= reconnects:
                    raise ArchadaptError.from_rpc_error(error) from error
                failures += 1
                delay = min(max_reconnect_delay, reconnect_delay * 2 ** (failures - 1))
                logger.warning(
                    "watch of job %s lost (%s); reattaching from event %d in %.1f s (try %d of %d)",
                    job_id, error.details(), next_index, delay, failures, reconnects,
                )
                time.sleep(delay)
            finally:
                stream.cancel()

    def wait_for_job(
        self, job_id: str, on_progress: Callable[[ProgressUpdate], None] | None = None
    ) -> archadapt_pb2.Job:
        """Watch the job until it is final and return it; ``on_progress`` gets each progress event."""
        for event in self.watch_job(job_id):
            if on_progress is not None and event.WhichOneof("event") == "progress":
                on_progress(ProgressUpdate.from_message(event.progress))
        return self.get_job(job_id)

    def download_model(
        self,
        job_id: str,
        path: str | os.PathLike[str] | None = None,
        *,
        reconnects: int = 5,
        on_bytes: Callable[[int, int], None] | None = None,
    ) -> bytes:
        """Download the ONNX model of a SUCCEEDED job, check its size and SHA-256, and return it.

        With ``path`` the model is also written there, through a temporary file and a rename,
        so the path never contains a partial model. A download that breaks with UNAVAILABLE
        resumes at the byte where it stopped, up to ``reconnects`` times. ``on_bytes(received,
        total)`` is called after each chunk.
        """
        job = self.get_job(job_id)
        model, total, failures = bytearray(), None, 0
        while total is None or len(model) < total:
            request = archadapt_pb2.DownloadModelRequest(job_id=job_id, offset=len(model))
            try:
                for chunk in self._stub.DownloadModel(request, timeout=self.timeout, metadata=self._metadata):
                    if chunk.offset != len(model):
                        raise ArchadaptError(
                            grpc.StatusCode.DATA_LOSS,
                            f"model chunk at offset {chunk.offset} arrived after {len(model)} bytes",
                        )
                    total = chunk.total_bytes
                    model.extend(chunk.data)
                    if on_bytes is not None:
                        on_bytes(len(model), total)
                if total is None:
                    total = 0
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE or failures >= reconnects:
                    raise ArchadaptError.from_rpc_error(error) from error
                failures += 1
                logger.warning("download of job %s broke at byte %d; resuming", job_id, len(model))
                time.sleep(1.0)
        _verify_model(bytes(model), job.result)
        if path is not None:
            target = Path(path)
            staging = target.with_name(f".{target.name}.part")
            staging.write_bytes(model)
            staging.replace(target)
        return bytes(model)


class _CountingIterator(Iterator[archadapt_pb2.AdaptEvent]):
    """Count the events an Adapt stream has delivered."""

    def __init__(self, events: Iterator[archadapt_pb2.AdaptEvent]) -> None:
        self._events = events
        self.count = 0

    def __next__(self) -> archadapt_pb2.AdaptEvent:
        event = next(self._events)
        self.count += 1
        return event


def _read_adapt_stream(
    events: Iterator[archadapt_pb2.AdaptEvent],
    on_progress: Callable[[ProgressUpdate], None] | None,
) -> AdaptResult:
    """Consume the Adapt event stream and return the verified result."""
    model = bytearray()
    model_total_bytes: int | None = None
    result: archadapt_pb2.AdaptResult | None = None

    for event in events:
        kind = event.WhichOneof("event")
        if result is not None:
            raise ArchadaptError(
                grpc.StatusCode.DATA_LOSS,
                f"received a {kind} event after the AdaptResult; the result must be the last event",
            )
        if kind == "progress":
            if on_progress is not None:
                on_progress(ProgressUpdate.from_message(event.progress))
        elif kind == "model_chunk":
            chunk = event.model_chunk
            if chunk.offset != len(model):
                raise ArchadaptError(
                    grpc.StatusCode.DATA_LOSS,
                    f"model chunk at offset {chunk.offset} arrived after {len(model)} bytes; "
                    "chunks must arrive in order without gaps",
                )
            if model_total_bytes is not None and chunk.total_bytes != model_total_bytes:
                raise ArchadaptError(
                    grpc.StatusCode.DATA_LOSS,
                    f"model chunk at offset {chunk.offset} gives total_bytes={chunk.total_bytes}, "
                    f"but earlier chunks gave {model_total_bytes}",
                )
            model_total_bytes = chunk.total_bytes
            model.extend(chunk.data)
        elif kind == "result":
            result = event.result
        else:
            logger.warning("ignoring an Adapt event of unknown kind %r; is the client older than the server?", kind)

    if result is None:
        raise ArchadaptError(
            grpc.StatusCode.DATA_LOSS,
            f"the Adapt stream ended without an AdaptResult after {len(model)} model bytes",
        )
    _verify_model(bytes(model), result)
    logger.info("adaptation %s finished: %d model bytes", result.request_id, len(model))
    return _convert_result(bytes(model), result)


def _verify_model(model: bytes, result: archadapt_pb2.AdaptResult) -> None:
    if len(model) != result.model_bytes:
        raise ArchadaptError(
            grpc.StatusCode.DATA_LOSS,
            f"received {len(model)} model bytes, but the result of request {result.request_id!r} "
            f"gives model_bytes={result.model_bytes}",
        )
    digest = hashlib.sha256(model).hexdigest()
    if digest != result.model_sha256.lower():
        raise ArchadaptError(
            grpc.StatusCode.DATA_LOSS,
            f"the received model has SHA-256 {digest}, but the result of request {result.request_id!r} "
            f"gives {result.model_sha256!r}",
        )


def _parse_genotype(text: str, field_name: str, request_id: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        genotype = json.loads(text)
    except json.JSONDecodeError as error:
        raise ArchadaptError(
            grpc.StatusCode.DATA_LOSS,
            f"the {field_name} of request {request_id!r} is not valid JSON: {error}",
        ) from error
    if not isinstance(genotype, dict):
        raise ArchadaptError(
            grpc.StatusCode.DATA_LOSS,
            f"the {field_name} of request {request_id!r} is a {type(genotype).__name__}; "
            "expected a JSON object",
        )
    return genotype


def _convert_result(model: bytes, result: archadapt_pb2.AdaptResult) -> AdaptResult:
    genotype = _parse_genotype(result.genotype_json, "genotype_json", result.request_id)

    metrics = result.metrics
    return AdaptResult(
        onnx_model=model,
        genotype=genotype,
        edge_probabilities=[
            EdgeProbabilities(
                cell_type=edge.cell_type,
                edge=edge.edge,
                source=edge.source,
                target=edge.target,
                probabilities=tuple(edge.probabilities),
            )
            for edge in result.edge_probabilities
        ],
        metrics=Metrics(
            support_examples=metrics.support_examples,
            validation_examples=metrics.validation_examples,
            validation_accuracy=metrics.validation_accuracy,
            validation_loss=metrics.validation_loss,
            onnx_max_abs_diff=metrics.onnx_max_abs_diff,
        ),
        timings={phase_name(timing.phase): timing.seconds for timing in result.timings},
        parameter_count=result.parameter_count,
        multiply_accumulates=result.multiply_accumulates,
        class_names=list(result.class_names),
        request_id=result.request_id,
        checkpoint_id=result.checkpoint_id,
        model_sha256=result.model_sha256,
        top_genotypes=[
            RankedGenotype(
                genotype=_parse_genotype(ranked.genotype_json, f"top_genotypes[{i}].genotype_json", result.request_id),
                probability=ranked.probability,
                parameter_count=ranked.parameter_count,
                multiply_accumulates=ranked.multiply_accumulates,
            )
            for i, ranked in enumerate(result.top_genotypes)
        ],
    )


def build_request(
    images: ImagesInput,
    labels: Sequence[int] | NDArray[Any],
    class_names: Sequence[str] | None = None,
    *,
    seed: int = 0,
    inner_steps: int = 0,
    finetune_steps: int = 0,
    max_parameters: int = 0,
    max_multiply_accumulates: int = 0,
    genotype_samples: int = 0,
) -> archadapt_pb2.AdaptRequest:
    """Build the AdaptRequest for a dataset.

    ``images`` is one of:

    - a numpy array (N, H, W) or (N, H, W, C) with C in {1, 3, 4};
    - a sequence whose items are (H, W) or (H, W, C) arrays (sizes may
      differ), ``bytes`` of PNG or JPEG files, or paths (``str`` or
      ``os.PathLike``) of image files.

    uint8 and float32 arrays are sent as RawArray, float16 and float64 arrays
    are converted to float32 first, and float values must lie in [0, 1].
    Bytes and PNG or JPEG files are sent encoded. Other image files (BMP,
    GIF, ...) are decoded with Pillow and sent as uint8 RawArray, because
    the server accepts only PNG and JPEG encodings.

    ``labels`` contains one class index per image. ``class_names[c]`` names
    label c; when given it must cover every label.

    Raises DatasetError (a ValueError) for invalid images or labels,
    ValueError for options out of range and TypeError for items of another
    type.
    """
    image_messages = _image_messages(images)
    if not image_messages:
        raise DatasetError("the dataset contains no images")
    label_array = check_labels(labels, len(image_messages), "the dataset")

    names: list[str] = []
    if class_names is not None:
        names = [str(name) for name in class_names]
        if names and int(label_array.max()) >= len(names):
            raise DatasetError(
                f"label {int(label_array.max())} has no class name; "
                f"{len(names)} class_names cover labels 0 to {len(names) - 1}"
            )

    return archadapt_pb2.AdaptRequest(
        images=image_messages,
        labels=label_array.tolist(),
        class_names=names,
        options=adapt_options(
            seed=seed,
            inner_steps=inner_steps,
            finetune_steps=finetune_steps,
            max_parameters=max_parameters,
            max_multiply_accumulates=max_multiply_accumulates,
            genotype_samples=genotype_samples,
        ),
    )


def adapt_options(
    *,
    seed: int = 0,
    inner_steps: int = 0,
    finetune_steps: int = 0,
    max_parameters: int = 0,
    max_multiply_accumulates: int = 0,
    genotype_samples: int = 0,
) -> archadapt_pb2.AdaptOptions:
    """Check the ranges of the options and return their AdaptOptions message; 0 means the default."""
    _check_range("seed", seed, _UINT64_MAX)
    _check_range("inner_steps", inner_steps, _UINT32_MAX)
    _check_range("finetune_steps", finetune_steps, _UINT32_MAX)
    _check_range("max_parameters", max_parameters, _UINT64_MAX)
    _check_range("max_multiply_accumulates", max_multiply_accumulates, _UINT64_MAX)
    _check_range("genotype_samples", genotype_samples, _UINT32_MAX)
    return archadapt_pb2.AdaptOptions(
        seed=seed,
        inner_steps=inner_steps,
        finetune_steps=finetune_steps,
        max_parameters=max_parameters,
        max_multiply_accumulates=max_multiply_accumulates,
        genotype_samples=genotype_samples,
    )


def dataset_bytes(
    images: ImagesInput,
    labels: Sequence[int] | NDArray[Any],
    class_names: Sequence[str] | None = None,
) -> bytes:
    """Return the serialized Dataset message of a dataset, the bytes that UploadDataset sends.

    Dataset shares its field numbers with AdaptRequest, so the request without options is it.
    """
    request = build_request(images, labels, class_names)
    request.ClearField("options")
    return request.SerializeToString(deterministic=True)


def _check_range(name: str, value: int, maximum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} is a {type(value).__name__}; expected an int")
    if not 0 <= value <= maximum:
        raise ValueError(f"invalid {name} {value}; expected an integer from 0 to {maximum}")


def _image_messages(images: ImagesInput) -> list[archadapt_pb2.Image]:
    if isinstance(images, np.ndarray):
        batch = check_image_batch(images, "images")
        return [raw_image(image) for image in batch]
    if isinstance(images, (bytes, bytearray, memoryview, str, os.PathLike)):
        raise TypeError(
            f"images is a single {type(images).__name__}; expected an array or a list of images, "
            "e.g. [path] for one file"
        )
    return [image_message(item, index) for index, item in enumerate(images)]


def image_message(item: ImageInput, index: int = 0) -> archadapt_pb2.Image:
    """Convert one image to an Image message; ``index`` names it in error messages."""
    where = f"image {index}"
    if isinstance(item, np.ndarray):
        return raw_image(check_image_array(item, where))
    if isinstance(item, (bytes, bytearray, memoryview)):
        data = bytes(item)
        if not _is_png_or_jpeg(data):
            raise DatasetError(
                f"{where} is {len(data)} bytes starting with {data[:8].hex() or 'nothing'}, "
                "not a PNG or JPEG file; pass other formats as a path or a decoded numpy array"
            )
        return archadapt_pb2.Image(encoded=data)
    if isinstance(item, (str, os.PathLike)):
        path = Path(item)
        try:
            data = path.read_bytes()
        except OSError as error:
            raise DatasetError(f"cannot read {where} from {path}: {error}") from error
        if _is_png_or_jpeg(data):
            return archadapt_pb2.Image(encoded=data)
        return raw_image(read_image_file(path))
    raise TypeError(
        f"{where} is a {type(item).__name__}; expected a numpy array, PNG or JPEG bytes, or a file path"
    )


def raw_image(image: NDArray[Any]) -> archadapt_pb2.Image:
    """Wrap a checked uint8 or float32 (H, W[, C]) array as a RawArray Image.

    float32 data is sent little-endian as the protocol requires.
    """
    if image.dtype == np.uint8:
        dtype = archadapt_pb2.UINT8
        data = np.ascontiguousarray(image).tobytes()
    elif image.dtype == np.float32:
        dtype = archadapt_pb2.FLOAT32
        data = np.ascontiguousarray(image, dtype="<f4").tobytes()
    else:
        raise TypeError(f"raw images must be uint8 or float32, got {image.dtype}; check them with check_image_array")
    return archadapt_pb2.Image(raw=archadapt_pb2.RawArray(dtype=dtype, shape=list(image.shape), data=data))


def _is_png_or_jpeg(data: bytes) -> bool:
    return data.startswith(_PNG_SIGNATURE) or data.startswith(_JPEG_SIGNATURE)
