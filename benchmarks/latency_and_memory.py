#!/usr/bin/env python3
"""Measure the exported model's inference latency, the inner loop's peak memory against its number
of steps, and the decoding of a 1,000-image request. Appends a section to docs/benchmarks.md.

- Latency: a network derived from the default checkpoint's prior, in onnxruntime and in PyTorch
  eager mode, at batch 1 and batch 64, measured side by side in one run.
- Memory: the peak resident set size of a process that runs the first-order inner loop of the
  default supernet for each step count. Every count runs in a fresh process, so one count's
  allocations cannot hide another's.
- Decoding: a request of 1,000 grayscale 28x28 PNG images, decoded and validated as the server does.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from archadapt.adaptation import ServingConfig
from archadapt.checkpoint import load_checkpoint
from archadapt.derivation import derive_genotype
from archadapt.export import INPUT_NAME, OUTPUT_NAME, export_onnx
from archadapt.inner_loop import Prior, run_inner_loop
from archadapt.network import DerivedNetwork
from archadapt.posterior import op_probs
from archadapt.supernet import ALPHA_NAMES
from archadapt_client.v1 import archadapt_pb2 as pb
from demo_task import png_files
from markdown_report import append_section, current_commit, machine_description
from server.request_decoding import RequestLimits, decode_request

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "checkpoints" / "default"
NUM_CLASSES = 10


def median_seconds(call, repeats: int) -> float:
    call()  # warm-up: one-off allocation and kernel selection
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def measure_latency(repeats: int) -> list[tuple[int, float, float]]:
    """Return (batch, onnxruntime ms, PyTorch ms) for batch 1 and 64."""
    checkpoint = load_checkpoint(CHECKPOINT)
    probs = {cell_type: op_probs(checkpoint.prior.parameters[name], checkpoint.space) for cell_type, name in ALPHA_NAMES.items()}
    torch.manual_seed(0)
    network = DerivedNetwork(checkpoint.space, checkpoint.spec, derive_genotype(checkpoint.space, probs), NUM_CLASSES)
    network.eval()
    exported = export_onnx(network, checkpoint.spec, [str(c) for c in range(NUM_CLASSES)], checkpoint.checkpoint_id)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(exported.onnx_bytes, options, providers=["CPUExecutionProvider"])
    rows = []
    for batch in (1, 64):
        images = torch.rand(batch, checkpoint.spec.channels, checkpoint.spec.height, checkpoint.spec.width)
        feed = {INPUT_NAME: images.numpy()}
        onnx_seconds = median_seconds(lambda: session.run([OUTPUT_NAME], feed), repeats)
        with torch.inference_mode():
            torch_seconds = median_seconds(lambda: network(images), repeats)
        rows.append((batch, 1000 * onnx_seconds, 1000 * torch_seconds))
        print(f"batch {batch}: onnxruntime {1000 * onnx_seconds:.2f} ms, PyTorch {1000 * torch_seconds:.2f} ms", flush=True)
    return rows


def inner_loop_peak(steps: int, batch_size: int) -> tuple[float, float]:
    """Run the inner loop in this process; return (peak resident MiB, seconds)."""
    checkpoint = load_checkpoint(CHECKPOINT)
    supernet = checkpoint.build_supernet("cpu")
    prior = Prior(parameters=dict(checkpoint.prior.parameters), log_sigma=dict(checkpoint.prior.log_sigma))
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(200, checkpoint.spec.channels, checkpoint.spec.height, checkpoint.spec.width, generator=generator)
    labels = torch.arange(200) % NUM_CLASSES
    config = dataclasses.replace(ServingConfig().inner, inner_steps=steps, batch_size=batch_size)
    started = time.perf_counter()
    run_inner_loop(supernet, prior, images, labels, NUM_CLASSES, config, generator=generator)
    seconds = time.perf_counter() - started
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, seconds


def measure_memory(step_counts: list[int], batch_size: int, threads: int) -> list[tuple[int, float, float]]:
    rows = []
    for steps in step_counts:
        completed = subprocess.run(
            [sys.executable, __file__, "--child-steps", str(steps), "--batch-size", str(batch_size), "--threads", str(threads)],
            capture_output=True, text=True, check=True,
        )
        peak, seconds = json.loads(completed.stdout.strip().splitlines()[-1])
        rows.append((steps, peak, seconds))
        print(f"{steps} inner steps: peak {peak:.0f} MiB, {seconds:.1f} s", flush=True)
    return rows


def measure_decoding(images: int, repeats: int) -> float:
    """Return the seconds to decode and validate a request of `images` 28x28 PNG images."""
    rng = np.random.default_rng(0)
    request = pb.AdaptRequest()
    request.class_names.extend([str(c) for c in range(NUM_CLASSES)])
    for encoded in png_files(rng.integers(0, 256, (images, 28, 28), dtype=np.uint8)):
        request.images.add(encoded=encoded)
    request.labels.extend(index % NUM_CLASSES for index in range(images))
    spec = load_checkpoint(CHECKPOINT).spec
    limits = RequestLimits(max_images=max(images, RequestLimits.max_images))
    return median_seconds(lambda: decode_request(request, spec, limits), repeats)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch and onnxruntime CPU threads")
    parser.add_argument("--repeats", type=int, default=50, help="timed runs per latency figure (the median is reported)")
    parser.add_argument("--steps", default="50,500", help="inner-loop step counts whose peak memory is measured")
    parser.add_argument("--batch-size", type=int, default=16, help="support images per inner step in the memory runs")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md", help="Markdown file to append to")
    parser.add_argument("--child-steps", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.child_steps is not None:
        print(json.dumps(inner_loop_peak(args.child_steps, args.batch_size)))
        return 0

    latency = measure_latency(args.repeats)
    memory = measure_memory([int(s) for s in args.steps.split(",")], args.batch_size, args.threads)
    decoding = measure_decoding(1000, 5)
    print(f"decode and validate 1,000 PNG images: {decoding:.3f} s", flush=True)

    commit = current_commit()
    lines = [
        "",
        f"## Inference latency, inner-loop memory and request decoding ({datetime.date.today().isoformat()})",
        "",
        f"- Command: `python benchmarks/latency_and_memory.py --threads {args.threads} --repeats {args.repeats} "
        f"--steps {args.steps} --batch-size {args.batch_size}`",
        f"- Commit: {commit}; machine: {machine_description()}",
        "",
        "Network derived from the default checkpoint's prior (10 classes, 28x28 grayscale); median of "
        f"{args.repeats} runs after one warm-up.",
        "",
        "| batch | onnxruntime (ms) | PyTorch eager (ms) | ratio |",
        "|---|---|---|---|",
    ]
    lines += [f"| {batch} | {onnx_ms:.2f} | {torch_ms:.2f} | {torch_ms / onnx_ms:.2f}x |" for batch, onnx_ms, torch_ms in latency]
    lines += [
        "",
        f"Peak resident memory of a process that runs the first-order inner loop of the default supernet "
        f"(hard sampling, minibatches of {args.batch_size} from 200 images); the process also holds torch "
        "and the checkpoint:",
        "",
        "| inner steps | peak memory (MiB) | seconds |",
        "|---|---|---|",
    ]
    lines += [f"| {steps} | {peak:.0f} | {seconds:.1f} |" for steps, peak, seconds in memory]
    lines += [
        "",
        f"Decoding and validating a request of 1,000 grayscale 28x28 PNG images: {decoding:.3f} s (median of 5).",
    ]
    append_section(args.output, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
