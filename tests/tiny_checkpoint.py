"""A tiny meta-learned checkpoint for server tests: a small search space whose prior comes from a
freshly initialised supernet after two first-order outer steps on synthetic noise episodes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from archadapt.checkpoint import Checkpoint, save_checkpoint
from archadapt.config import InnerLoopConfig
from archadapt.inner_loop import Prior
from archadapt.search_space import InputSpec, SearchSpace
from archadapt.supernet import Supernet
from meta_trainer.config import MetaTrainConfig
from meta_trainer.outer_loop import make_optimizer, meta_gradient
from meta_trainer.task_distribution import Episode

SPACE = SearchSpace(channels=6, cells=2, reduce_cells=(0,))
SPEC = InputSpec()
CHECKPOINT_ID = "e2e-tiny-c6-cells2-outer2"
OUTER_STEPS = 2


def synthetic_episode(generator: torch.Generator, way: int = 3, shot: int = 2, query_per_class: int = 2) -> Episode:
    """Return an episode of uniform noise images, enough to move the prior through a real outer step."""
    return Episode(
        support_images=torch.rand(way * shot, SPEC.channels, SPEC.height, SPEC.width, generator=generator),
        support_labels=torch.arange(way).repeat_interleave(shot),
        query_images=torch.rand(way * query_per_class, SPEC.channels, SPEC.height, SPEC.width, generator=generator),
        query_labels=torch.arange(way).repeat_interleave(query_per_class),
        way=way,
        shot=shot,
    )


def write_tiny_checkpoint(directory: Path) -> Path:
    """Write the tiny checkpoint (fresh supernet, OUTER_STEPS first-order outer steps) to `directory`."""
    torch.manual_seed(0)
    config = MetaTrainConfig(
        search_space=SPACE,
        input_spec=SPEC,
        inner=InnerLoopConfig(inner_steps=2, batch_size=32),
        meta_batch_size=1,
    )
    supernet = Supernet(SPACE, SPEC)
    prior = Prior.from_supernet(supernet, config.inner.prior_sigma)
    optimizer = make_optimizer(supernet, config)
    generator = torch.Generator().manual_seed(0)
    for _ in range(OUTER_STEPS):
        optimizer.zero_grad(set_to_none=False)
        for parameter in supernet.parameters():
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
        query_loss = meta_gradient(supernet, prior, synthetic_episode(generator), config, generator, "cpu")
        assert np.isfinite(query_loss)
        optimizer.step()

    save_checkpoint(
        Checkpoint(
            space=SPACE,
            spec=SPEC,
            prior=prior,
            provenance={"checkpoint_id": CHECKPOINT_ID, "data": "synthetic noise episodes", "outer_steps": OUTER_STEPS},
        ),
        directory,
    )
    return directory
