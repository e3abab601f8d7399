#!/usr/bin/env python3
"""Measure job throughput of one server with one running job at a time, then with several.

Submits N identical standard requests (Fashion-MNIST, 10 classes, 20 images each, 28x28
grayscale) to a real server on loopback, first with --max-concurrent-jobs 1 and then with K,
and reports jobs per minute and the gain. Each server first runs one job outside the timing, so
that start-up costs (CUDA context, cuDNN's algorithm search) do not count. The server adapts on
CUDA when torch finds a GPU, else on the CPU. --quick runs two jobs with few steps, a check that
the harness works rather than a measurement. Appends a table to docs/benchmarks.md (or --output).
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import numpy as np
import torch

from archadapt.adaptation import ServingConfig
from archadapt.checkpoint import Checkpoint, load_checkpoint
from archadapt.config import PRECISIONS
from archadapt_client import Client
from archadapt_client.v1 import archadapt_pb2 as pb
from demo_task import draw, fashion_mnist
from markdown_report import append_section, current_commit, machine_description
from server.app import create_server
from server.concurrency import concurrent_jobs_argument, resolve_concurrent_jobs
from server.jobs import JobLimits
from server.request_decoding import RequestLimits

ROOT = Path(__file__).resolve().parents[1]
QUICK_STEPS = {"inner_steps": 2, "finetune_steps": 10}


def run_jobs(
    checkpoint: Checkpoint, device: torch.device, config: ServingConfig, concurrent: int,
    images: np.ndarray, labels: np.ndarray, jobs: int, steps: dict[str, int],
) -> dict[str, float]:
    """Run `jobs` identical jobs on a server with `concurrent` workers; return their timings."""
    job_limits = JobLimits(max_queued_jobs=max(100, jobs), max_concurrent_jobs=concurrent)
    running = create_server("127.0.0.1:0", checkpoint, device, RequestLimits(), config, job_limits=job_limits)
    try:
        with Client(f"127.0.0.1:{running.port}", timeout=1800) as client:
            dataset_id = client.upload_dataset(images, labels.tolist()).dataset_id
            warm_up = client.submit_job(dataset_id, **steps)
            client.wait_for_job(warm_up.job_id)

            submitted = [client.submit_job(dataset_id, **steps) for _ in range(jobs)]
            finished = [client.wait_for_job(job.job_id) for job in submitted]
    finally:
        running.stop(grace=1.0)

    failed = [job.job_id for job in finished if job.state != pb.SUCCEEDED]
    if failed:
        raise RuntimeError(f"jobs {failed} did not succeed; see the server log above")
    first_created = min(job.created_time for job in finished)
    last_finished = max(job.finished_time for job in finished)
    wall_seconds = last_finished - first_created
    return {
        "wall_seconds": wall_seconds,
        "jobs_per_minute": 60.0 * jobs / wall_seconds,
        "run_seconds": float(np.mean([job.finished_time - job.started_time for job in finished])),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=8, help="jobs submitted at once to each server (default: 8)")
    parser.add_argument("--concurrent", type=concurrent_jobs_argument, default=4, help="running jobs of the second server: a count, or auto as the server's flag picks it (default: 4)")
    parser.add_argument("--precision", default="float32", choices=list(PRECISIONS), help="precision of the training loops (default: float32)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 keeps torch's default")
    parser.add_argument("--quick", action="store_true", help=f"2 jobs, 2 at once, with {QUICK_STEPS['inner_steps']} inner and {QUICK_STEPS['finetune_steps']} fine-tuning steps")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md", help="Markdown file to append to")
    args = parser.parse_args()
    if args.jobs < 1:
        parser.error(f"--jobs is {args.jobs}; use 1 or more")
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    checkpoint = load_checkpoint(ROOT / "checkpoints" / "default")
    config = ServingConfig().with_precision(args.precision)
    jobs, steps = (2, QUICK_STEPS) if args.quick else (args.jobs, {})
    concurrent = 2 if args.quick else resolve_concurrent_jobs(args.concurrent, device, checkpoint, config, RequestLimits())

    images, labels = fashion_mnist("train")
    support_images, support_labels = draw(images, labels, 20, np.random.default_rng(0))
    results = {}
    for count in sorted({1, concurrent}):
        results[count] = run_jobs(checkpoint, device, config, count, support_images, support_labels, jobs, steps)
        print(f"{count} concurrent: {results[count]['jobs_per_minute']:.2f} jobs per minute, "
              f"{results[count]['wall_seconds']:.1f} s for {jobs} jobs", flush=True)

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    command = "python benchmarks/concurrent_jobs.py" + (
        " --quick" if args.quick else f" --jobs {args.jobs} --concurrent {args.concurrent}"
    ) + f" --precision {args.precision}" + (f" --threads {args.threads}" if args.threads else "")
    steps_text = (
        f"{steps['inner_steps']} inner and {steps['finetune_steps']} fine-tuning steps"
        if steps else f"{config.inner.inner_steps} inner and {config.finetune.steps} fine-tuning steps"
    )
    lines = [
        "",
        f"## Concurrent jobs on {device_name} ({datetime.date.today().isoformat()})",
        "",
        f"- Command: `{command}`",
        f"- Commit: {current_commit()}; checkpoint `{checkpoint.checkpoint_id}`; device {device}; precision {args.precision}",
        f"- Machine: {machine_description()}",
        f"- {jobs} identical standard requests (10 classes x 20 images, 28x28 gray, {steps_text}) submitted at once;"
        " time from the first submit to the last job's end, after one warm-up job per server.",
        "",
        "| running at once | seconds for all jobs | jobs per minute | mean seconds per job | gain |",
        "|---|---|---|---|---|",
    ]
    for count, result in results.items():
        gain = result["jobs_per_minute"] / results[1]["jobs_per_minute"]
        lines.append(
            f"| {count} | {result['wall_seconds']:.1f} | {result['jobs_per_minute']:.2f} | {result['run_seconds']:.1f} | {gain:.2f}x |"
        )
    append_section(args.output, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
