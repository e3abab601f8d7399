"""Concurrent jobs: parsing of --max-concurrent-jobs, the memory formula of its auto mode, the
start-up measurement of one job's GPU memory, and ONNX exports from two threads at once."""

from __future__ import annotations

import argparse
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from archadapt.adaptation import ServingConfig
from archadapt.checkpoint import Checkpoint
from archadapt.export import export_onnx
from archadapt.network import DerivedNetwork
from server.concurrency import (
    MAX_AUTO_CONCURRENT_JOBS,
    concurrent_jobs_argument,
    jobs_for_memory,
    measure_job_bytes,
    resolve_concurrent_jobs,
)
from server.request_decoding import RequestLimits
from test_export import CHECKPOINT_ID, CLASS_NAMES, SPACE, SPEC, images, random_genotype

REPO_ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30


def test_argument_accepts_auto_and_counts() -> None:
    assert concurrent_jobs_argument("auto") == "auto"
    assert concurrent_jobs_argument("3") == 3


@pytest.mark.parametrize("text", ["0", "-2", "many", "1.5"])
def test_argument_rejects_other_values(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=f"--max-concurrent-jobs is '{text}'; use auto or a count"):
        concurrent_jobs_argument(text)


@pytest.mark.parametrize(
    ("free_gib", "job_gib", "jobs"),
    [
        (10.0, 3.0, 3),  # 0.9 * 10 / 3 = 3.0
        (10.0, 3.1, 2),
        (1.0, 2.0, 1),  # at least one job, even when it does not fit
        (140.0, 0.5, MAX_AUTO_CONCURRENT_JOBS),
    ],
)
def test_jobs_for_memory(free_gib: float, job_gib: float, jobs: int) -> None:
    assert jobs_for_memory(int(free_gib * GIB), int(job_gib * GIB)) == jobs


def test_jobs_for_memory_rejects_zero_job_size() -> None:
    with pytest.raises(ValueError, match="job_bytes is 0"):
        jobs_for_memory(GIB, 0)


def test_auto_means_one_job_on_cpu(checkpoint: Checkpoint) -> None:
    assert resolve_concurrent_jobs("auto", torch.device("cpu"), checkpoint, ServingConfig(), RequestLimits()) == 1
    assert resolve_concurrent_jobs(4, torch.device("cpu"), checkpoint, ServingConfig(), RequestLimits()) == 4


def test_server_command_rejects_bad_count(checkpoint_dir: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "server", "--port", "0", "--checkpoint", str(checkpoint_dir), "--max-concurrent-jobs", "0"],
        capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
    )
    assert completed.returncode == 2
    assert "--max-concurrent-jobs is '0'; use auto or a count of 1 or more" in completed.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_measured_job_memory_covers_largest_dataset(checkpoint: Checkpoint) -> None:
    device = torch.device("cuda")
    measure_job_bytes(checkpoint, ServingConfig(), device, RequestLimits())  # allocates the library workspaces once
    small = measure_job_bytes(checkpoint, ServingConfig(), device, RequestLimits(max_images=200))
    large = measure_job_bytes(checkpoint, ServingConfig(), device, RequestLimits(max_images=10_200))
    image_bytes = checkpoint.spec.channels * checkpoint.spec.height * checkpoint.spec.width * 4

    assert small > 0
    assert large - small == pytest.approx(10_000 * image_bytes, rel=0.5)
    jobs = resolve_concurrent_jobs("auto", device, checkpoint, ServingConfig(), RequestLimits())
    assert 1 <= jobs <= MAX_AUTO_CONCURRENT_JOBS


def test_exports_in_parallel_threads_succeed() -> None:
    """Two exports at once in threads of one process both succeed, as two concurrent jobs need."""
    networks = [DerivedNetwork(SPACE, SPEC, random_genotype(seed), len(CLASS_NAMES)).eval() for seed in range(2)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(export_onnx, network, SPEC, CLASS_NAMES, CHECKPOINT_ID, images(4, 0)) for network in networks]
        exported = [future.result(timeout=600) for future in futures]

    assert all(model.max_abs_diff <= 1e-4 for model in exported)
