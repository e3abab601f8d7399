#!/usr/bin/env python3
"""Held-out accuracy against parameter budget on Fashion-MNIST tasks, through the real server and client.

Each task is the demo task's draw (benchmarks/demo_task.py): 10 classes, 20 support images per
class from the training file and 100 held-out images per class from the t10k file. Every task
is adapted once per budget by a server on loopback that serves the committed checkpoint, and
the returned ONNX model is scored in onnxruntime on the held-out images. Writes a plot of
accuracy against the returned networks' parameter counts to docs/budget_accuracy.png and
appends a table to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from archadapt.adaptation import ServingConfig
from archadapt.checkpoint import load_checkpoint
from archadapt.cost_model import CostModel
from archadapt.derivation import smallest_cost
from archadapt_client import Client
from demo_task import draw, fashion_mnist, mean_ci
from markdown_report import append_section, current_commit, machine_description
from server.app import create_server

ROOT = Path(__file__).resolve().parents[1]


def heldout_accuracy(model: bytes, images: np.ndarray, labels: np.ndarray) -> float:
    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"images": images.astype(np.float32)[:, None] / 255.0})[0]
    return float((logits.argmax(axis=1) == labels).mean())


def plot(rows: list[dict], budgets: list[int], least: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display; the plot goes to a file
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.0, 4.0), dpi=120)
    for budget in budgets:
        chosen = [r for r in rows if r["budget"] == budget]
        parameters = np.mean([r["params"] for r in chosen])
        accuracy, half = mean_ci([r["accuracy"] for r in chosen])
        label = "no limit" if budget == 0 else f"budget {budget:,}"
        axis.errorbar(parameters, 100 * accuracy, yerr=100 * half if np.isfinite(half) else None, fmt="o", capsize=4, label=label)
    axis.axvline(least, color="grey", linestyle=":", label=f"smallest network ({least:,})")
    axis.set_xlabel("parameters of the returned network (mean over tasks)")
    axis.set_ylabel("held-out accuracy, % (mean, 95% CI)")
    axis.set_title(f"Fashion-MNIST 10-way, {len(rows) // len(budgets)} tasks")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    print(f"wrote {path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints" / "default", help="checkpoint directory to serve")
    parser.add_argument("--tasks", type=int, default=3, help="number of tasks (seeds 0 .. N-1)")
    parser.add_argument("--budgets", default="0,60000,35000,20000", help="comma-separated max_parameters values; 0 is no limit")
    parser.add_argument("--finetune-steps", type=int, default=100, help="fine-tuning steps per adaptation (0: the server default)")
    parser.add_argument(
        "--budget-penalty", type=float, default=ServingConfig().budget_penalty,
        help="weight of the budget term in the inner loop's loss (default: %(default)s, the server's default)",
    )
    parser.add_argument("--shots", type=int, default=20, help="support images per class")
    parser.add_argument("--heldout", type=int, default=100, help="held-out images per class")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "budget_accuracy.png", help="PNG file of the plot")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md", help="Markdown file to append to")
    args = parser.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]

    train_images, train_labels = fashion_mnist("train")
    test_images, test_labels = fashion_mnist("t10k")
    checkpoint = load_checkpoint(args.checkpoint)
    least = smallest_cost(CostModel.build(checkpoint.space, checkpoint.spec, 10), "parameters")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config = dataclasses.replace(ServingConfig(), budget_penalty=args.budget_penalty)
    running = create_server("127.0.0.1:0", checkpoint, device, config=config)
    rows = []
    try:
        with Client(f"127.0.0.1:{running.port}", timeout=1800) as client:
            for seed in range(args.tasks):
                rng = np.random.default_rng(1000 + seed)
                support_x, support_y = draw(train_images, train_labels, args.shots, rng)
                heldout_x, heldout_y = draw(test_images, test_labels, args.heldout, rng)
                for budget in budgets:
                    started = time.perf_counter()
                    result = client.adapt(
                        support_x, support_y.tolist(), seed=seed, finetune_steps=args.finetune_steps, max_parameters=budget
                    )
                    seconds = time.perf_counter() - started
                    accuracy = heldout_accuracy(result.onnx_model, heldout_x, heldout_y)
                    rows.append({
                        "seed": seed, "budget": budget, "accuracy": accuracy, "seconds": seconds,
                        "params": result.parameter_count, "macs": result.multiply_accumulates,
                    })
                    print(
                        f"task {seed}, budget {budget or 'none'}: {100 * accuracy:.1f}%, {result.parameter_count} parameters, "
                        f"{result.multiply_accumulates} multiply-accumulates, {seconds:.1f} s",
                        flush=True,
                    )
    finally:
        running.stop()

    plot(rows, budgets, least, args.plot)
    lines = [
        "",
        f"## Accuracy against parameter budget: Fashion-MNIST 10-way {args.shots}-shot ({datetime.date.today().isoformat()})",
        "",
        f"- Command: `python benchmarks/budget_curve.py --tasks {args.tasks} --budgets {args.budgets} "
        f"--finetune-steps {args.finetune_steps} --budget-penalty {args.budget_penalty} --shots {args.shots} "
        f"--heldout {args.heldout}`",
        f"- Commit: {current_commit()}; checkpoint `{checkpoint.checkpoint_id}`; device {device}",
        f"- Machine: {machine_description()}",
        f"- Tasks: {args.tasks} (the demo task's draws), each adapted once per budget with the same seed; "
        f"{args.heldout} held-out images per class; mean with a 95% confidence interval over tasks.",
        f"- The smallest network of the search space for 10 classes has {least} parameters. Plot: "
        f"[{args.plot.name}]({args.plot.name}).",
        "",
        "| max_parameters | held-out accuracy | parameters (mean, max) | multiply-accumulates (mean) | seconds per request |",
        "|---|---|---|---|---|",
    ]
    for budget in budgets:
        chosen = [r for r in rows if r["budget"] == budget]
        accuracy, half = mean_ci([r["accuracy"] for r in chosen])
        lines.append(
            f"| {budget or 'no limit'} | {100 * accuracy:.1f}% ± {100 * half:.1f} | "
            f"{int(np.mean([r['params'] for r in chosen]))}, {max(r['params'] for r in chosen)} | "
            f"{int(np.mean([r['macs'] for r in chosen]))} | {np.mean([r['seconds'] for r in chosen]):.1f} |"
        )
    lines += ["", "Per task, held-out accuracy:", "", "| task | " + " | ".join(str(b or "no limit") for b in budgets) + " |"]
    lines.append("|---|" + "---|" * len(budgets))
    for seed in range(args.tasks):
        cells = [f"{100 * r['accuracy']:.1f}%" for b in budgets for r in rows if r["seed"] == seed and r["budget"] == b]
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    append_section(args.output, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
