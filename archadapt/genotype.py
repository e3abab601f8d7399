"""Discrete cell architectures (genotypes) and their JSON form."""

from __future__ import annotations

import json
from dataclasses import dataclass

from archadapt.errors import ConfigError
from archadapt.search_space import CELL_TYPES, SearchSpace

# One (primitive, input node) pair per chosen incoming edge; two pairs per intermediate node,
# listed node by node.
CellGenotype = tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class Genotype:
    """The chosen primitives of a `normal` and a `reduce` cell.

    `normal[2 * k]` and `normal[2 * k + 1]` are the two incoming edges of intermediate node k
    (node index k + 2), each as (primitive, input node).
    """

    normal: CellGenotype
    reduce: CellGenotype

    def cell(self, cell_type: str) -> CellGenotype:
        if cell_type not in CELL_TYPES:
            raise ConfigError(f"cell type {cell_type!r}; allowed: {list(CELL_TYPES)}")
        return self.normal if cell_type == "normal" else self.reduce

    def to_dict(self) -> dict:
        return {
            "normal": [[primitive, source] for primitive, source in self.normal],
            "reduce": [[primitive, source] for primitive, source in self.reduce],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict) -> "Genotype":
        if not isinstance(data, dict):
            raise ConfigError(f"genotype is a {type(data).__name__}; expected a mapping with keys {list(CELL_TYPES)}")
        if set(data) != set(CELL_TYPES):
            raise ConfigError(f"genotype keys {sorted(data)}; expected exactly {list(CELL_TYPES)}")
        cells = {}
        for cell_type in CELL_TYPES:
            if not isinstance(data[cell_type], (list, tuple)):
                raise ConfigError(f"genotype {cell_type} cell is {data[cell_type]!r}; expected a list of [primitive, input]")
            pairs = []
            for pair in data[cell_type]:
                if (
                    not isinstance(pair, (list, tuple))
                    or len(pair) != 2
                    or not isinstance(pair[0], str)
                    or not isinstance(pair[1], int)
                ):
                    raise ConfigError(f"genotype pair {pair!r} in {cell_type}; expected [primitive, input]")
                pairs.append((pair[0], pair[1]))
            cells[cell_type] = tuple(pairs)
        return cls(normal=cells["normal"], reduce=cells["reduce"])

    @classmethod
    def from_json(cls, text: str) -> "Genotype":
        """Parse the JSON form; raise ConfigError for text that is not a genotype."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"genotype is not valid JSON: {error}") from error
        return cls.from_dict(data)

    def validate(self, space: SearchSpace) -> None:
        """Raise ConfigError unless every node has two distinct earlier inputs and no `none`."""
        for cell_type in CELL_TYPES:
            cell = self.cell(cell_type)
            if len(cell) != 2 * space.nodes:
                raise ConfigError(
                    f"{cell_type} cell has {len(cell)} edges; expected {2 * space.nodes} (two per node)"
                )
            for k in range(space.nodes):
                node = k + 2
                pairs = cell[2 * k : 2 * k + 2]
                sources = [source for _, source in pairs]
                if len(set(sources)) != 2:
                    raise ConfigError(f"{cell_type} node {node} has inputs {sources}; expected two distinct")
                for primitive, source in pairs:
                    if primitive == "none" or primitive not in space.primitives:
                        raise ConfigError(
                            f"{cell_type} node {node} uses {primitive!r}; allowed: "
                            f"{[p for p in space.primitives if p != 'none']}"
                        )
                    if not 0 <= source < node:
                        raise ConfigError(f"{cell_type} node {node} takes input {source}; allowed: 0 to {node - 1}")

    def edge_index(self, space: SearchSpace, cell_type: str) -> list[tuple[int, str]]:
        """Return (edge index in the supernet cell, primitive) for each chosen edge."""
        chosen = []
        cell = self.cell(cell_type)
        for k in range(space.nodes):
            node = k + 2
            for primitive, source in cell[2 * k : 2 * k + 2]:
                edge = next(e for e in space.edges if e.source == source and e.target == node)
                chosen.append((edge.index, primitive))
        return chosen
