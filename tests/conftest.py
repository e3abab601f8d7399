"""Fixtures shared by the tests of the core package and the meta-trainer: a tiny search space
and a small synthetic few-shot task that needs no font rendering."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from archadapt.checkpoint import Checkpoint, load_checkpoint
from archadapt.search_space import InputSpec, SearchSpace
from meta_train_runs import run_to_end, single_process_command, write_run_files
from tiny_checkpoint import CHECKPOINT_ID, SPACE, SPEC, write_tiny_checkpoint

# The models here are tiny, so intra-op threads only add overhead. On a two-core machine busy
# with another job, a tiny supernet's forward pass took about 30 times longer with two threads.
torch.set_num_threads(1)

IMAGE_SIZE = 16


def make_corner_squares(per_class: int, seed: int = 0, noise: float = 0.6, ink: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    """Return images (3 * per_class, 1, 16, 16) in [0, 1] and labels (3 * per_class,) int64.

    Class c has a bright square in corner c (top left, top right, bottom left) on uniform noise
    in [0, noise]. Images are ordered by label, as in an Episode.
    """
    generator = torch.Generator().manual_seed(seed)
    half = IMAGE_SIZE // 2
    corners = [(0, 0), (0, half), (half, 0)]
    images = []
    labels = []
    for label, (top, left) in enumerate(corners):
        for _ in range(per_class):
            image = noise * torch.rand(1, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
            image[:, top + 1 : top + half - 1, left + 1 : left + half - 1] += ink
            images.append(image.clamp(0.0, 1.0))
            labels.append(label)
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64)


@pytest.fixture
def tiny_space() -> SearchSpace:
    """Two cells (a normal cell, then a reduction cell) of four nodes and four channels."""
    return SearchSpace(channels=4, cells=2, reduce_cells=(1,), nodes=4)


@pytest.fixture
def tiny_spec() -> InputSpec:
    return InputSpec(height=IMAGE_SIZE, width=IMAGE_SIZE)


@pytest.fixture
def corner_squares() -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """The make_corner_squares function, for tests that cannot import this conftest module."""
    return make_corner_squares


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of the tiny checkpoint that the server tests serve (see tiny_checkpoint.py)."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("checkpoints") / "tiny")


@pytest.fixture(scope="session")
def checkpoint(checkpoint_dir: Path) -> Checkpoint:
    loaded = load_checkpoint(checkpoint_dir)
    assert loaded.checkpoint_id == CHECKPOINT_ID
    assert loaded.space == SPACE
    assert loaded.spec == SPEC
    return loaded


@pytest.fixture(scope="session")
def meta_train_reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Return (config file, output directory) of a tiny single-process meta-training run to its end."""
    directory = tmp_path_factory.mktemp("meta_train_reference")
    config_path = write_run_files(directory)
    output_dir = directory / "run"
    run_to_end(single_process_command(config_path, output_dir), directory / "run.log")
    return config_path, output_dir
