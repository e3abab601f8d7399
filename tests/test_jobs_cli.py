"""The job commands of the client's command line against a real in-process server on loopback."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from archadapt.checkpoint import Checkpoint
from archadapt_client.cli import main
from server.app import RunningServer, create_server

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def address(checkpoint: Checkpoint, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    running: RunningServer = create_server(
        "127.0.0.1:0", checkpoint, torch.device("cpu"), data_dir=tmp_path_factory.mktemp("cli-data")
    )
    yield f"127.0.0.1:{running.port}"
    running.stop(grace=1.0)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli-dataset") / "noise.npz"
    images = np.random.default_rng(0).integers(0, 256, size=(6, 28, 28), dtype=np.uint8)
    np.savez(path, images=images, labels=np.array([0, 0, 0, 1, 1, 1]), class_names=np.array(["left", "right"]))
    return path


def run(capsys: pytest.CaptureFixture[str], *arguments: str) -> tuple[int, list[str], str]:
    status = main(list(arguments))
    captured = capsys.readouterr()
    return status, captured.out.splitlines(), captured.err


def submit(capsys: pytest.CaptureFixture[str], address: str, data_file: Path, *options: str) -> str:
    status, lines, err = run(capsys, "submit", "--server", address, "--data", str(data_file), "--inner-steps", "1", *options)
    assert status == 0, err
    return lines[-1]


def test_submit_watch_status_download(capsys: pytest.CaptureFixture[str], address: str, data_file: Path, tmp_path: Path) -> None:
    job_id = submit(capsys, address, data_file, "--finetune-steps", "2")
    assert len(job_id) == 32

    status, lines, err = run(capsys, "watch", "--server", address, job_id)
    assert status == 0, err
    assert lines[-1] == "SUCCEEDED"
    assert "QUEUED (submitted)" in lines[0]
    assert any(" finetune 2/2 loss " in line for line in lines)

    status, lines, err = run(capsys, "status", "--server", address, job_id)
    assert status == 0, err
    assert lines[-1] == "SUCCEEDED"
    assert f"job: {job_id}" in lines
    assert "attempts: 1" in lines

    out = tmp_path / "model.onnx"
    status, lines, err = run(capsys, "download", "--server", address, job_id, "--out", str(out))
    assert status == 0, err
    sha = next(line for line in run(capsys, "status", "--server", address, job_id)[1] if line.startswith("model: "))
    assert hashlib.sha256(out.read_bytes()).hexdigest() in sha

    status, lines, err = run(capsys, "jobs", "--server", address, "--state", "SUCCEEDED")
    assert status == 0, err
    assert any(line.startswith(job_id) and "SUCCEEDED" in line for line in lines)


def test_cancel_prints_state_and_watch_fails(capsys: pytest.CaptureFixture[str], address: str, data_file: Path) -> None:
    job_id = submit(capsys, address, data_file, "--finetune-steps", "10000")
    status, lines, err = run(capsys, "cancel", "--server", address, job_id)
    assert status == 0, err
    assert lines[-1] in ("CANCELLED", "RUNNING")  # a running job ends CANCELLED at its next step

    status, lines, _ = run(capsys, "watch", "--server", address, job_id)
    assert status == 1
    assert lines[-1] == "CANCELLED"


def test_job_commands_print_json(capsys: pytest.CaptureFixture[str], address: str, data_file: Path, tmp_path: Path) -> None:
    status, lines, err = run(
        capsys, "submit", "--server", address, "--data", str(data_file), "--inner-steps", "1", "--finetune-steps", "2", "--json"
    )
    assert status == 0, err
    submitted = json.loads("\n".join(lines))
    job_id = submitted["job"]["job_id"]
    assert submitted["dataset"]["images"] == 6

    status, lines, err = run(capsys, "watch", "--server", address, job_id, "--json")
    assert status == 0, err
    documents = [json.loads(line) for line in lines]
    assert [event["index"] for event in documents[:-1]] == [str(i) for i in range(len(documents) - 1)]
    assert documents[-1]["state"] == "SUCCEEDED"

    status, lines, err = run(capsys, "status", "--server", address, job_id, "--json")
    assert status == 0, err
    assert json.loads("\n".join(lines))["job_id"] == job_id

    out = tmp_path / "model.onnx"
    status, lines, err = run(capsys, "download", "--server", address, job_id, "--out", str(out), "--json")
    assert status == 0, err
    assert json.loads("\n".join(lines)) == {"model": str(out), "bytes": out.stat().st_size}

    status, lines, err = run(capsys, "jobs", "--server", address, "--json")
    assert status == 0, err
    assert job_id in [json.loads(line)["job_id"] for line in lines]


def test_status_of_unknown_job_fails(capsys: pytest.CaptureFixture[str], address: str) -> None:
    status, _, err = run(capsys, "status", "--server", address, "0" * 32)
    assert status == 1
    assert "NOT_FOUND" in err


def test_submit_command_as_subprocess(address: str, data_file: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "archadapt_client", "submit", "--server", address, "--data", str(data_file),
         "--inner-steps", "1", "--finetune-steps", "2", "--idempotency-key", "cli-subprocess"],
        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
    )
    assert completed.returncode == 0, completed.stderr
    job_id = completed.stdout.splitlines()[-1]
    assert len(job_id) == 32
    # The same key returns the same job.
    again = subprocess.run(
        [sys.executable, "-m", "archadapt_client", "submit", "--server", address, "--data", str(data_file),
         "--inner-steps", "1", "--finetune-steps", "2", "--idempotency-key", "cli-subprocess"],
        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
    )
    assert again.stdout.splitlines()[-1] == job_id


def test_transfers_show_byte_progress(capsys: pytest.CaptureFixture[str], address: str, data_file: Path, tmp_path: Path) -> None:
    """Uploads and downloads can take long for large datasets, so both draw a bar on stderr."""
    status, lines, err = run(capsys, "submit", "--server", address, "--data", str(data_file), "--inner-steps", "1", "--finetune-steps", "2")
    assert status == 0, err
    assert "upload" in err
    job_id = lines[-1]
    assert run(capsys, "watch", "--server", address, job_id)[0] == 0

    status, _, err = run(capsys, "download", "--server", address, job_id, "--out", str(tmp_path / "model.onnx"))
    assert status == 0, err
    assert "download" in err

    status, _, err = run(capsys, "--no-progress", "download", "--server", address, job_id, "--out", str(tmp_path / "again.onnx"))
    assert status == 0, err
    assert "download" not in err
