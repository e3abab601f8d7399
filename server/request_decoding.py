"""Decoding and validation of AdaptRequest messages into a preprocessed TaskData.

Every problem is collected as a field violation (field, description) so that one
INVALID_ARGUMENT reply lists all of them.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from archadapt.adaptation import TaskData
from archadapt.preprocessing import to_input_spec
from archadapt.search_space import InputSpec
from archadapt_client.v1 import archadapt_pb2 as pb

# Pillow's own guard against decompression bombs, tightened to the largest accepted image.
Image.MAX_IMAGE_PIXELS = 4096 * 4096


@dataclass(frozen=True)
class RequestLimits:
    max_images: int = 5000
    min_classes: int = 2
    max_classes: int = 200
    max_image_side: int = 1024
    max_image_pixels: int = 1024 * 1024
    max_request_bytes: int = 64 * 1024 * 1024
    max_dataset_bytes: int = 1024 * 1024 * 1024

    def __post_init__(self) -> None:
        for name in ("max_images", "min_classes", "max_classes", "max_image_side", "max_image_pixels", "max_request_bytes", "max_dataset_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} is {getattr(self, name)}; it must be 1 or more")
        if self.min_classes < 2 or self.max_classes < self.min_classes:
            raise ValueError(f"classes must range from min_classes >= 2 to max_classes >= min_classes, not {self.min_classes} to {self.max_classes}")

    def to_proto(self) -> pb.RequestLimits:
        return pb.RequestLimits(
            max_images=self.max_images, min_classes=self.min_classes, max_classes=self.max_classes,
            max_image_side=self.max_image_side, max_request_bytes=self.max_request_bytes,
            max_image_pixels=self.max_image_pixels, max_dataset_bytes=self.max_dataset_bytes,
        )


class InvalidRequest(ValueError):
    """A request failed validation; `violations` lists (field, description) pairs."""

    def __init__(self, violations: list[tuple[str, str]]):
        self.violations = violations
        first_five = "; ".join(f"{field}: {description}" for field, description in violations[:5])
        more = f" (and {len(violations) - 5} more)" if len(violations) > 5 else ""
        super().__init__(f"invalid request: {first_five}{more}")


DTYPES = {pb.UINT8: np.dtype("uint8"), pb.FLOAT32: np.dtype("<f4")}


def decode_image(message: pb.Image, field: str, limits: RequestLimits) -> np.ndarray:
    """Return the image as a uint8 or float32 array (H, W) or (H, W, C); raise InvalidRequest."""
    kind = message.WhichOneof("content")
    if kind is None:
        raise InvalidRequest([(field, "image has neither encoded bytes nor a raw array; set one of them")])
    if kind == "encoded":
        return _decode_encoded(message.encoded, f"{field}.encoded", limits)
    return _decode_raw(message.raw, f"{field}.raw", limits)


def _check_size(height: int, width: int, field: str, limits: RequestLimits) -> None:
    if height < 1 or width < 1 or height > limits.max_image_side or width > limits.max_image_side:
        raise InvalidRequest([(field, f"image is {height}x{width} pixels; each side must be 1 to {limits.max_image_side} (max_image_side)")])
    if height * width > limits.max_image_pixels:
        raise InvalidRequest([(field, f"image is {height}x{width} = {height * width} pixels; at most {limits.max_image_pixels} are allowed (max_image_pixels)")])


def _decode_encoded(data: bytes, field: str, limits: RequestLimits) -> np.ndarray:
    if not data:
        raise InvalidRequest([(field, "encoded image is empty; send PNG or JPEG bytes")])
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in ("PNG", "JPEG"):
                raise InvalidRequest([(field, f"image format is {image.format}; allowed: PNG, JPEG")])
            _check_size(image.height, image.width, field, limits)
            image.load()
            if image.mode.startswith("I"):
                # 16-bit grayscale PNG ("I;16", "I"): scale to 8 bits as the client's loaders do,
                # because Pillow's convert("L") clips every value above 255 to white.
                wide = np.asarray(image, dtype=np.int64)
                return np.round(np.clip(wide, 0, 65535) / 257.0).astype(np.uint8)
            if image.mode in ("RGBA", "LA", "P", "PA"):
                image = image.convert("RGBA")
            elif image.mode not in ("L", "RGB"):
                image = image.convert("RGB") if image.mode in ("CMYK", "YCbCr") else image.convert("L")
            return np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, SyntaxError, ValueError) as error:
        if isinstance(error, InvalidRequest):
            raise
        raise InvalidRequest([(field, f"cannot decode image ({len(data)} bytes): {error}; send a valid PNG or JPEG")]) from error


def _decode_raw(raw: pb.RawArray, field: str, limits: RequestLimits) -> np.ndarray:
    if raw.dtype not in DTYPES:
        raise InvalidRequest([(f"{field}.dtype", f"dtype is {raw.dtype}; allowed: UINT8 (1) or FLOAT32 (2)")])
    shape = tuple(int(s) for s in raw.shape)
    if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] not in (1, 3, 4)):
        raise InvalidRequest([(f"{field}.shape", f"shape is {list(shape)}; allowed: [height, width] or [height, width, channels] with 1, 3 or 4 channels")])
    _check_size(shape[0], shape[1], f"{field}.shape", limits)
    dtype = DTYPES[raw.dtype]
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw.data) != expected:
        raise InvalidRequest([(f"{field}.data", f"data has {len(raw.data)} bytes but shape {list(shape)} of {dtype.name} needs {expected}")])
    array = np.frombuffer(raw.data, dtype=dtype).reshape(shape)
    if dtype == np.float32:
        if not np.isfinite(array).all():
            raise InvalidRequest([(f"{field}.data", "float32 data contains NaN or infinite values; send finite values in [0, 1]")])
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 1.0:
            raise InvalidRequest([(f"{field}.data", f"float32 values range from {low:g} to {high:g}; allowed: 0 to 1")])
    return array


def decode_request(request: pb.AdaptRequest, spec: InputSpec, limits: RequestLimits) -> TaskData:
    """Validate the request and convert its images to the input spec; raise InvalidRequest."""
    violations: list[tuple[str, str]] = []
    num_images, num_labels = len(request.images), len(request.labels)
    if num_images == 0:
        raise InvalidRequest([("images", "the dataset is empty; send at least one image per class for 2 or more classes")])
    if num_images > limits.max_images:
        raise InvalidRequest([("images", f"{num_images} images; at most {limits.max_images} are allowed (max_images)")])
    if num_labels != num_images:
        raise InvalidRequest([("labels", f"{num_labels} labels for {num_images} images; send exactly one label per image")])

    labels = np.asarray(request.labels, dtype=np.int64)
    negative = np.nonzero(labels < 0)[0]
    if len(negative):
        i = int(negative[0])
        raise InvalidRequest([(f"labels[{i}]", f"label is {int(labels[i])}; labels must be class indices >= 0")])
    num_classes = max(int(labels.max()) + 1, len(request.class_names))
    if num_classes > limits.max_classes:
        raise InvalidRequest([("labels", f"{num_classes} classes; at most {limits.max_classes} are allowed (max_classes)")])
    counts = np.bincount(labels, minlength=num_classes)
    present = int((counts > 0).sum())
    if present < limits.min_classes:
        violations.append(("labels", f"{present} class(es) have images; at least {limits.min_classes} are needed"))
    empty = [c for c in range(num_classes) if counts[c] == 0]
    if empty and present >= limits.min_classes:
        names = [request.class_names[c] for c in empty if c < len(request.class_names)]
        detail = f" ({', '.join(repr(n) for n in names[:5])})" if names else ""
        violations.append(("labels", f"classes {empty[:10]}{detail} have no image; every label in 0 to {num_classes - 1} needs at least one"))
    if request.class_names and len(request.class_names) < num_classes:
        violations.append(("class_names", f"{len(request.class_names)} names for {num_classes} classes; send one name per class or none"))
    if any(not name.strip() for name in request.class_names):
        violations.append(("class_names", "class names must not be empty"))

    images = []
    for index, message in enumerate(request.images):
        try:
            array = decode_image(message, f"images[{index}]", limits)
            images.append(to_input_spec(array, spec))
        except InvalidRequest as error:
            violations.extend(error.violations)
    if violations:
        raise InvalidRequest(violations)

    class_names = list(request.class_names) or [f"class_{c}" for c in range(num_classes)]
    return TaskData(
        images=torch.from_numpy(np.stack(images)),  # (N, C, H, W)
        labels=torch.from_numpy(labels),
        class_names=class_names,
    )
