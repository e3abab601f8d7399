"""The declared grpcio and protobuf ranges match what the committed stubs require.

grpcio-tools writes GRPC_GENERATED_VERSION into archadapt_pb2_grpc.py, and the stubs raise at
import under an older grpcio. Its protoc writes a protobuf gencode version into archadapt_pb2.py,
and the protobuf runtime rejects gencode newer than itself or of another major version.
"""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

REPO_ROOT = Path(__file__).resolve().parents[2]
CLIENT_PYPROJECT = REPO_ROOT / "clients" / "python" / "pyproject.toml"
SERVER_PYPROJECT = REPO_ROOT / "pyproject.toml"
STUB_DIR = REPO_ROOT / "clients" / "python" / "archadapt_client" / "v1"


def requirements(pyproject: Path, extra: str | None = None) -> dict[str, Requirement]:
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    lines = project["dependencies"] if extra is None else project["optional-dependencies"][extra]
    parsed = [Requirement(line) for line in lines]
    return {requirement.name: requirement for requirement in parsed}


def lowest_allowed(requirement: Requirement) -> Version:
    (lower,) = [spec for spec in requirement.specifier if spec.operator == ">="]
    return Version(lower.version)


def grpc_generated_version() -> Version:
    match = re.search(r"^GRPC_GENERATED_VERSION = '([^']+)'", (STUB_DIR / "archadapt_pb2_grpc.py").read_text(), re.MULTILINE)
    assert match, "GRPC_GENERATED_VERSION not found in the stubs"
    return Version(match.group(1))


def protobuf_gencode_version() -> Version:
    text = (STUB_DIR / "archadapt_pb2.py").read_text()
    match = re.search(r"ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,\s*(\d+),\s*(\d+),\s*(\d+),", text)
    assert match, "the protobuf runtime check was not found in archadapt_pb2.py"
    return Version(".".join(match.groups()))


def test_lowest_grpcio_runs_the_stubs() -> None:
    client = requirements(CLIENT_PYPROJECT)
    generated = grpc_generated_version()
    for name in ("grpcio", "grpcio-status"):
        assert lowest_allowed(client[name]) >= generated, f"{name} may be older than the stubs' grpcio {generated}"


def test_protobuf_range_accepts_gencode() -> None:
    protobuf = requirements(CLIENT_PYPROJECT)["protobuf"]
    gencode = protobuf_gencode_version()
    assert lowest_allowed(protobuf) >= gencode
    # Every allowed runtime must share the gencode's major version.
    assert not protobuf.specifier.contains(f"{gencode.major + 1}.0.0")
    assert not protobuf.specifier.contains(f"{gencode.major - 1}.99.0")
    assert protobuf.specifier.contains(str(gencode))


def test_grpcio_tools_pins_match_stubs() -> None:
    generated = str(grpc_generated_version())
    for pyproject, extra in ((CLIENT_PYPROJECT, "dev"), (SERVER_PYPROJECT, "test")):
        pin = requirements(pyproject, extra)["grpcio-tools"]
        assert str(pin.specifier) == f"=={generated}", f"{pyproject} [{extra}] pins {pin}"
    assert importlib.metadata.version("grpcio-tools") == generated
    script = (REPO_ROOT / "scripts" / "generate_protos.py").read_text(encoding="utf-8")
    assert f'GRPCIO_TOOLS_VERSION = "{generated}"' in script


def test_server_ranges_not_wider_than_client() -> None:
    client, server = requirements(CLIENT_PYPROJECT), requirements(SERVER_PYPROJECT)
    for name in ("grpcio", "grpcio-status", "protobuf"):
        assert lowest_allowed(server[name]) >= lowest_allowed(client[name]), name


def test_installed_versions_in_range() -> None:
    for name, requirement in requirements(CLIENT_PYPROJECT).items():
        assert requirement.specifier.contains(importlib.metadata.version(name)), name
