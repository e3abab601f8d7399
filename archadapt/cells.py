"""Parts shared by the supernet and the derived network: input normalization, stem and cell inputs."""

from __future__ import annotations

import torch
from torch import nn

from archadapt.operations import FactorizedReduce, ReLUConvBN, _batch_norm
from archadapt.search_space import InputSpec, SearchSpace


class Normalize(nn.Module):
    """Map images in [0, 1] to (x - mean) / std per channel, inside the graph."""

    def __init__(self, spec: InputSpec):
        super().__init__()
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std


def make_stem(spec: InputSpec, channels: int, track: bool) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(spec.channels, channels, 3, padding=1, bias=False),
        _batch_norm(channels, track),
    )


def make_preprocess(c_prev_prev: int, c_prev: int, c: int, reduction_prev: bool, track: bool):
    """Return the two 1x1 modules that bring the previous cells' outputs to `c` channels."""
    if reduction_prev:
        preprocess0: nn.Module = FactorizedReduce(c_prev_prev, c, track)
    else:
        preprocess0 = ReLUConvBN(c_prev_prev, c, 1, 1, 0, track)
    preprocess1 = ReLUConvBN(c_prev, c, 1, 1, 0, track)
    return preprocess0, preprocess1


def cell_channels(space: SearchSpace) -> list[tuple[int, int, int, bool, bool]]:
    """Return (c_prev_prev, c_prev, c, reduction, reduction_prev) for every cell.

    Each reduction cell doubles the channels unless the space sets constant_channels. A cell
    outputs `nodes * c` channels.
    """
    stem_channels = 2 * space.channels
    c_prev_prev, c_prev, c = stem_channels, stem_channels, space.channels
    reduction_prev = False
    layout = []
    for cell_type in space.cell_types():
        reduction = cell_type == "reduce"
        if reduction and not space.constant_channels:
            c *= 2
        layout.append((c_prev_prev, c_prev, c, reduction, reduction_prev))
        c_prev_prev, c_prev = c_prev, space.nodes * c
        reduction_prev = reduction
    return layout


def embedding_dim(space: SearchSpace) -> int:
    return space.nodes * cell_channels(space)[-1][2]


# Radius of the sphere the embeddings are projected onto. Prototype logits are negative squared
# distances between points on this sphere, so they stay within [-4 * r^2, 0] up to a shared
# offset, whatever the task. Unnormalized embeddings gave initial losses in the hundreds.
EMBEDDING_RADIUS = 3.0


def pool_features(space: SearchSpace, features: torch.Tensor) -> torch.Tensor:
    """Average the last cell's output (B, C, H, W) over positions, after a ReLU if the space sets final_relu."""
    if space.final_relu:
        features = torch.relu(features)
    return features.mean(dim=(2, 3))  # (B, C)


def scale_embeddings(features: torch.Tensor) -> torch.Tensor:
    """Project pooled features (B, D) onto the sphere of radius EMBEDDING_RADIUS."""
    norm = torch.sqrt((features * features).sum(dim=1, keepdim=True) + 1e-12)
    return EMBEDDING_RADIUS * features / norm

