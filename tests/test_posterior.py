"""Tests of the KL terms of the posterior and of the Proto-MAML head."""

from __future__ import annotations

import math

import pytest
import torch

from archadapt.posterior import architecture_kl, categorical_kl, gaussian_kl, op_probs, prototype_head
from archadapt.search_space import SearchSpace


def test_categorical_kl_hand_value() -> None:
    phi = torch.tensor([[1.0, 0.0, 0.0], [0.0, math.log(2.0), 0.0]])
    theta = torch.tensor([[0.0, 0.0, 0.0], [math.log(3.0), 0.0, 0.0]])

    # Edge 0: q = softmax(1, 0, 0) = (e, 1, 1) / (e + 2) and p is uniform, 1/3 each.
    z = math.e + 2.0
    q0 = [math.e / z, 1.0 / z, 1.0 / z]
    kl0 = sum(q * math.log(q / (1.0 / 3.0)) for q in q0)
    # Edge 1: q = (1, 2, 1) / 4 and p = (3, 1, 1) / 5.
    kl1 = 0.25 * math.log(0.25 / 0.6) + 0.5 * math.log(0.5 / 0.2) + 0.25 * math.log(0.25 / 0.2)

    assert categorical_kl(phi, theta).item() == pytest.approx(kl0 + kl1, rel=1e-6)
    assert categorical_kl(phi[:1], theta[:1]).item() == pytest.approx(kl0, rel=1e-6)
    assert categorical_kl(phi[1:], theta[1:]).item() == pytest.approx(kl1, rel=1e-6)


def test_categorical_kl_direction_is_q_to_p() -> None:
    phi = torch.tensor([[0.0, math.log(2.0), 0.0]])
    theta = torch.tensor([[math.log(3.0), 0.0, 0.0]])
    # KL(p || q) with p = (3, 1, 1) / 5 and q = (1, 2, 1) / 4 differs from KL(q || p).
    reverse = 0.6 * math.log(0.6 / 0.25) + 0.2 * math.log(0.2 / 0.5) + 0.2 * math.log(0.2 / 0.25)
    assert categorical_kl(theta, phi).item() == pytest.approx(reverse, rel=1e-6)
    assert categorical_kl(phi, theta).item() != pytest.approx(reverse, rel=1e-3)


def test_categorical_kl_zero_when_equal() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(14, 8, generator=generator)
    assert abs(categorical_kl(logits, logits.clone()).item()) < 1e-6
    # Logits define the same distribution up to a constant per edge.
    shifted = logits + torch.randn(14, 1, generator=generator)
    assert abs(categorical_kl(shifted, logits).item()) < 1e-5


def test_categorical_kl_is_non_negative() -> None:
    generator = torch.Generator().manual_seed(1)
    for _ in range(20):
        phi = 3.0 * torch.randn(14, 8, generator=generator)
        theta = 3.0 * torch.randn(14, 8, generator=generator)
        assert categorical_kl(phi, theta).item() >= 0.0


def test_architecture_kl_sums_both_cells() -> None:
    generator = torch.Generator().manual_seed(2)
    phi = {name: torch.randn(14, 8, generator=generator) for name in ("alpha_normal", "alpha_reduce")}
    theta = {name: torch.randn(14, 8, generator=generator) for name in ("alpha_normal", "alpha_reduce")}
    expected = categorical_kl(phi["alpha_normal"], theta["alpha_normal"]) + categorical_kl(
        phi["alpha_reduce"], theta["alpha_reduce"]
    )
    assert architecture_kl(phi, theta).item() == pytest.approx(expected.item(), rel=1e-6)


def test_gaussian_kl_hand_value() -> None:
    phi = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([[0.5]])}
    theta = {"a": torch.tensor([0.0, 0.0]), "b": torch.tensor([[1.5]]), "alpha_normal": torch.zeros(3)}
    log_sigma = {"a": torch.tensor(math.log(0.5)), "b": torch.tensor(math.log(2.0))}
    # a: (1^2 + 2^2) / (2 * 0.5^2) = 10; b: 1^2 / (2 * 2^2) = 0.125.
    assert gaussian_kl(phi, theta, log_sigma).item() == pytest.approx(10.125, rel=1e-6)


