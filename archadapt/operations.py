"""The primitives of the search space as modules, built through one registry.

Every constructor takes (channels, stride, track_running_stats). Batch normalization has no
affine parameters, as in the DARTS search; the supernet uses batch statistics only
(track_running_stats=False) because its statistics change with every sampled architecture,
while the derived network keeps running statistics so that it exports to a fixed graph.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def _batch_norm(channels: int, track_running_stats: bool) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, affine=False, track_running_stats=track_running_stats)


class ReLUConvBN(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, track: bool):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False),
            _batch_norm(c_out, track),
        )


class DilConv(nn.Sequential):
    """ReLU, depthwise dilated convolution, pointwise convolution, batch norm."""

    def __init__(self, channels: int, kernel: int, stride: int, dilation: int, track: bool):
        padding = dilation * (kernel - 1) // 2
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(channels, channels, kernel, stride, padding, dilation=dilation, groups=channels, bias=False),
            nn.Conv2d(channels, channels, 1, bias=False),
            _batch_norm(channels, track),
        )


class SepConv(nn.Sequential):
    """Two stacked depthwise-separable convolutions; only the first has the stride."""

    def __init__(self, channels: int, kernel: int, stride: int, track: bool):
        padding = (kernel - 1) // 2
        super().__init__(
            DilConv(channels, kernel, stride, 1, track),
            DilConv(channels, kernel, 1, 1, track),
        )


class Zero(nn.Module):
    """The `none` primitive: zeros of the output's shape."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x * 0.0
        return x[:, :, :: self.stride, :: self.stride] * 0.0


class FactorizedReduce(nn.Module):
    """Halve the resolution with two offset stride-2 1x1 convolutions, concatenated."""

    def __init__(self, c_in: int, c_out: int, track: bool):
        super().__init__()
        if c_out % 2:
            raise ValueError(f"FactorizedReduce needs an even number of output channels, got {c_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.bn = _batch_norm(c_out, track)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        shifted = nn.functional.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))  # keeps odd sizes aligned
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(shifted)], dim=1))


OpConstructor = Callable[[int, int, bool], nn.Module]

OPS: dict[str, OpConstructor] = {
    "none": lambda c, stride, track: Zero(stride),
    "skip_connect": lambda c, stride, track: nn.Identity() if stride == 1 else FactorizedReduce(c, c, track),
    "max_pool_3x3": lambda c, stride, track: nn.MaxPool2d(3, stride=stride, padding=1),
    "avg_pool_3x3": lambda c, stride, track: nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False),
    "sep_conv_3x3": lambda c, stride, track: SepConv(c, 3, stride, track),
    "sep_conv_5x5": lambda c, stride, track: SepConv(c, 5, stride, track),
    "dil_conv_3x3": lambda c, stride, track: DilConv(c, 3, stride, 2, track),
    "dil_conv_5x5": lambda c, stride, track: DilConv(c, 5, stride, 2, track),
    "conv_3x3": lambda c, stride, track: ReLUConvBN(c, c, 3, stride, 1, track),
}
