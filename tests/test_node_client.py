"""A Node.js client built from the repository's .proto files alone gets server info and health.

`npm ci` installs @grpc/grpc-js and @grpc/proto-loader from clients/node/package-lock.json, and
clients/node/server_info.js calls a real server on 127.0.0.1 with the tiny e2e checkpoint.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from archadapt.checkpoint import Checkpoint
from server.app import RunningServer, create_server
from certificates import make_tls_files
from server.security import BearerTokenInterceptor, ServerSecurity, server_credentials
from test_server_e2e import LIMITS, SERVING, address, server  # noqa: F401
from tiny_checkpoint import CHECKPOINT_ID, SPACE

NODE_DIR = Path(__file__).resolve().parent.parent / "clients" / "node"
TOKEN = "node-token-1c2d3e4f"

pytestmark = pytest.mark.skipif(
    shutil.which("npm") is None or shutil.which("node") is None, reason="npm and node are not installed"
)


@pytest.fixture(scope="module")
def node_modules() -> Path:
    completed = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=NODE_DIR, capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return NODE_DIR / "node_modules"


def run_script(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["node", str(NODE_DIR / "server_info.js"), *arguments], capture_output=True, text=True, timeout=120
    )


def test_node_client_prints_info_and_health(node_modules: Path, address: str) -> None:
    completed = run_script("--server", address)

    assert completed.returncode == 0, completed.stderr
    document = json.loads(completed.stdout)
    info = document["server_info"]
    assert document["health"] == "SERVING"
    assert info["checkpoint_id"] == CHECKPOINT_ID
    assert info["search_space"]["nodes"] == SPACE.nodes
    assert info["search_space"]["primitives"] == list(SPACE.primitives)
    assert info["input_spec"]["channels"] == 1
    assert info["limits"]["max_images"] == LIMITS.max_images
    assert info["limits"]["max_request_bytes"] == str(LIMITS.max_request_bytes)


@pytest.fixture(scope="module")
def token_server(checkpoint: Checkpoint) -> Iterator[RunningServer]:
    security = ServerSecurity(interceptors=(BearerTokenInterceptor([TOKEN.encode()]),))
    running = create_server("127.0.0.1:0", checkpoint, torch.device("cpu"), LIMITS, SERVING, max_workers=2, security=security)
    yield running
    running.stop(grace=1.0)


def test_node_client_sends_token(node_modules: Path, token_server: RunningServer, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")

    accepted = run_script("--server", f"127.0.0.1:{token_server.port}", "--token-file", str(token_file))
    rejected = run_script("--server", f"127.0.0.1:{token_server.port}")

    assert accepted.returncode == 0, accepted.stderr
    assert json.loads(accepted.stdout)["server_info"]["checkpoint_id"] == CHECKPOINT_ID
    assert rejected.returncode == 1
    assert "error: UNAUTHENTICATED" in rejected.stderr


def test_node_client_reports_unreachable_server(node_modules: Path) -> None:
    completed = run_script("--server", "127.0.0.1:1")
    assert completed.returncode == 1
    assert "error: UNAVAILABLE" in completed.stderr


def test_node_client_requires_server(node_modules: Path) -> None:
    completed = run_script()
    assert completed.returncode == 2
    assert "missing --server" in completed.stderr


def test_node_client_over_tls(node_modules: Path, checkpoint: Checkpoint, tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path / "tls")
    security = ServerSecurity(credentials=server_credentials(tls.server_cert, tls.server_key))
    running = create_server("127.0.0.1:0", checkpoint, torch.device("cpu"), LIMITS, SERVING, max_workers=2, security=security)
    try:
        verified = run_script("--server", f"localhost:{running.port}", "--tls-ca", str(tls.ca))
        plaintext = run_script("--server", f"localhost:{running.port}")
    finally:
        running.stop(grace=1.0)

    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout)["health"] == "SERVING"
    assert plaintext.returncode == 1
    assert "error: UNAVAILABLE" in plaintext.stderr
