"""Reproducibility: adapting twice with one seed gives the same model bytes."""

from __future__ import annotations

from pathlib import Path

import torch

from archadapt.adaptation import ServingConfig, TaskData, adapt_task
from archadapt.checkpoint import Checkpoint
from archadapt.config import FinetuneConfig, InnerLoopConfig
from tiny_checkpoint import SPEC

REPO_ROOT = Path(__file__).resolve().parent.parent

FAST_SERVING = ServingConfig(
    inner=InnerLoopConfig(inner_steps=3, batch_size=32, temperature_end=0.5),
    finetune=FinetuneConfig(steps=4, batch_size=16, mixup_alpha=0.4, ema_decay=0.9),
)


def noise_task(seed: int) -> TaskData:
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(15, SPEC.channels, SPEC.height, SPEC.width, generator=generator)
    return TaskData(images=images, labels=torch.arange(3).repeat_interleave(5), class_names=["a", "b", "c"])


def test_adaptation_repeats_byte_for_byte(checkpoint: Checkpoint) -> None:
    data = noise_task(seed=4)
    first = adapt_task(checkpoint, data, FAST_SERVING, seed=7)
    second = adapt_task(checkpoint, data, FAST_SERVING, seed=7)

    assert first.genotype == second.genotype
    for cell_type, probs in first.op_probs.items():
        assert torch.equal(probs, second.op_probs[cell_type]), cell_type
    assert first.onnx_bytes == second.onnx_bytes
    # The exporter's stack traces would make the bytes depend on where the code is installed.
    assert str(REPO_ROOT).encode() not in first.onnx_bytes
    assert b"stack_trace" not in first.onnx_bytes
