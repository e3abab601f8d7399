"""Derive a discrete genotype from the adapted posterior q(alpha).

The DARTS rule takes, on every edge, the most probable primitive other than `none`. Then each
intermediate node keeps the two incoming edges whose chosen primitive is most probable.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch

from archadapt.cost_model import METRICS, Budget, Cost, CostModel
from archadapt.errors import BudgetError
from archadapt.genotype import CellGenotype, Genotype
from archadapt.search_space import CELL_TYPES, Edge, SearchSpace


def strongest_inputs(space: SearchSpace, target: int, strengths: list[float]) -> list[Edge]:
    """Return the two incoming edges of node `target` with the highest strength, in input order.

    `strengths` has one value per edge of the cell. Ties go to the earlier input.
    """
    ranked = sorted(space.incoming_edges(target), key=lambda edge: (-strengths[edge.index], edge.source))
    return sorted(ranked[:2], key=lambda edge: edge.source)


def derive_cell(space: SearchSpace, probs: torch.Tensor) -> CellGenotype:
    """Return the genotype of one cell type from op_probs of shape (edges, primitives)."""
    edge_probs = probs.clone()
    edge_probs[:, space.primitives.index("none")] = -1.0
    best_probs, best = edge_probs.max(dim=1)
    strengths = best_probs.tolist()
    pairs: list[tuple[str, int]] = []
    for target in range(2, space.nodes + 2):
        for edge in strongest_inputs(space, target, strengths):
            pairs.append((space.primitives[int(best[edge.index])], edge.source))
    return tuple(pairs)


def derive_genotype(space: SearchSpace, op_probs: dict[str, torch.Tensor]) -> Genotype:
    """Apply the DARTS rule to both cell types; `op_probs` maps cell type to (E, K) probabilities."""
    genotype = Genotype(
        normal=derive_cell(space, op_probs["normal"].detach().cpu()),
        reduce=derive_cell(space, op_probs["reduce"].detach().cpu()),
    )
    genotype.validate(space)
    return genotype


def genotype_logits(space: SearchSpace, genotype: Genotype, margin: float = 20.0) -> dict[str, torch.Tensor]:
    """Alpha logits, per cell type, that fix the architecture to `genotype`.

    Each chosen edge gets `margin` on its primitive and every other edge gets it on `none`, so
    sampling at temperature 1 leaves the genotype with probability about exp(-margin) per edge,
    and `derive_genotype` returns `genotype` again.
    """
    genotype.validate(space)
    none_index = space.primitives.index("none")
    logits = {}
    for cell_type in ("normal", "reduce"):
        alpha = torch.zeros(space.num_edges, space.num_primitives)
        alpha[:, none_index] = margin
        for edge_index, primitive in genotype.edge_index(space, cell_type):
            alpha[edge_index, none_index] = 0.0
            alpha[edge_index, space.primitives.index(primitive)] = margin
        logits[cell_type] = alpha
    return logits


# -- Derivation under a budget, ranking and sampling -------------------------------------------
#
# A genotype the DARTS rule can return picks, for every intermediate node of each cell type, two
# distinct incoming edges and a primitive other than `none` on each. Its score is the sum of the
# log-probabilities of the chosen primitives on the chosen edges, the log of the probability under
# q(alpha) that those edges carry those primitives. The DARTS rule returns the genotype of highest
# score, so the search under a budget below generalises it: the highest score among the genotypes
# whose cost fits.


@dataclass(frozen=True)
class NodeOption:
    """A choice for one intermediate node: its two (edge index, primitive index) pairs."""

    pairs: tuple[tuple[int, int], tuple[int, int]]
    log_prob: float
    cost: tuple[int, ...]  # one entry per metric that the budget limits


@dataclass(frozen=True)
class RankedGenotype:
    """A genotype with its probability under q(alpha) and the cost of its network."""

    genotype: Genotype
    log_prob: float  # log of the product of the chosen primitives' probabilities
    cost: Cost

    @property
    def probability(self) -> float:
        return math.exp(self.log_prob)


def _groups(space: SearchSpace) -> list[tuple[str, int]]:
    return [(cell_type, target) for cell_type in CELL_TYPES for target in range(2, space.nodes + 2)]


def _node_options(
    space: SearchSpace, log_probs: torch.Tensor, costs: list[torch.Tensor], target: int
) -> list[NodeOption]:
    """Return every (edge pair, primitive pair) of node `target`; log_probs is (E, K), costs one (E, K) per metric."""
    none_index = space.primitives.index("none")
    choices = [k for k in range(space.num_primitives) if k != none_index]
    options = []
    for first, second in itertools.combinations(space.incoming_edges(target), 2):
        for a, b in itertools.product(choices, choices):
            options.append(
                NodeOption(
                    pairs=((first.index, a), (second.index, b)),
                    log_prob=float(log_probs[first.index, a] + log_probs[second.index, b]),
                    cost=tuple(int(c[first.index, a] + c[second.index, b]) for c in costs),
                )
            )
    return options


def _genotype(space: SearchSpace, chosen: dict[tuple[str, int], NodeOption]) -> Genotype:
    """Build the genotype of one option per node, with each node's pairs ordered by input as the DARTS rule orders them."""
    cells: dict[str, list[tuple[str, int]]] = {cell_type: [] for cell_type in CELL_TYPES}
    for (cell_type, target), option in chosen.items():
        pairs = sorted((space.edges[edge].source, space.primitives[k]) for edge, k in option.pairs)
        cells[cell_type].extend((primitive, source) for source, primitive in pairs)
    genotype = Genotype(normal=tuple(cells["normal"]), reduce=tuple(cells["reduce"]))
    genotype.validate(space)
    return genotype


