"""Derivation under a budget, the ranking of genotypes and sampling from the posterior."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from archadapt.cost_model import Budget, CostModel
from archadapt.derivation import (
    derive_genotype,
    derive_within_budget,
    sample_genotypes,
    smallest_cost,
    top_genotypes,
)
from archadapt.errors import BudgetError
from archadapt.search_space import InputSpec, SearchSpace

# Few primitives and two nodes, so every genotype of the space can be enumerated.
SMALL_SPACE = SearchSpace(
    primitives=("none", "skip_connect", "max_pool_3x3", "sep_conv_3x3", "dil_conv_5x5"), nodes=2, cells=3, channels=4, reduce_cells=(1,)
)
SPEC = InputSpec(height=12, width=12)


def random_probs(space: SearchSpace, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {t: torch.softmax(2.0 * torch.randn(space.num_edges, space.num_primitives, generator=generator), dim=-1) for t in ("normal", "reduce")}


def every_cell(space: SearchSpace, probs: torch.Tensor, costs: dict[str, torch.Tensor]) -> list[tuple[float, int, int]]:
    """(log probability, parameters, multiply-accumulates) of every cell genotype of one cell type."""
    choices = [k for k, p in enumerate(space.primitives) if p != "none"]
    per_node = []
    for target in range(2, space.nodes + 2):
        options = []
        for first, second in itertools.combinations(space.incoming_edges(target), 2):
            for a, b in itertools.product(choices, choices):
                options.append(
                    (
                        float(torch.log(probs[first.index, a]) + torch.log(probs[second.index, b])),
                        int(costs["parameters"][first.index, a] + costs["parameters"][second.index, b]),
                        int(costs["multiply_accumulates"][first.index, a] + costs["multiply_accumulates"][second.index, b]),
                    )
                )
        per_node.append(options)
    return [tuple(map(sum, zip(*combination))) for combination in itertools.product(*per_node)]


def brute_force_best(model: CostModel, probs: dict[str, torch.Tensor], budget: Budget) -> float:
    """Highest log probability of a genotype within the budget, by enumeration of the whole space."""
    cells = {t: np.array(every_cell(model.space, probs[t], {m: model.edge_costs[m][t] for m in model.edge_costs})) for t in ("normal", "reduce")}
    normal, reduce = cells["normal"], cells["reduce"]
    scores = normal[:, None, 0] + reduce[None, :, 0]
    parameters = model.fixed.parameters + normal[:, None, 1] + reduce[None, :, 1]
    macs = model.fixed.multiply_accumulates + normal[:, None, 2] + reduce[None, :, 2]
    fits = np.ones_like(scores, dtype=bool)
    if budget.max_parameters:
        fits &= parameters <= budget.max_parameters
    if budget.max_multiply_accumulates:
        fits &= macs <= budget.max_multiply_accumulates
    return float(scores[fits].max())


def log_prob(genotype, probs: dict[str, torch.Tensor], space: SearchSpace) -> float:
    return sum(
        float(torch.log(probs[t][edge, space.primitives.index(primitive)]))
        for t in ("normal", "reduce")
        for edge, primitive in genotype.edge_index(space, t)
    )


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("fraction_parameters, fraction_macs", [(0.7, 0.0), (0.0, 0.6), (0.8, 0.7), (0.55, 0.9)])
def test_constrained_derivation_matches_enumeration(seed: int, fraction_parameters: float, fraction_macs: float) -> None:
    model = CostModel.build(SMALL_SPACE, SPEC, 4)
    probs = random_probs(SMALL_SPACE, seed)
    unconstrained = model.genotype_cost(derive_genotype(SMALL_SPACE, probs))
    budget = Budget(
        max_parameters=int(fraction_parameters * unconstrained.parameters),
        max_multiply_accumulates=int(fraction_macs * unconstrained.multiply_accumulates),
    )
    if budget.max_parameters and budget.max_parameters < smallest_cost(model, "parameters"):
        pytest.skip("budget below the smallest network")

    genotype = derive_within_budget(SMALL_SPACE, probs, model, budget)

    assert budget.admits(model.genotype_cost(genotype))
    assert log_prob(genotype, probs, SMALL_SPACE) == pytest.approx(brute_force_best(model, probs, budget), abs=1e-5)


def test_met_budget_keeps_darts_genotype() -> None:
    model = CostModel.build(SMALL_SPACE, SPEC, 4)
    probs = random_probs(SMALL_SPACE, 3)
    genotype = derive_genotype(SMALL_SPACE, probs)
    cost = model.genotype_cost(genotype)
    assert derive_within_budget(SMALL_SPACE, probs, model, Budget(cost.parameters, cost.multiply_accumulates)) == genotype


def test_impossible_budget_names_smallest_network() -> None:
    model = CostModel.build(SMALL_SPACE, SPEC, 4)
    least = smallest_cost(model, "parameters")
    # Pooling costs nothing, so the smallest network is the fixed part: stem, preprocessing, classifier.
    assert least == model.fixed.parameters
    with pytest.raises(BudgetError, match=f"max_parameters is {least - 1}, but the smallest network for this task has {least} parameters; raise max_parameters to {least}"):
        derive_within_budget(SMALL_SPACE, random_probs(SMALL_SPACE, 0), model, Budget(max_parameters=least - 1))


def test_top_genotypes_exact_and_ordered() -> None:
    model = CostModel.build(SMALL_SPACE, SPEC, 4)
    probs = random_probs(SMALL_SPACE, 5)
    ranked = top_genotypes(SMALL_SPACE, probs, model, 5)

    assert ranked[0].genotype == derive_genotype(SMALL_SPACE, probs)
    assert len({r.genotype for r in ranked}) == 5
    every = sorted(
        (a[0] + b[0] for a in every_cell(SMALL_SPACE, probs["normal"], {m: model.edge_costs[m]["normal"] for m in model.edge_costs})
         for b in every_cell(SMALL_SPACE, probs["reduce"], {m: model.edge_costs[m]["reduce"] for m in model.edge_costs})),
        reverse=True,
    )[:5]
    assert [r.log_prob for r in ranked] == pytest.approx(every, abs=1e-5)
    for r in ranked:
        assert r.probability == pytest.approx(np.exp(log_prob(r.genotype, probs, SMALL_SPACE)))
        assert r.cost == model.genotype_cost(r.genotype)


def test_sampled_genotypes_distinct_within_budget() -> None:
    model = CostModel.build(SMALL_SPACE, SPEC, 4)
    probs = random_probs(SMALL_SPACE, 2)
    budget = Budget(max_parameters=int(0.8 * model.genotype_cost(derive_genotype(SMALL_SPACE, probs)).parameters))

    drawn = sample_genotypes(SMALL_SPACE, probs, model, budget, 4, torch.Generator().manual_seed(0))
    again = sample_genotypes(SMALL_SPACE, probs, model, budget, 4, torch.Generator().manual_seed(0))

    assert len(drawn) == 4
    assert len(set(drawn)) == 4
    assert drawn == again
    assert all(budget.admits(model.genotype_cost(g)) for g in drawn)
