#!/usr/bin/env python3
"""Time one inner-loop step of the default supernet with hard and with soft Gumbel-Softmax.

Hard (straight-through) sampling computes one primitive per edge and soft sampling all eight,
so this measurement decides the default `sampling` of the inner loop. Appends a table to
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

from archadapt.config import InnerLoopConfig
from archadapt.inner_loop import Prior, run_inner_loop
from archadapt.supernet import Supernet
from markdown_report import append_section, machine_description
from meta_trainer.config import MetaTrainConfig

ROOT = Path(__file__).resolve().parents[1]


def time_steps(sampling: str, batch_size: int, steps: int, seed: int) -> list[float]:
    config = MetaTrainConfig()
    torch.manual_seed(seed)
    supernet = Supernet(config.search_space, config.input_spec)
    prior = Prior.from_supernet(supernet, config.inner.prior_sigma)
    images = torch.rand(batch_size, 1, config.input_spec.height, config.input_spec.width)
    labels = torch.arange(batch_size) % 10
    inner = InnerLoopConfig(inner_steps=steps, batch_size=batch_size, sampling=sampling)
    stamps = [time.perf_counter()]
    run_inner_loop(
        supernet, prior, images, labels, 10, inner,
        generator=torch.Generator().manual_seed(seed), on_step=lambda report: stamps.append(time.perf_counter()),
    )
    return list(np.diff(stamps)[1:])  # the first step includes one-off allocation


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64, help="support images per inner step")
    parser.add_argument("--steps", type=int, default=6, help="inner steps timed per mode (the first is dropped)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md", help="Markdown file to append to")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    for sampling in ("hard", "soft"):
        seconds = time_steps(sampling, args.batch_size, args.steps, seed=0)
        rows.append((sampling, float(np.mean(seconds)), float(np.std(seconds))))
        print(f"{sampling}: {np.mean(seconds):.3f} s per inner step", flush=True)

    space = MetaTrainConfig().search_space
    lines = [
        "",
        f"## Inner-loop step time: hard against soft Gumbel-Softmax ({datetime.date.today().isoformat()})",
        "",
        f"- Command: `python benchmarks/sampling_modes.py --batch-size {args.batch_size} --steps {args.steps} --threads {args.threads}`",
        f"- Machine: {machine_description()}",
        f"- Supernet of the default checkpoint: {space.cells} cells, {space.channels} channels, 28x28 input; "
        f"forward and backward on {args.batch_size} images; mean and standard deviation over {args.steps - 1} steps.",
        "",
        "| sampling | seconds per inner step |",
        "|---|---|",
    ]
    lines += [f"| {name} | {mean:.3f} ± {std:.3f} |" for name, mean, std in rows]
    lines += ["", f"Hard sampling is {rows[1][1] / rows[0][1]:.1f} times faster, so it is the default."]
    append_section(args.output, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
