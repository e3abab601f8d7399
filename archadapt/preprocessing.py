"""Conversion of user images of any size and channel count to a checkpoint's input spec."""

from __future__ import annotations

import numpy as np
from PIL import Image

from archadapt.search_space import InputSpec


def to_input_spec(image: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Convert one image (H, W) or (H, W, C) with C in 1, 3, 4 to float32 (C', H', W') in [0, 1].

    uint8 values are divided by 255; float32 values must already lie in [0, 1]. Colour images
    become grayscale by ITU-R 601 luma when the spec has one channel, grayscale images are
    repeated to three channels when it has three, and an alpha channel is composited onto
    black. The image is then resized with Pillow's bilinear filter (antialiased).
    """
    if image.dtype == np.uint8:
        pixels = image.astype(np.float32) / 255.0
    else:
        pixels = image.astype(np.float32)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.shape[2] == 4:
        pixels = pixels[:, :, :3] * pixels[:, :, 3:4]
    if spec.channels == 1 and pixels.shape[2] == 3:
        pixels = pixels @ np.array([0.299, 0.587, 0.114], dtype=np.float32)[:, None]
    elif spec.channels == 3 and pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)

    if pixels.shape[:2] != (spec.height, spec.width):
        planes = [
            np.asarray(
                Image.fromarray(pixels[:, :, c], mode="F").resize((spec.width, spec.height), Image.BILINEAR)
            )
            for c in range(pixels.shape[2])
        ]
        pixels = np.stack(planes, axis=2)
    return np.clip(pixels, 0.0, 1.0).transpose(2, 0, 1).astype(np.float32)
