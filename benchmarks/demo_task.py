#!/usr/bin/env python3
"""Benchmark the demo task: Fashion-MNIST, 10-way, 20 shots, through the real server and client.

For each seed, draw 20 support images per class from the Fashion-MNIST training file and 100
held-out images per class from the t10k file, and send the support set to a server on loopback.
The returned ONNX model is scored in onnxruntime on the held-out images. A logistic regression
on the raw pixels of the same support images is the floor. With --png the images travel as PNG
files. The server decodes them when it admits the request, so the decoding counts in the
request time but in no phase. With --precision float32,bfloat16 the same tasks run on one
server per precision and a table compares their accuracy. Appends a table with the command,
commit and machine to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import io
import math
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression

from archadapt.adaptation import ServingConfig
from archadapt.checkpoint import load_checkpoint
from archadapt.config import PRECISIONS
from archadapt_client import Client
from archadapt_client.loaders import read_idx
from markdown_report import append_section, current_commit, machine_description
from server.app import create_server

ROOT = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist")
PHASES = ("validate", "adapt", "derive", "finetune", "evaluate", "export")


def fashion_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Read the images (N, 28, 28) uint8 and labels (N,) of the "train" or "t10k" Fashion-MNIST file."""
    return read_idx(FASHION / f"{split}-images-idx3-ubyte.gz"), read_idx(FASHION / f"{split}-labels-idx1-ubyte.gz")


def draw(images: np.ndarray, labels: np.ndarray, per_class: int, rng: np.random.Generator):
    chosen = np.concatenate([rng.choice(np.nonzero(labels == c)[0], per_class, replace=False) for c in range(10)])
    return images[chosen], labels[chosen].astype(np.int64)


def png_files(images: np.ndarray) -> list[bytes]:
    """Encode each uint8 (H, W) image as a PNG file."""
    files = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        files.append(buffer.getvalue())
    return files


def mean_ci(values: list[float]) -> tuple[float, float]:
    array = np.asarray(values, dtype=np.float64)
    half = 1.96 * array.std(ddof=1) / math.sqrt(len(array)) if len(array) > 1 else float("nan")
    return float(array.mean()), float(half)


def run_tasks(client: Client, args: argparse.Namespace, precision: str, train: tuple, test: tuple) -> list[dict]:
    """Adapt one task per seed through `client` and score each returned model on held-out images."""
    rows = []
    for seed in range(args.seeds):
        rng = np.random.default_rng(1000 + seed)
        support_x, support_y = draw(*train, args.shots, rng)
        heldout_x, heldout_y = draw(*test, args.heldout, rng)

        support = png_files(support_x) if args.png else support_x
        started = time.perf_counter()
        result = client.adapt(support, support_y.tolist(), seed=seed, finetune_steps=args.finetune_steps)
        request_seconds = time.perf_counter() - started

        session = onnxruntime.InferenceSession(result.onnx_model, providers=["CPUExecutionProvider"])
        logits = session.run(["logits"], {"images": heldout_x.astype(np.float32)[:, None] / 255.0})[0]
        accuracy = float((logits.argmax(axis=1) == heldout_y).mean())

        floor = LogisticRegression(max_iter=2000).fit(support_x.reshape(len(support_x), -1) / 255.0, support_y)
        floor_accuracy = float(floor.score(heldout_x.reshape(len(heldout_x), -1) / 255.0, heldout_y))
        rows.append({
            "seed": seed, "accuracy": accuracy, "logreg": floor_accuracy, "seconds": request_seconds,
            "timings": result.timings, "params": result.parameter_count, "macs": result.multiply_accumulates,
            "genotype": result.genotype,
        })
        print(
            f"{precision} seed {seed}: ONNX {100 * accuracy:.1f}%, logistic regression {100 * floor_accuracy:.1f}%, "
            f"{request_seconds:.1f} s, {result.parameter_count} parameters",
            flush=True,
        )
    return rows