def _all_options(
    space: SearchSpace, op_probs: dict[str, torch.Tensor], model: CostModel | None, metrics: tuple[str, ...]
) -> dict[tuple[str, int], list[NodeOption]]:
    options = {}
    for cell_type, target in _groups(space):
        log_probs = torch.log(op_probs[cell_type].detach().cpu().double().clamp_min(1e-300))
        costs = [model.edge_costs[m][cell_type] for m in metrics] if model is not None else []
        options[(cell_type, target)] = _node_options(space, log_probs, costs, target)
    return options


def _pareto_front(costs: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Return the indices of the states that no other state beats by costing no more and scoring more.

    costs is (N, D) with D of 1 or 2 and scores is (N,). The front is a staircase in the cost plane.
    """
    order = np.lexsort((costs[:, 1] if costs.shape[1] > 1 else np.zeros(len(scores)), costs[:, 0], -scores))
    front: list[int] = []
    stair_first: list[int] = []  # first cost of the staircase points, ascending
    stair_second: list[int] = []  # their second cost, descending
    for index in order:
        first = int(costs[index, 0])
        second = int(costs[index, 1]) if costs.shape[1] > 1 else 0
        position = bisect.bisect_right(stair_first, first)
        if position and stair_second[position - 1] <= second:
            continue  # a state of higher or equal score costs no more on either metric
        front.append(int(index))
        # Drop the staircase points that the new point dominates in cost, then insert it.
        position = bisect.bisect_left(stair_first, first)
        end = position
        while end < len(stair_first) and stair_second[end] >= second:
            end += 1
        stair_first[position:end] = [first]
        stair_second[position:end] = [second]
    return np.array(front, dtype=np.int64)


def derive_within_budget(
    space: SearchSpace, op_probs: dict[str, torch.Tensor], model: CostModel, budget: Budget
) -> Genotype:
    """Return the DARTS genotype when it fits, else the highest-scoring genotype that fits.

    Raises BudgetError when no genotype of the space fits the budget.
    """
    genotype = derive_genotype(space, op_probs)
    if budget.admits(model.genotype_cost(genotype)):
        return genotype
    check_feasible(model, budget)

    metrics = tuple(m for m in METRICS if budget.limit(m))
    limits = np.array([budget.limit(m) for m in metrics], dtype=np.int64)
    options = _all_options(space, op_probs, model, metrics)
    fixed = np.array([model.fixed.get(m) for m in metrics], dtype=np.int64)

    # Dynamic programming over the nodes: keep the Pareto front of (cost, score) of partial genotypes.
    state_costs, state_scores = fixed[None, :], np.zeros(1)
    history: list[tuple[np.ndarray, np.ndarray]] = []  # per node: parent state and option of each state
    for group in _groups(space):
        group_costs = np.array([o.cost for o in options[group]], dtype=np.int64)  # (M, D)
        group_scores = np.array([o.log_prob for o in options[group]])  # (M,)
        costs = state_costs[:, None, :] + group_costs[None, :, :]  # (S, M, D)
        scores = state_scores[:, None] + group_scores[None, :]  # (S, M)
        parents, choices = np.nonzero((costs <= limits).all(axis=-1))
        costs, scores = costs[parents, choices], scores[parents, choices]
        front = _pareto_front(costs, scores)
        state_costs, state_scores = costs[front], scores[front]
        history.append((parents[front], choices[front]))

    state = int(np.argmax(state_scores))
    chosen = {}
    for group, (parents, choices) in zip(reversed(_groups(space)), reversed(history)):
        chosen[group] = options[group][int(choices[state])]
        state = int(parents[state])
    genotype = _genotype(space, dict(sorted(chosen.items(), key=lambda item: _groups(space).index(item[0]))))
    return genotype


def smallest_cost(model: CostModel, metric: str) -> int:
    """Return the least `metric` of any genotype of the space: the two cheapest incoming edges of every node."""
    none_index = model.space.primitives.index("none")
    total = model.fixed.get(metric)
    for cell_type in CELL_TYPES:
        costs = model.edge_costs[metric][cell_type].clone()
        costs[:, none_index] = float("inf")
        cheapest = costs.min(dim=1).values  # (E,)
        for target in range(2, model.space.nodes + 2):
            incoming = sorted(float(cheapest[edge.index]) for edge in model.space.incoming_edges(target))
            total += int(incoming[0] + incoming[1])
    return total


def check_feasible(model: CostModel, budget: Budget) -> None:
    """Raise BudgetError naming the smallest possible cost when a limit is below it.

    Each metric's least value is reached by the same genotype when the space contains a pooling
    primitive (pooling costs nothing on either metric), as the default space does.
    """
    problems = []
    for metric, option in (("parameters", "max_parameters"), ("multiply_accumulates", "max_multiply_accumulates")):
        limit = budget.limit(metric)
        least = smallest_cost(model, metric)
        if limit and limit < least:
            words = "parameters" if metric == "parameters" else "multiply-accumulates per image"
            problems.append((option, f"{option} is {limit}, but the smallest network for this task has {least} {words}; raise {option} to {least} or more, or set it to 0 for no limit"))
    if problems:
        raise BudgetError(problems)


def top_genotypes(space: SearchSpace, op_probs: dict[str, torch.Tensor], model: CostModel, count: int) -> list[RankedGenotype]:
    """Return the `count` highest-scoring genotypes the DARTS rule can return, best first, ignoring any budget.

    Scores add over nodes, so keeping the best `count` partial genotypes after each node is exact.
    """
    options = _all_options(space, op_probs, None, ())
    partial: list[tuple[float, tuple[NodeOption, ...]]] = [(0.0, ())]
    for group in _groups(space):
        best_options = heapq.nlargest(count, options[group], key=lambda o: o.log_prob)
        candidates = ((score + o.log_prob, chosen + (o,)) for score, chosen in partial for o in best_options)
        partial = heapq.nlargest(count, candidates, key=lambda c: c[0])
    ranked = []
    for score, chosen in partial:
        genotype = _genotype(space, dict(zip(_groups(space), chosen)))
        ranked.append(RankedGenotype(genotype, score, model.genotype_cost(genotype)))
    return ranked


def sample_genotypes(
    space: SearchSpace,
    op_probs: dict[str, torch.Tensor],
    model: CostModel,
    budget: Budget,
    count: int,
    generator: torch.Generator,
    max_draws: int = 1000,
) -> list[Genotype]:
    """Draw up to `count` distinct genotypes that fit the budget, each with probability proportional to exp(score).

    The distribution over the genotypes the DARTS rule can return factorises over nodes, so every
    node draws its option independently. Draws over budget are rejected; after `max_draws` draws
    fewer than `count` genotypes may come back.
    """
    options = _all_options(space, op_probs, None, ())
    weights = {
        group: torch.softmax(torch.tensor([o.log_prob for o in group_options], dtype=torch.float64), dim=0)
        for group, group_options in options.items()
    }
    drawn: list[Genotype] = []
    for _ in range(max_draws):
        if len(drawn) == count:
            break
        chosen = {
            group: options[group][int(torch.multinomial(weights[group], 1, generator=generator))]
            for group in _groups(space)
        }
        genotype = _genotype(space, chosen)
        if genotype not in drawn and budget.admits(model.genotype_cost(genotype)):
            drawn.append(genotype)
    return drawn
