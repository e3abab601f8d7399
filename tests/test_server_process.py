"""The server's command line as a real subprocess: a crash (SIGKILL) and a shutdown (SIGTERM) in
the middle of a job, each followed by a restart on the same data directory. The last tests drive
the server with the client's command line, `archadapt`, also as subprocesses."""

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
import onnxruntime
import pytest
from PIL import Image

from archadapt.checkpoint import TENSORS_FILE
from archadapt_client import Client
from archadapt_client.v1 import archadapt_pb2 as pb

REPO_ROOT = Path(__file__).resolve().parent.parent
# The console script of the client, installed beside the interpreter that runs the tests.
ARCHADAPT_CLI = Path(sys.executable).parent / "archadapt"
START_TIMEOUT_S = 300.0
FINAL_STATES = (pb.SUCCEEDED, pb.FAILED, pb.CANCELLED)
QUICK = {"inner_steps": 1, "finetune_steps": 2}
# Long enough to be stopped in the middle, short enough to finish after the restart.
LONG = {"inner_steps": 1, "finetune_steps": 300}
# Seconds a server stays down in the slow restart test, more than the 10 one-second reattach
# tries that the watch made before it backed off.
SLOW_RESTART_S = 15.0


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


# ---------------------------------------------------------------------------------------------
# The client's command line against a server process
# ---------------------------------------------------------------------------------------------


def archadapt(*arguments: str, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
    """Run the `archadapt` command with `arguments` and return its exit status and output."""
    assert ARCHADAPT_CLI.is_file(), f"{ARCHADAPT_CLI} is missing; install the client into the test environment"
    return subprocess.run([str(ARCHADAPT_CLI), *arguments], capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)


def write_npz(path: Path, labels: list[int], seed: int = 0) -> Path:
    images = np.random.default_rng(seed).integers(0, 256, size=(len(labels), 28, 28), dtype=np.uint8)
    np.savez(path, images=images, labels=np.array(labels))
    return path


def cli_submit(address: str, data: Path, finetune_steps: int, seed: int = 0) -> str:
    """Submit a job with `archadapt submit` and return its id, the last line of the output."""
    completed = archadapt(
        "submit", "--server", address, "--data", str(data), "--seed", str(seed),
        "--inner-steps", "1", "--finetune-steps", str(finetune_steps),
    )
    assert completed.returncode == 0, completed.stderr
    job_id = completed.stdout.splitlines()[-1]
    assert len(job_id) == 32, completed.stdout
    return job_id


def cli_watch_succeeds(address: str, job_id: str) -> None:
    completed = archadapt("watch", "--server", address, job_id)
    assert completed.stdout.splitlines()[-1] == "SUCCEEDED", completed.stdout + completed.stderr
    assert completed.returncode == 0, completed.stderr


def cli_download(address: str, job_id: str, out: Path) -> bytes:
    completed = archadapt("download", "--server", address, job_id, "--out", str(out))
    assert completed.returncode == 0, completed.stderr
    return out.read_bytes()


def test_cli_jobs_survive_sigkill(checkpoint_dir: Path, tmp_path: Path, processes: list[ServerProcess]) -> None:
    data_dir, log = tmp_path / "data", tmp_path / "server.log"
    data = write_npz(tmp_path / "noise.npz", [0, 0, 0, 1, 1, 1])
    first = start_server(checkpoint_dir, data_dir, log)
    processes.append(first)

    finished = cli_submit(first.address, data, QUICK["finetune_steps"], seed=1)
    cli_watch_succeeds(first.address, finished)
    model_before = cli_download(first.address, finished, tmp_path / "before.onnx")

    running = cli_submit(first.address, data, LONG["finetune_steps"], seed=2)
    with Client(first.address, timeout=60) as client:
        wait_for_finetuning(client, running)
        assert client.get_job(running).state == pb.RUNNING

    first.process.send_signal(signal.SIGKILL)
    first.process.wait(timeout=30)

    # The restart writes the same port file, with the new port, and resumes the job.
    second = start_server(checkpoint_dir, data_dir, log)
    processes.append(second)
    cli_watch_succeeds(second.address, running)
    cli_download(second.address, running, tmp_path / "after-crash.onnx")
    session = onnxruntime.InferenceSession(str(tmp_path / "after-crash.onnx"), providers=["CPUExecutionProvider"])
    (model_input,) = session.get_inputs()
    shape = [dimension if isinstance(dimension, int) else 1 for dimension in model_input.shape]
    (logits,) = session.run(None, {model_input.name: np.zeros(shape, dtype=np.float32)})
    assert logits.shape == (1, 2)
    assert np.isfinite(logits).all()

    # The model finished before the crash comes back byte for byte.
    assert cli_download(second.address, finished, tmp_path / "before-again.onnx") == model_before
    status = archadapt("status", "--server", second.address, running)
    assert status.returncode == 0, status.stderr
    assert "attempts: 2" in status.stdout.splitlines()


def test_cli_watch_survives_slow_restart(checkpoint_dir: Path, tmp_path: Path, processes: list[ServerProcess]) -> None:
    """A watch that runs through a crash reattaches to the restarted server on the same port."""
    data_dir, log = tmp_path / "data", tmp_path / "server.log"
    data = write_npz(tmp_path / "noise.npz", [0, 0, 0, 1, 1, 1])
    first = start_server(checkpoint_dir, data_dir, log)
    processes.append(first)
    port = first.address.rsplit(":", 1)[1]
    job_id = cli_submit(first.address, data, LONG["finetune_steps"], seed=3)
    with Client(first.address, timeout=60) as client:
        wait_for_finetuning(client, job_id)

    out, err = tmp_path / "watch.out", tmp_path / "watch.err"
    with open(out, "w") as out_handle, open(err, "w") as err_handle:
        watch = subprocess.Popen([str(ARCHADAPT_CLI), "watch", "--server", first.address, job_id], stdout=out_handle, stderr=err_handle, cwd=REPO_ROOT)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not out.read_text().strip() and watch.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)  # until the watch prints its first event
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(timeout=30)

        # A server that takes a while to come back, as one with a large checkpoint or in a new
        # container does: the watch must keep trying instead of giving up after a few seconds.
        time.sleep(SLOW_RESTART_S)
        assert watch.poll() is None, f"the watch gave up while the server was down:\n{err.read_text()}"
        second = start_server(checkpoint_dir, data_dir, log, "--port", port)
        processes.append(second)
        assert watch.wait(timeout=START_TIMEOUT_S) == 0, err.read_text()
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()

    lines = out.read_text().splitlines()
    assert lines[-1] == "SUCCEEDED"
    # Each event is printed once, in order, across both servers.
    assert [int(line.split()[0]) for line in lines[:-1]] == list(range(len(lines) - 1))
    assert "reattaching from event" in err.read_text()


