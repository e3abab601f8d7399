"""Load labeled image datasets from folders, .npz files, IDX files and arrays.

Every loader returns a Dataset whose images are uint8 or float32 arrays of
shape (H, W) or (H, W, C) with C in {1, 3, 4}. Images may differ in size.
Invalid input raises DatasetError, which names the path or value and what
is allowed.
"""

from __future__ import annotations

import gzip
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image as PILImage
from PIL import UnidentifiedImageError

logger = logging.getLogger(__name__)

IMAGE_FILE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif"})
"""File extensions (lowercase) that load_image_folder reads; other files are skipped."""

ALLOWED_CHANNELS = (1, 3, 4)

PathLike = str | os.PathLike[str]


class DatasetError(ValueError):
    """A dataset path or value that cannot be loaded; the message names it and what is allowed."""


@dataclass(frozen=True)
class Dataset:
    """A labeled image dataset ready for ``Client.adapt``.

    Attributes:
        images: One uint8 or float32 array per image, (H, W) or (H, W, C)
            with C in {1, 3, 4}, or one stacked (N, H, W[, C]) array.
        labels: int64 array of shape (N,), class indices starting at 0.
        class_names: Names in label order, or None when the source has none.
    """

    images: NDArray[Any] | list[NDArray[Any]]
    labels: NDArray[np.int64]
    class_names: list[str] | None = None

    def __len__(self) -> int:
        return len(self.labels)


