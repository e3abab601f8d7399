"""Load on the job queue: 20 clients, each with its own channel, submit at once against a real
server on loopback that queues at most 5 jobs.

Every submit must end in one of two ways: accepted (a QUEUED job), or rejected with
RESOURCE_EXHAUSTED and a RetryInfo delay. Every accepted job must then succeed exactly once,
and ListJobs must return exactly the accepted jobs, none lost and none twice. Some clients
repeat a submit with the same idempotency key, which must return the same job.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from archadapt.checkpoint import Checkpoint
from archadapt_client import ArchadaptError, Client
from archadapt_client.v1 import archadapt_pb2 as pb
from server.app import RunningServer, create_server
from server.jobs import JobLimits

CLIENTS = 20
SUBMITS_PER_CLIENT = 2
MAX_QUEUED_JOBS = 5
# Clients that retry a rejected submit with the same idempotency key until it is accepted, then
# send it once more. Clients 3 and 4 send one shared key with the same options.
PERSISTENT_KEYS = {0: "load-persistent-0", 1: "load-persistent-1", 2: "load-persistent-2", 3: "load-shared", 4: "load-shared"}
PERSISTENT_SEEDS = {0: 1000, 1: 1001, 2: 1002, 3: 1003, 4: 1003}
# The server's RetryInfo delay is sized for real jobs (60 s before the first one finishes), but
# these tiny jobs end within seconds, so persistent clients retry sooner, a bounded number of times.
RETRY_INTERVAL_S = 0.5
MAX_RETRIES = 400
QUICK = {"inner_steps": 1, "finetune_steps": 2}
# Generous bounds: the whole test, about 10 tiny jobs, took 30 s on a busy 2-core machine.
CALL_TIMEOUT_S = 120.0
JOB_TIMEOUT_S = 600.0


@dataclass
class Outcome:
    """The result of one submit call: a job id, or the error of a rejection."""

    client: int
    key: str
    job_id: str | None = None
    error: ArchadaptError | None = None


@dataclass
class Results:
    outcomes: list[Outcome] = field(default_factory=list)
    unexpected: list[BaseException] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, outcome: Outcome) -> None:
        with self.lock:
            self.outcomes.append(outcome)


@pytest.fixture
def server(checkpoint: Checkpoint, tmp_path: Path) -> Iterator[RunningServer]:
    running = create_server(
        "127.0.0.1:0", checkpoint, torch.device("cpu"),
        data_dir=tmp_path / "data", job_limits=JobLimits(max_queued_jobs=MAX_QUEUED_JOBS, max_concurrent_jobs=1),
        metrics_address=("127.0.0.1", 0),
    )
    yield running
    running.stop(grace=1.0)


def noise_dataset() -> tuple[np.ndarray, list[int]]:
    images = np.random.default_rng(0).integers(0, 256, size=(6, 28, 28), dtype=np.uint8)
    return images, [0, 0, 0, 1, 1, 1]


def submit(client: Client, dataset_id: str, client_number: int, seed: int, key: str, results: Results) -> Outcome:
    outcome = Outcome(client_number, key)
    try:
        outcome.job_id = client.submit_job(dataset_id, seed=seed, idempotency_key=key, **QUICK).job_id
    except ArchadaptError as error:
        outcome.error = error
    results.add(outcome)
    return outcome


def run_client(address: str, dataset_id: str, client_number: int, start: threading.Barrier, results: Results) -> None:
    try:
        with Client(address, timeout=CALL_TIMEOUT_S) as client:
            start.wait(timeout=CALL_TIMEOUT_S)
            if client_number not in PERSISTENT_KEYS:
                for round_number in range(SUBMITS_PER_CLIENT):
                    seed = client_number * SUBMITS_PER_CLIENT + round_number
                    submit(client, dataset_id, client_number, seed, f"load-{client_number}-{round_number}", results)
                return
            key, seed = PERSISTENT_KEYS[client_number], PERSISTENT_SEEDS[client_number]
            for _ in range(MAX_RETRIES):
                if submit(client, dataset_id, client_number, seed, key, results).job_id is not None:
                    break
                time.sleep(RETRY_INTERVAL_S)
            submit(client, dataset_id, client_number, seed, key, results)
    except BaseException as error:  # reported by the test's assert
        with results.lock:
            results.unexpected.append(error)


def wait_final(client: Client, job_id: str) -> pb.Job:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        job = client.get_job(job_id)
        if job.state in (pb.SUCCEEDED, pb.FAILED, pb.CANCELLED):
            return job
        time.sleep(0.2)
    pytest.fail(f"job {job_id} did not finish within {JOB_TIMEOUT_S:.0f} s; last state {pb.JobState.Name(job.state)}")


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def metric_value(text: str, sample: str) -> float:
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0  # a labelled counter appears only after its first increment


def test_concurrent_clients_against_full_queue(server: RunningServer) -> None:
    address = f"127.0.0.1:{server.port}"
    with Client(address, timeout=CALL_TIMEOUT_S) as setup:
        dataset_id = setup.upload_dataset(*noise_dataset()).dataset_id

    results = Results()
    start = threading.Barrier(CLIENTS)
    threads = [
        threading.Thread(target=run_client, args=(address, dataset_id, number, start, results), name=f"load-client-{number}")
        for number in range(CLIENTS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=JOB_TIMEOUT_S)
    assert not any(thread.is_alive() for thread in threads), "a client did not finish its submits"
    assert results.unexpected == []

    # Every submit was either accepted or rejected for the full queue, with a retry delay.
    rejected = [outcome for outcome in results.outcomes if outcome.error is not None]
    accepted = [outcome for outcome in results.outcomes if outcome.job_id is not None]
    assert len(rejected) + len(accepted) == len(results.outcomes)
    for outcome in rejected:
        assert outcome.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED, str(outcome.error)
        assert f"max_queued_jobs={MAX_QUEUED_JOBS}" in outcome.error.message
        assert outcome.error.retry_delay is not None and outcome.error.retry_delay >= 1
    assert rejected, "the queue never filled, so the test checked no rejection"
    plain_clients = CLIENTS - len(PERSISTENT_KEYS)
    assert len([outcome for outcome in results.outcomes if outcome.client not in PERSISTENT_KEYS]) == plain_clients * SUBMITS_PER_CLIENT

    # A persistent client ends with two accepted submits of one job: the retry that got in and
    # the repeat after it. Clients that share a key get the same job.
    for client_number, key in PERSISTENT_KEYS.items():
        own = [outcome for outcome in results.outcomes if outcome.client == client_number]
        assert [outcome.job_id is not None for outcome in own[-2:]] == [True, True], f"client {client_number} never got in"
        assert own[-1].job_id == own[-2].job_id
    shared = {outcome.job_id for outcome in accepted if outcome.key == PERSISTENT_KEYS[3]}
    assert len(shared) == 1

    # One idempotency key names one job.
    jobs_by_key: dict[str, set[str]] = {}
    for outcome in accepted:
        jobs_by_key.setdefault(outcome.key, set()).add(outcome.job_id)
    assert all(len(job_ids) == 1 for job_ids in jobs_by_key.values()), jobs_by_key
    accepted_ids = set().union(*jobs_by_key.values())
    assert len(accepted_ids) == len(jobs_by_key)

    # Every accepted job succeeds, once.
    with Client(address, timeout=CALL_TIMEOUT_S) as client:
        finished = {job_id: wait_final(client, job_id) for job_id in sorted(accepted_ids)}
        assert {job_id: pb.JobState.Name(job.state) for job_id, job in finished.items()} == {
            job_id: "SUCCEEDED" for job_id in accepted_ids
        }
        assert all(job.attempts == 1 for job in finished.values())

        # ListJobs returns exactly the accepted jobs: none lost, none twice, no extra.
        listed = [job.job_id for job in client.list_jobs(page_size=3)]
        assert len(listed) == len(set(listed))
        assert set(listed) == accepted_ids
        assert [job.job_id for job in client.list_jobs(states=[pb.SUCCEEDED])] == listed

    # The server counted the same rejections that the clients saw.
    metrics = scrape(server.metrics_port)
    assert metric_value(metrics, 'archadapt_rpc_outcomes_total{code="RESOURCE_EXHAUSTED",method="SubmitJob"}') == len(rejected)
    assert metric_value(metrics, 'archadapt_rpc_outcomes_total{code="OK",method="SubmitJob"}') == len(accepted)