def precision_list(text: str) -> list[str]:
    precisions = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in precisions if p not in PRECISIONS]
    if not precisions or unknown:
        raise argparse.ArgumentTypeError(f"precision is {text!r}; use a comma-separated list of {', '.join(PRECISIONS)}")
    return precisions


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints" / "default", help="checkpoint directory to serve")
    parser.add_argument("--seeds", type=int, default=5, help="number of tasks (seeds 0 .. N-1)")
    parser.add_argument("--shots", type=int, default=20, help="support images per class")
    parser.add_argument("--heldout", type=int, default=100, help="held-out images per class")
    parser.add_argument("--png", action="store_true", help="send the support images as PNG files instead of raw arrays")
    parser.add_argument("--precision", type=precision_list, default=["float32"], help="precision of the server's training loops, or a comma-separated list to run the same tasks in each (default: float32)")
    parser.add_argument("--finetune-steps", type=int, default=0, help="fine-tuning steps per request; 0 keeps the server's default")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md", help="Markdown file to append to")
    args = parser.parse_args()

    train, test = fashion_mnist("train"), fashion_mnist("t10k")
    checkpoint = load_checkpoint(args.checkpoint)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results = {}
    for precision in args.precision:
        running = create_server("127.0.0.1:0", checkpoint, device, config=ServingConfig().with_precision(precision))
        try:
            with Client(f"127.0.0.1:{running.port}", timeout=1800) as client:
                results[precision] = run_tasks(client, args, precision, train, test)
        finally:
            running.stop()

    command = (
        f"python benchmarks/demo_task.py --seeds {args.seeds} --shots {args.shots} --heldout {args.heldout}"
        f"{' --png' if args.png else ''} --precision {','.join(args.precision)}"
        f"{f' --finetune-steps {args.finetune_steps}' if args.finetune_steps else ''}"
    )
    finetune_steps = args.finetune_steps or ServingConfig().finetune.steps
    lines = [
        "",
        f"## Demo task: Fashion-MNIST 10-way {args.shots}-shot ({datetime.date.today().isoformat()})",
        "",
        f"- Command: `{command}`",
        f"- Commit: {current_commit()}; checkpoint `{checkpoint.checkpoint_id}`; device {device}",
        f"- Machine: {machine_description()}",
        f"- {args.seeds} tasks, {args.heldout} held-out images per class each; mean with a 95% confidence interval.",
        f"- Support images sent as {'PNG files (decoded at admission, in no phase)' if args.png else 'raw uint8 arrays'}.",
        f"- Inner loop and {finetune_steps} fine-tuning steps in {' and in '.join(args.precision)}; the ONNX model is float32.",
    ]
    for precision, rows in results.items():
        lines += precision_section(precision, rows, len(results) > 1)
    if len(results) > 1:
        lines += comparison(results)
    append_section(args.output, lines)
    return 0


def precision_section(precision: str, rows: list[dict], label: bool) -> list[str]:
    """Return the accuracy, phase and per-task tables of one precision's run."""
    accuracy, accuracy_ci = mean_ci([r["accuracy"] for r in rows])
    floor, floor_ci = mean_ci([r["logreg"] for r in rows])
    seconds, seconds_ci = mean_ci([r["seconds"] for r in rows])
    name = f"archadapt {precision} (ONNX, onnxruntime)" if label else "archadapt (ONNX, onnxruntime)"
    return [
        "",
        *([f"### {precision}", ""] if label else []),
        "| model | held-out accuracy | parameters | multiply-accumulates | request to ONNX model |",
        "|---|---|---|---|---|",
        f"| {name} | {100 * accuracy:.1f}% ± {100 * accuracy_ci:.1f} | "
        f"{int(np.mean([r['params'] for r in rows]))} | {int(np.mean([r['macs'] for r in rows]))} | {seconds:.1f} s ± {seconds_ci:.1f} |",
        f"| logistic regression on raw pixels | {100 * floor:.1f}% ± {100 * floor_ci:.1f} | 7850 | 7840 | - |",
        "",
        "Mean time of each phase, in seconds:",
        "",
        "| " + " | ".join(PHASES) + " |",
        "|" + "---|" * len(PHASES),
        "| " + " | ".join(f"{np.mean([r['timings'].get(p, 0.0) for r in rows]):.2f}" for p in PHASES) + " |",
        "",
        "Per task:",
        "",
        "| seed | archadapt | logistic regression | seconds |",
        "|---|---|---|---|",
        *[f"| {r['seed']} | {100 * r['accuracy']:.1f}% | {100 * r['logreg']:.1f}% | {r['seconds']:.1f} |" for r in rows],
    ]


def comparison(results: dict[str, list[dict]]) -> list[str]:
    """Return a table of each task's held-out accuracy and request time in every precision."""
    precisions = list(results)
    reference = precisions[0]
    lines = [
        "",
        "### Same tasks in each precision",
        "",
        "| seed | " + " | ".join(f"{p} accuracy | {p} seconds" for p in precisions) + " |",
        "|---|" + "---|---|" * len(precisions),
    ]
    for index, row in enumerate(results[reference]):
        cells = " | ".join(f"{100 * results[p][index]['accuracy']:.1f}% | {results[p][index]['seconds']:.1f}" for p in precisions)
        lines.append(f"| {row['seed']} | {cells} |")
    for other in precisions[1:]:
        mean, half = mean_ci([o["accuracy"] - r["accuracy"] for o, r in zip(results[other], results[reference])])
        lines += ["", f"Accuracy of {other} minus {reference}, paired over the tasks: {100 * mean:+.1f} points ± {100 * half:.1f} (95% interval)."]
    return lines


if __name__ == "__main__":
    sys.exit(main())
