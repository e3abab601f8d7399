"""Derive a discrete genotype from the adapted posterior q(alpha).

The DARTS rule takes, on every edge, the most probable primitive other than `none`. Then each
intermediate node keeps the two incoming edges whose chosen primitive is most probable.
"""

from __future__ import annotations

import torch

from archadapt.genotype import CellGenotype, Genotype
from archadapt.search_space import SearchSpace


def derive_cell(space: SearchSpace, probs: torch.Tensor) -> CellGenotype:
    """Return the genotype of one cell type from op_probs of shape (edges, primitives)."""
    none_index = space.primitives.index("none")
    pairs: list[tuple[str, int]] = []
    for target in range(2, space.nodes + 2):
        candidates = []
        for edge in space.incoming_edges(target):
            edge_probs = probs[edge.index].clone()
            edge_probs[none_index] = -1.0
            best = int(edge_probs.argmax())
            candidates.append((float(edge_probs[best]), edge.source, space.primitives[best]))
        candidates.sort(key=lambda c: (-c[0], c[1]))  # ties go to the earlier input
        for _, source, primitive in sorted(candidates[:2], key=lambda c: c[1]):
            pairs.append((primitive, source))
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
