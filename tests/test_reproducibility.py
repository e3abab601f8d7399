"""Reproducibility: adapting twice with one seed gives the same model bytes, and a meta-training
run killed with SIGKILL and started again ends in the state of a run that was never stopped."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import torch

from archadapt.adaptation import ServingConfig, TaskData, adapt_task
from archadapt.checkpoint import Checkpoint
from archadapt.config import FinetuneConfig, InnerLoopConfig
from meta_train_runs import REPO_ROOT, TINY_CONFIG, RunState, process_environment, run_to_end, single_process_command
from tiny_checkpoint import SPEC

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


def checkpoint_step(output_dir: Path) -> int | None:
    """Return the step of the checkpoint in output_dir, or None while there is none."""
    try:
        return json.loads((output_dir / "checkpoint.json").read_text())["state"]["step"]
    except (OSError, ValueError):
        return None  # not written yet, or replaced while it was read


def test_killed_run_resumes_to_same_state(meta_train_reference: tuple[Path, Path], tmp_path: Path) -> None:
    config_path, reference_dir = meta_train_reference
    output_dir = tmp_path / "run"
    command = single_process_command(config_path, output_dir)

    with open(tmp_path / "killed.log", "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=process_environment())
        try:
            deadline = time.monotonic() + 120
            while checkpoint_step(output_dir) is None and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            process.send_signal(signal.SIGKILL)
        finally:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()
    killed_at = checkpoint_step(output_dir)
    assert killed_at is not None
    assert killed_at < TINY_CONFIG["meta_steps"], "the run finished before it could be killed"

    run_to_end(command, tmp_path / "resumed.log")
    assert f"resumed from {output_dir} at step {killed_at}" in (tmp_path / "resumed.log").read_text()

    reference = RunState.load(reference_dir)
    resumed = RunState.load(output_dir)
    assert resumed.prior.keys() == reference.prior.keys()
    for name, tensor in reference.prior.items():
        assert torch.equal(resumed.prior[name], tensor), name
    assert resumed.adam.keys() == reference.adam.keys()
    for name, tensor in reference.adam.items():
        assert torch.equal(resumed.adam[name], tensor), name
    assert resumed.state["step"] == reference.state["step"]
    assert resumed.state["tasks_seen"] == reference.state["tasks_seen"]
    assert resumed.metrics["meta_val"] == reference.metrics["meta_val"]
