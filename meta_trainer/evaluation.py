"""Few-shot accuracy of a prior on held-out episodes, with a 95% confidence interval."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from archadapt.config import InnerLoopConfig
from archadapt.inner_loop import Prior, run_inner_loop
from archadapt.posterior import embed
from archadapt.supernet import Supernet
from meta_trainer.task_distribution import EpisodeSampler


@dataclass(frozen=True)
class AccuracyEstimate:
    mean: float
    ci95: float  # half-width of the normal-approximation 95% interval
    tasks: int

    def to_dict(self) -> dict:
        return {"mean": self.mean, "ci95": self.ci95, "tasks": self.tasks}


def summarize(accuracies: list[float]) -> AccuracyEstimate:
    values = np.asarray(accuracies, dtype=np.float64)
    half_width = 1.96 * values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return AccuracyEstimate(mean=float(values.mean()), ci95=float(half_width), tasks=len(values))


def episode_accuracy(
    supernet: Supernet,
    prior: Prior,
    sampler: EpisodeSampler,
    inner: InnerLoopConfig,
    tasks: int,
    seed: int,
    way: int | None = None,
    shot: int | None = None,
    device: torch.device | str = "cpu",
) -> AccuracyEstimate:
    """Adapt the posterior on each episode's support set and score its query set.

    Queries are classified by the adapted supernet under the most probable architecture of
    q(alpha). Episode i is drawn from numpy seed (seed, i), so estimates are repeatable.
    """
    accuracies = []
    for index in range(tasks):
        rng = np.random.default_rng([seed, index])
        generator = torch.Generator().manual_seed(seed * 100_003 + index)
        episode = sampler.sample(rng, way=way, shot=shot)
        posterior = run_inner_loop(
            supernet, prior,
            episode.support_images.to(device), episode.support_labels.to(device),
            episode.way, inner, generator=generator,
        )
        with torch.no_grad():
            embeddings = embed(supernet, posterior.parameters, episode.query_images.to(device), 1.0, "mode", generator)
            predictions = posterior.head(embeddings).argmax(dim=1).cpu()
        accuracies.append(float((predictions == episode.query_labels).float().mean()))
    return summarize(accuracies)
