#!/usr/bin/env python3
"""Time one inner-loop step of the default supernet with hard and with soft Gumbel-Softmax.

Hard (straight-through) sampling computes one primitive per edge and soft sampling all eight,
so this measurement decides the default `sampling` of the inner loop. It also reports the
throughput in support images per second and the floating-point rate the step achieves, against
the rate of a large matrix product on the same threads, a practical peak of the machine. Appends
a table to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from archadapt.config import InnerLoopConfig
from archadapt.inner_loop import Prior, run_inner_loop
from archadapt.supernet import Supernet
from markdown_report import append_section, machine_description
from meta_trainer.config import MetaTrainConfig

ROOT = Path(__file__).resolve().parents[1]


def count_forward_macs(supernet: nn.Module) -> tuple[list[int], list[torch.utils.hooks.RemovableHandle]]:
    """Hook every convolution and linear layer; the returned one-item list accumulates their
    multiply-accumulates over all forward passes."""
    total = [0]

    def conv_hook(module: nn.Conv2d, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        kernel = module.kernel_size[0] * module.kernel_size[1]
        total[0] += output.numel() * (module.in_channels // module.groups) * kernel

    def linear_hook(module: nn.Linear, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        total[0] += output.numel() * module.in_features

    handles = []
    for module in supernet.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
    return total, handles


def matmul_rate(threads: int, size: int = 2048, repeats: int = 10) -> float:
    """Return the float32 rate, in FLOP/s, of a size x size matrix product."""
    a, b = torch.rand(size, size), torch.rand(size, size)
    torch.mm(a, b)
    started = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    return 2 * size**3 * repeats / (time.perf_counter() - started)


def forward_macs_per_step(sampling: str, batch_size: int, seed: int) -> float:
    """Multiply-accumulates of the forward passes of one inner step, averaged over 3 steps."""
    config = MetaTrainConfig()
    torch.manual_seed(seed)
    supernet = Supernet(config.search_space, config.input_spec)
    prior = Prior.from_supernet(supernet, config.inner.prior_sigma)
    images = torch.rand(batch_size, 1, config.input_spec.height, config.input_spec.width)
    labels = torch.arange(batch_size) % 10
    total, handles = count_forward_macs(supernet)
    inner = InnerLoopConfig(inner_steps=3, batch_size=batch_size, sampling=sampling)
    run_inner_loop(supernet, prior, images, labels, 10, inner, generator=torch.Generator().manual_seed(seed))
    for handle in handles:
        handle.remove()
    return total[0] / 3


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

    peak = matmul_rate(args.threads)
    print(f"matrix product: {peak / 1e9:.1f} GFLOP/s", flush=True)
    rows = []
    for sampling in ("hard", "soft"):
        seconds = time_steps(sampling, args.batch_size, args.steps, seed=0)
        # Backward costs about twice the forward pass, and a multiply-accumulate is two FLOPs.
        flops = 3 * 2 * forward_macs_per_step(sampling, args.batch_size, seed=0)
        mean = float(np.mean(seconds))
        rows.append((sampling, mean, float(np.std(seconds)), args.batch_size / mean, flops / mean))
        print(f"{sampling}: {mean:.3f} s per inner step, {flops / mean / 1e9:.2f} GFLOP/s", flush=True)

    space = MetaTrainConfig().search_space
    lines = [
        "",
        f"## Inner-loop step time: hard against soft Gumbel-Softmax ({datetime.date.today().isoformat()})",
        "",
        f"- Command: `python benchmarks/sampling_modes.py --batch-size {args.batch_size} --steps {args.steps} --threads {args.threads}`",
        f"- Machine: {machine_description()}",
        f"- Supernet of the default checkpoint: {space.cells} cells, {space.channels} channels, 28x28 input; "
        f"forward and backward on {args.batch_size} images; mean and standard deviation over {args.steps - 1} steps.",
        "- FLOP rate: three times the forward pass's convolution and linear FLOPs, per second of step. Hooks "
        "count them over 3 steps, with the forward pass that initialises the head, so the rate is a slight overestimate."
        f" The practical peak is a 2048x2048 float32 matrix product: {peak / 1e9:.1f} GFLOP/s.",
        "",
        "| sampling | seconds per inner step | support images per second | GFLOP/s | share of the matrix-product rate |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {name} | {mean:.3f} ± {std:.3f} | {images:.0f} | {rate / 1e9:.2f} | {100 * rate / peak:.1f}% |"
        for name, mean, std, images, rate in rows
    ]
    lines += ["", f"Hard sampling is {rows[1][1] / rows[0][1]:.1f} times faster, so it is the default."]
    append_section(args.output, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
