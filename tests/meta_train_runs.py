"""The meta-trainer's command line as real processes, on a tiny glyph bank that needs no fonts.

`make_bank` draws a bank of random square patterns. `write_run_files` caches it where the
meta-trainer looks for a glyph bank and writes a tiny config, so a run starts in seconds.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from archadapt.checkpoint import load_checkpoint, load_extra_tensors
from meta_trainer.glyphs import GlyphBank, glyph_bank_cache_key, load_script_splits, save_glyph_bank

REPO_ROOT = Path(__file__).resolve().parent.parent
IMAGE_SIZE = 16
MAX_CLASSES_PER_SCRIPT = 200

# A tiny search space and short tasks. The reference run of 8 outer steps took about 11 s, start-up
# included, on a 2-core machine.
TINY_CONFIG = {
    "search_space": {"channels": 4, "cells": 2, "reduce_cells": [1], "nodes": 4},
    "input_spec": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
    "tasks": {
        "min_way": 2, "max_way": 3, "min_shot": 1, "max_shot": 2, "query_per_class": 2,
        "max_classes_per_script": MAX_CLASSES_PER_SCRIPT,
    },
    "inner": {"inner_steps": 2, "inner_lr": 0.02},
    "meta_gradient": "first_order",
    "meta_batch_size": 4,
    "meta_steps": 8,
    "checkpoint_interval": 2,
    "val_interval": 4,
    "val_tasks": 1,
    "seed": 0,
}


def make_bank(image_size: int) -> GlyphBank:
    """Return a bank of 3 classes in each of one meta_train, one meta_val and one meta_test script.

    Each class is a fixed random pattern of a few bright squares, with 3 noisy renderings.
    """
    splits = load_script_splits()
    scripts = [splits["meta_train"][0], splits["meta_val"][0], splits["meta_test"][0]]
    rng = np.random.default_rng(0)
    images, labels, class_names, class_scripts = [], [], [], []
    for script in scripts:
        for letter in range(3):
            label = len(class_names)
            class_names.append(f"{script} U+{0x41 + letter:04X}")
            class_scripts.append(script)
            pattern = np.zeros((image_size, image_size), dtype=np.float64)
            for _ in range(3):
                top, left = rng.integers(0, image_size - 4, size=2)
                pattern[top : top + 4, left : left + 4] = 255.0
            for _ in range(3):
                noisy = np.clip(pattern + rng.normal(0.0, 20.0, pattern.shape), 0, 255)
                images.append(noisy.astype(np.uint8))
                labels.append(label)
    return GlyphBank(
        images=np.stack(images),
        labels=np.asarray(labels, dtype=np.int64),
        class_names=class_names,
        class_scripts=class_scripts,
    )


def write_run_files(directory: Path, **overrides: object) -> Path:
    """Cache the tiny bank under `directory` and write a config that uses it; return the config path.

    The bank cache is keyed on the names and sizes of the font files, so a placeholder font file
    gives the cache a key without any real font to render.
    """
    font_dir = directory / "fonts"
    font_dir.mkdir(parents=True)
    (font_dir / "placeholder.ttf").write_bytes(b"not a font; only its name and size enter the cache key")
    cache_dir = directory / "glyphs"
    key = glyph_bank_cache_key(font_dir, IMAGE_SIZE, None, MAX_CLASSES_PER_SCRIPT)
    save_glyph_bank(make_bank(IMAGE_SIZE), cache_dir / f"glyph_bank_{key[:16]}.npz")

    config = {**TINY_CONFIG, "glyph_cache_dir": str(cache_dir), "font_dir": str(font_dir), **overrides}
    path = directory / "config.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def meta_train_arguments(config_path: Path, output_dir: Path) -> list[str]:
    return [
        "--config", str(config_path), "--output", str(output_dir),
        "--device", "cpu", "--threads", "1", "--final-tasks", "1",
    ]


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def single_process_command(config_path: Path, output_dir: Path) -> list[str]:
    return [sys.executable, "-m", "meta_trainer", *meta_train_arguments(config_path, output_dir)]


def torchrun_command(config_path: Path, output_dir: Path, processes: int) -> list[str]:
    """Return torchrun's command line for `processes` ranks that meet on a free loopback port."""
    return [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes", "1", "--nproc_per_node", str(processes),
        "--master_addr", "127.0.0.1", "--master_port", str(free_loopback_port()),
        "-m", "meta_trainer", *meta_train_arguments(config_path, output_dir),
    ]


def process_environment() -> dict[str, str]:
    """Return the environment of a meta-training process: this checkout first on the path, gloo on loopback."""
    python_path = [str(REPO_ROOT), str(REPO_ROOT / "clients" / "python"), os.environ.get("PYTHONPATH", "")]
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(part for part in python_path if part),
        "GLOO_SOCKET_IFNAME": "lo",
        "OMP_NUM_THREADS": "1",
    }


def run_to_end(command: list[str], log_path: Path, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run `command` from the repository root, with its output in `log_path`, and check that it succeeded."""
    with open(log_path, "w") as log:
        completed = subprocess.run(
            command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=process_environment(), timeout=timeout,
        )
    assert completed.returncode == 0, f"{command} exited with {completed.returncode}:\n{log_path.read_text()}"
    return completed


@dataclass(frozen=True)
class RunState:
    """What a meta-training run leaves in its output directory, for comparing two runs."""

    prior: dict[str, torch.Tensor]  # theta and log sigma
    adam: dict[str, torch.Tensor]  # Adam's moments and step counts
    state: dict  # step, tasks_seen and wall_seconds
    metrics: dict

    @classmethod
    def load(cls, output_dir: Path) -> "RunState":
        checkpoint = load_checkpoint(output_dir)
        prior = {**checkpoint.prior.parameters, **{f"log_sigma/{n}": t for n, t in checkpoint.prior.log_sigma.items()}}
        return cls(prior=prior, adam=load_extra_tensors(output_dir), state=checkpoint.state, metrics=checkpoint.metrics)
