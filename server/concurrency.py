"""The number of jobs that run at once on the server's device.

`--max-concurrent-jobs auto` picks it on CUDA from free GPU memory:

    jobs = clamp(floor((1 - MEMORY_HEADROOM) * free_bytes / job_bytes), 1, MAX_AUTO_CONCURRENT_JOBS)

where free_bytes comes from torch.cuda.mem_get_info at start and job_bytes is the GPU memory
that one job uses at its peak. job_bytes is either configured (`--job-memory-mib`) or measured
at start by a short probe job. A measured peak is raised by the memory of the support set of the
largest dataset that the request limits allow. On a CPU, auto means one job.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math

import torch

from archadapt.adaptation import ServingConfig, TaskData, adapt_task
from archadapt.checkpoint import Checkpoint
from server.request_decoding import RequestLimits

logger = logging.getLogger(__name__)

AUTO = "auto"
# Share of the free memory kept back for the allocator's fragmentation and other processes.
MEMORY_HEADROOM = 0.1
# NOTE: the cap is a guess, not a measurement. Jobs share one Python process, so past a few jobs
# their host work (kernel launches under the GIL, export on the CPU) may limit the gain more than
# GPU memory does. benchmarks/concurrent_jobs.py measures the gain for a chosen count.
MAX_AUTO_CONCURRENT_JOBS = 8
PROBE_CLASSES = 10
PROBE_IMAGES_PER_CLASS = 20
PROBE_STEPS = 2


def concurrent_jobs_argument(text: str) -> int | str:
    """Parse --max-concurrent-jobs: "auto" or a positive count."""
    if text == AUTO:
        return AUTO
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"--max-concurrent-jobs is {text!r}; use auto or a count of 1 or more")
    return count


def jobs_for_memory(free_bytes: int, job_bytes: int) -> int:
    """Return how many jobs of `job_bytes` each fit in `free_bytes`, from 1 to MAX_AUTO_CONCURRENT_JOBS."""
    if job_bytes <= 0:
        raise ValueError(f"job_bytes is {job_bytes}; it must be positive")
    fitting = math.floor((1.0 - MEMORY_HEADROOM) * free_bytes / job_bytes)
    return max(1, min(MAX_AUTO_CONCURRENT_JOBS, fitting))


def measure_job_bytes(checkpoint: Checkpoint, config: ServingConfig, device: torch.device, limits: RequestLimits) -> int:
    """Return the GPU memory one job uses at its peak, measured by a short job on random images.

    The probe runs PROBE_STEPS inner and fine-tuning steps of `config` on PROBE_CLASSES classes
    and stops before the evaluation, which runs on the CPU. The support set of the largest
    allowed dataset, beyond the probe's own images, is added to the measured peak.
    """
    spec = checkpoint.spec
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(PROBE_CLASSES * PROBE_IMAGES_PER_CLASS, spec.channels, spec.height, spec.width, generator=generator)
    labels = torch.arange(PROBE_CLASSES).repeat_interleave(PROBE_IMAGES_PER_CLASS)
    data = TaskData(images, labels, [f"class {c}" for c in range(PROBE_CLASSES)])
    probe_config = dataclasses.replace(
        config,
        inner=dataclasses.replace(config.inner, inner_steps=PROBE_STEPS),
        finetune=dataclasses.replace(config.finetune, steps=PROBE_STEPS),
    )

    def stop_before_evaluation(phase: str, step: int, total: int, loss: float) -> None:
        if phase == "evaluate":
            raise _ProbeFinished

    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    before = torch.cuda.memory_reserved(device)
    torch.cuda.reset_peak_memory_stats(device)
    try:
        adapt_task(checkpoint, data, probe_config, device=device, on_progress=stop_before_evaluation)
    except _ProbeFinished:
        pass
    peak = torch.cuda.max_memory_reserved(device) - before
    torch.cuda.empty_cache()

    image_bytes = spec.channels * spec.height * spec.width * 4  # float32
    largest_support = max(0, limits.max_images - images.shape[0]) * image_bytes
    return peak + largest_support


class _ProbeFinished(Exception):
    """Raised to end the probe job once its GPU phases are done."""


def resolve_concurrent_jobs(
    setting: int | str,
    device: torch.device,
    checkpoint: Checkpoint,
    config: ServingConfig,
    limits: RequestLimits,
    job_memory_mib: float = 0.0,
) -> int:
    """Return the number of concurrent jobs for --max-concurrent-jobs `setting` ("auto" or a count)."""
    if setting != AUTO:
        return int(setting)
    if device.type != "cuda":
        logger.info("max concurrent jobs auto: 1 on %s", device)
        return 1
    if job_memory_mib > 0:
        job_bytes, source = int(job_memory_mib * 2**20), "configured"
    else:
        job_bytes, source = measure_job_bytes(checkpoint, config, device, limits), "measured"
    free_bytes, total_bytes = torch.cuda.mem_get_info(device)
    jobs = jobs_for_memory(free_bytes, job_bytes)
    logger.info(
        "max concurrent jobs auto: %d on %s (%.2f GiB free of %.2f GiB, %.3f GiB per job %s, headroom %.0f%%, cap %d)",
        jobs, device, free_bytes / 2**30, total_bytes / 2**30, job_bytes / 2**30, source,
        100 * MEMORY_HEADROOM, MAX_AUTO_CONCURRENT_JOBS,
    )
    return jobs
