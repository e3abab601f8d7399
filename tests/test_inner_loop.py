"""Tests of the inner loop that adapts the task posterior from the prior."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

from archadapt.config import InnerLoopConfig
from archadapt.cost_model import Budget, CostModel, budget_penalty
from archadapt.derivation import smallest_cost
from archadapt.errors import AdaptationCancelled
from archadapt.inner_loop import Posterior, Prior, StepReport, initial_head, run_inner_loop
from archadapt.posterior import TaskHead, Tensors, embed
from archadapt.search_space import InputSpec, SearchSpace
from archadapt.supernet import ALPHA_NAMES, Supernet

NUM_CLASSES = 3
PER_CLASS = 4
PRIOR_PEAK = 4.0  # alpha logit of the favoured primitive on each edge

# The weight KL term of the loss has curvature 1 / (prior_sigma^2 * |S|) per weight, so a step
# size below prior_sigma^2 * |S| = 0.0025 * 12 = 0.03 approaches the minimum without overshooting.
CONFIG = InnerLoopConfig(inner_steps=10, inner_lr=0.02)


def make_prior(space: SearchSpace, spec: InputSpec, seed: int = 0) -> tuple[Supernet, Prior]:
    """Return a supernet and a prior whose alphas favour one primitive other than `none` per edge,
    as a meta-learned prior does, so that the most probable architecture is stable."""
    torch.manual_seed(seed)
    supernet = Supernet(space, spec)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for alpha in (supernet.alpha_normal, supernet.alpha_reduce):
            favoured = torch.randint(1, space.num_primitives, (space.num_edges,), generator=generator)
            alpha.copy_(PRIOR_PEAK * nn.functional.one_hot(favoured, space.num_primitives).float())
    return supernet, Prior.from_supernet(supernet, CONFIG.prior_sigma)


def mode_cross_entropy(supernet: Supernet, parameters: Tensors, head: TaskHead, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Return the mean cross-entropy on `images` under the most probable architecture."""
    with torch.no_grad():
        embeddings = embed(supernet, parameters, images, 1.0, "mode", None)
        return float(nn.functional.cross_entropy(head(embeddings), labels))


def adapt(supernet: Supernet, prior: Prior, images: torch.Tensor, labels: torch.Tensor, config: InnerLoopConfig = CONFIG, **kwargs) -> Posterior:
    return run_inner_loop(
        supernet, prior, images, labels, NUM_CLASSES, config, generator=torch.Generator().manual_seed(0), **kwargs
    )


def test_inner_loop_lowers_support_loss(tiny_space: SearchSpace, tiny_spec: InputSpec, corner_squares: Callable) -> None:
    images, labels = corner_squares(PER_CLASS)
    supernet, prior = make_prior(tiny_space, tiny_spec)
    head = initial_head(supernet, prior, images, labels, NUM_CLASSES, CONFIG, None, keep_graph=False)
    before = mode_cross_entropy(supernet, prior.parameters, head, images, labels)

    posterior = adapt(supernet, prior, images, labels)
    after = mode_cross_entropy(supernet, posterior.parameters, posterior.head, images, labels)

    assert math.isfinite(after)
    assert after < before
    assert len(posterior.losses) == CONFIG.inner_steps


def test_inner_loop_keeps_prior_unchanged(tiny_space: SearchSpace, tiny_spec: InputSpec, corner_squares: Callable) -> None:
    images, labels = corner_squares(PER_CLASS)
    supernet, prior = make_prior(tiny_space, tiny_spec)
    saved = {name: t.detach().clone() for name, t in prior.parameters.items()}

    posterior = adapt(supernet, prior, images, labels)

    for name, tensor in prior.parameters.items():
        assert torch.equal(tensor.detach(), saved[name]), name
    changed = [n for n in saved if not torch.equal(posterior.parameters[n].detach(), saved[n])]
    assert "stem.0.weight" in changed
    assert "alpha_normal" in changed
    assert "alpha_reduce" in changed


def test_zero_steps_return_prior(tiny_space: SearchSpace, tiny_spec: InputSpec, corner_squares: Callable) -> None:
    images, labels = corner_squares(PER_CLASS)
    supernet, prior = make_prior(tiny_space, tiny_spec)
    posterior = adapt(supernet, prior, images, labels, InnerLoopConfig(inner_steps=0))

    for name, tensor in prior.parameters.items():
        assert torch.equal(posterior.parameters[name].detach(), tensor.detach()), name
    head = initial_head(supernet, prior, images, labels, NUM_CLASSES, CONFIG, None, keep_graph=False)
    assert torch.allclose(posterior.head.weight, head.weight)
    assert torch.allclose(posterior.head.bias, head.bias)
    assert posterior.losses == []


def test_should_stop_raises_cancelled(tiny_space: SearchSpace, tiny_spec: InputSpec, corner_squares: Callable) -> None:
    images, labels = corner_squares(2)
    supernet, prior = make_prior(tiny_space, tiny_spec)
    reports: list[StepReport] = []
    with pytest.raises(AdaptationCancelled):
        adapt(supernet, prior, images, labels, should_stop=lambda: True, on_step=reports.append)
    assert reports == []


def test_should_stop_between_steps(tiny_space: SearchSpace, tiny_spec: InputSpec, corner_squares: Callable) -> None:
    images, labels = corner_squares(2)
    supernet, prior = make_prior(tiny_space, tiny_spec)
    checks = []

    def stop_after_two_steps() -> bool:
        checks.append(len(checks))
        return len(checks) > 2

    reports: list[StepReport] = []
    with pytest.raises(AdaptationCancelled) as error:
        adapt(supernet, prior, images, labels, should_stop=stop_after_two_steps, on_step=reports.append)
    assert [report.step for report in reports] == [1, 2]
    assert "step 2" in str(error.value)