@pytest.fixture(scope="module")
def small_queue_server(checkpoint_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server process that queues at most one job and runs one at a time."""
    directory = tmp_path_factory.mktemp("small-queue")
    server = start_server(checkpoint_dir, directory / "data", directory / "server.log", "--max-queue", "1", "--max-concurrent-jobs", "1")
    yield server
    if server.process.poll() is None:
        server.process.kill()
        server.process.wait()


def write_class_folders(root: Path, broken_png: bool) -> Path:
    """Write two class folders of PNG images. With `broken_png`, one file is cut after 40 bytes."""
    for label, name in enumerate(["left", "right"]):
        (root / name).mkdir(parents=True)
        for index in range(3):
            image = np.random.default_rng(10 * label + index).integers(0, 256, size=(28, 28), dtype=np.uint8)
            Image.fromarray(image).save(root / name / f"{index}.png")
    if broken_png:
        path = root / "right" / "1.png"
        path.write_bytes(path.read_bytes()[:40])
    return root


@pytest.mark.parametrize(
    ("labels", "message"),
    [([0, 0, 0, 2, 2, 2], "have no image"), ([1] * 6, "at least 2")],
    ids=["class-without-images", "single-class"],
)
def test_cli_malformed_dataset_rejected_by_server(
    small_queue_server: ServerProcess, tmp_path: Path, labels: list[int], message: str
) -> None:
    """Datasets that the client loads without complaint but the server rejects on upload."""
    data = write_npz(tmp_path / "bad.npz", labels)
    completed = archadapt("submit", "--server", small_queue_server.address, "--data", str(data), "--inner-steps", "1", "--finetune-steps", "2")
    assert completed.returncode == 1, completed.stdout + completed.stderr
    assert "INVALID_ARGUMENT" in completed.stderr
    assert message in completed.stderr
    assert completed.stdout.strip() == ""


def test_cli_truncated_png_rejected_before_upload(small_queue_server: ServerProcess, tmp_path: Path) -> None:
    folder = write_class_folders(tmp_path / "classes", broken_png=True)
    completed = archadapt("submit", "--server", small_queue_server.address, "--data", str(folder), "--inner-steps", "1", "--finetune-steps", "2")
    assert completed.returncode == 1, completed.stdout + completed.stderr
    assert f"cannot decode image {folder / 'right' / '1.png'}" in completed.stderr
    assert completed.stdout.strip() == ""


def test_cli_submit_to_full_queue_fails(small_queue_server: ServerProcess, tmp_path: Path) -> None:
    address = small_queue_server.address
    data = write_class_folders(tmp_path / "classes", broken_png=False)
    running = cli_submit(address, data, LONG["finetune_steps"], seed=1)
    with Client(address, timeout=60) as client:
        wait_for(client, running, lambda job: job.state == pb.RUNNING)
    queued = cli_submit(address, data, QUICK["finetune_steps"], seed=2)

    for seed in (3, 4):
        completed = archadapt("submit", "--server", address, "--data", str(data), "--seed", str(seed), "--inner-steps", "1", "--finetune-steps", "2")
        assert completed.returncode == 1, completed.stdout + completed.stderr
        assert "RESOURCE_EXHAUSTED" in completed.stderr
        assert "max_queued_jobs=1" in completed.stderr

    # Both accepted jobs still run to the end, and the server lists no other job.
    cli_watch_succeeds(address, running)
    cli_watch_succeeds(address, queued)
    listed = archadapt("jobs", "--server", address)
    assert listed.returncode == 0, listed.stderr
    assert sorted(line.split()[0] for line in listed.stdout.splitlines()) == sorted([running, queued])


@pytest.mark.parametrize("device", ["cuda:7", "tpu"])
def test_unusable_device_refused_at_start(checkpoint_dir: Path, tmp_path: Path, device: str) -> None:
    """A device the server cannot use stops it at start, rather than failing every job later."""
    import torch

    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a CUDA device 7")
    completed = subprocess.run(
        [sys.executable, "-m", "server", "--port", "0", "--checkpoint", str(checkpoint_dir),
         "--data-dir", str(tmp_path / "data"), "--device", device],
        capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 2
    assert f"--device is {device}" in completed.stderr or f"--device is '{device}'" in completed.stderr
