"""The weight-sharing supernet: every primitive on every edge, with alpha logits per cell type.

Architectures are sampled with the Gumbel-Softmax relaxation:
- "soft" computes every primitive on every edge and mixes them (the exact relaxation);
- "hard" draws one primitive per edge with the straight-through estimator and computes only
  that primitive (as in GDAS), so a forward pass costs about one primitive per edge, while the
  gradient still reaches the alpha logits;
- "mode" takes the most probable primitive per edge without noise (used for evaluation);
- "relaxed" mixes every primitive by softmax(alpha / temperature) without noise, the continuous
  relaxation of DARTS (used by the architecture-search baseline).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from archadapt.cells import Normalize, cell_channels, embedding_dim, make_preprocess, make_stem, pool_features, scale_embeddings
from archadapt.derivation import strongest_inputs
from archadapt.operations import OPS
from archadapt.search_space import InputSpec, SearchSpace

SamplingMode = Literal["soft", "hard", "mode", "relaxed"]
SAMPLING_MODES: tuple[str, ...] = ("soft", "hard", "mode", "relaxed")


def sample_op_weights(
    alpha: torch.Tensor, temperature: float, mode: SamplingMode, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sample primitive weights for every edge from alpha logits of shape (E, K).

    Returns the weights (E, K) and, for "hard" and "mode", the chosen primitive per edge (E,).
    """
    weights, index, _ = sample_with_probs(alpha, temperature, mode, generator)
    return weights, index


