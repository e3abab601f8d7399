"""Conversion of user images of any size and channel count to a checkpoint's input spec."""

from __future__ import annotations

import numpy as np

from archadapt.search_space import InputSpec
from archadapt_client.predict import to_model_input


def to_input_spec(image: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Convert one image (H, W) or (H, W, C) with C in 1, 3, 4 to float32 (C', H', W') in [0, 1].

    The conversion is the client's `to_model_input`, so that `archadapt predict` prepares
    images exactly as the server prepares the images it adapts on.
    """
    return to_model_input(image, spec)
