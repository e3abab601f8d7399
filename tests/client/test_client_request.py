"""Conversion of each accepted image kind into AdaptRequest messages."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from archadapt_client.client import build_request, phase_name
from archadapt_client.loaders import DatasetError
from archadapt_client.v1 import archadapt_pb2


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_uint8_batch_becomes_raw_arrays() -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)

    request = build_request(images, [0, 1])

    assert len(request.images) == 2
    for image, expected in zip(request.images, images, strict=True):
        assert image.WhichOneof("content") == "raw"
        assert image.raw.dtype == archadapt_pb2.UINT8
        assert list(image.raw.shape) == [3, 4]
        assert image.raw.data == expected.tobytes()
    assert list(request.labels) == [0, 1]


def test_float32_channels_last_little_endian() -> None:
    images = np.linspace(0, 1, 2 * 2 * 3 * 3, dtype=np.float32).reshape(2, 2, 3, 3)

    request = build_request(images, [1, 0])

    raw = request.images[1].raw
    assert raw.dtype == archadapt_pb2.FLOAT32
    assert list(raw.shape) == [2, 3, 3]
    assert raw.data == images[1].astype("<f4").tobytes()
    np.testing.assert_array_equal(np.frombuffer(raw.data, dtype="<f4").reshape(2, 3, 3), images[1])


def test_big_endian_float32_sent_little_endian() -> None:
    image = np.array([[0.25, 0.5]], dtype=">f4")

    request = build_request([image], [0])

    assert request.images[0].raw.data == np.array([[0.25, 0.5]], dtype="<f4").tobytes()


def test_float64_converted_to_float32() -> None:
    image = np.full((2, 2), 0.5, dtype=np.float64)

    request = build_request([image], [0])

    assert request.images[0].raw.dtype == archadapt_pb2.FLOAT32
    assert request.images[0].raw.data == np.full((2, 2), 0.5, dtype="<f4").tobytes()


def test_list_of_differing_arrays() -> None:
    small = np.zeros((2, 3), np.uint8)
    large = np.ones((5, 4, 4), np.uint8)
    non_contiguous = np.arange(36, dtype=np.uint8).reshape(6, 6)[:, ::2]

    request = build_request([small, large, non_contiguous], [0, 1, 0])

    assert [list(image.raw.shape) for image in request.images] == [[2, 3], [5, 4, 4], [6, 3]]
    assert request.images[2].raw.data == np.ascontiguousarray(non_contiguous).tobytes()


def test_png_bytes_sent_encoded() -> None:
    data = png_bytes(np.zeros((4, 4, 3), np.uint8))

    request = build_request([data, bytearray(data)], [0, 1])

    assert request.images[0].WhichOneof("content") == "encoded"
    assert request.images[0].encoded == data
    assert request.images[1].encoded == data


def test_paths_sent_encoded_or_decoded(tmp_path: Path) -> None:
    rgb = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    png_path = tmp_path / "a.png"
    jpeg_path = tmp_path / "b.jpg"
    bmp_path = tmp_path / "c.bmp"
    Image.fromarray(rgb).save(png_path)
    Image.fromarray(rgb).save(jpeg_path)
    Image.fromarray(rgb).save(bmp_path)

    request = build_request([png_path, str(jpeg_path), bmp_path], [0, 1, 1])

    assert request.images[0].encoded == png_path.read_bytes()
    assert request.images[1].encoded == jpeg_path.read_bytes()
    bmp = request.images[2]
    assert bmp.WhichOneof("content") == "raw"
    assert bmp.raw.dtype == archadapt_pb2.UINT8
    assert list(bmp.raw.shape) == [4, 5, 3]
    assert bmp.raw.data == rgb.tobytes()


def test_options_and_class_names() -> None:
    request = build_request(
        np.zeros((2, 2, 2), np.uint8),
        np.array([0, 1], dtype=np.int64),
        ["cat", "dog"],
        seed=2**64 - 1,
        inner_steps=3,
        finetune_steps=4,
    )

    assert list(request.class_names) == ["cat", "dog"]
    assert request.options.seed == 2**64 - 1
    assert request.options.inner_steps == 3
    assert request.options.finetune_steps == 4


def test_non_image_bytes_error() -> None:
    with pytest.raises(DatasetError, match=r"image 1 is 4 bytes starting with 47494638, not a PNG or JPEG"):
        build_request([png_bytes(np.zeros((2, 2), np.uint8)), b"GIF8"], [0, 1])


def test_unsupported_item_type_error() -> None:
    with pytest.raises(TypeError, match=r"image 0 is a int; expected a numpy array"):
        build_request([3], [0])


def test_single_path_instead_of_list_error(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"images is a single PosixPath|images is a single WindowsPath"):
        build_request(tmp_path / "a.png", [0])


def test_bad_channels_error() -> None:
    with pytest.raises(DatasetError, match=r"image 0 has shape \(2, 2, 2\)"):
        build_request([np.zeros((2, 2, 2), np.uint8)], [0])


def test_label_count_mismatch_error() -> None:
    with pytest.raises(DatasetError, match=r"has 2 images but 3 labels"):
        build_request(np.zeros((2, 2, 2), np.uint8), [0, 1, 1])


def test_float_label_error() -> None:
    with pytest.raises(DatasetError, match=r"dtype float64; expected integers"):
        build_request(np.zeros((2, 2, 2), np.uint8), [0.0, 1.0])


def test_empty_images_error() -> None:
    with pytest.raises(DatasetError, match=r"no images"):
        build_request([], [])


def test_out_of_range_option_error() -> None:
    with pytest.raises(ValueError, match=r"invalid inner_steps -1; expected an integer from 0 to 4294967295"):
        build_request(np.zeros((1, 2, 2), np.uint8), [0], inner_steps=-1)


def test_phase_name_strips_prefix() -> None:
    assert phase_name(archadapt_pb2.PHASE_FINETUNE) == "finetune"
    assert phase_name(99) == "phase_99"


def test_import_loads_no_torch() -> None:
    code = "import sys, archadapt_client, archadapt_client.cli; print('torch' in sys.modules)"

    output = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout

    assert output.strip() == "False"
