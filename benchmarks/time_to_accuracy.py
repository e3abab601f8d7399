#!/usr/bin/env python3
"""Time for BASE to reach the accuracy of DARTS from scratch given ten times BASE's budget.

The tasks are standard requests: Fashion-MNIST 10-way 20-shot, with 50 query images per class.
DARTS runs from scratch on each task with ten times the serving budget. It searches for ten
times the inner steps, then trains the derived network from its random initialization for ten
times the fine-tuning steps. Its mean query accuracy is the target. BASE runs from the prior
with the serving inner loop and a range of fine-tuning budgets on the same tasks, and the first
budget whose mean accuracy reaches the target gives BASE's time. The speed-up is the ratio of
the two times. Both run in one process, one after the other, and each run's CPU time is
reported beside its wall time, because other work on a shared machine inflates only the
latter. Appends the table to docs/benchmarks.md.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import datetime
import json
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from baselines import TaskSource, adapt_from_prior, darts_from_scratch, mean_ci
from markdown_report import append_section, current_commit, machine_description

from archadapt.adaptation import ServingConfig
from archadapt.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SETTING = "fashion-10way-20shot"


def result_key(method: str, steps: int, task: int, head_scale: float) -> tuple:
    """Return the key of one finished task. BASE fine-tunes the scaled task head, DARTS does not."""
    return (method, steps, task, head_scale if method == "base" else None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints" / "default", help="checkpoint directory")
    parser.add_argument("--tasks", type=int, default=3, help="number of tasks; both methods run the same ones")
    parser.add_argument("--multiple", type=int, default=10, help="DARTS budget as a multiple of the serving budget")
    parser.add_argument("--base-steps", type=int, nargs="+", default=[50, 100, 200, 300], help="BASE fine-tuning budgets to try, ascending")
    parser.add_argument("--results", type=Path, default=ROOT / ".cache" / "time_to_accuracy" / "results.jsonl", help="JSON Lines file of finished runs; a rerun resumes from it")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md", help="Markdown file to append to")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    checkpoint = load_checkpoint(args.checkpoint)
    serving = replace(ServingConfig(), validation_fraction=0.0)
    source = TaskSource(checkpoint)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    done = {}
    if args.results.exists():
        for line in args.results.read_text().splitlines():
            row = json.loads(line)
            done[result_key(row["method"], row["steps"], row["task"], row.get("head_scale", 1.0))] = row

    darts_search = args.multiple * serving.inner.inner_steps
    darts_train = args.multiple * serving.finetune.steps
    plan = [("darts", darts_train)] + [("base", steps) for steps in args.base_steps]
    with open(args.results, "a") as handle:
        for index in range(args.tasks):
            task = source.task(SETTING, index)
            for method, steps in plan:
                key = result_key(method, steps, index, serving.head_scale)
                if key in done:
                    continue
                finetune_config = replace(serving.finetune, steps=steps)
                cpu_started = time.process_time()
                if method == "darts":
                    outcome = darts_from_scratch(checkpoint.space, checkpoint.spec, task, darts_search, finetune_config, index)
                else:
                    outcome = adapt_from_prior(checkpoint, task, replace(serving, finetune=finetune_config), index)
                row = {
                    "method": method, "steps": steps, "task": index, "head_scale": serving.head_scale,
                    "cpu_seconds": time.process_time() - cpu_started, **outcome.__dict__,
                }
                done[key] = row
                handle.write(json.dumps(row) + "\n")
                handle.flush()
                print(
                    f"task {index} {method} {steps} steps: {100 * outcome.accuracy:.1f}% in "
                    f"{outcome.adapt_seconds + outcome.finetune_seconds:.1f} s ({row['cpu_seconds']:.1f} s of CPU time)",
                    flush=True,
                )

    def summary(method: str, steps: int) -> tuple[float, float, float, float]:
        """Return mean accuracy, its 95% half-width, mean wall seconds and mean CPU seconds."""
        rows = [done[result_key(method, steps, i, serving.head_scale)] for i in range(args.tasks)]
        accuracy, ci = mean_ci([r["accuracy"] for r in rows])
        wall = float(np.mean([r["adapt_seconds"] + r["finetune_seconds"] for r in rows]))
        return accuracy, ci, wall, float(np.mean([r["cpu_seconds"] for r in rows]))

    target, target_ci, darts_seconds, darts_cpu = summary("darts", darts_train)
    lines = [
        "",
        f"## Time to accuracy: BASE against DARTS from scratch ({datetime.date.today().isoformat()})",
        "",
        f"- Command: `python benchmarks/time_to_accuracy.py {' '.join(map(shlex.quote, sys.argv[1:]))}`",
        f"- Commit: {current_commit()}; checkpoint `{checkpoint.checkpoint_id}`",
        f"- Machine: {machine_description()}",
        f"- {args.tasks} Fashion-MNIST 10-way 20-shot tasks, 50 query images per class, the same for every row; "
        "mean query accuracy with a 95% confidence interval.",
        f"- DARTS from scratch: {darts_search} first-order search steps, then {darts_train} training steps "
        f"({args.multiple} times the serving budget of {serving.inner.inner_steps} inner and {serving.finetune.steps} fine-tuning steps).",
        "- Times per task: wall time, and the process's CPU time, which other work on a shared "
        "machine does not inflate (one torch thread, so CPU time is close to the wall time on an idle core).",
        "",
        "| method | fine-tuning steps | query accuracy | wall time | CPU time |",
        "|---|---|---|---|---|",
        f"| DARTS from scratch | {darts_train} | {100 * target:.1f}% ± {100 * target_ci:.1f} | "
        f"{darts_seconds:.1f} s | {darts_cpu:.1f} s |",
    ]
    reached = None
    for steps in args.base_steps:
        accuracy, ci, seconds, cpu = summary("base", steps)
        lines.append(f"| BASE | {steps} | {100 * accuracy:.1f}% ± {100 * ci:.1f} | {seconds:.1f} s | {cpu:.1f} s |")
        if reached is None and accuracy >= target:
            reached = (steps, seconds, cpu)
    lines.append("")
    if reached is None:
        best = max(summary("base", s)[0] for s in args.base_steps)
        lines.append(
            f"BASE did not reach DARTS's {100 * target:.1f}% within {args.base_steps[-1]} fine-tuning steps; "
            f"its best mean was {100 * best:.1f}%, {100 * (target - best):.1f} points short."
        )
    else:
        steps, seconds, cpu = reached
        lines.append(
            f"BASE reached DARTS's {100 * target:.1f}% with {steps} fine-tuning steps: "
            f"**{darts_cpu / cpu:.1f} times** less CPU time ({cpu:.1f} s against {darts_cpu:.1f} s) and "
            f"{darts_seconds / seconds:.1f} times less wall time ({seconds:.1f} s against {darts_seconds:.1f} s)."
        )
    append_section(args.output, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
