"""Jobs against a real in-process server on loopback: submit, watch, reattach, cancel, list,
download, idempotency, deadlines, uploads, admission limits, expiry, metrics and draining.

Jobs use the tiny checkpoint with one inner step and two fine-tuning steps, so each takes a few
seconds, most of them in the ONNX export. A job that must still be running when the test acts
gets 10,000 fine-tuning steps. Each such job is cancelled, and no test waits for it to finish.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from google.rpc import code_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from archadapt.adaptation import ServingConfig
from archadapt.checkpoint import Checkpoint
from archadapt_client import ArchadaptError, Client
from archadapt_client.client import dataset_bytes
from archadapt_client.v1 import archadapt_pb2 as pb
from archadapt_client.v1 import archadapt_pb2_grpc as pb_grpc
from server.app import RunningServer, create_server
from server.interrupt import ComputeSection, WorkerInterrupted
from server.job_store import DATABASE_FILE
from server.jobs import JobLimits
from server.request_decoding import RequestLimits

CALL_TIMEOUT_S = 120.0
FINAL_STATES = (pb.SUCCEEDED, pb.FAILED, pb.CANCELLED)
QUICK = {"inner_steps": 1, "finetune_steps": 2}
SLOW = {"inner_steps": 1, "finetune_steps": 10_000}


def noise_dataset(seed: int, per_class: int = 3, classes: int = 2) -> tuple[np.ndarray, list[int]]:
    images = np.random.default_rng(seed).integers(0, 256, size=(per_class * classes, 28, 28), dtype=np.uint8)
    labels = [label for label in range(classes) for _ in range(per_class)]
    return images, labels


def start(checkpoint: Checkpoint, data_dir: Path, **job_limits: object) -> RunningServer:
    return create_server(
        "127.0.0.1:0", checkpoint, torch.device("cpu"), RequestLimits(), ServingConfig(),
        data_dir=data_dir, job_limits=JobLimits(**job_limits), metrics_address=("127.0.0.1", 0),
    )


@pytest.fixture(scope="module")
def server(checkpoint: Checkpoint, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start(checkpoint, tmp_path_factory.mktemp("jobs-data"))
    yield running
    running.stop(grace=1.0)


@pytest.fixture
def client(server: RunningServer) -> Iterator[Client]:
    with Client(f"127.0.0.1:{server.port}", timeout=CALL_TIMEOUT_S) as connected:
        yield connected


@pytest.fixture(scope="module")
def dataset_id(server: RunningServer) -> str:
    with Client(f"127.0.0.1:{server.port}", timeout=CALL_TIMEOUT_S) as connected:
        return connected.upload_dataset(*noise_dataset(0)).dataset_id


def wait_until(condition, timeout: float = 60.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"condition not met within {timeout} s")


def wait_final(client: Client, job_id: str, timeout: float = 120.0) -> pb.Job:
    return wait_until(lambda: (job := client.get_job(job_id)).state in FINAL_STATES and job, timeout)


def state_changes(events: list[pb.JobEvent]) -> list[int]:
    return [event.state_change.state for event in events if event.WhichOneof("event") == "state_change"]


# ---------------------------------------------------------------------------------------------
# Submit, watch, download
# ---------------------------------------------------------------------------------------------


def test_job_runs_to_success(client: Client, dataset_id: str, tmp_path: Path) -> None:
    job = client.submit_job(dataset_id, seed=1, **QUICK)
    assert job.state == pb.QUEUED
    assert len(job.job_id) == 32
    assert job.dataset_id == dataset_id
    assert job.options.finetune_steps == 2

    events = list(client.watch_job(job.job_id))
    assert [event.index for event in events] == list(range(len(events)))
    assert state_changes(events) == [pb.QUEUED, pb.RUNNING, pb.SUCCEEDED]
    phases = [event.progress.phase for event in events if event.WhichOneof("event") == "progress"]
    assert phases[0] == pb.PHASE_VALIDATE
    assert phases[-1] == pb.PHASE_EXPORT
    assert phases.count(pb.PHASE_FINETUNE) == 2

    finished = client.get_job(job.job_id)
    assert finished.state == pb.SUCCEEDED
    assert finished.attempts == 1
    assert finished.event_count == len(events)
    assert finished.created_time <= finished.started_time <= finished.finished_time
    assert finished.expire_time > finished.finished_time
    assert finished.result.request_id == job.job_id
    assert finished.result.metrics.support_examples == 6

    path = tmp_path / "model.onnx"
    model = client.download_model(job.job_id, path)
    assert path.read_bytes() == model
    assert hashlib.sha256(model).hexdigest() == finished.result.model_sha256
    assert len(model) == finished.result.model_bytes


def test_download_resumes_from_offset(client: Client, dataset_id: str, server: RunningServer) -> None:
    job = client.submit_job(dataset_id, seed=2, **QUICK)
    finished = client.wait_for_job(job.job_id)
    model = client.download_model(job.job_id)
    stub = pb_grpc.AdaptationStub(client._channel)

    half = len(model) // 2
    chunks = list(stub.DownloadModel(pb.DownloadModelRequest(job_id=job.job_id, offset=half), timeout=30))
    assert chunks[0].offset == half
    assert b"".join(chunk.data for chunk in chunks) == model[half:]
    assert all(len(chunk.data) <= 1024 * 1024 for chunk in chunks)
    assert all(chunk.total_bytes == finished.result.model_bytes for chunk in chunks)

    with pytest.raises(grpc.RpcError) as caught:
        list(stub.DownloadModel(pb.DownloadModelRequest(job_id=job.job_id, offset=len(model) + 1), timeout=30))
    assert caught.value.code() == grpc.StatusCode.OUT_OF_RANGE


def test_model_download_splits_large_model_into_chunks(server: RunningServer, client: Client, dataset_id: str) -> None:
    """A stored model above 1 MiB comes back in chunks of at most 1 MiB that join to the file."""
    job = client.wait_for_job(client.submit_job(dataset_id, seed=3, **QUICK).job_id)
    stub = pb_grpc.AdaptationStub(client._channel)
    large = np.random.default_rng(0).integers(0, 256, size=2_500_000, dtype=np.uint8).tobytes()
    server.store.model_path(job.job_id).write_bytes(large)

    # The stream ends at the size recorded with the result.
    chunks = list(stub.DownloadModel(pb.DownloadModelRequest(job_id=job.job_id), timeout=30))
    assert b"".join(chunk.data for chunk in chunks) == large[: job.result.model_bytes]

    # Record the large size in the database file, as if the job had produced the large model.
    result = pb.AdaptResult()
    result.CopyFrom(job.result)
    result.model_bytes = len(large)
    with sqlite3.connect(server.store.data_dir / DATABASE_FILE) as connection:
        connection.execute("UPDATE jobs SET result = ? WHERE job_id = ?", (result.SerializeToString(), job.job_id))
    chunks = list(stub.DownloadModel(pb.DownloadModelRequest(job_id=job.job_id), timeout=30))
    assert [chunk.offset for chunk in chunks] == [0, 1024 * 1024, 2 * 1024 * 1024]
    assert all(len(chunk.data) <= 1024 * 1024 for chunk in chunks)
    assert b"".join(chunk.data for chunk in chunks) == large


def test_watch_reattaches_from_index(client: Client, dataset_id: str) -> None:
    job = client.submit_job(dataset_id, seed=4, **QUICK)
    stream = client.watch_job(job.job_id)
    first = [next(stream) for _ in range(3)]
    stream.close()  # a client that lost its connection

    rest = list(client.watch_job(job.job_id, from_index=first[-1].index + 1))
    events = first + rest
    assert [event.index for event in events] == list(range(len(events)))
    assert state_changes(events)[-1] == pb.SUCCEEDED
    # A replay from 0 gives the same history.
    assert list(client.watch_job(job.job_id)) == events


def test_adapt_runs_as_job(client: Client, server: RunningServer) -> None:
    images, labels = noise_dataset(5)
    result = client.adapt(images, labels, seed=5, **QUICK)
    job = client.get_job(result.request_id)
    assert job.state == pb.SUCCEEDED
    assert job.result.model_sha256 == result.model_sha256
    assert client.download_model(result.request_id) == result.onnx_model


def test_inline_and_uploaded_dataset_share_id(client: Client) -> None:
    images, labels = noise_dataset(6)
    uploaded = client.upload_dataset(images, labels, ["a", "b"], chunk_bytes=1000)
    data = dataset_bytes(images, labels, ["a", "b"])
    assert uploaded.dataset_id == hashlib.sha256(data).hexdigest()
    assert (uploaded.size_bytes, uploaded.images, uploaded.classes) == (len(data), 6, 2)
    assert client.upload_dataset(images, labels, ["a", "b"]).dataset_id == uploaded.dataset_id

    stub = pb_grpc.AdaptationStub(client._channel)
    inline = pb.Dataset.FromString(data)
    job = stub.SubmitJob(pb.SubmitJobRequest(inline_dataset=inline, options=pb.AdaptOptions(**QUICK)), timeout=30)
    assert job.dataset_id == uploaded.dataset_id
    client.cancel_job(job.job_id)


# ---------------------------------------------------------------------------------------------
# Idempotency, listing, unknown ids
# ---------------------------------------------------------------------------------------------


def test_idempotency_key_returns_same_job(client: Client, dataset_id: str) -> None:
    first = client.submit_job(dataset_id, seed=7, idempotency_key="retry-me", **QUICK)
    again = client.submit_job(dataset_id, seed=7, idempotency_key="retry-me", **QUICK)
    assert again.job_id == first.job_id

    with pytest.raises(ArchadaptError) as caught:
        client.submit_job(dataset_id, seed=8, idempotency_key="retry-me", **QUICK)
    assert caught.value.code == grpc.StatusCode.ALREADY_EXISTS
    assert first.job_id in caught.value.message
    client.wait_for_job(first.job_id)


def test_list_jobs_pages_and_filters(client: Client, dataset_id: str) -> None:
    submitted = [client.submit_job(dataset_id, seed=100 + i, **QUICK).job_id for i in range(3)]
    for job_id in submitted:
        client.wait_for_job(job_id)

    listed = [job.job_id for job in client.list_jobs(page_size=2)]
    assert listed[:3] == submitted[::-1]  # newest first, across pages
    assert len(listed) == len(set(listed))
    succeeded = list(client.list_jobs(states=[pb.SUCCEEDED]))
    assert {job.state for job in succeeded} == {pb.SUCCEEDED}
    assert set(submitted) <= {job.job_id for job in succeeded}
    assert all(job.state == pb.RUNNING for job in client.list_jobs(states=[pb.RUNNING]))


@pytest.mark.parametrize(
    ("call", "code"),
    [
        (lambda c: c.get_job("0" * 32), grpc.StatusCode.NOT_FOUND),
        (lambda c: c.cancel_job("f" * 32), grpc.StatusCode.NOT_FOUND),
        (lambda c: c.download_model("a" * 32), grpc.StatusCode.NOT_FOUND),
        (lambda c: c.get_job("not-a-job"), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda c: list(c.watch_job("1" * 32)), grpc.StatusCode.NOT_FOUND),
        (lambda c: c.submit_job("0" * 64, **QUICK), grpc.StatusCode.NOT_FOUND),
    ],
    ids=["get", "cancel", "download", "malformed-id", "watch", "unknown-dataset"],
)
def test_unknown_ids_rejected(client: Client, call, code: grpc.StatusCode) -> None:
    with pytest.raises(ArchadaptError) as caught:
        call(client)
    assert caught.value.code == code


def test_download_before_success_fails(client: Client, dataset_id: str) -> None:
    job = client.submit_job(dataset_id, seed=9, **SLOW)
    try:
        with pytest.raises(ArchadaptError) as caught:
            client.download_model(job.job_id)
        assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        client.cancel_job(job.job_id)
    assert wait_final(client, job.job_id).state == pb.CANCELLED


# ---------------------------------------------------------------------------------------------
# Cancellation and deadlines
# ---------------------------------------------------------------------------------------------


def test_cancel_running_job_stops_it(client: Client, dataset_id: str) -> None:
    job = client.submit_job(dataset_id, seed=10, **SLOW)
    watched = client.watch_job(job.job_id)
    for event in watched:  # wait until fine-tuning runs
        if event.WhichOneof("event") == "progress" and event.progress.phase == pb.PHASE_FINETUNE:
            break
    cancelled_at = time.monotonic()
    client.cancel_job(job.job_id)
    rest = list(watched)
    stopped_after = time.monotonic() - cancelled_at

    assert state_changes(rest) == [pb.CANCELLED]
    finished = client.get_job(job.job_id)
    assert finished.state == pb.CANCELLED
    assert finished.error.code == code_pb2.CANCELLED
    finetune_steps = [e.progress.step for e in rest if e.WhichOneof("event") == "progress"]
    assert max(finetune_steps, default=0) < 10_000
    assert stopped_after < 30, "the job kept running long after the cancellation"


def test_cancel_queued_job_is_immediate(client: Client, dataset_id: str) -> None:
    blocker = client.submit_job(dataset_id, seed=11, **SLOW)
    queued = client.submit_job(dataset_id, seed=12, **QUICK)
    try:
        assert client.get_job(queued.job_id).queue_position >= 0
        cancelled = client.cancel_job(queued.job_id)
        assert cancelled.state == pb.CANCELLED
        assert cancelled.started_time == 0
    finally:
        client.cancel_job(blocker.job_id)
    assert wait_final(client, blocker.job_id).state == pb.CANCELLED
    # Cancelling a finished job changes nothing.
    assert client.cancel_job(queued.job_id).state == pb.CANCELLED


def test_job_deadline_fails_job(client: Client, dataset_id: str) -> None:
    job = client.submit_job(dataset_id, seed=13, deadline_seconds=1.0, **SLOW)
    assert job.deadline_time == pytest.approx(job.created_time + 1.0, abs=0.5)
    finished = wait_final(client, job.job_id)
    assert finished.state == pb.FAILED
    assert finished.error.code == code_pb2.DEADLINE_EXCEEDED


def test_adapt_deadline_stops_job(client: Client, server: RunningServer) -> None:
    images, labels = noise_dataset(14)
    stub = pb_grpc.AdaptationStub(client._channel)
    request = pb.AdaptRequest(options=pb.AdaptOptions(seed=14, **SLOW))
    request.MergeFromString(dataset_bytes(images, labels))
    with pytest.raises(grpc.RpcError) as caught:
        for _ in stub.Adapt(request, timeout=3.0):
            pass
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The job behind the call stops too, instead of holding the device for 10,000 steps.
    adapt_job = next(client.list_jobs())
    finished = wait_final(client, adapt_job.job_id, timeout=60)
    assert finished.state in (pb.FAILED, pb.CANCELLED)
    assert finished.options.finetune_steps == 10_000


# ---------------------------------------------------------------------------------------------
# Server info, admission, disk, expiry
# ---------------------------------------------------------------------------------------------


def test_server_info_reports_job_limits(client: Client) -> None:
    info = client.info()
    assert info.job_limits == JobLimits().to_proto()
    assert info.limits.max_image_pixels == RequestLimits().max_image_pixels
    assert info.limits.max_dataset_bytes == RequestLimits().max_dataset_bytes


def test_full_queue_rejected_with_retry_info(checkpoint: Checkpoint, tmp_path: Path) -> None:
    running = start(checkpoint, tmp_path / "data", max_queued_jobs=2)
    try:
        with Client(f"127.0.0.1:{running.port}", timeout=CALL_TIMEOUT_S) as client:
            dataset = client.upload_dataset(*noise_dataset(20)).dataset_id
            blocker = client.submit_job(dataset, seed=1, **SLOW)
            wait_until(lambda: client.get_job(blocker.job_id).state == pb.RUNNING)
            accepted = [client.submit_job(dataset, seed=2 + i, **QUICK) for i in range(2)]
            assert [client.get_job(job.job_id).queue_position for job in accepted] == [0, 1]

            with pytest.raises(ArchadaptError) as caught:
                client.submit_job(dataset, seed=9, **QUICK)
            assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_queued_jobs=2" in caught.value.message
            assert caught.value.retry_delay is not None and caught.value.retry_delay >= 1

            client.cancel_job(blocker.job_id)
            # Accepted jobs are never dropped: both run to completion.
            assert [client.wait_for_job(job.job_id).state for job in accepted] == [pb.SUCCEEDED, pb.SUCCEEDED]
    finally:
        running.stop(grace=1.0)


def test_disk_limit_rejects_submit(checkpoint: Checkpoint, tmp_path: Path) -> None:
    running = start(checkpoint, tmp_path / "data", max_disk_bytes=3 * 1024 * 1024)
    try:
        with Client(f"127.0.0.1:{running.port}", timeout=CALL_TIMEOUT_S) as client:
            small = client.upload_dataset(*noise_dataset(21)).dataset_id
            # Large raw images: 1,000,000 bytes each, 3 of them pass the limit.
            rng = np.random.default_rng(0)
            big = [rng.integers(0, 256, size=(1000, 1000), dtype=np.uint8) for _ in range(4)]
            with pytest.raises(ArchadaptError) as caught:
                client.upload_dataset(big, [0, 0, 1, 1])
            assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_disk_bytes" in caught.value.message
            assert list(running.store.staging_dir.iterdir()) == []

            running.store.model_path("0" * 32).write_bytes(bytes(2 * 1024 * 1024))  # fill the disk
            with pytest.raises(ArchadaptError) as caught:
                client.submit_job(small, **QUICK)
            assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert caught.value.retry_delay is not None
    finally:
        running.stop(grace=1.0)


def test_results_expire_after_ttl(checkpoint: Checkpoint, tmp_path: Path) -> None:
    running = start(checkpoint, tmp_path / "data", result_ttl_seconds=1.0)
    try:
        with Client(f"127.0.0.1:{running.port}", timeout=CALL_TIMEOUT_S) as client:
            dataset = client.upload_dataset(*noise_dataset(22)).dataset_id
            job = client.wait_for_job(client.submit_job(dataset, **QUICK).job_id)
            assert job.state == pb.SUCCEEDED
            assert job.expire_time == pytest.approx(job.finished_time + 1.0)
            model_path = running.store.model_path(job.job_id)
            assert model_path.is_file()

            def expired() -> bool:
                try:
                    client.get_job(job.job_id)
                except ArchadaptError as error:
                    return error.code == grpc.StatusCode.NOT_FOUND
                return False

            wait_until(expired, timeout=30)
            assert not model_path.exists()
            wait_until(lambda: not running.store.dataset_path(dataset).exists(), timeout=30)
    finally:
        running.stop(grace=1.0)


# ---------------------------------------------------------------------------------------------
# Metrics and draining
# ---------------------------------------------------------------------------------------------


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def metric_value(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{") and line.split(" ")[0] == name:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in the scrape:\n{text}")


def test_metrics_scrape(client: Client, server: RunningServer, dataset_id: str) -> None:
    job = client.wait_for_job(client.submit_job(dataset_id, seed=30, **QUICK).job_id)
    assert job.state == pb.SUCCEEDED
    with pytest.raises(ArchadaptError):
        client.get_job("0" * 32)

    text = scrape(server.metrics_port)
    assert metric_value(text, "archadapt_queued_jobs") >= 0
    assert metric_value(text, "archadapt_running_jobs") >= 0
    assert metric_value(text, "archadapt_data_dir_bytes") > 0
    assert metric_value(text, 'archadapt_job_outcomes_total{code="OK"}') >= 1
    assert metric_value(text, 'archadapt_rpc_outcomes_total{code="NOT_FOUND",method="GetJob"}') >= 1
    assert metric_value(text, 'archadapt_rpc_outcomes_total{code="OK",method="SubmitJob"}') >= 1
    assert metric_value(text, 'archadapt_phase_duration_seconds_count{phase="finetune"}') >= 1
    assert metric_value(text, 'archadapt_phase_duration_seconds_count{phase="export"}') >= 1


def test_drain_reports_not_serving_and_keeps_jobs(checkpoint: Checkpoint, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    running = start(checkpoint, data_dir)
    address = f"127.0.0.1:{running.port}"
    with Client(address, timeout=CALL_TIMEOUT_S) as client, grpc.insecure_channel(address) as channel:
        dataset = client.upload_dataset(*noise_dataset(40)).dataset_id
        job = client.submit_job(dataset, **SLOW)
        wait_until(lambda: client.get_job(job.job_id).state == pb.RUNNING)
        queued = client.submit_job(dataset, **QUICK)

        running.drain()
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(ArchadaptError) as caught:
            client.submit_job(dataset, **QUICK)
        assert caught.value.code == grpc.StatusCode.UNAVAILABLE
        interrupted = client.get_job(job.job_id)
        assert interrupted.state == pb.QUEUED
        assert client.get_job(queued.job_id).state == pb.QUEUED
    running.stop(grace=1.0)

    # The next server on the same directory runs both; the interrupted one starts again.
    restarted = start(checkpoint, data_dir)
    try:
        with Client(f"127.0.0.1:{restarted.port}", timeout=CALL_TIMEOUT_S) as client:
            wait_until(lambda: client.get_job(job.job_id).state == pb.RUNNING)
            assert client.get_job(job.job_id).attempts == 2
            client.cancel_job(job.job_id)
            assert client.wait_for_job(queued.job_id).state == pb.SUCCEEDED
    finally:
        restarted.stop(grace=1.0)


def test_concurrent_submits_all_finish(client: Client, dataset_id: str) -> None:
    """A small load test: five clients submit at once, and every job succeeds exactly once."""
    job_ids: list[str] = []
    errors: list[BaseException] = []

    def submit(seed: int) -> None:
        try:
            job_ids.append(client.submit_job(dataset_id, seed=200 + seed, idempotency_key=f"load-{seed}", **QUICK).job_id)
        except BaseException as error:  # reported by the assert below
            errors.append(error)

    threads = [threading.Thread(target=submit, args=(seed,)) for seed in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(set(job_ids)) == 5
    finished = [client.wait_for_job(job_id) for job_id in job_ids]
    assert [job.state for job in finished] == [pb.SUCCEEDED] * 5
    assert all(job.attempts == 1 for job in finished)


def test_upload_50_mib_dataset_and_run(client: Client) -> None:
    """A dataset of 53 MB, far above one 4 MiB chunk, uploads and adapts like a small one."""
    rng = np.random.default_rng(50)
    images = rng.integers(0, 256, size=(1080, 128, 128, 3), dtype=np.uint8)  # 49,152 bytes each
    labels = [index % 4 for index in range(len(images))]
    data = dataset_bytes(images, labels)
    assert len(data) > 50 * 1024 * 1024

    info = client.upload_dataset(images, labels)
    assert info.dataset_id == hashlib.sha256(data).hexdigest()
    assert (info.size_bytes, info.images, info.classes) == (len(data), 1080, 4)

    job = client.wait_for_job(client.submit_job(info.dataset_id, seed=50, **QUICK).job_id)
    assert job.state == pb.SUCCEEDED, job.error.message
    assert job.result.metrics.support_examples + job.result.metrics.validation_examples == 1080


def test_cancel_during_export_interrupts_it(client: Client, dataset_id: str) -> None:
    """The ONNX export checks no cancellation flag (it takes seconds), so the worker is interrupted."""
    job = client.submit_job(dataset_id, seed=60, **QUICK)
    events = client.watch_job(job.job_id)
    for event in events:
        if event.WhichOneof("event") == "progress" and event.progress.phase == pb.PHASE_EXPORT:
            break
    client.cancel_job(job.job_id)
    rest = list(events)

    assert state_changes(rest) == [pb.CANCELLED]
    assert client.get_job(job.job_id).error.code == code_pb2.CANCELLED
    # The interrupted export left no state behind that breaks the next one.
    after = client.wait_for_job(client.submit_job(dataset_id, seed=61, **QUICK).job_id)
    assert after.state == pb.SUCCEEDED, after.error.message


def test_compute_section_interrupts_busy_thread() -> None:
    section = ComputeSection()
    outcome: list[str] = []
    entered = threading.Event()

    def busy() -> None:
        try:
            with section.running("job-a"):
                entered.set()
                while True:  # pure Python, no cancellation check
                    pass
        except WorkerInterrupted:
            outcome.append("interrupted")

    worker = threading.Thread(target=busy, daemon=True)
    worker.start()
    assert entered.wait(10)
    assert not section.interrupt("job-b")  # another job: left alone
    assert section.interrupt("job-a")
    worker.join(30)
    assert not worker.is_alive()
    assert outcome == ["interrupted"]
    assert not section.interrupt("job-a")  # the section has ended


def test_watch_survives_server_restart(checkpoint: Checkpoint, tmp_path: Path) -> None:
    """A watch reattaches to the next server on the same address and misses no event."""
    data_dir = tmp_path / "data"
    first = start(checkpoint, data_dir)
    address = f"127.0.0.1:{first.port}"
    events: list[pb.JobEvent] = []
    restarted: list[RunningServer] = []
    try:
        with Client(address, timeout=CALL_TIMEOUT_S) as client:
            dataset = client.upload_dataset(*noise_dataset(70)).dataset_id
            job = client.submit_job(dataset, **SLOW)
            for event in client.watch_job(job.job_id, reconnects=50, reconnect_delay=0.2):
                events.append(event)
                in_finetuning = event.WhichOneof("event") == "progress" and event.progress.phase == pb.PHASE_FINETUNE
                if in_finetuning and not restarted:
                    first.stop(grace=0.5)
                    restarted.append(create_server(address, checkpoint, torch.device("cpu"), data_dir=data_dir))
                if event.WhichOneof("event") == "state_change" and event.state_change.state == pb.RUNNING and len(restarted) == 1 and event.index > 2:
                    client.cancel_job(job.job_id)  # the second run: stop it rather than wait 10,000 steps
    finally:
        for server in restarted:
            server.stop(grace=0.5)

    assert [event.index for event in events] == list(range(len(events)))
    assert state_changes(events) == [pb.QUEUED, pb.RUNNING, pb.QUEUED, pb.RUNNING, pb.CANCELLED]


def test_unstorable_model_fails_job(checkpoint: Checkpoint, tmp_path: Path) -> None:
    """A model that cannot be written ends its job FAILED with INTERNAL, and the server carries on."""
    running = start(checkpoint, tmp_path / "data")
    try:
        with Client(f"127.0.0.1:{running.port}", timeout=CALL_TIMEOUT_S) as client:
            dataset = client.upload_dataset(*noise_dataset(80)).dataset_id
            models_dir = running.store.models_dir
            models_dir.rmdir()
            models_dir.write_text("a file where the models directory belongs")  # blocks even root

            failed = client.wait_for_job(client.submit_job(dataset, **QUICK).job_id)
            assert failed.state == pb.FAILED
            assert failed.error.code == code_pb2.INTERNAL

            models_dir.unlink()
            models_dir.mkdir()
            assert client.wait_for_job(client.submit_job(dataset, seed=1, **QUICK).job_id).state == pb.SUCCEEDED
    finally:
        running.stop(grace=1.0)
