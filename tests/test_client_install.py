"""The archadapt-client distribution installs and works alone, without torch.

A fresh virtual environment gets `pip install clients/python` (dependencies from the package
index or pip's cache), and its `archadapt` command talks to a real server that this process runs
on 127.0.0.1 with the tiny e2e checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import venv
from pathlib import Path

import numpy as np
import onnxruntime
import pytest

from test_server_e2e import address, server  # noqa: F401
from tiny_checkpoint import CHECKPOINT_ID

REPO_ROOT = Path(__file__).resolve().parent.parent
CLIENT_SOURCE = REPO_ROOT / "clients" / "python"
INSTALL_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Create a virtual environment with only archadapt-client installed; return its bin directory."""
    root = tmp_path_factory.mktemp("client-venv")
    # Install from a copy, so that the build writes nothing into the repository.
    source = root / "source"
    shutil.copytree(CLIENT_SOURCE, source, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
    environment = root / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(environment)
    bin_dir = environment / "bin"
    completed = subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(source)],
        capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return bin_dir


def run_in_venv(bin_dir: Path, *argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    # PYTHONPATH from the test run would leak the main environment's packages into the new one.
    environment = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        [str(bin_dir / argv[0]), *argv[1:]], capture_output=True, text=True, timeout=300, cwd=cwd, env=environment
    )


def test_torch_not_installed(client_venv: Path, tmp_path: Path) -> None:
    completed = run_in_venv(client_venv, "python", "-c", "import torch", cwd=tmp_path)
    assert completed.returncode != 0
    assert "No module named 'torch'" in completed.stderr

    listed = run_in_venv(client_venv, "python", "-m", "pip", "list", "--format=json", cwd=tmp_path)
    names = {package["name"].lower() for package in json.loads(listed.stdout)}
    assert "archadapt-client" in names
    assert not names & {"torch", "onnx", "onnxruntime", "archadapt"}


def test_client_imports_from_venv(client_venv: Path, tmp_path: Path) -> None:
    code = "import archadapt_client, sys; print(archadapt_client.__file__); print(sys.prefix)"
    completed = run_in_venv(client_venv, "python", "-c", code, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    module_file, prefix = completed.stdout.split()
    assert module_file.startswith(prefix)
    assert not module_file.startswith(str(REPO_ROOT))


def test_info_from_venv(client_venv: Path, address: str, tmp_path: Path) -> None:
    completed = run_in_venv(client_venv, "archadapt", "info", "--server", address, "--json", cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout)["checkpoint_id"] == CHECKPOINT_ID


def test_adapt_from_venv(client_venv: Path, address: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    data = tmp_path / "tiny.npz"
    np.savez(
        data,
        images=rng.integers(0, 256, size=(8, 28, 28), dtype=np.uint8),
        labels=np.array([0, 1] * 4),
        class_names=np.array(["left", "right"]),
    )
    out = tmp_path / "tiny.onnx"

    completed = run_in_venv(
        client_venv, "archadapt", "adapt", "--server", address, "--data", str(data), "--out", str(out),
        "--inner-steps", "1", "--finetune-steps", "2", "--json", cwd=tmp_path,
    )

    assert completed.returncode == 0, completed.stderr
    document = json.loads(completed.stdout)
    assert document["class_names"] == ["left", "right"]
    assert document["checkpoint_id"] == CHECKPOINT_ID
    session = onnxruntime.InferenceSession(out.read_bytes(), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"images": np.zeros((3, 1, 28, 28), np.float32)})[0]
    assert logits.shape == (3, 2)
    assert "finetune" in completed.stderr  # the progress bars
