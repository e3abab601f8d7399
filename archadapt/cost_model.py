"""The cost of a derived network: trainable parameters and multiply-accumulates per image.

A derived network costs a fixed part (stem, the 1x1 preprocessing of every cell, classifier) plus
one term per chosen edge. A genotype gives each cell type one primitive per chosen edge, and every
cell of that type repeats it at its own channels and resolution, so the term of (cell type, edge,
primitive) sums over the cells of that type. The counts follow the modules of operations.py and
cells.py and the rules of network.count_parameters and network.count_multiply_accumulates: batch
normalization has no affine parameters, pooling has no multiply-accumulates, and a convolution
costs (output elements) x (kernel area) x (input channels / groups).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from archadapt.cells import cell_channels, embedding_dim
from archadapt.genotype import Genotype
from archadapt.search_space import CELL_TYPES, InputSpec, SearchSpace

METRICS: tuple[str, ...] = ("parameters", "multiply_accumulates")


@dataclass(frozen=True)
class Cost:
    parameters: int
    multiply_accumulates: int

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.parameters + other.parameters, self.multiply_accumulates + other.multiply_accumulates)

    def get(self, metric: str) -> int:
        return self.parameters if metric == "parameters" else self.multiply_accumulates


@dataclass(frozen=True)
class Budget:
    """Upper bounds on the derived network's cost; 0 means no limit."""

    max_parameters: int = 0
    max_multiply_accumulates: int = 0

    def __post_init__(self) -> None:
        for name in ("max_parameters", "max_multiply_accumulates"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} is {getattr(self, name)}; use 0 (no limit) or a positive count")

    @property
    def is_set(self) -> bool:
        return bool(self.max_parameters or self.max_multiply_accumulates)

    def limit(self, metric: str) -> int:
        return self.max_parameters if metric == "parameters" else self.max_multiply_accumulates

    def admits(self, cost: Cost) -> bool:
        return all(not self.limit(m) or cost.get(m) <= self.limit(m) for m in METRICS)


def _reduced(size: int) -> int:
    """Output side of a stride-2 primitive: every one of them maps n pixels to ceil(n / 2)."""
    return (size + 1) // 2


def primitive_cost(primitive: str, channels: int, stride: int, out_pixels: int) -> Cost:
    """Cost of one primitive on `channels` channels whose output has `out_pixels` pixels per channel."""
    c = channels
    if primitive in ("none", "max_pool_3x3", "avg_pool_3x3") or (primitive == "skip_connect" and stride == 1):
        return Cost(0, 0)
    if primitive == "skip_connect":  # FactorizedReduce(c, c): two 1x1 convolutions to c / 2 channels
        return Cost(c * c, c * c * out_pixels)
    kernel = int(primitive[-1])
    if primitive.startswith("conv_"):  # ReLUConvBN: one convolution over every channel
        return Cost(kernel * kernel * c * c, kernel * kernel * c * c * out_pixels)
    depthwise_and_pointwise = kernel * kernel * c + c * c
    if primitive.startswith("dil_conv"):
        return Cost(depthwise_and_pointwise, depthwise_and_pointwise * out_pixels)
    if primitive.startswith("sep_conv"):  # two DilConv blocks; the stride is in the first only
        return Cost(2 * depthwise_and_pointwise, 2 * depthwise_and_pointwise * out_pixels)
    raise ValueError(f"no cost model for primitive {primitive!r}")


