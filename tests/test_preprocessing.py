"""Tests of the conversion of user images to a checkpoint's input spec."""

from __future__ import annotations

import numpy as np
import pytest

from archadapt.preprocessing import to_input_spec
from archadapt.search_space import InputSpec

GRAY_SPEC = InputSpec(channels=1, height=16, width=16)
RGB_SPEC = InputSpec(channels=3, height=20, width=12, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
SPECS = [GRAY_SPEC, RGB_SPEC]


def random_image(shape: tuple[int, ...], dtype: type, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == np.uint8:
        return rng.integers(0, 256, size=shape, dtype=np.uint8)
    return rng.random(shape, dtype=np.float32)


IMAGES = {
    "uint8 gray": ((23, 31), np.uint8),
    "uint8 gray with channel axis": ((40, 40, 1), np.uint8),
    "uint8 rgb": ((9, 50, 3), np.uint8),
    "uint8 rgba": ((30, 17, 4), np.uint8),
    "float32 gray": ((64, 48), np.float32),
    "float32 rgb": ((11, 13, 3), np.float32),
    "float32 rgba": ((28, 28, 4), np.float32),
}


@pytest.mark.parametrize("spec", SPECS, ids=["gray spec", "rgb spec"])
@pytest.mark.parametrize("kind", list(IMAGES))
def test_converts_to_spec_shape(kind: str, spec: InputSpec) -> None:
    shape, dtype = IMAGES[kind]
    pixels = to_input_spec(random_image(shape, dtype), spec)
    assert pixels.dtype == np.float32
    assert pixels.shape == (spec.channels, spec.height, spec.width)
    assert pixels.min() >= 0.0
    assert pixels.max() <= 1.0
    assert pixels.max() > 0.0


@pytest.mark.parametrize("spec", SPECS, ids=["gray spec", "rgb spec"])
def test_uint8_is_divided_by_255(spec: InputSpec) -> None:
    image = np.full((spec.height, spec.width), 51, dtype=np.uint8)
    pixels = to_input_spec(image, spec)
    assert np.allclose(pixels, 0.2, atol=1e-6)


def test_same_size_gray_is_unchanged() -> None:
    image = random_image((16, 16), np.uint8)
    pixels = to_input_spec(image, GRAY_SPEC)
    assert np.allclose(pixels[0], image.astype(np.float32) / 255.0, atol=1e-6)


def test_constant_image_stays_constant() -> None:
    for shape in ((23, 31), (64, 48), (5, 7)):
        pixels = to_input_spec(np.full(shape, 0.75, dtype=np.float32), GRAY_SPEC)
        assert np.allclose(pixels, 0.75, atol=1e-5)


def test_rgb_to_gray_uses_luma() -> None:
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    image[:, :, 0] = 255
    assert np.allclose(to_input_spec(image, GRAY_SPEC), 0.299, atol=1e-5)
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    image[:, :, 1] = 255
    assert np.allclose(to_input_spec(image, GRAY_SPEC), 0.587, atol=1e-5)
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    image[:, :, 2] = 255
    assert np.allclose(to_input_spec(image, GRAY_SPEC), 0.114, atol=1e-5)


def test_gray_to_rgb_repeats_channel() -> None:
    image = random_image((20, 12), np.uint8)
    pixels = to_input_spec(image, RGB_SPEC)
    assert np.array_equal(pixels[0], pixels[1])
    assert np.array_equal(pixels[0], pixels[2])
    assert np.allclose(pixels[0], image.astype(np.float32) / 255.0, atol=1e-6)


def test_rgb_keeps_channel_order() -> None:
    image = np.zeros((10, 10, 3), dtype=np.uint8)
    image[:, :, 0] = 255
    image[:, :, 2] = 102
    pixels = to_input_spec(image, RGB_SPEC)
    assert np.allclose(pixels[0], 1.0, atol=1e-5)
    assert np.allclose(pixels[1], 0.0, atol=1e-5)
    assert np.allclose(pixels[2], 0.4, atol=1e-5)


def test_alpha_composites_onto_black() -> None:
    image = np.full((12, 12, 4), 255, dtype=np.uint8)
    image[:, :6, 3] = 0  # left half transparent
    image[:, 6:, 3] = 128
    pixels = to_input_spec(image, InputSpec(channels=1, height=12, width=12))
    assert np.allclose(pixels[0, :, :6], 0.0, atol=1e-6)
    assert np.allclose(pixels[0, :, 6:], 128 / 255, atol=1e-5)


def test_float_values_are_clipped() -> None:
    image = np.linspace(-0.5, 1.5, 16 * 16, dtype=np.float32).reshape(16, 16)
    pixels = to_input_spec(image, GRAY_SPEC)
    assert pixels.min() == 0.0
    assert pixels.max() == 1.0


def test_downscaling_is_antialiased() -> None:
    # A one-pixel checkerboard averages to grey when shrunk by 4; point sampling would keep 0 or 1.
    image = (np.indices((64, 64)).sum(axis=0) % 2).astype(np.float32)
    pixels = to_input_spec(image, GRAY_SPEC)
    assert np.allclose(pixels, 0.5, atol=0.05)
