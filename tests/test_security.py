"""TLS, mutual TLS and bearer tokens on a real server on 127.0.0.1 with the tiny e2e checkpoint.

Certificates come from a throwaway CA made in the test. The servers run in this process through
create_server, except the last tests, which start `archadapt-server` with --token-file and the
TLS flags as a subprocess and read its log.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from archadapt.checkpoint import Checkpoint
from archadapt_client import ArchadaptError, Client
from archadapt_client.client import NO_RETRIES
from archadapt_client.v1 import archadapt_pb2 as pb
from archadapt_client.v1 import archadapt_pb2_grpc as pb_grpc
from certificates import TlsFiles, make_tls_files
from server.app import RunningServer, create_server
from server.security import (
    BearerTokenInterceptor,
    SecurityConfigError,
    ServerSecurity,
    read_tokens,
    server_credentials,
)
from test_server_e2e import LIMITS, SERVING, wait_for_port  # noqa: F401
from tiny_checkpoint import CHECKPOINT_ID

REPO_ROOT = Path(__file__).resolve().parent.parent
TOKEN = "tok-7f3a9c1e5b2d4086a1c3e5f7"
OTHER_TOKEN = "tok-second-0a1b2c3d"
CALL_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def start(checkpoint: Checkpoint, security: ServerSecurity) -> RunningServer:
    return create_server("127.0.0.1:0", checkpoint, torch.device("cpu"), LIMITS, SERVING, max_workers=4, security=security)


@pytest.fixture(scope="module")
def tls_server(checkpoint: Checkpoint, tls_files: TlsFiles) -> Iterator[RunningServer]:
    running = start(checkpoint, ServerSecurity(credentials=server_credentials(tls_files.server_cert, tls_files.server_key)))
    yield running
    running.stop(grace=1.0)


@pytest.fixture(scope="module")
def mtls_server(checkpoint: Checkpoint, tls_files: TlsFiles) -> Iterator[RunningServer]:
    credentials = server_credentials(tls_files.server_cert, tls_files.server_key, tls_files.ca)
    running = start(checkpoint, ServerSecurity(credentials=credentials))
    yield running
    running.stop(grace=1.0)


@pytest.fixture(scope="module")
def token_server(checkpoint: Checkpoint) -> Iterator[RunningServer]:
    interceptor = BearerTokenInterceptor([TOKEN.encode(), OTHER_TOKEN.encode()])
    running = start(checkpoint, ServerSecurity(interceptors=(interceptor,)))
    yield running
    running.stop(grace=1.0)


def noise_images(count: int) -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, size=(count, 28, 28), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------
# TLS and mutual TLS
# ---------------------------------------------------------------------------------------------


def test_tls_client_with_ca_gets_info(tls_server: RunningServer, tls_files: TlsFiles) -> None:
    with Client(f"localhost:{tls_server.port}", timeout=CALL_TIMEOUT_S, root_certificates=tls_files.ca) as client:
        assert client.tls
        assert client.info().checkpoint_id == CHECKPOINT_ID


def test_tls_accepts_pem_bytes(tls_server: RunningServer, tls_files: TlsFiles) -> None:
    with Client(f"127.0.0.1:{tls_server.port}", timeout=CALL_TIMEOUT_S, root_certificates=tls_files.ca.read_bytes()) as client:
        assert client.info().checkpoint_id == CHECKPOINT_ID


def test_tls_server_name_checked(tls_server: RunningServer, tls_files: TlsFiles) -> None:
    address = f"127.0.0.1:{tls_server.port}"
    with Client(address, timeout=CALL_TIMEOUT_S, root_certificates=tls_files.ca, server_name="localhost") as client:
        assert client.info().checkpoint_id == CHECKPOINT_ID
    with Client(address, timeout=10, retry=NO_RETRIES, root_certificates=tls_files.ca, server_name="other.example") as client:
        with pytest.raises(ArchadaptError) as caught:
            client.info()
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE


def test_tls_rejects_plaintext_client(tls_server: RunningServer) -> None:
    with Client(f"127.0.0.1:{tls_server.port}", timeout=10, retry=NO_RETRIES) as client:
        with pytest.raises(ArchadaptError) as caught:
            client.info()
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE


def test_tls_rejects_unknown_ca(tls_server: RunningServer, tmp_path: Path) -> None:
    other = make_tls_files(tmp_path / "other", ca_name="another CA")
    with Client(f"localhost:{tls_server.port}", timeout=10, retry=NO_RETRIES, root_certificates=other.ca) as client:
        with pytest.raises(ArchadaptError) as caught:
            client.info()
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE


def test_mtls_accepts_client_certificate(mtls_server: RunningServer, tls_files: TlsFiles) -> None:
    with Client(
        f"localhost:{mtls_server.port}",
        timeout=CALL_TIMEOUT_S,
        root_certificates=tls_files.ca,
        certificate_chain=tls_files.client_cert,
        private_key=tls_files.client_key,
    ) as client:
        assert client.info().checkpoint_id == CHECKPOINT_ID


def test_mtls_rejects_client_without_certificate(mtls_server: RunningServer, tls_files: TlsFiles) -> None:
    with Client(f"localhost:{mtls_server.port}", timeout=10, retry=NO_RETRIES, root_certificates=tls_files.ca) as client:
        with pytest.raises(ArchadaptError) as caught:
            client.info()
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE


def test_mtls_rejects_certificate_of_other_ca(mtls_server: RunningServer, tls_files: TlsFiles, tmp_path: Path) -> None:
    other = make_tls_files(tmp_path / "other", ca_name="another CA")
    with Client(
        f"localhost:{mtls_server.port}",
        timeout=10,
        retry=NO_RETRIES,
        root_certificates=tls_files.ca,
        certificate_chain=other.client_cert,
        private_key=other.client_key,
    ) as client:
        with pytest.raises(ArchadaptError) as caught:
            client.info()
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE


def test_server_credentials_reject_non_pem(tmp_path: Path, tls_files: TlsFiles) -> None:
    not_pem = tmp_path / "key.txt"
    not_pem.write_text("not a key")
    with pytest.raises(SecurityConfigError, match="not a PEM file"):
        server_credentials(tls_files.server_cert, not_pem)
    with pytest.raises(SecurityConfigError, match="cannot read"):
        server_credentials(tmp_path / "missing.pem", tls_files.server_key)


# ---------------------------------------------------------------------------------------------
# Bearer tokens
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("token", [TOKEN, OTHER_TOKEN])
def test_token_accepted(token_server: RunningServer, token: str) -> None:
    with Client(f"127.0.0.1:{token_server.port}", timeout=CALL_TIMEOUT_S, token=token) as client:
        assert client.info().checkpoint_id == CHECKPOINT_ID


@pytest.mark.parametrize("token", [None, "wrong-token", TOKEN + "x", TOKEN[:-1]], ids=["missing", "wrong", "longer", "prefix"])
def test_token_rejected(token_server: RunningServer, token: str | None) -> None:
    with Client(f"127.0.0.1:{token_server.port}", timeout=CALL_TIMEOUT_S, token=token) as client:
        with pytest.raises(ArchadaptError) as caught:
            client.info()
    assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED


def test_token_rejected_on_adapt_stream(token_server: RunningServer) -> None:
    with Client(f"127.0.0.1:{token_server.port}", timeout=CALL_TIMEOUT_S, token="wrong-token") as client:
        with pytest.raises(ArchadaptError) as caught:
            client.adapt(noise_images(6), [0, 0, 0, 1, 1, 1], inner_steps=1, finetune_steps=2)
    assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert "invalid bearer token" in caught.value.message


@pytest.mark.parametrize(
    "metadata",
    [(("authorization", f"Basic {TOKEN}"),), (("authorization", f"Bearer {TOKEN}"), ("authorization", f"Bearer {TOKEN}"))],
    ids=["basic-scheme", "two-headers"],
)
def test_malformed_authorization_rejected(token_server: RunningServer, metadata: tuple[tuple[str, str], ...]) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{token_server.port}") as channel:
        with pytest.raises(grpc.RpcError) as caught:
            pb_grpc.AdaptationStub(channel).GetServerInfo(pb.GetServerInfoRequest(), timeout=10, metadata=metadata)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_bearer_scheme_is_case_insensitive(token_server: RunningServer) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{token_server.port}") as channel:
        info = pb_grpc.AdaptationStub(channel).GetServerInfo(
            pb.GetServerInfoRequest(), timeout=10, metadata=(("authorization", f"bearer {TOKEN}"),)
        )
    assert info.checkpoint_id == CHECKPOINT_ID


@pytest.mark.parametrize("service", ["", "archadapt.v1.Adaptation"])
def test_health_open_without_token(token_server: RunningServer, service: str) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{token_server.port}") as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_needs_token(token_server: RunningServer) -> None:
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    with grpc.insecure_channel(f"127.0.0.1:{token_server.port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.ServerReflectionInfo(iter([request]), timeout=10))
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        responses = list(stub.ServerReflectionInfo(iter([request]), timeout=10, metadata=(("authorization", f"Bearer {TOKEN}"),)))
    assert responses[0].list_services_response.service


def test_token_not_in_logs(token_server: RunningServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    address = f"127.0.0.1:{token_server.port}"
    with Client(address, timeout=CALL_TIMEOUT_S, token="wrong-secret-value") as client:
        with pytest.raises(ArchadaptError):
            client.info()
    with Client(address, timeout=CALL_TIMEOUT_S, token=TOKEN) as client:
        result = client.adapt(noise_images(6), [0, 0, 0, 1, 1, 1], inner_steps=1, finetune_steps=2)
    assert result.checkpoint_id == CHECKPOINT_ID

    assert "rejected call" in caplog.text
    assert "invalid bearer token" in caplog.text
    assert "wrong-secret-value" not in caplog.text
    assert TOKEN not in caplog.text
    assert "with 6 images" in caplog.text  # the server did log the authenticated call


def test_read_tokens_skips_comments(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"# deploy tokens\n\n{TOKEN}\n  {OTHER_TOKEN}  \n")
    assert read_tokens(path) == [TOKEN.encode(), OTHER_TOKEN.encode()]


@pytest.mark.parametrize("content", ["", "# only a comment\n", "two words\n"], ids=["empty", "comment", "whitespace"])
def test_read_tokens_rejects_bad_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "tokens"
    path.write_text(content)
    with pytest.raises(SecurityConfigError) as caught:
        read_tokens(path)
    assert str(path) in str(caught.value)
    assert "two words" not in str(caught.value)


# ---------------------------------------------------------------------------------------------
# The server's command line with the security flags
# ---------------------------------------------------------------------------------------------


def test_server_command_with_mtls_and_token(checkpoint_dir: Path, tls_files: TlsFiles, tmp_path: Path) -> None:
    token_file = tmp_path / "tokens"
    token_file.write_text(TOKEN + "\n")
    port_file, log = tmp_path / "port", tmp_path / "server.log"
    with open(log, "w") as log_handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "server", "--port", "0", "--port-file", str(port_file), "--checkpoint", str(checkpoint_dir),
             "--tls-cert", str(tls_files.server_cert), "--tls-key", str(tls_files.server_key),
             "--tls-client-ca", str(tls_files.ca), "--token-file", str(token_file), "--log-level", "DEBUG"],
            stdout=log_handle, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
        )
    try:
        port = wait_for_port(port_file, process, log, 300)
        certificates = {
            "root_certificates": tls_files.ca,
            "certificate_chain": tls_files.client_cert,
            "private_key": tls_files.client_key,
        }
        with Client(f"localhost:{port}", timeout=CALL_TIMEOUT_S, token=TOKEN, **certificates) as client:
            assert client.info().checkpoint_id == CHECKPOINT_ID
        with Client(f"localhost:{port}", timeout=CALL_TIMEOUT_S, token="not-the-token", **certificates) as client:
            with pytest.raises(ArchadaptError) as caught:
                client.info()
        assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED

        health = subprocess.run(
            [sys.executable, "-m", "server.healthcheck", "--host", "localhost", "--port", str(port),
             "--tls-ca", str(tls_files.ca), "--tls-cert", str(tls_files.client_cert), "--tls-key", str(tls_files.client_key)],
            capture_output=True, text=True, timeout=60, cwd=REPO_ROOT,
        )
        assert health.returncode == 0, health.stderr
        assert health.stdout.strip() == "SERVING"

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output = log.read_text()
    assert "connections: mutual TLS, bearer token" in output
    assert "rejected call" in output
    assert TOKEN not in output
    assert "not-the-token" not in output


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tls-cert", "{cert}"], "--tls-cert and --tls-key must be given together"),
        (["--tls-client-ca", "{ca}"], "--tls-client-ca needs --tls-cert"),
        (["--token-file", "{missing}"], "cannot read the token file"),
    ],
    ids=["cert-without-key", "client-ca-without-tls", "missing-token-file"],
)
def test_server_command_rejects_bad_security_flags(
    checkpoint_dir: Path, tls_files: TlsFiles, tmp_path: Path, flags: list[str], message: str
) -> None:
    values = {"cert": tls_files.server_cert, "ca": tls_files.ca, "missing": tmp_path / "missing"}
    completed = subprocess.run(
        [sys.executable, "-m", "server", "--port", "0", "--checkpoint", str(checkpoint_dir),
         *[flag.format(**values) for flag in flags]],
        capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
    )
    assert completed.returncode == 2
    assert message in completed.stderr
