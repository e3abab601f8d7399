"""Appending benchmark sections to docs/benchmarks.md, shared by the benchmark scripts."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch

PAGE_HEADER = "# Benchmarks\n\nEach section is appended by the script named in its command line.\n"


ROOT = Path(__file__).resolve().parents[1]


def current_commit() -> str:
    """Return the short hash of the checked-out commit, or "unknown" outside a git checkout."""
    try:
        completed = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return completed.stdout.strip()


def machine_description() -> str:
    return (
        f"{platform.machine()}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch thread(s), "
        f"torch {torch.__version__}, Python {platform.python_version()}"
    )


def append_section(path: Path, lines: list[str]) -> None:
    """Append `lines` to the Markdown page at `path`, creating the page with its header if absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text(PAGE_HEADER)
    with open(path, "a") as handle:
        handle.write("\n".join(lines) + "\n")
    print(f"appended results to {path}")