def test_on_step_reports_every_step(tiny_space: SearchSpace, tiny_spec: InputSpec, corner_squares: Callable) -> None:
    images, labels = corner_squares(2)
    supernet, prior = make_prior(tiny_space, tiny_spec)
    config = InnerLoopConfig(inner_steps=4, inner_lr=0.02, temperature=2.0, temperature_end=0.5)
    reports: list[StepReport] = []
    posterior = adapt(supernet, prior, images, labels, config, on_step=reports.append)

    assert [report.step for report in reports] == [1, 2, 3, 4]
    assert all(report.total_steps == 4 for report in reports)
    assert [report.loss for report in reports] == posterior.losses
    assert all(math.isfinite(report.loss) and math.isfinite(report.nll) for report in reports)
    assert reports[0].temperature == pytest.approx(2.0)
    assert reports[-1].temperature == pytest.approx(0.5)
    assert [r.temperature for r in reports] == pytest.approx([config.temperature_at(s) for s in range(4)])


def test_create_graph_reaches_prior(tiny_space: SearchSpace, tiny_spec: InputSpec, corner_squares: Callable) -> None:
    images, labels = corner_squares(2)
    supernet, prior = make_prior(tiny_space, tiny_spec)
    config = InnerLoopConfig(inner_steps=2, inner_lr=0.02)
    posterior = adapt(supernet, prior, images, labels, config, create_graph=True)

    embeddings = embed(supernet, posterior.parameters, images, 1.0, "soft", torch.Generator().manual_seed(1))
    nn.functional.cross_entropy(posterior.head(embeddings), labels).backward()

    for name in ("stem.0.weight", "alpha_normal", "alpha_reduce"):
        grad = prior.parameters[name].grad
        assert grad is not None, name
        assert bool(torch.isfinite(grad).all()), name
        assert grad.abs().sum().item() > 0.0, name


def test_without_create_graph_detaches(tiny_space: SearchSpace, tiny_spec: InputSpec, corner_squares: Callable) -> None:
    images, labels = corner_squares(2)
    supernet, prior = make_prior(tiny_space, tiny_spec)
    config = InnerLoopConfig(inner_steps=2, inner_lr=0.02)
    posterior = adapt(supernet, prior, images, labels, config, create_graph=False)

    embeddings = embed(supernet, posterior.parameters, images, 1.0, "soft", torch.Generator().manual_seed(1))
    nn.functional.cross_entropy(posterior.head(embeddings), labels).backward()

    assert all(tensor.grad is None for tensor in prior.parameters.values())
    assert posterior.parameters["alpha_normal"].grad is not None


@pytest.mark.parametrize("weight_sampling", ["point", "gaussian"])
def test_create_graph_keeps_trajectory(tiny_space: SearchSpace, tiny_spec: InputSpec, corner_squares: Callable, weight_sampling: str) -> None:
    images, labels = corner_squares(2)
    supernet, prior = make_prior(tiny_space, tiny_spec)
    config = InnerLoopConfig(inner_steps=3, inner_lr=0.02, weight_sampling=weight_sampling)
    detached = adapt(supernet, prior, images, labels, config, create_graph=False)
    graph = adapt(supernet, prior, images, labels, config, create_graph=True)

    assert graph.losses == pytest.approx(detached.losses, rel=1e-5)
    for name in prior.parameters:
        assert torch.allclose(graph.parameters[name].detach(), detached.parameters[name], atol=1e-6), name
    assert torch.allclose(graph.head.weight.detach(), detached.head.weight, atol=1e-6)
    assert torch.allclose(graph.head.bias.detach(), detached.head.bias, atol=1e-6)


def test_same_seed_same_posterior(tiny_space: SearchSpace, tiny_spec: InputSpec, corner_squares: Callable) -> None:
    images, labels = corner_squares(2)
    supernet, prior = make_prior(tiny_space, tiny_spec)
    config = InnerLoopConfig(inner_steps=3, inner_lr=0.02, weight_sampling="gaussian")
    first = adapt(supernet, prior, images, labels, config)
    second = adapt(supernet, prior, images, labels, config)
    assert first.losses == second.losses
    for name in ALPHA_NAMES.values():
        assert torch.equal(first.parameters[name], second.parameters[name])
    assert torch.equal(first.head.weight, second.head.weight)


def test_budget_penalty_lowers_expected_cost(
    tiny_space: SearchSpace, tiny_spec: InputSpec, corner_squares: Callable
) -> None:
    images, labels = corner_squares(PER_CLASS)
    supernet, prior = make_prior(tiny_space, tiny_spec)
    model = CostModel.build(tiny_space, tiny_spec, NUM_CLASSES)
    budget = Budget(max_parameters=smallest_cost(model, "parameters"))

    def expected_parameters(posterior: Posterior) -> float:
        return float(model.expected_cost({t: a.detach() for t, a in posterior.alphas.items()}, "parameters"))

    free = adapt(supernet, prior, images, labels)
    budgeted = adapt(supernet, prior, images, labels, alpha_penalty=functools.partial(budget_penalty, model, budget, weight=10.0))

    assert expected_parameters(budgeted) < 0.9 * expected_parameters(free)
