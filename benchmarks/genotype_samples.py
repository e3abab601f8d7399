#!/usr/bin/env python3
"""Compare K = 1 with K > 1 genotype samples on Fashion-MNIST tasks, through the real server and client.

Each task is the demo task's draw (benchmarks/demo_task.py). Every task is adapted once per
value of AdaptOptions.genotype_samples with the same seed, and the returned ONNX model is scored
in onnxruntime on the held-out images. K = 1 keeps the most probable genotype; K > 1 also draws
K - 1 genotypes from q(alpha) and keeps the one whose network, with the adapted weights and
before fine-tuning, has the lowest cross-entropy on the validation images. Appends a table to
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import numpy as np
import torch

from archadapt.checkpoint import load_checkpoint
from archadapt_client import Client
from budget_curve import heldout_accuracy
from demo_task import draw, fashion_mnist, mean_ci
from markdown_report import append_section, current_commit, machine_description
from server.app import create_server

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints" / "default", help="checkpoint directory to serve")
    parser.add_argument("--tasks", type=int, default=3, help="number of tasks (seeds 0 .. N-1)")
    parser.add_argument("--samples", default="1,4", help="comma-separated genotype_samples values to compare")
    parser.add_argument("--finetune-steps", type=int, default=100, help="fine-tuning steps per adaptation (0: the server default)")
    parser.add_argument("--shots", type=int, default=20, help="support images per class")
    parser.add_argument("--heldout", type=int, default=100, help="held-out images per class")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md", help="Markdown file to append to")
    args = parser.parse_args()
    samples = [int(k) for k in args.samples.split(",")]

    train_images, train_labels = fashion_mnist("train")
    test_images, test_labels = fashion_mnist("t10k")
    checkpoint = load_checkpoint(args.checkpoint)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    running = create_server("127.0.0.1:0", checkpoint, device)
    rows = []
    try:
        with Client(f"127.0.0.1:{running.port}", timeout=1800) as client:
            for seed in range(args.tasks):
                rng = np.random.default_rng(1000 + seed)
                support_x, support_y = draw(train_images, train_labels, args.shots, rng)
                heldout_x, heldout_y = draw(test_images, test_labels, args.heldout, rng)
                for k in samples:
                    started = time.perf_counter()
                    result = client.adapt(
                        support_x, support_y.tolist(), seed=seed, finetune_steps=args.finetune_steps, genotype_samples=k
                    )
                    seconds = time.perf_counter() - started
                    accuracy = heldout_accuracy(result.onnx_model, heldout_x, heldout_y)
                    rows.append({
                        "seed": seed, "k": k, "accuracy": accuracy, "seconds": seconds,
                        "derive": result.timings.get("derive", 0.0), "params": result.parameter_count,
                        "validation": result.metrics.validation_accuracy,
                    })
                    print(
                        f"task {seed}, K {k}: {100 * accuracy:.1f}% held out, {100 * result.metrics.validation_accuracy:.1f}% "
                        f"validation, derive {result.timings.get('derive', 0.0):.2f} s, {seconds:.1f} s",
                        flush=True,
                    )
    finally:
        running.stop()

    lines = [
        "",
        f"## Genotype samples: Fashion-MNIST 10-way {args.shots}-shot ({datetime.date.today().isoformat()})",
        "",
        f"- Command: `python benchmarks/genotype_samples.py --tasks {args.tasks} --samples {args.samples} "
        f"--finetune-steps {args.finetune_steps} --shots {args.shots} --heldout {args.heldout}`",
        f"- Commit: {current_commit()}; checkpoint `{checkpoint.checkpoint_id}`; device {device}",
        f"- Machine: {machine_description()}",
        f"- {args.tasks} tasks (the demo task's draws), each adapted once per K with the same seed; "
        f"{args.heldout} held-out images per class; mean with a 95% confidence interval over tasks.",
        "",
        "| genotype_samples | held-out accuracy | validation accuracy | derive seconds | seconds per request |",
        "|---|---|---|---|---|",
    ]
    for k in samples:
        chosen = [r for r in rows if r["k"] == k]
        accuracy, half = mean_ci([r["accuracy"] for r in chosen])
        lines.append(
            f"| {k} | {100 * accuracy:.1f}% ± {100 * half:.1f} | {100 * np.mean([r['validation'] for r in chosen]):.1f}% | "
            f"{np.mean([r['derive'] for r in chosen]):.2f} | {np.mean([r['seconds'] for r in chosen]):.1f} |"
        )
    lines += ["", "Per task, held-out accuracy:", "", "| task | " + " | ".join(f"K = {k}" for k in samples) + " |"]
    lines.append("|---|" + "---|" * len(samples))
    for seed in range(args.tasks):
        cells = [f"{100 * r['accuracy']:.1f}%" for k in samples for r in rows if r["seed"] == seed and r["k"] == k]
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    append_section(args.output, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
