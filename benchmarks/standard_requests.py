#!/usr/bin/env python3
"""Time the standard request and a larger one end to end through a real server, phase by phase.

- standard: Fashion-MNIST, 10 classes, 20 images each, 28x28 grayscale, sent as PNG files;
- large: 1,000 Fashion-MNIST images (10 classes, 100 each) scaled to 64x64 and tinted into RGB,
  sent as PNG files, which the server converts to the checkpoint's input.

The server adapts on CUDA when torch finds a GPU, else on the CPU. Appends a table with the
command, commit, device and machine to docs/benchmarks.md (or --output).
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from archadapt.checkpoint import load_checkpoint
from archadapt_client import Client
from demo_task import draw, fashion_mnist, png_files
from markdown_report import append_section, current_commit, machine_description
from server.app import create_server
from server.request_decoding import RequestLimits

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("validate", "adapt", "derive", "finetune", "evaluate", "export")


def tinted_rgb(image: np.ndarray, side: int, rng: np.random.Generator) -> np.ndarray:
    """Scale a grayscale image to side x side and multiply it by a random color."""
    scaled = np.asarray(Image.fromarray(image).resize((side, side), Image.BILINEAR), dtype=np.float32)
    color = rng.uniform(0.4, 1.0, size=3)
    return (scaled[..., None] * color).clip(0, 255).astype(np.uint8)


def requests(seed: int) -> dict[str, tuple[list[bytes], list[int]]]:
    images, labels = fashion_mnist("train")
    rng = np.random.default_rng(seed)
    small_x, small_y = draw(images, labels, 20, rng)
    large_x, large_y = draw(images, labels, 100, rng)
    return {
        "standard (200 x 28x28 gray)": (png_files(small_x), small_y.tolist()),
        "large (1,000 x 64x64 RGB)": (png_files(np.stack([tinted_rgb(x, 64, rng) for x in large_x])), large_y.tolist()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="seed of the image draw and of the adaptation")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md", help="Markdown file to append to")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    checkpoint = load_checkpoint(ROOT / "checkpoints" / "default")
    running = create_server("127.0.0.1:0", checkpoint, device, RequestLimits(max_images=2000))
    rows = []
    try:
        with Client(f"127.0.0.1:{running.port}", timeout=1800) as client:
            for name, (images, labels) in requests(args.seed).items():
                started = time.perf_counter()
                result = client.adapt(images, labels, seed=args.seed)
                seconds = time.perf_counter() - started
                rows.append((name, seconds, result.timings, result.metrics.validation_accuracy))
                print(f"{name}: {seconds:.1f} s, validation accuracy {result.metrics.validation_accuracy:.3f}", flush=True)
    finally:
        running.stop(grace=1.0)

    commit = current_commit()
    device_name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    lines = [
        "",
        f"## Standard and large requests end to end on {device_name} ({datetime.date.today().isoformat()})",
        "",
        f"- Command: `python benchmarks/standard_requests.py --seed {args.seed}`",
        f"- Commit: {commit}; device {device}; machine: {machine_description()}",
        "- Images sent as PNG files, decoded when the server admits the request (in the total, in no phase). Times in seconds.",
        "",
        "| request | total | " + " | ".join(PHASES) + " | validation accuracy |",
        "|---|---|" + "---|" * len(PHASES) + "---|",
    ]
    for name, seconds, timings, accuracy in rows:
        phases = " | ".join(f"{timings.get(phase, 0.0):.2f}" for phase in PHASES)
        lines.append(f"| {name} | {seconds:.1f} | {phases} | {accuracy:.3f} |")
    append_section(args.output, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
