"""scripts/generate_protos.py: the committed stubs are current, and --check detects stale ones."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "generate_protos.py"
PROTO = REPO_ROOT / "protos" / "archadapt" / "v1" / "archadapt.proto"

pytest.importorskip("grpc_tools", reason="generating stubs needs grpcio-tools")


def run_script(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_passes_on_committed_stubs() -> None:
    completed = run_script("--check")

    assert completed.returncode == 0, completed.stderr
    assert "up to date" in completed.stdout


def test_check_fails_after_proto_change(tmp_path: Path) -> None:
    changed = tmp_path / "archadapt.proto"
    text = PROTO.read_text(encoding="utf-8")
    new_field = "message GetServerInfoRequest { bool verbose = 1; }"
    changed.write_text(text.replace("message GetServerInfoRequest {}", new_field), encoding="utf-8")
    assert changed.read_text(encoding="utf-8") != text

    completed = run_script("--check", "--proto", changed)

    assert completed.returncode == 1
    assert "stale generated file: clients/python/archadapt_client/v1/archadapt_pb2.py" in completed.stderr
    assert "archadapt_pb2_grpc.py" not in completed.stderr
    assert "run: python scripts/generate_protos.py" in completed.stderr


def test_check_reports_missing_stub(tmp_path: Path) -> None:
    completed = run_script("--check", "--output-root", tmp_path)

    assert completed.returncode == 1
    assert "archadapt_pb2_grpc.py" in completed.stderr


def test_generated_stubs_coexist_with_server_stubs(tmp_path: Path) -> None:
    """Client and server stubs of the same proto can be imported into one process.

    The server stubs are generated here the usual way (-Iprotos), as package
    archadapt.v1 in a temporary directory.
    """
    from grpc_tools import protoc

    server_out = tmp_path / "server"
    server_out.mkdir()
    exit_code = protoc.main(
        ["grpc_tools.protoc", f"-I{REPO_ROOT / 'protos'}", f"--python_out={server_out}", str(PROTO)]
    )
    assert exit_code == 0
    # Regular packages, so that this copy wins over the installed server package.
    (server_out / "archadapt" / "__init__.py").write_text("")
    (server_out / "archadapt" / "v1" / "__init__.py").write_text("")
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from archadapt_client.v1 import archadapt_pb2 as client_pb2;"
        "from archadapt.v1 import archadapt_pb2 as server_pb2;"
        "assert server_pb2.__file__.startswith(sys.argv[1]), server_pb2.__file__;"
        "print(client_pb2.AdaptRequest is server_pb2.AdaptRequest)"
    )

    completed = subprocess.run(
        [sys.executable, "-c", code, str(server_out)], capture_output=True, text=True, timeout=60
    )

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "True"


def test_api_reference_is_current() -> None:
    completed = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "generate_api_docs.py"), "--check"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 0, completed.stderr


def test_every_proto_element_documented() -> None:
    """Every message, field, enum value and RPC of the contract has a comment above it."""
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    try:
        from generate_api_docs import FILE_ENUM, FILE_MESSAGE, FILE_SERVICE, Comments, compile_descriptor
    finally:
        sys.path.pop(0)
    file = compile_descriptor(REPO_ROOT / "protos", "archadapt/v1/archadapt.proto")
    comments = Comments(file)
    missing = []
    for index, message in enumerate(file.message_type):
        if not comments.text(FILE_MESSAGE, index):
            missing.append(f"message {message.name}")
        missing += [
            f"field {message.name}.{field.name}"
            for number, field in enumerate(message.field)
            if not comments.text(FILE_MESSAGE, index, 2, number)
        ]
    for index, enum in enumerate(file.enum_type):
        missing += [f"enum value {value.name}" for number, value in enumerate(enum.value) if not comments.text(FILE_ENUM, index, 2, number)]
    for index, service in enumerate(file.service):
        missing += [f"rpc {method.name}" for number, method in enumerate(service.method) if not comments.text(FILE_SERVICE, index, 2, number)]

    assert missing == []
