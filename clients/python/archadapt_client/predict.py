"""Run an archadapt ONNX model with onnxruntime on images of any size and channel count.

onnxruntime is an optional dependency: install `archadapt-client[predict]`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image as PILImage

from archadapt_client.loaders import DatasetError, read_image_file

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


@dataclass(frozen=True)
class InputSpec:
    """The model's input, read from its `input_spec` metadata."""

    channels: int
    height: int
    width: int


@dataclass(frozen=True)
class Prediction:
    path: Path
    top: list[tuple[str, float]]  # (class name, probability), most probable first


class Model:
    """An archadapt ONNX model with its class names and input spec."""

    def __init__(self, path: str | Path):
        try:
            import onnxruntime
        except ImportError as error:
            raise ImportError("prediction needs onnxruntime; install archadapt-client[predict]") from error
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"model file {self.path} not found")
        try:
            self.session = onnxruntime.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own exception types for a bad file
            raise ValueError(f"cannot load {self.path} as an ONNX model: {error}") from error
        metadata = self.session.get_modelmeta().custom_metadata_map
        missing = [key for key in ("class_names", "input_spec") if key not in metadata]
        if missing:
            raise ValueError(f"{self.path} lacks the metadata {missing}; is it a model returned by archadapt?")
        self.class_names: list[str] = json.loads(metadata["class_names"])
        spec = json.loads(metadata["input_spec"])
        self.spec = InputSpec(channels=spec["channels"], height=spec["height"], width=spec["width"])

    def probabilities(self, images: NDArray[np.float32]) -> NDArray[np.float32]:
        """Return softmax probabilities (N, classes) for images (N, C, H, W) in [0, 1]."""
        logits = self.session.run(["logits"], {"images": images})[0]
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)

    def predict_files(self, paths: list[Path], top: int = 3) -> list[Prediction]:
        images = np.stack([to_model_input(read_image_file(path), self.spec) for path in paths])
        probabilities = self.probabilities(images)
        predictions = []
        for path, row in zip(paths, probabilities):
            order = np.argsort(-row)[:top]
            predictions.append(Prediction(path, [(self.class_names[i], float(row[i])) for i in order]))
        return predictions


def to_model_input(image: NDArray[Any], spec: InputSpec) -> NDArray[np.float32]:
    """Convert an image (H, W) or (H, W, C) to float32 (C, H, W) in [0, 1].

    `spec` is any object with `channels`, `height` and `width`. uint8 values are divided by 255,
    and float32 values must already lie in [0, 1]. Colour becomes grayscale by ITU-R 601 luma for
    a one-channel model, grayscale is repeated for a three-channel one, and alpha is composited
    onto black. The image is then resized with Pillow's bilinear filter. The server converts the
    images it adapts on with this function too, so predictions see the same input distribution.
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
            np.asarray(PILImage.fromarray(pixels[:, :, c], mode="F").resize((spec.width, spec.height), PILImage.BILINEAR))
            for c in range(pixels.shape[2])
        ]
        pixels = np.stack(planes, axis=2)
    return np.clip(pixels, 0.0, 1.0).transpose(2, 0, 1).astype(np.float32)


def image_files(arguments: list[Path]) -> list[Path]:
    """Expand folders into the image files they contain, recursively and in sorted order."""
    files: list[Path] = []
    for argument in arguments:
        if argument.is_dir():
            files.extend(sorted(p for p in argument.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()))
        elif argument.is_file():
            files.append(argument)
        else:
            raise DatasetError(f"{argument} is neither an image file nor a folder")
    if not files:
        raise DatasetError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {[str(a) for a in arguments]}")
    return files