def test_gaussian_kl_matches_torch_normal() -> None:
    generator = torch.Generator().manual_seed(3)
    phi = {"a": torch.randn(4, 3, generator=generator), "b": torch.randn(5, generator=generator)}
    theta = {name: torch.randn(t.shape, generator=generator) for name, t in phi.items()}
    log_sigma = {"a": torch.tensor(math.log(0.05)), "b": torch.tensor(math.log(0.3))}
    expected = 0.0
    for name in phi:
        sigma = log_sigma[name].exp()
        q = torch.distributions.Normal(phi[name], sigma)
        p = torch.distributions.Normal(theta[name], sigma)
        expected += torch.distributions.kl_divergence(q, p).sum().item()
    assert gaussian_kl(phi, theta, log_sigma).item() == pytest.approx(expected, rel=1e-5)


def test_gaussian_kl_zero_when_equal() -> None:
    phi = {"a": torch.randn(4, 3, generator=torch.Generator().manual_seed(4))}
    log_sigma = {"a": torch.tensor(math.log(0.05))}
    assert gaussian_kl(phi, {"a": phi["a"].clone()}, log_sigma).item() == 0.0


def test_op_probs_rows_sum_to_one() -> None:
    alpha = torch.randn(14, 8, generator=torch.Generator().manual_seed(5))
    probs = op_probs(alpha)
    assert torch.allclose(probs.sum(dim=1), torch.ones(14))
    assert bool((probs > 0).all())


def class_embeddings(num_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return embeddings (N, 6) and shuffled labels with 1 to 4 examples per class."""
    generator = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, 5, (num_classes,), generator=generator)
    labels = torch.arange(num_classes).repeat_interleave(counts)
    labels = labels[torch.randperm(len(labels), generator=generator)]
    embeddings = torch.randn(len(labels), 6, generator=generator)
    return embeddings, labels


@pytest.mark.parametrize("num_classes", [2, 3, 7])
def test_prototype_head_rows_and_bias(num_classes: int) -> None:
    embeddings, labels = class_embeddings(num_classes, seed=num_classes)
    head = prototype_head(embeddings, labels, num_classes)
    assert head.weight.shape == (num_classes, 6)
    assert head.bias.shape == (num_classes,)
    for c in range(num_classes):
        mu = embeddings[labels == c].mean(dim=0)
        assert torch.allclose(head.weight[c], 2.0 * mu, atol=1e-6)
        assert head.bias[c].item() == pytest.approx(-(mu @ mu).item(), abs=1e-5)


@pytest.mark.parametrize("num_classes", [2, 3, 7])
def test_prototype_head_classifies_prototypes(num_classes: int) -> None:
    embeddings, labels = class_embeddings(num_classes, seed=10 + num_classes)
    head = prototype_head(embeddings, labels, num_classes)
    prototypes = torch.stack([embeddings[labels == c].mean(dim=0) for c in range(num_classes)])
    predictions = head(prototypes).argmax(dim=1)
    assert predictions.tolist() == list(range(num_classes))


@pytest.mark.parametrize("num_classes", [2, 3, 7])
def test_prototype_logits_are_negative_distances(num_classes: int) -> None:
    embeddings, labels = class_embeddings(num_classes, seed=20 + num_classes)
    head = prototype_head(embeddings, labels, num_classes)
    prototypes = torch.stack([embeddings[labels == c].mean(dim=0) for c in range(num_classes)])
    logits = head(embeddings)
    distances = torch.cdist(embeddings, prototypes) ** 2
    # logits_c = -||e - mu_c||^2 + ||e||^2, so the difference is the same for every class.
    offset = logits + distances
    assert torch.allclose(offset, (embeddings**2).sum(dim=1, keepdim=True).expand_as(offset), atol=1e-4)


def test_op_probs_without_none_renormalises() -> None:
    space = SearchSpace(channels=4, cells=2, reduce_cells=(1,), nodes=2, sample_none=False)
    alpha = torch.randn(space.num_edges, space.num_primitives, generator=torch.Generator().manual_seed(3))
    none_index = space.primitives.index("none")
    alpha[:, none_index] = 5.0  # `none` would have the highest probability if it were not excluded
    probs = op_probs(alpha, space)
    assert torch.all(probs[:, none_index] == 0.0)
    assert torch.allclose(probs.sum(dim=-1), torch.ones(space.num_edges))
    others = [k for k in range(space.num_primitives) if k != none_index]
    assert torch.allclose(probs[:, others], torch.softmax(alpha[:, others], dim=-1))
    # A space that samples `none` keeps the plain softmax.
    sampled = SearchSpace(channels=4, cells=2, reduce_cells=(1,), nodes=2)
    assert torch.allclose(op_probs(alpha, sampled), torch.softmax(alpha, dim=-1))