@dataclass(frozen=True)
class CostModel:
    """Per-edge costs of a search space for one input spec and number of classes.

    `edge_costs[metric][cell_type]` has shape (edges, primitives): what choosing that primitive on
    that edge adds to the network, summed over every cell of the type. `fixed` is the rest.
    """

    space: SearchSpace
    fixed: Cost
    edge_costs: dict[str, dict[str, torch.Tensor]]

    @classmethod
    def build(cls, space: SearchSpace, spec: InputSpec, num_classes: int) -> "CostModel":
        stem_channels = 2 * space.channels
        stem = Cost(9 * spec.channels * stem_channels, 9 * spec.channels * stem_channels * spec.height * spec.width)
        classes = Cost(embedding_dim(space) * num_classes + num_classes, embedding_dim(space) * num_classes)
        fixed = stem + classes

        shape = (space.num_edges, space.num_primitives)
        edge_costs = {m: {t: torch.zeros(shape, dtype=torch.float64) for t in CELL_TYPES} for m in METRICS}
        sizes = [(spec.height, spec.width), (spec.height, spec.width)]  # sides of the cells' inputs s0, s1
        for (c_prev_prev, c_prev, c, reduction, reduction_prev), cell_type in zip(cell_channels(space), space.cell_types()):
            (h0, w0), (h1, w1) = sizes
            input_pixels = h1 * w1
            # preprocess0 is a FactorizedReduce after a reduction cell and a 1x1 ReLUConvBN otherwise.
            # Both end at the side of s1 with c channels, so both cost c_prev_prev * c per pixel.
            fixed = fixed + Cost(c_prev_prev * c, c_prev_prev * c * input_pixels)
            fixed = fixed + Cost(c_prev * c, c_prev * c * input_pixels)
            out_h, out_w = (_reduced(h1), _reduced(w1)) if reduction else (h1, w1)
            for edge in space.edges:
                stride = 2 if reduction and edge.source < 2 else 1
                for k, primitive in enumerate(space.primitives):
                    cost = primitive_cost(primitive, c, stride, out_h * out_w)
                    edge_costs["parameters"][cell_type][edge.index, k] += cost.parameters
                    edge_costs["multiply_accumulates"][cell_type][edge.index, k] += cost.multiply_accumulates
            sizes = [(h1, w1), (out_h, out_w)]
        return cls(space=space, fixed=fixed, edge_costs=edge_costs)

    def edge_cost(self, cell_type: str, edge: int, primitive: str) -> Cost:
        k = self.space.primitives.index(primitive)
        return Cost(*(int(self.edge_costs[m][cell_type][edge, k]) for m in METRICS))

    def genotype_cost(self, genotype: Genotype) -> Cost:
        """Exact cost of the DerivedNetwork of `genotype`."""
        total = self.fixed
        for cell_type in CELL_TYPES:
            for edge, primitive in genotype.edge_index(self.space, cell_type):
                total = total + self.edge_cost(cell_type, edge, primitive)
        return total

    def expected_cost(self, alphas: dict[str, torch.Tensor], metric: str) -> torch.Tensor:
        """Differentiable estimate of the derived network's cost under q(alpha), for the inner loop.

        On each edge the primitives other than `none` are weighted by their renormalised softmax
        probabilities, because derivation never picks `none`. Each node keeps two of its incoming
        edges, so each edge counts with weight 2 / (incoming edges of its node).
        """
        none_index = self.space.primitives.index("none")
        keep = torch.tensor(
            [2.0 / len(self.space.incoming_edges(edge.target)) for edge in self.space.edges], dtype=torch.float64
        )
        total = float(self.fixed.get(metric))
        for cell_type, alpha in alphas.items():
            probs = torch.softmax(alpha.double(), dim=-1)  # (E, K)
            mask = torch.ones(probs.shape[-1], dtype=torch.float64, device=probs.device)
            mask[none_index] = 0.0
            probs = probs * mask / (probs * mask).sum(dim=-1, keepdim=True)
            costs = self.edge_costs[metric][cell_type].to(probs.device)
            total = total + (keep.to(probs.device) * (probs * costs).sum(dim=-1)).sum()  # scalar
        return torch.as_tensor(total, dtype=torch.float64)


def budget_penalty(model: CostModel, budget: Budget, alphas: dict[str, torch.Tensor], weight: float) -> torch.Tensor:
    """Return weight * (sum over the set limits of max(0, expected cost / limit - 1)), zero within the budget."""
    terms = [
        torch.relu(model.expected_cost(alphas, metric) / budget.limit(metric) - 1.0)
        for metric in METRICS
        if budget.limit(metric)
    ]
    return weight * sum(terms).float() if terms else torch.zeros(())