def load_dataset(path: PathLike, on_image: Callable[[int, int], None] | None = None) -> Dataset:
    """Load a dataset from a class-folder directory or an ``.npz`` file.

    A directory must contain one sub-folder per class (see
    load_image_folder, which calls ``on_image``). A file must end in
    ``.npz`` (see load_npz). IDX files come in pairs, so they are loaded
    with load_idx instead.
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"dataset path {path} does not exist")
    if path.is_dir():
        return load_image_folder(path, on_image)
    if path.suffix.lower() == ".npz":
        return load_npz(path)
    raise DatasetError(
        f"unsupported dataset path {path}: expected a directory with one sub-folder per class "
        "or an .npz file with 'images' and 'labels' arrays "
        "(for IDX files use load_idx(images_path, labels_path))"
    )


def load_image_folder(path: PathLike, on_image: Callable[[int, int], None] | None = None) -> Dataset:
    """Load a directory that contains one sub-folder of images per class.

    Class names are the sorted sub-folder names, and label c is the c-th
    name. Files with the extensions in IMAGE_FILE_EXTENSIONS are read with
    Pillow (see read_image_file) in sorted order. Hidden entries (names
    starting with ".") and other files are skipped. ``on_image(loaded,
    total)`` is called after each image is read, e.g. to draw a progress bar.

    Raises DatasetError when there is no class sub-folder, when a class
    sub-folder contains no image, or when an image cannot be decoded.
    """
    root = Path(path)
    if not root.is_dir():
        raise DatasetError(f"{root} is not a directory")
    class_dirs = sorted(
        (entry for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith(".")),
        key=lambda entry: entry.name,
    )
    if not class_dirs:
        raise DatasetError(
            f"{root} contains no class sub-folders; expected one sub-folder per class "
            f"with {_extension_list()} files, e.g. {root / 'cat' / '0001.png'}"
        )

    files_per_class: list[list[Path]] = []
    for class_dir in class_dirs:
        files = sorted(
            entry
            for entry in class_dir.iterdir()
            if entry.is_file()
            and not entry.name.startswith(".")
            and entry.suffix.lower() in IMAGE_FILE_EXTENSIONS
        )
        if not files:
            raise DatasetError(
                f"class folder {class_dir} contains no images; allowed extensions are {_extension_list()}"
            )
        files_per_class.append(files)

    total = sum(len(files) for files in files_per_class)
    images: list[NDArray[Any]] = []
    labels: list[int] = []
    for label, (class_dir, files) in enumerate(zip(class_dirs, files_per_class)):
        for file in files:
            images.append(read_image_file(file))
            labels.append(label)
            if on_image is not None:
                on_image(len(images), total)
        logger.debug("loaded %d images of class %r from %s", len(files), class_dir.name, class_dir)

    return Dataset(images=images, labels=np.asarray(labels, dtype=np.int64), class_names=[d.name for d in class_dirs])


def load_npz(path: PathLike) -> Dataset:
    """Load an ``.npz`` file with arrays ``images``, ``labels`` and optional ``class_names``.

    ``images`` is (N, H, W) or (N, H, W, C), uint8 or float in [0, 1];
    ``labels`` is an integer array of shape (N,); ``class_names`` is a
    string array. The file is read with ``allow_pickle=False``, so object
    arrays are rejected.
    """
    path = Path(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise DatasetError(f"cannot read {path} as an .npz file: {error}") from error
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DatasetError(
            f"{path} contains a single .npy array; expected an .npz archive with 'images' and 'labels' arrays"
        )

    with archive:
        missing = [key for key in ("images", "labels") if key not in archive.files]
        if missing:
            raise DatasetError(
                f"{path} is missing the array(s) {missing}; it contains {sorted(archive.files)}, "
                "expected 'images', 'labels' and optionally 'class_names'"
            )
        images = _read_npz_array(archive, "images", path)
        labels = _read_npz_array(archive, "labels", path)
        class_names = None
        if "class_names" in archive.files:
            names = _read_npz_array(archive, "class_names", path)
            if names.ndim != 1 or names.dtype.kind not in "US":
                raise DatasetError(
                    f"'class_names' in {path} has dtype {names.dtype} and shape {names.shape}; "
                    "expected a 1-D string array"
                )
            class_names = [_to_str(name) for name in names.tolist()]

    return from_arrays(images, labels, class_names, source=str(path))


def _read_npz_array(archive: np.lib.npyio.NpzFile, key: str, path: Path) -> NDArray[Any]:
    try:
        return archive[key]
    except ValueError as error:
        # np.load raises ValueError for object arrays when allow_pickle=False.
        raise DatasetError(
            f"cannot read {key!r} from {path}: {error}; store it as a numeric or string array, not an object array"
        ) from error


def _to_str(name: str | bytes) -> str:
    return name.decode("utf-8") if isinstance(name, bytes) else name


def from_arrays(
    images: NDArray[Any] | Sequence[NDArray[Any]],
    labels: Sequence[int] | NDArray[Any],
    class_names: Sequence[str] | None = None,
    *,
    source: str = "arrays",
) -> Dataset:
    """Check and wrap in-memory images and labels as a Dataset.

    ``images`` is one (N, H, W) or (N, H, W, C) array, or a sequence of
    (H, W) or (H, W, C) arrays. Images are uint8, or float32 with values in
    [0, 1]. float16 and float64 images are converted to float32.
    ``labels`` contains N non-negative integers. When ``class_names`` is given,
    every label must be below its length. ``source`` names the data in
    error messages.
    """
    checked_images: NDArray[Any] | list[NDArray[Any]]
    if isinstance(images, np.ndarray):
        checked_images = check_image_batch(images, f"images of {source}")
    else:
        checked_images = [
            check_image_array(image, f"image {index} of {source}") for index, image in enumerate(images)
        ]

    if len(checked_images) == 0:
        raise DatasetError(f"{source} contains no images")
    checked_labels = check_labels(labels, len(checked_images), source)

    names = None
    if class_names is not None:
        names = [str(name) for name in class_names]
        if int(checked_labels.max()) >= len(names):
            raise DatasetError(
                f"label {int(checked_labels.max())} in {source} has no class name; "
                f"{len(names)} class_names cover labels 0 to {len(names) - 1}"
            )
    return Dataset(images=checked_images, labels=checked_labels, class_names=names)


def check_image_array(image: Any, where: str) -> NDArray[Any]:
    """Validate one image array and return it as uint8 or float32.

    Accepts (H, W) or (H, W, C) arrays with C in {1, 3, 4} and H, W >= 1.
    uint8 is returned as is. float16, float32 and float64 must be finite and
    within [0, 1] and are returned as float32. ``where`` names the image in
    error messages, e.g. "image 3 of data.npz".
    """
    if not isinstance(image, np.ndarray):
        raise DatasetError(f"{where} is a {type(image).__name__}; expected a numpy array")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in ALLOWED_CHANNELS):
        raise DatasetError(
            f"{where} has shape {image.shape}; expected (H, W) or (H, W, C) with C in {ALLOWED_CHANNELS}"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise DatasetError(f"{where} has shape {image.shape}; height and width must be at least 1")
    return _check_pixel_values(image, where)


def check_image_batch(images: NDArray[Any], where: str) -> NDArray[Any]:
    """Validate a stacked (N, H, W) or (N, H, W, C) array of same-size images.

    The rules per image are those of check_image_array; the whole array is
    checked at once and returned as uint8 or float32.
    """
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[3] not in ALLOWED_CHANNELS):
        raise DatasetError(
            f"{where} have shape {images.shape}; expected (N, H, W) or (N, H, W, C) with C in {ALLOWED_CHANNELS}"
        )
    if images.shape[1] == 0 or images.shape[2] == 0:
        raise DatasetError(f"{where} have shape {images.shape}; height and width must be at least 1")
    return _check_pixel_values(images, where)


def _check_pixel_values(array: NDArray[Any], where: str) -> NDArray[Any]:
    """Return ``array`` as uint8, or as float32 after checking that its values lie in [0, 1]."""
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind != "f" or array.dtype.itemsize not in (2, 4, 8):
        raise DatasetError(
            f"{where} has dtype {array.dtype}; expected uint8 (0 to 255) or float32 (0.0 to 1.0)"
        )
    as_float32 = array.astype(np.float32, copy=False)
    if as_float32.size == 0:
        return as_float32
    if not np.all(np.isfinite(as_float32)):
        raise DatasetError(f"{where} contains NaN or infinite values; float images must be within [0, 1]")
    low, high = float(as_float32.min()), float(as_float32.max())
    if low < 0.0 or high > 1.0:
        raise DatasetError(
            f"{where} has values from {low:g} to {high:g}; float images must be within [0, 1] "
            "(divide uint8 data by 255 or pass it as uint8)"
        )
    return as_float32


def check_labels(labels: Sequence[int] | NDArray[Any], count: int, source: str) -> NDArray[np.int64]:
    """Validate ``count`` non-negative integer labels and return them as an int64 array.

    Labels must fit the int32 field of the request, so the largest allowed
    value is 2**31 - 1.
    """
    array = np.asarray(labels)
    if array.ndim != 1:
        raise DatasetError(f"labels of {source} have shape {array.shape}; expected one label per image, shape (N,)")
    if array.size and array.dtype.kind not in "iu":
        raise DatasetError(f"labels of {source} have dtype {array.dtype}; expected integers")
    if len(array) != count:
        raise DatasetError(f"{source} has {count} images but {len(array)} labels; expected one label per image")
    array = array.astype(np.int64)
    if array.size and (array.min() < 0 or array.max() > np.iinfo(np.int32).max):
        bad = int(array.min()) if array.min() < 0 else int(array.max())
        raise DatasetError(f"label {bad} of {source} is out of range; labels must be in [0, 2**31 - 1]")
    return array


def read_image_file(path: PathLike) -> NDArray[np.uint8]:
    """Decode an image file with Pillow into a uint8 array, keeping its size and channels.

    Grayscale becomes (H, W), RGB (H, W, 3) and RGBA (H, W, 4). Other modes
    are converted: 1-bit to grayscale, grayscale with alpha and palette
    images with transparency to RGBA, other palette, CMYK and YCbCr images
    to RGB. 16-bit and 32-bit integer grayscale is scaled to 8 bits
    (value / 257, the 16-bit range). Only the first frame of an animated
    GIF is read.
    """
    path = Path(path)
    try:
        with PILImage.open(path) as image:
            image.load()
            if image.mode == "F":
                raise DatasetError(
                    f"image {path} has 32-bit float pixels (Pillow mode F); convert it to 8-bit grayscale or RGB"
                )
            return _image_to_array(image)
    except (UnidentifiedImageError, OSError, ValueError) as error:
        if isinstance(error, DatasetError):
            raise
        raise DatasetError(f"cannot decode image {path}: {error}") from error


def _image_to_array(image: PILImage.Image) -> NDArray[np.uint8]:
    mode = image.mode
    if mode in ("L", "RGB", "RGBA"):
        return np.asarray(image, dtype=np.uint8)
    if mode == "1":
        return np.asarray(image.convert("L"), dtype=np.uint8)
    if mode in ("LA", "La", "PA", "RGBa") or (mode == "P" and "transparency" in image.info):
        return np.asarray(image.convert("RGBA"), dtype=np.uint8)
    if mode.startswith("I"):
        # "I", "I;16", "I;16B" and similar integer grayscale modes.
        wide = np.asarray(image, dtype=np.int64)
        return np.round(np.clip(wide, 0, 65535) / 257.0).astype(np.uint8)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


# IDX element types (third byte of the magic number) and their big-endian dtypes.
_IDX_DTYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def load_idx(images_path: PathLike, labels_path: PathLike) -> Dataset:
    """Load an IDX image file and its IDX label file, the format of MNIST.

    Each file may be gzip-compressed; compression is detected from its
    first bytes, not from its name. The image file must contain unsigned
    bytes of shape (N, H, W) or (N, H, W, C), or floats in [0, 1]. The label
    file must contain N integers. IDX files carry no class names.
    """
    images_path, labels_path = Path(images_path), Path(labels_path)
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim not in (3, 4):
        raise DatasetError(
            f"IDX image file {images_path} has shape {images.shape}; expected (N, H, W) or (N, H, W, C)"
        )
    if images.dtype != np.uint8 and images.dtype.kind != "f":
        raise DatasetError(
            f"IDX image file {images_path} has element type {images.dtype}; expected unsigned bytes (0x08) "
            "or floats in [0, 1] (0x0D, 0x0E)"
        )
    if labels.ndim != 1:
        raise DatasetError(f"IDX label file {labels_path} has shape {labels.shape}; expected (N,)")
    if labels.dtype.kind not in "iu":
        raise DatasetError(f"IDX label file {labels_path} has element type {labels.dtype}; expected integers")
    if len(images) != len(labels):
        raise DatasetError(
            f"IDX image file {images_path} has {len(images)} images but label file {labels_path} "
            f"has {len(labels)} labels; expected one label per image"
        )
    return from_arrays(images, labels, source=str(images_path))


def read_idx(path: PathLike) -> NDArray[Any]:
    """Read one IDX file (plain or gzip) into a native-endian numpy array."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise DatasetError(f"cannot read IDX file {path}: {error}") from error
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as error:
            raise DatasetError(f"cannot decompress gzip IDX file {path}: {error}") from error

    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DatasetError(
            f"{path} is not an IDX file: the magic number is {raw[:4].hex() or 'missing'}, "
            f"expected 0000 followed by a type byte in {[hex(code) for code in _IDX_DTYPES]} and a dimension count"
        )
    dtype = _IDX_DTYPES[raw[2]]
    ndim = raw[3]
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise DatasetError(f"IDX file {path} is truncated inside its header of {header_size} bytes")
    shape = tuple(int(size) for size in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected_size = header_size + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected_size:
        raise DatasetError(
            f"IDX file {path} has {len(raw)} bytes but its header with shape {shape} "
            f"and element type {dtype} requires {expected_size}"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header_size).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def _extension_list() -> str:
    return ", ".join(sorted(IMAGE_FILE_EXTENSIONS))
