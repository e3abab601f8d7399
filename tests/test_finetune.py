"""Fine-tuning of a derived network: the loss falls, and mixup, the one-cycle schedule and the
weight average behave as configured."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
import torch
from torch import nn

from archadapt import adaptation
from archadapt.adaptation import ServingConfig, TaskData
from archadapt.checkpoint import Checkpoint
from archadapt.config import FinetuneConfig, InnerLoopConfig
from archadapt.derivation import derive_genotype
from archadapt.errors import ConfigError
from archadapt.finetune import finetune, mixup_loss
from archadapt.network import DerivedNetwork
from archadapt.posterior import op_probs
from archadapt.search_space import InputSpec, SearchSpace
from archadapt.supernet import ALPHA_NAMES, Supernet
from tiny_checkpoint import SPEC

NUM_CLASSES = 3
BASE = FinetuneConfig(steps=30, lr=0.01, batch_size=12)


def make_network(space: SearchSpace, spec: InputSpec, seed: int = 0) -> DerivedNetwork:
    torch.manual_seed(seed)
    supernet = Supernet(space, spec)
    probs = {cell_type: op_probs(getattr(supernet, name)).detach() for cell_type, name in ALPHA_NAMES.items()}
    return DerivedNetwork(space, spec, derive_genotype(space, probs), NUM_CLASSES)


def run(space: SearchSpace, spec: InputSpec, data: tuple[torch.Tensor, torch.Tensor], config: FinetuneConfig) -> tuple[DerivedNetwork, list[float]]:
    network = make_network(space, spec)
    losses = finetune(network, *data, config, torch.Generator().manual_seed(0))
    return network, losses


def cross_entropy(network: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> float:
    network.eval()
    with torch.no_grad():
        return float(nn.functional.cross_entropy(network(data[0]), data[1]))


@pytest.mark.parametrize(
    "changes",
    [{}, {"mixup_alpha": 0.4}, {"ema_decay": 0.9}, {"lr_schedule": "one_cycle"}],
    ids=["plain", "mixup", "ema", "one_cycle"],
)
def test_finetune_lowers_support_loss(tiny_space: SearchSpace, tiny_spec: InputSpec, corner_squares: Callable, changes: dict) -> None:
    data = corner_squares(6)
    before = cross_entropy(make_network(tiny_space, tiny_spec), data)
    network, losses = run(tiny_space, tiny_spec, data, dataclasses.replace(BASE, **changes))
    assert len(losses) == BASE.steps
    assert cross_entropy(network, data) < before


def test_same_seed_gives_same_weights(tiny_space: SearchSpace, tiny_spec: InputSpec, corner_squares: Callable) -> None:
    config = dataclasses.replace(BASE, mixup_alpha=0.4, ema_decay=0.9, lr_schedule="one_cycle", steps=5)
    first, _ = run(tiny_space, tiny_spec, corner_squares(4), config)
    second, _ = run(tiny_space, tiny_spec, corner_squares(4), config)
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)


def test_ema_returns_averaged_weights(tiny_space: SearchSpace, tiny_spec: InputSpec, corner_squares: Callable) -> None:
    """With a decay close to 1 the average stays near the starting weights; without it they move."""
    data = corner_squares(4)
    start = [p.detach().clone() for p in make_network(tiny_space, tiny_spec).parameters()]
    plain, _ = run(tiny_space, tiny_spec, data, BASE)
    averaged, _ = run(tiny_space, tiny_spec, data, dataclasses.replace(BASE, ema_decay=0.999))

    def distance(network: nn.Module) -> float:
        return sum(float((p.detach() - s).norm()) for p, s in zip(network.parameters(), start))

    assert distance(averaged) < 0.2 * distance(plain)


def test_mixup_loss_blends_both_labels(tiny_space: SearchSpace, tiny_spec: InputSpec, corner_squares: Callable) -> None:
    images, labels = corner_squares(2)
    network = make_network(tiny_space, tiny_spec).eval()
    with torch.no_grad():
        full = mixup_loss(network, images, labels, 1.0, torch.Generator().manual_seed(0))
        assert float(full) == pytest.approx(float(nn.functional.cross_entropy(network(images), labels)), rel=1e-5)

        partner = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(0))
        none_of_self = mixup_loss(network, images, labels, 0.0, torch.Generator().manual_seed(0))
        expected = nn.functional.cross_entropy(network(images[partner]), labels[partner])
        assert float(none_of_self) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize(
    "changes, name",
    [({"mixup_alpha": -1.0}, "mixup_alpha"), ({"ema_decay": 1.0}, "ema_decay"), ({"lr_schedule": "cosine"}, "lr_schedule")],
)
def test_config_rejects_bad_values(changes: dict, name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        FinetuneConfig(**changes)


def test_head_scale_out_of_range() -> None:
    with pytest.raises(ConfigError, match="head_scale is 2.0; allowed: 0.0 to 1.0"):
        ServingConfig(head_scale=2.0)


@pytest.mark.parametrize("head_scale", [1.0, 0.25])
def test_adaptation_scales_inherited_head(checkpoint: Checkpoint, monkeypatch: pytest.MonkeyPatch, head_scale: float) -> None:
    captured: dict[str, torch.Tensor] = {}
    run_inner_loop = adaptation.run_inner_loop

    def recording_inner_loop(*args, **kwargs):
        posterior = run_inner_loop(*args, **kwargs)
        captured["head"] = posterior.head.weight.detach().clone()
        return posterior

    def recording_finetune(network, *args, **kwargs):
        captured["start"] = network.classifier.weight.detach().clone()
        return finetune(network, *args, **kwargs)

    monkeypatch.setattr(adaptation, "run_inner_loop", recording_inner_loop)
    monkeypatch.setattr(adaptation, "finetune", recording_finetune)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(12, SPEC.channels, SPEC.height, SPEC.width, generator=generator)
    data = TaskData(images=images, labels=torch.arange(3).repeat_interleave(4), class_names=["a", "b", "c"])
    config = ServingConfig(
        inner=InnerLoopConfig(inner_steps=2, batch_size=16),
        finetune=FinetuneConfig(steps=1, batch_size=16),
        validation_fraction=0.0,
        head_scale=head_scale,
    )
    adaptation.adapt_task(checkpoint, data, config)
    torch.testing.assert_close(captured["start"], head_scale * captured["head"])
