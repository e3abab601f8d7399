"""Numeric precision of the training loops: float32, or bfloat16 autocast with float32 weights."""

from __future__ import annotations

import contextlib

import torch

from archadapt.config import PRECISIONS


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Return a context that runs the forward pass in `precision` on `device`.

    "bfloat16" autocasts matrix products and convolutions to bfloat16 while the weights, their
    gradients and the optimizer state stay float32, so the exported network is float32 either way.
    """
    if precision == "float32":
        return contextlib.nullcontext()
    if precision == "bfloat16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    raise ValueError(f"precision is {precision!r}; allowed: {list(PRECISIONS)}")
