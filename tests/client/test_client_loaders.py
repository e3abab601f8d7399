"""Dataset loaders on real files written to a temporary directory."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from archadapt_client.loaders import (
    DatasetError,
    from_arrays,
    load_dataset,
    load_idx,
    load_npz,
    read_image_file,
)


def write_image(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    image.save(path)


def write_idx(path: Path, array: np.ndarray, type_code: int = 0x08, compress: bool = False) -> None:
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def test_folder_loads_sizes_and_modes(tmp_path: Path, rng: np.random.Generator) -> None:
    gray = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    rgb = rng.integers(0, 256, (9, 4, 3), dtype=np.uint8)
    rgba = rng.integers(0, 256, (6, 6, 4), dtype=np.uint8)
    write_image(tmp_path / "dog" / "b.png", rgb)
    write_image(tmp_path / "dog" / "a.png", gray)
    write_image(tmp_path / "cat" / "x.png", rgba)
    write_image(tmp_path / "cat" / "y.bmp", rgb)
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden").mkdir()

    dataset = load_dataset(tmp_path)

    assert dataset.class_names == ["cat", "dog"]
    assert dataset.labels.tolist() == [0, 0, 1, 1]
    assert dataset.labels.dtype == np.int64
    assert [image.shape for image in dataset.images] == [(6, 6, 4), (9, 4, 3), (5, 7), (9, 4, 3)]
    assert all(image.dtype == np.uint8 for image in dataset.images)
    np.testing.assert_array_equal(dataset.images[0], rgba)
    np.testing.assert_array_equal(dataset.images[1], rgb)
    np.testing.assert_array_equal(dataset.images[2], gray)
    np.testing.assert_array_equal(dataset.images[3], rgb)
    assert len(dataset) == 4


def test_read_image_file_converts_modes(tmp_path: Path, rng: np.random.Generator) -> None:
    rgb = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)

    palette_path = tmp_path / "palette.gif"
    Image.fromarray(rgb).convert("P").save(palette_path)
    assert read_image_file(palette_path).shape == (4, 5, 3)

    gray_alpha_path = tmp_path / "la.png"
    Image.fromarray(rgb).convert("LA").save(gray_alpha_path)
    assert read_image_file(gray_alpha_path).shape == (4, 5, 4)

    bilevel_path = tmp_path / "bilevel.png"
    Image.fromarray(rgb).convert("1").save(bilevel_path)
    bilevel = read_image_file(bilevel_path)
    assert bilevel.shape == (4, 5)
    assert set(np.unique(bilevel).tolist()) <= {0, 255}

    jpeg_path = tmp_path / "photo.jpg"
    Image.fromarray(rgb).save(jpeg_path, quality=95)
    assert read_image_file(jpeg_path).shape == (4, 5, 3)


def test_read_image_file_scales_16_bit(tmp_path: Path) -> None:
    wide = np.array([[0, 257, 65535]], dtype=np.uint16)
    path = tmp_path / "wide.png"
    Image.fromarray(wide).save(path)

    image = read_image_file(path)

    assert image.dtype == np.uint8
    assert image.tolist() == [[0, 1, 255]]


def test_npz_with_class_names(tmp_path: Path, rng: np.random.Generator) -> None:
    images = rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    path = tmp_path / "data.npz"
    np.savez(path, images=images, labels=np.array([0, 1, 2, 1]), class_names=np.array(["a", "b", "c"]))

    dataset = load_dataset(path)

    assert dataset.class_names == ["a", "b", "c"]
    assert dataset.labels.tolist() == [0, 1, 2, 1]
    assert isinstance(dataset.images, np.ndarray)
    np.testing.assert_array_equal(dataset.images, images)


def test_npz_without_class_names(tmp_path: Path, rng: np.random.Generator) -> None:
    images = rng.random((3, 5, 6), dtype=np.float64)
    path = tmp_path / "data.npz"
    np.savez_compressed(path, images=images, labels=np.array([0, 1, 0], dtype=np.uint8))

    dataset = load_npz(path)

    assert dataset.class_names is None
    assert dataset.images.dtype == np.float32
    assert dataset.images.shape == (3, 5, 6)
    np.testing.assert_allclose(dataset.images, images, rtol=1e-6)


@pytest.mark.parametrize("compress", [True, False], ids=["gzip", "plain"])
def test_idx_pair(tmp_path: Path, rng: np.random.Generator, compress: bool) -> None:
    images = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)
    labels = np.array([0, 1, 2, 3, 4, 5], dtype=np.uint8)
    write_idx(tmp_path / "images.idx", images, compress=compress)
    write_idx(tmp_path / "labels.idx", labels, compress=compress)

    dataset = load_idx(tmp_path / "images.idx", tmp_path / "labels.idx")

    np.testing.assert_array_equal(dataset.images, images)
    assert dataset.labels.tolist() == labels.tolist()
    assert dataset.class_names is None


def test_from_arrays_list_of_sizes() -> None:
    images = [np.zeros((3, 4), np.uint8), np.ones((5, 2, 3), np.float32)]

    dataset = from_arrays(images, [1, 0], ["a", "b"])

    assert [image.shape for image in dataset.images] == [(3, 4), (5, 2, 3)]
    assert dataset.class_names == ["a", "b"]


def test_missing_path_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"does-not-exist does not exist"):
        load_dataset(tmp_path / "does-not-exist")


def test_unsupported_file_error(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("1,2,3")

    with pytest.raises(DatasetError) as raised:
        load_dataset(path)

    assert "data.csv" in str(raised.value)
    assert ".npz" in str(raised.value)
    assert "load_idx" in str(raised.value)


def test_empty_folder_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as raised:
        load_dataset(tmp_path)

    assert str(tmp_path) in str(raised.value)
    assert "no class sub-folders" in str(raised.value)


def test_empty_class_folder_error(tmp_path: Path) -> None:
    write_image(tmp_path / "cat" / "a.png", np.zeros((2, 2), np.uint8))
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "readme.txt").write_text("no images here")

    with pytest.raises(DatasetError) as raised:
        load_dataset(tmp_path)

    assert str(tmp_path / "dog") in str(raised.value)
    assert ".png" in str(raised.value)


def test_corrupt_image_error(tmp_path: Path) -> None:
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "broken.png").write_bytes(b"not a png")

    with pytest.raises(DatasetError, match=r"cannot decode image .*broken\.png"):
        load_dataset(tmp_path)


def test_npz_missing_labels_error(tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    np.savez(path, images=np.zeros((2, 3, 3), np.uint8), targets=np.array([0, 1]))

    with pytest.raises(DatasetError) as raised:
        load_dataset(path)

    assert "['labels']" in str(raised.value)
    assert "'targets'" in str(raised.value)


def test_npz_count_mismatch_error(tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    np.savez(path, images=np.zeros((3, 3, 3), np.uint8), labels=np.array([0, 1]))

    with pytest.raises(DatasetError, match=r"has 3 images but 2 labels"):
        load_dataset(path)


def test_npz_object_array_error(tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    names = np.array(["a", None], dtype=object)
    np.savez(path, images=np.zeros((2, 3, 3), np.uint8), labels=np.array([0, 1]), class_names=names)

    with pytest.raises(DatasetError, match=r"'class_names'.*object array"):
        load_dataset(path)


def test_npz_label_without_name_error(tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    np.savez(path, images=np.zeros((2, 3, 3), np.uint8), labels=np.array([0, 2]), class_names=np.array(["a", "b"]))

    with pytest.raises(DatasetError, match=r"label 2 .*2 class_names cover labels 0 to 1"):
        load_dataset(path)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (np.zeros((2, 3, 3, 2), np.uint8), r"shape \(2, 3, 3, 2\)"),
        (np.zeros((2, 3, 3), np.int16), r"dtype int16; expected uint8"),
        (np.full((2, 3, 3), 2.0, np.float32), r"values from 2 to 2; float images must be within \[0, 1\]"),
        (np.full((2, 3, 3), np.nan, np.float32), r"NaN or infinite"),
        (np.zeros((2, 0, 3), np.uint8), r"height and width must be at least 1"),
    ],
    ids=["two-channels", "int16", "out-of-range", "nan", "zero-height"],
)
def test_from_arrays_image_errors(images: np.ndarray, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        from_arrays(images, [0, 1])


def test_from_arrays_negative_label_error() -> None:
    with pytest.raises(DatasetError, match=r"label -1 .*out of range"):
        from_arrays(np.zeros((2, 3, 3), np.uint8), [0, -1])


def test_idx_count_mismatch_error(tmp_path: Path) -> None:
    write_idx(tmp_path / "images.idx", np.zeros((3, 4, 4), np.uint8))
    write_idx(tmp_path / "labels.idx", np.zeros(2, np.uint8))

    with pytest.raises(DatasetError, match=r"has 3 images but label file .*has 2 labels"):
        load_idx(tmp_path / "images.idx", tmp_path / "labels.idx")


def test_idx_truncated_error(tmp_path: Path) -> None:
    write_idx(tmp_path / "images.idx", np.zeros((3, 4, 4), np.uint8))
    data = (tmp_path / "images.idx").read_bytes()
    (tmp_path / "images.idx").write_bytes(data[:-5])
    write_idx(tmp_path / "labels.idx", np.zeros(3, np.uint8))

    with pytest.raises(DatasetError, match=r"images\.idx has 59 bytes but .* requires 64"):
        load_idx(tmp_path / "images.idx", tmp_path / "labels.idx")


def test_idx_bad_magic_error(tmp_path: Path) -> None:
    (tmp_path / "images.idx").write_bytes(b"\x01\x02\x03\x04rest")
    write_idx(tmp_path / "labels.idx", np.zeros(3, np.uint8))

    with pytest.raises(DatasetError, match=r"is not an IDX file: the magic number is 01020304"):
        load_idx(tmp_path / "images.idx", tmp_path / "labels.idx")


def test_image_folder_reports_progress(tmp_path: Path) -> None:
    for class_name, count in (("cat", 2), ("dog", 3)):
        (tmp_path / class_name).mkdir()
        for index in range(count):
            Image.fromarray(np.full((4, 4), index, np.uint8)).save(tmp_path / class_name / f"{index}.png")
    calls: list[tuple[int, int]] = []

    dataset = load_dataset(tmp_path, on_image=lambda loaded, total: calls.append((loaded, total)))

    assert len(dataset) == 5
    assert calls == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]
