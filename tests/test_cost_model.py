"""The cost model against the measured parameter and multiply-accumulate counts of derived networks."""

from __future__ import annotations

import random

import pytest
import torch

from archadapt.cost_model import Budget, CostModel, budget_penalty
from archadapt.genotype import Genotype
from archadapt.network import DerivedNetwork, count_multiply_accumulates, count_parameters
from archadapt.search_space import InputSpec, SearchSpace


def random_genotype(space: SearchSpace, rng: random.Random) -> Genotype:
    cells = {}
    for cell_type in ("normal", "reduce"):
        pairs = []
        for k in range(space.nodes):
            for source in sorted(rng.sample(range(k + 2), 2)):
                pairs.append((rng.choice(space.primitives[1:]), source))
        cells[cell_type] = tuple(pairs)
    return Genotype(**cells)


CASES = [
    # (space, spec, classes): the tiny server checkpoint, the default layout, and odd sides with RGB.
    (SearchSpace(channels=6, cells=2, reduce_cells=(0,)), InputSpec(), 3),
    (SearchSpace(channels=12, cells=3, reduce_cells=(0, 2)), InputSpec(), 10),
    (SearchSpace(channels=4, cells=5, reduce_cells=(1, 2), nodes=3), InputSpec(channels=3, height=17, width=13, mean=(0.5,) * 3, std=(0.5,) * 3), 5),
    # A space with the plain 3x3 convolution beside DARTS primitives.
    (SearchSpace(primitives=("none", "skip_connect", "max_pool_3x3", "conv_3x3", "sep_conv_3x3"), channels=8, cells=3, reduce_cells=(0, 2), nodes=2), InputSpec(), 7),
    # Every cell a reduction cell at one width: sides 28, 14, 7, 4, 2, so FactorizedReduce meets odd sides.
    (SearchSpace(primitives=("none", "skip_connect", "max_pool_3x3", "conv_3x3", "dil_conv_3x3"), channels=6, cells=4, reduce_cells=(0, 1, 2, 3), nodes=2, constant_channels=True), InputSpec(), 5),
]


@pytest.mark.parametrize("space, spec, classes", CASES)
def test_predicted_cost_matches_built_network(space: SearchSpace, spec: InputSpec, classes: int) -> None:
    model = CostModel.build(space, spec, classes)
    rng = random.Random(0)
    for _ in range(4):
        genotype = random_genotype(space, rng)
        network = DerivedNetwork(space, spec, genotype, classes)
        cost = model.genotype_cost(genotype)
        assert cost.parameters == count_parameters(network)
        assert cost.multiply_accumulates == count_multiply_accumulates(network, spec)


def test_expected_cost_of_one_hot_posterior() -> None:
    space, spec = CASES[0][0], CASES[0][1]
    model = CostModel.build(space, spec, 3)
    index = space.primitives.index("sep_conv_3x3")
    alphas = {cell_type: torch.full((space.num_edges, space.num_primitives), -1e4) for cell_type in ("normal", "reduce")}
    for alpha in alphas.values():
        alpha[:, index] = 0.0
    every_node_sep_conv = Genotype(
        normal=tuple(("sep_conv_3x3", s) for k in range(space.nodes) for s in (0, 1)),
        reduce=tuple(("sep_conv_3x3", s) for k in range(space.nodes) for s in (0, 1)),
    )
    expected = float(model.expected_cost(alphas, "parameters"))
    # Parameters do not depend on the edge, so keeping 2 of m edges at weight 2 / m is exact here.
    assert expected == pytest.approx(model.genotype_cost(every_node_sep_conv).parameters)


def test_budget_penalty_zero_within_budget() -> None:
    space, spec = CASES[1][0], CASES[1][1]
    model = CostModel.build(space, spec, 10)
    alphas = {t: torch.zeros(space.num_edges, space.num_primitives, requires_grad=True) for t in ("normal", "reduce")}
    expected = float(model.expected_cost(alphas, "parameters").detach())
    assert float(budget_penalty(model, Budget(max_parameters=int(expected) + 1), alphas, 1.0).detach()) == 0.0


def test_budget_penalty_favours_cheaper_primitives() -> None:
    space, spec = CASES[1][0], CASES[1][1]
    model = CostModel.build(space, spec, 10)
    alphas = {t: torch.zeros(space.num_edges, space.num_primitives, requires_grad=True) for t in ("normal", "reduce")}
    expected = float(model.expected_cost(alphas, "parameters").detach())

    penalty = budget_penalty(model, Budget(max_parameters=int(expected / 2)), alphas, 1.0)
    assert float(penalty.detach()) == pytest.approx(1.0, rel=1e-3)
    penalty.backward()
    gradient = alphas["normal"].grad  # (E, K)
    primitives = list(space.primitives)
    # Descending the gradient raises the pooling logits and lowers the convolution logits.
    assert (gradient[:, primitives.index("max_pool_3x3")] < 0).all()
    assert (gradient[:, primitives.index("sep_conv_5x5")] > 0).all()


def test_negative_budget_rejected() -> None:
    with pytest.raises(ValueError, match="max_parameters is -1; use 0"):
        Budget(max_parameters=-1)
