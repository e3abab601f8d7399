"""The 4-layer convolutional network of MAML (Finn et al., 2017) as a fixed-architecture baseline.

Each of the 4 blocks is a 3x3 convolution (padding 1), batch norm, ReLU and 2x2 max-pooling, as
in `conv_block` of MAML's reference code (github.com/cbfinn/maml, utils.py) with max-pooling on,
the setting of its MiniImagenet runs. Its Omniglot runs use stride-2 convolutions instead.
`Conv4` replaces the supernet in the outer and inner loops, so the same outer loop meta-learns
its weights. `Conv4Network` is the classifier that inherits them, with the task head as its
linear layer.
"""

from __future__ import annotations

import torch
from torch import nn

from archadapt.cells import Normalize, scale_embeddings
from archadapt.errors import ConfigError
from archadapt.search_space import InputSpec, SearchSpace

# Embedding networks that a prior can belong to: the supernet of a search space, or conv4.
ARCHITECTURES: tuple[str, ...] = ("supernet", "conv4")
BLOCKS = 4
DEFAULT_CHANNELS = 64  # filters per convolution in MAML's Omniglot runs (32 in its MiniImagenet runs)
MIN_INPUT_SIDE = 2**BLOCKS  # each block halves the height and width, rounding down


def check_input_size(spec: InputSpec) -> None:
    """Raise ConfigError when the images are too small to keep a pixel after the 4 max-pools."""
    if spec.height < MIN_INPUT_SIDE or spec.width < MIN_INPUT_SIDE:
        raise ConfigError(
            f"conv4 needs images of at least {MIN_INPUT_SIDE}x{MIN_INPUT_SIDE} for its {BLOCKS} max-pools, "
            f"but input_spec is {spec.height}x{spec.width}; use larger images or architecture 'supernet'"
        )


def make_blocks(in_channels: int, channels: int, track_running_stats: bool) -> nn.Sequential:
    """Return the 4 blocks as `blocks.{i}.{0: conv, 1: batch norm}`, the names both networks share."""
    blocks = []
    for index in range(BLOCKS):
        blocks.append(nn.Sequential(
            # No bias, because the batch norm's learned offset follows.
            nn.Conv2d(in_channels if index == 0 else channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels, track_running_stats=track_running_stats),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ))
    return nn.Sequential(*blocks)


def embed_features(blocks: nn.Sequential, images: torch.Tensor) -> torch.Tensor:
    """Run the blocks on normalized images and return embeddings (B, channels) on the supernet's sphere."""
    features = blocks(images)  # (B, channels, H / 16, W / 16)
    # MAML's reference code averages the last feature map over positions for Omniglot, as here,
    # and flattens it for MiniImagenet. On 28x28 images the map is 1x1, so the two agree.
    return scale_embeddings(features.mean(dim=(2, 3)))


class Conv4(nn.Module):
    """Embedding network with the supernet's interface, for meta-learning a fixed architecture.

    It takes the supernet's forward arguments and ignores the architecture ones. `alpha_normal`
    and `alpha_reduce` have the search space's (edges, primitives) shape so that the code written
    for the supernet's parameters runs unchanged. No forward pass reads them, and configs that
    select conv4 set both alpha step sizes to 0, so they stay at zero and their KL terms are 0.
    """

    def __init__(self, space: SearchSpace, spec: InputSpec, channels: int = DEFAULT_CHANNELS):
        super().__init__()
        check_input_size(spec)
        self.space = space
        self.spec = spec
        self.channels = channels
        self.normalize = Normalize(spec)
        # Batch statistics only, as in the supernet, because the inner loop calls it with
        # parameters that change at every step.
        self.blocks = make_blocks(spec.channels, channels, track_running_stats=False)
        shape = (space.num_edges, space.num_primitives)
        self.alpha_normal = nn.Parameter(torch.zeros(shape))
        self.alpha_reduce = nn.Parameter(torch.zeros(shape))
        self.embedding_dim = channels

    def alphas(self) -> dict[str, torch.Tensor]:
        return {"normal": self.alpha_normal, "reduce": self.alpha_reduce}

    def forward(
        self,
        images: torch.Tensor,
        temperature: float = 1.0,
        mode: str = "hard",
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Embed images (B, C, H, W) in [0, 1] into (B, embedding_dim), ignoring the other arguments."""
        return embed_features(self.blocks, self.normalize(images))


class Conv4Network(nn.Module):
    """A classifier: images (B, C, H, W) float32 in [0, 1] to logits (B, classes).

    Its weights have the names of `Conv4`'s, so `network.inherit_weights` copies the adapted ones.
    """

    def __init__(self, spec: InputSpec, channels: int, num_classes: int):
        super().__init__()
        check_input_size(spec)
        self.normalize = Normalize(spec)
        # Running statistics, as in the derived network, so that it exports to a fixed graph.
        self.blocks = make_blocks(spec.channels, channels, track_running_stats=True)
        self.classifier = nn.Linear(channels, num_classes)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return embed_features(self.blocks, self.normalize(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(images))
