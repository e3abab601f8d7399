"""The server's command line as a real subprocess: a crash (SIGKILL) and a shutdown (SIGTERM) in
the middle of a job, each followed by a restart on the same data directory."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from archadapt.checkpoint import TENSORS_FILE
from archadapt_client import Client
from archadapt_client.v1 import archadapt_pb2 as pb

REPO_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 300.0
FINAL_STATES = (pb.SUCCEEDED, pb.FAILED, pb.CANCELLED)
QUICK = {"inner_steps": 1, "finetune_steps": 2}
# Long enough to be stopped in the middle, short enough to finish after the restart.
LONG = {"inner_steps": 1, "finetune_steps": 300}


@dataclass
class ServerProcess:
    process: subprocess.Popen
    address: str
    log: Path

    def output(self) -> str:
        return self.log.read_text()


def start_server(checkpoint_dir: Path, data_dir: Path, log: Path, *extra: str) -> ServerProcess:
    port_file = log.with_suffix(".port")
    port_file.unlink(missing_ok=True)
    with open(log, "a") as log_handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "server", "--port", "0", "--port-file", str(port_file), "--checkpoint", str(checkpoint_dir),
             "--data-dir", str(data_dir), "--threads", "1", *extra],
            stdout=log_handle, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while not port_file.is_file():
        if process.poll() is not None:
            pytest.fail(f"the server exited with {process.returncode} before it was ready:\n{log.read_text()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the server did not start within {START_TIMEOUT_S:.0f} s:\n{log.read_text()}")
        time.sleep(0.2)
    return ServerProcess(process, f"127.0.0.1:{int(port_file.read_text())}", log)


@pytest.fixture
def processes() -> Iterator[list[ServerProcess]]:
    """Servers started by a test; any still running at the end are killed."""
    started: list[ServerProcess] = []
    yield started
    for server in started:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()


def noise_dataset(seed: int) -> tuple[np.ndarray, list[int]]:
    images = np.random.default_rng(seed).integers(0, 256, size=(6, 28, 28), dtype=np.uint8)
    return images, [0, 0, 0, 1, 1, 1]


def wait_for(client: Client, job_id: str, condition, timeout: float = 120.0) -> pb.Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get_job(job_id)
        if condition(job):
            return job
        time.sleep(0.05)
    pytest.fail(f"job {job_id} did not reach the expected state within {timeout} s; last state {pb.JobState.Name(job.state)}")


def wait_for_finetuning(client: Client, job_id: str) -> None:
    """Return once the job reports a fine-tuning step."""
    events = client.watch_job(job_id)
    for event in events:
        if event.WhichOneof("event") == "progress" and event.progress.phase == pb.PHASE_FINETUNE:
            events.close()
            return
    pytest.fail(f"job {job_id} finished without a fine-tuning step")


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def state_changes(client: Client, job_id: str) -> list[int]:
    events = list(client.watch_job(job_id))
    assert [event.index for event in events] == list(range(len(events)))
    return [event.state_change.state for event in events if event.WhichOneof("event") == "state_change"]


def test_sigkill_mid_job_loses_nothing(checkpoint_dir: Path, tmp_path: Path, processes: list[ServerProcess]) -> None:
    data_dir, log = tmp_path / "data", tmp_path / "server.log"
    first = start_server(checkpoint_dir, data_dir, log)
    processes.append(first)
    with Client(first.address, timeout=60) as client:
        dataset = client.upload_dataset(*noise_dataset(1)).dataset_id
        finished = client.wait_for_job(client.submit_job(dataset, seed=1, **QUICK).job_id)
        assert finished.state == pb.SUCCEEDED
        model = client.download_model(finished.job_id)

        running = client.submit_job(dataset, seed=2, **LONG)
        queued = client.submit_job(dataset, seed=3, **QUICK)
        wait_for_finetuning(client, running.job_id)

    first.process.send_signal(signal.SIGKILL)
    first.process.wait(timeout=30)

    second = start_server(checkpoint_dir, data_dir, log)
    processes.append(second)
    with Client(second.address, timeout=60) as client:
        # The finished model survived byte for byte.
        assert client.get_job(finished.job_id).state == pb.SUCCEEDED
        assert client.download_model(finished.job_id) == model

        # The running job runs again from the start, then the queued one runs.
        resumed = client.wait_for_job(running.job_id)
        assert resumed.state == pb.SUCCEEDED, resumed.error.message
        assert resumed.attempts == 2
        assert state_changes(client, running.job_id) == [pb.QUEUED, pb.RUNNING, pb.QUEUED, pb.RUNNING, pb.SUCCEEDED]
        after = client.wait_for_job(queued.job_id)
        assert after.state == pb.SUCCEEDED
        assert after.attempts == 1
    output = second.output()
    assert "queued again after a server stop or crash" in output
    # Logs name the job in every line about it: phases with durations, and the outcome.
    assert f"job {running.job_id}: phase finetune started" in output
    assert f"job {running.job_id}: phase finetune ended after " in output
    assert f"job {running.job_id}: succeeded in " in output


def test_checkpoint_with_missing_file_refused(checkpoint_dir: Path, tmp_path: Path) -> None:
    altered = tmp_path / "checkpoint"
    shutil.copytree(checkpoint_dir, altered)
    (altered / TENSORS_FILE).unlink()

    completed = subprocess.run(
        [sys.executable, "-m", "server", "--port", "0", "--checkpoint", str(altered), "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=START_TIMEOUT_S, cwd=REPO_ROOT,
    )
    assert completed.returncode == 2
    assert f"checkpoint file {altered / TENSORS_FILE} is listed in the manifest but missing" in completed.stderr


def test_sigterm_keeps_running_job_for_next_start(checkpoint_dir: Path, tmp_path: Path, processes: list[ServerProcess]) -> None:
    data_dir, log = tmp_path / "data", tmp_path / "server.log"
    metrics_port_file = tmp_path / "metrics.port"
    first = start_server(
        checkpoint_dir, data_dir, log, "--shutdown-grace", "2", "--metrics-port", "0", "--metrics-port-file", str(metrics_port_file)
    )
    processes.append(first)
    with Client(first.address, timeout=60) as client:
        dataset = client.upload_dataset(*noise_dataset(2)).dataset_id
        running = client.submit_job(dataset, seed=4, **LONG)
        queued = client.submit_job(dataset, seed=5, **QUICK)
        wait_for(client, running.job_id, lambda job: job.state == pb.RUNNING)
        metrics = scrape(int(metrics_port_file.read_text()))
        assert "archadapt_running_jobs 1.0" in metrics
        assert "archadapt_queued_jobs 1.0" in metrics

    first.process.send_signal(signal.SIGTERM)
    assert first.process.wait(timeout=60) == 0, first.output()
    output = first.output()
    assert "shutting down" in output
    assert f"job {running.job_id}: interrupted by shutdown" in output

    second = start_server(checkpoint_dir, data_dir, log)
    processes.append(second)
    with Client(second.address, timeout=60) as client:
        resumed = client.wait_for_job(running.job_id)
        assert resumed.state == pb.SUCCEEDED, resumed.error.message
        assert resumed.attempts == 2
        assert client.wait_for_job(queued.job_id).state == pb.SUCCEEDED
