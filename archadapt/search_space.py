"""The DARTS cell search space.

A network stacks `cells` cells of two types, `normal` and `reduce` (stride 2). A cell has two
input nodes (the outputs of the two previous cells) and `nodes` intermediate nodes. Node i
receives one edge from every earlier node, so a cell with 4 intermediate nodes has 14 edges.
Each edge carries one primitive from PRIMITIVES, the DARTS set and the default, or from
EXTRA_PRIMITIVES, which a search space may name too.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from archadapt.errors import ConfigError

PRIMITIVES: tuple[str, ...] = (
    "none",
    "skip_connect",
    "max_pool_3x3",
    "avg_pool_3x3",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)

# Primitives outside the DARTS set. `conv_3x3` is a plain 3x3 convolution over every channel,
# the layer that MAML's 4-layer network stacks (archadapt/conv4.py).
EXTRA_PRIMITIVES: tuple[str, ...] = ("conv_3x3",)
ALLOWED_PRIMITIVES: tuple[str, ...] = PRIMITIVES + EXTRA_PRIMITIVES

CELL_TYPES: tuple[str, ...] = ("normal", "reduce")


@dataclass(frozen=True)
class Edge:
    """One edge of a cell: from node `source` to intermediate node `target`.

    Nodes 0 and 1 are the cell's inputs, so the first intermediate node is node 2.
    """

    index: int
    source: int
    target: int


@dataclass(frozen=True)
class SearchSpace:
    """Shape of the supernet: primitives, nodes per cell, cells and channels."""

    primitives: tuple[str, ...] = PRIMITIVES
    nodes: int = 4
    cells: int = 4
    channels: int = 16
    reduce_cells: tuple[int, ...] = (1, 3)
    # Whether the supernet may sample `none`. Derivation never picks `none`, so with False every
    # sampled architecture gives every edge an operation, as a derived network does.
    sample_none: bool = True
    # Whether a ReLU follows the last cell, before the average over positions. Without it the
    # embedding averages batch-normalized sums, which can be negative. Each block of the 4-layer
    # network ends in a ReLU.
    final_relu: bool = False
    # Whether each hard or mode sample keeps only the two inputs per node that derivation would
    # keep, so the supernet trains networks of the shape it returns.
    sample_two_inputs: bool = False
    # Whether reduction cells keep the channel count instead of doubling it. With every cell a
    # reduction cell, this gives the macro layout of MAML's 4-layer network: blocks of one
    # width, each halving the resolution.
    constant_channels: bool = False

    def __post_init__(self) -> None:
        unknown = [p for p in self.primitives if p not in ALLOWED_PRIMITIVES]
        if unknown:
            raise ConfigError(f"unknown primitives {unknown}; allowed: {list(ALLOWED_PRIMITIVES)}")
        if len(set(self.primitives)) != len(self.primitives):
            raise ConfigError(f"duplicate primitives in {list(self.primitives)}; list each primitive once")
        if "none" not in self.primitives or len(self.primitives) < 2:
            raise ConfigError(
                f"primitives {list(self.primitives)} must contain 'none' and at least one other"
            )
        if not 2 <= self.nodes <= 8:
            raise ConfigError(f"nodes is {self.nodes}; allowed: 2 to 8")
        if not 1 <= self.cells <= 20:
            raise ConfigError(f"cells is {self.cells}; allowed: 1 to 20")
        if not 4 <= self.channels <= 256:
            raise ConfigError(f"channels is {self.channels}; allowed: 4 to 256")
        for name in ("sample_none", "final_relu", "sample_two_inputs", "constant_channels"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"invalid {name} {getattr(self, name)!r}; use true or false")
        if self.sample_two_inputs and self.sample_none:
            # A sample that may draw `none` can keep an edge derivation would not.
            raise ConfigError("sample_two_inputs is true while sample_none is true; set sample_none to false")
        bad = [i for i in self.reduce_cells if not 0 <= i < self.cells]
        if bad or len(set(self.reduce_cells)) != len(self.reduce_cells):
            raise ConfigError(
                f"reduce_cells {list(self.reduce_cells)} must be distinct indices in [0, {self.cells})"
            )

    @cached_property
    def edges(self) -> tuple[Edge, ...]:
        """Every edge of a cell, grouped by target node in order."""
        edges = []
        for target in range(2, self.nodes + 2):
            for source in range(target):
                edges.append(Edge(index=len(edges), source=source, target=target))
        return tuple(edges)

    @property
    def num_edges(self) -> int:
        return len(self.edges)

    @property
    def num_primitives(self) -> int:
        return len(self.primitives)

    def cell_types(self) -> list[str]:
        """Return the type of every cell, in order."""
        return ["reduce" if i in self.reduce_cells else "normal" for i in range(self.cells)]

    def incoming_edges(self, target: int) -> list[Edge]:
        return [edge for edge in self.edges if edge.target == target]

    def to_dict(self) -> dict:
        return {
            "primitives": list(self.primitives),
            "nodes": self.nodes,
            "cells": self.cells,
            "channels": self.channels,
            "reduce_cells": list(self.reduce_cells),
            "sample_none": self.sample_none,
            "final_relu": self.final_relu,
            # Written only when set, so the spaces of earlier checkpoints keep their exact dict.
            **({"sample_two_inputs": True} if self.sample_two_inputs else {}),
            **({"constant_channels": True} if self.constant_channels else {}),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "SearchSpace":
        allowed = {
            "primitives", "nodes", "cells", "channels", "reduce_cells", "sample_none", "final_relu", "sample_two_inputs",
            "constant_channels",
        }
        unknown = set(data) - allowed
        if unknown:
            raise ConfigError(f"unknown search space keys {sorted(unknown)}; allowed: {sorted(allowed)}")
        values = dict(data)
        for key in ("primitives", "reduce_cells"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


@dataclass(frozen=True)
class InputSpec:
    """The images a network takes: float32 NCHW in [0, 1], normalized inside the network."""

    channels: int = 1
    height: int = 28
    width: int = 28
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ConfigError(f"input channels is {self.channels}; allowed: 1 or 3")
        if not (8 <= self.height <= 512 and 8 <= self.width <= 512):
            raise ConfigError(f"input size {self.height}x{self.width}; allowed: 8 to 512 per side")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ConfigError(
                f"mean {list(self.mean)} and std {list(self.std)} need one value per channel ({self.channels})"
            )
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"std {list(self.std)} must be positive")

    def to_dict(self) -> dict:
        return {
            "channels": self.channels,
            "height": self.height,
            "width": self.width,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "InputSpec":
        allowed = {"channels", "height", "width", "mean", "std"}
        unknown = set(data) - allowed
        if unknown:
            raise ConfigError(f"unknown input spec keys {sorted(unknown)}; allowed: {sorted(allowed)}")
        values = dict(data)
        for key in ("mean", "std"):
            if key in values:
                values[key] = tuple(float(v) for v in values[key])
        return cls(**values)