def sample_with_probs(
    alpha: torch.Tensor, temperature: float, mode: SamplingMode, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Sample as `sample_op_weights` does, and also return the probabilities (E, K) behind the choice.

    These are the Gumbel-perturbed probabilities for "hard" and "soft", softmax(alpha) for "mode"
    and the mixing weights for "relaxed", all without gradient.
    """
    if mode == "mode":
        index = alpha.argmax(dim=-1)
        probs = torch.softmax(alpha.detach(), dim=-1)
        return nn.functional.one_hot(index, alpha.shape[-1]).to(alpha.dtype), index, probs
    if mode == "relaxed":
        weights = torch.softmax(alpha / temperature, dim=-1)
        return weights, None, weights.detach()
    # Noise is drawn on the CPU so that a seed gives the same architectures on every device.
    uniform = torch.rand(alpha.shape, generator=generator).clamp(1e-10, 1.0 - 1e-7)
    gumbel = (-torch.log(-torch.log(uniform))).to(alpha.device, non_blocking=True)
    soft = torch.softmax((alpha + gumbel) / temperature, dim=-1)  # (E, K)
    if mode == "soft":
        return soft, None, soft.detach()
    index = soft.argmax(dim=-1)
    hard = nn.functional.one_hot(index, alpha.shape[-1]).to(soft.dtype)
    return hard - soft.detach() + soft, index, soft.detach()  # straight-through: forward is one-hot


def keep_two_inputs(space: SearchSpace, index: torch.Tensor, probs: torch.Tensor) -> list[int | None]:
    """Return the sampled primitive per edge, with None on the edges that derivation would drop.

    The strength of an edge is the probability in `probs` (E, K) of its sampled primitive, so
    `derive_cell`'s rule picks the inputs of the sample as it picks those of the posterior.
    """
    strengths = probs.gather(1, index.unsqueeze(1)).squeeze(1).tolist()
    indices: list[int | None] = [None] * space.num_edges
    for target in range(2, space.nodes + 2):
        for edge in strongest_inputs(space, target, strengths):
            indices[edge.index] = int(index[edge.index])
    return indices


def without_none(alpha: torch.Tensor, space: SearchSpace) -> torch.Tensor:
    """Return alpha logits (E, K) with `none` at -inf, so that sampling never draws it.

    The `none` logit then gets no gradient from the loss. Only the KL terms move it.
    """
    mask = torch.zeros(alpha.shape[-1], dtype=torch.bool, device=alpha.device)
    mask[space.primitives.index("none")] = True
    return alpha.masked_fill(mask, float("-inf"))


class MixedOp(nn.Module):
    """All primitives of one edge, keyed by primitive name."""

    def __init__(self, primitives: tuple[str, ...], channels: int, stride: int):
        super().__init__()
        self.primitives = primitives
        self.ops = nn.ModuleDict({p: OPS[p](channels, stride, False) for p in primitives})

    def forward(self, x: torch.Tensor, weights: torch.Tensor, index: int | None) -> torch.Tensor:
        if index is not None:
            primitive = self.primitives[index]
            return self.ops[primitive](x) * weights[index]
        return sum(w * self.ops[p](x) for p, w in zip(self.primitives, weights))


class SearchCell(nn.Module):
    def __init__(self, space: SearchSpace, c_prev_prev: int, c_prev: int, c: int, reduction: bool, reduction_prev: bool):
        super().__init__()
        self.space = space
        self.reduction = reduction
        self.preprocess0, self.preprocess1 = make_preprocess(c_prev_prev, c_prev, c, reduction_prev, False)
        self.edges = nn.ModuleList(
            MixedOp(space.primitives, c, 2 if reduction and edge.source < 2 else 1) for edge in space.edges
        )

    def forward(
        self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor, indices: list[int | None] | None
    ):
        """Run the cell. With `indices` None every primitive is mixed, and a None entry drops its edge."""
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for target in range(2, self.space.nodes + 2):
            node = 0
            for edge in self.space.incoming_edges(target):
                if indices is not None and indices[edge.index] is None:
                    continue
                index = None if indices is None else indices[edge.index]
                node = node + self.edges[edge.index](states[edge.source], weights[edge.index], index)
            states.append(node)
        return torch.cat(states[2:], dim=1)


class Supernet(nn.Module):
    """Embedding network over the whole search space.

    Parameters: the shared weights of every primitive, plus `alpha_normal` and `alpha_reduce`,
    the architecture logits of shape (edges, primitives). The classifier is not part of the
    supernet because each task has its own number of classes (see `head.py`).
    """

    def __init__(self, space: SearchSpace, spec: InputSpec):
        super().__init__()
        self.space = space
        self.spec = spec
        self.normalize = Normalize(spec)
        self.stem = make_stem(spec, 2 * space.channels, False)
        self.cells = nn.ModuleList(
            SearchCell(space, *layout) for layout in cell_channels(space)
        )
        shape = (space.num_edges, space.num_primitives)
        self.alpha_normal = nn.Parameter(1e-3 * torch.randn(shape))
        self.alpha_reduce = nn.Parameter(1e-3 * torch.randn(shape))
        self.embedding_dim = embedding_dim(space)

    def alphas(self) -> dict[str, torch.Tensor]:
        return {"normal": self.alpha_normal, "reduce": self.alpha_reduce}

    def forward(
        self,
        images: torch.Tensor,
        temperature: float = 1.0,
        mode: SamplingMode = "hard",
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Embed images (B, C, H, W) in [0, 1] into (B, embedding_dim) under one sampled architecture."""
        samples = {}
        for cell_type, alpha in self.alphas().items():
            if not self.space.sample_none:
                alpha = without_none(alpha, self.space)
            weights, index, probs = sample_with_probs(alpha, temperature, mode, generator)
            # NOTE: the host must know the sampled primitives to run only those, so on a GPU the
            # hard and mode samples wait here for the work queued before them.
            if index is None:
                indices = None
            elif self.space.sample_two_inputs:
                indices = keep_two_inputs(self.space, index, probs)
            else:
                indices = index.tolist()
            samples[cell_type] = (weights, indices)

        s0 = s1 = self.stem(self.normalize(images))
        for cell in self.cells:
            weights, indices = samples["reduce" if cell.reduction else "normal"]
            s0, s1 = s1, cell(s0, s1, weights, indices)
        return scale_embeddings(pool_features(self.space, s1))  # (B, embedding_dim)


def weight_names(model: Supernet) -> list[str]:
    """Names of the supernet's weight tensors (every parameter except the alpha logits)."""
    return [name for name, _ in model.named_parameters() if not name.startswith("alpha_")]


ALPHA_NAMES: dict[str, str] = {"normal": "alpha_normal", "reduce": "alpha_reduce"}
