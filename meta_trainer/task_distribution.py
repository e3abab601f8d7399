"""Few-shot classification episodes drawn from a GlyphBank.

An episode picks ``way`` classes and, per class, ``shot`` support and
``query_per_class`` query examples. Examples are base renderings of the class
(reused when a class has fewer renderings than requested) with random affine
and stroke-thickness distortions, so two examples of one class rarely match
pixel for pixel. Sampling is a pure function of the NumPy generator passed to
``EpisodeSampler.sample``.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from meta_trainer.glyphs import GlyphBank



@dataclass(frozen=True)
class DistortionConfig:
    """Ranges of the random distortions applied to every episode image.

    Each parameter is drawn uniformly per image: rotation in
    [-max_rotation_degrees, max_rotation_degrees], isotropic scale in
    [min_scale, max_scale], shear in [-max_shear_degrees, max_shear_degrees],
    and translation along each axis in [-max_translation, max_translation]
    times the image side. Strokes are thinned with probability
    ``thin_probability`` and thickened with probability
    ``thicken_probability``, by blending the image with its 3x3 min-pool or
    max-pool at a strength drawn uniformly in [0, 1]. Thinning is skipped when
    it would leave less than ``min_thinned_ink_fraction`` of the ink, so thin
    glyphs do not vanish. Thickening is skipped when more than
    ``max_thickened_coverage`` of the pixels would be above 0.5, so dense bold
    glyphs do not merge into blobs.
    """

    max_rotation_degrees: float = 15.0
    min_scale: float = 0.8
    max_scale: float = 1.2
    max_shear_degrees: float = 10.0
    max_translation: float = 0.1
    thin_probability: float = 0.25
    thicken_probability: float = 0.25
    min_thinned_ink_fraction: float = 0.5
    max_thickened_coverage: float = 0.4

    def __post_init__(self) -> None:
        if not 0 < self.min_scale <= self.max_scale:
            raise ValueError(
                f"scale range must satisfy 0 < min_scale <= max_scale, got [{self.min_scale}, {self.max_scale}]"
            )
        if not 0 <= self.max_shear_degrees < 90:
            raise ValueError(f"max_shear_degrees must be in [0, 90), got {self.max_shear_degrees}")
        if self.max_rotation_degrees < 0 or self.max_translation < 0:
            raise ValueError(
                f"max_rotation_degrees and max_translation must be >= 0, "
                f"got {self.max_rotation_degrees} and {self.max_translation}"
            )
        probabilities = (self.thin_probability, self.thicken_probability)
        if min(probabilities) < 0 or sum(probabilities) > 1:
            raise ValueError(
                f"thin_probability and thicken_probability must be >= 0 with a sum <= 1, "
                f"got {self.thin_probability} and {self.thicken_probability}"
            )
        for name in ("min_thinned_ink_fraction", "max_thickened_coverage"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {value}")


def distort_glyphs(
    images: torch.Tensor, generator: torch.Generator, config: DistortionConfig = DistortionConfig()
) -> torch.Tensor:
    """Apply a random stroke thickness change, then a random affine warp, to each image.

    ``images`` is a float tensor (B, 1, H, W) in [0, 1] with ink = 1 on a zero
    background. Pixels warped in from outside the image are background. The
    result has the same shape, lies in [0, 1] and is a deterministic function
    of the generator state (CPU tensors).
    """
    batch = images.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(batch, generator=generator, dtype=images.dtype, device=images.device)

    # Stroke thickness. A min-pool is the negated max-pool of the negated image.
    stroke_choice = uniform(0.0, 1.0)
    strength = uniform(0.0, 1.0)[:, None, None, None]
    dilated = F.max_pool2d(images, kernel_size=3, stride=1, padding=1)
    eroded = -F.max_pool2d(-images, kernel_size=3, stride=1, padding=1)
    thickened = images + strength * (dilated - images)
    thinned = images + strength * (eroded - images)
    keeps_ink = thinned.sum(dim=(1, 2, 3)) >= config.min_thinned_ink_fraction * images.sum(dim=(1, 2, 3))
    stays_open = (thickened > 0.5).to(images.dtype).mean(dim=(1, 2, 3)) <= config.max_thickened_coverage
    thin = (stroke_choice < config.thin_probability) & keeps_ink
    thicken = (stroke_choice >= 1.0 - config.thicken_probability) & stays_open
    stroked = torch.where(thin[:, None, None, None], thinned, images)
    stroked = torch.where(thicken[:, None, None, None], thickened, stroked)

    # Forward map x_out = scale * R(angle) @ Shear(shear) @ x_in + shift, in the
    # normalized coordinates of affine_grid, where the image spans [-1, 1].
    angle = torch.deg2rad(uniform(-config.max_rotation_degrees, config.max_rotation_degrees))
    scale = uniform(config.min_scale, config.max_scale)
    shear_tangent = torch.tan(torch.deg2rad(uniform(-config.max_shear_degrees, config.max_shear_degrees)))
    shift = torch.stack(
        [uniform(-config.max_translation, config.max_translation) * 2.0 for _ in range(2)], dim=1
    )

    # affine_grid needs the inverse map (output pixel -> input location):
    # x_in = Shear^-1 @ R^T @ (x_out - shift) / scale.
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotation_transposed = torch.stack([torch.stack([cos, sin], dim=1), torch.stack([-sin, cos], dim=1)], dim=1)
    ones, zeros = torch.ones_like(cos), torch.zeros_like(cos)
    shear_inverse = torch.stack(
        [torch.stack([ones, -shear_tangent], dim=1), torch.stack([zeros, ones], dim=1)], dim=1
    )
    linear_inverse = shear_inverse @ rotation_transposed / scale[:, None, None]
    offset_inverse = -(linear_inverse @ shift[:, :, None])
    theta = torch.cat([linear_inverse, offset_inverse], dim=2)

    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    warped = F.grid_sample(stroked, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return warped.clamp_(0.0, 1.0)


@dataclass(frozen=True)
class Episode:
    """One few-shot task.

    Images are float32 tensors (N, 1, H, W) in [0, 1] with ink = 1. Labels are
    int64 in [0, way), where label ``k`` is ``class_names[k]``. Support and
    query sets are ordered by label: the first ``shot`` support images (and
    the first ``query_per_class`` query images) have label 0, and so on.
    """

    support_images: torch.Tensor
    support_labels: torch.Tensor
    query_images: torch.Tensor
    query_labels: torch.Tensor
    way: int
    shot: int
    class_names: list[str] = field(default_factory=list)

    @property
    def query_per_class(self) -> int:
        return len(self.query_labels) // self.way


def _as_int(name: str, value: object) -> int:
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}") from None


class EpisodeSampler:
    """Draws episodes with ``way`` and ``shot`` uniform over inclusive ranges.

    Raises ValueError unless 2 <= min_way <= max_way <= bank.num_classes,
    1 <= min_shot <= max_shot and query_per_class >= 1.
    """

    def __init__(
        self,
        bank: GlyphBank,
        min_way: int = 2,
        max_way: int = 20,
        min_shot: int = 1,
        max_shot: int = 10,
        query_per_class: int = 5,
        augment: bool = True,
        distortion: DistortionConfig = DistortionConfig(),
    ) -> None:
        self.bank = bank
        self.min_way = _as_int("min_way", min_way)
        self.max_way = _as_int("max_way", max_way)
        self.min_shot = _as_int("min_shot", min_shot)
        self.max_shot = _as_int("max_shot", max_shot)
        self.query_per_class = _as_int("query_per_class", query_per_class)
        self.augment = augment
        self.distortion = distortion

        num_classes = bank.num_classes
        if num_classes < 2:
            raise ValueError(f"the bank needs at least 2 classes for an episode, got {num_classes}")
        if not 2 <= self.min_way <= self.max_way:
            raise ValueError(f"min_way must be in [2, max_way={self.max_way}], got {self.min_way}")
        if self.max_way > num_classes:
            raise ValueError(
                f"max_way must be in [min_way={self.min_way}, {num_classes}] "
                f"because the bank has {num_classes} classes, got {self.max_way}"
            )
        if not 1 <= self.min_shot <= self.max_shot:
            raise ValueError(
                f"shot range must satisfy 1 <= min_shot <= max_shot, got [{self.min_shot}, {self.max_shot}]"
            )
        if self.query_per_class < 1:
            raise ValueError(f"query_per_class must be >= 1, got {self.query_per_class}")

        # Image indices of each class, in bank order.
        order = np.argsort(bank.labels, kind="stable")
        boundaries = np.cumsum(np.bincount(bank.labels, minlength=num_classes))[:-1]
        self._members_of_class: list[np.ndarray] = np.split(order, boundaries)

    def sample(self, rng: np.random.Generator, way: int | None = None, shot: int | None = None) -> Episode:
        """Draw one episode, using ``way`` or ``shot`` instead of a random draw when given.

        A fixed ``way`` may be any value in [2, bank.num_classes] and a fixed
        ``shot`` any value >= 1, so evaluation can use settings such as
        5-way 1-shot outside the training ranges. Per class, examples are taken
        from a fresh random permutation of its renderings, repeated as needed,
        so every rendering is used before any is reused.
        """
        num_classes = self.bank.num_classes
        if way is None:
            way = int(rng.integers(self.min_way, self.max_way + 1))
        else:
            way = _as_int("way", way)
            if not 2 <= way <= num_classes:
                raise ValueError(f"way must be in [2, {num_classes}] for this bank, got {way}")
        if shot is None:
            shot = int(rng.integers(self.min_shot, self.max_shot + 1))
        else:
            shot = _as_int("shot", shot)
            if shot < 1:
                raise ValueError(f"shot must be >= 1, got {shot}")

        classes = rng.choice(num_classes, size=way, replace=False)
        examples_per_class = shot + self.query_per_class
        support_indices: list[np.ndarray] = []
        query_indices: list[np.ndarray] = []
        for class_index in classes:
            members = self._members_of_class[class_index]
            repeats = math.ceil(examples_per_class / len(members))
            drawn = np.concatenate([rng.permutation(members) for _ in range(repeats)])[:examples_per_class]
            support_indices.append(drawn[:shot])
            query_indices.append(drawn[shot:])

        indices = np.concatenate(support_indices + query_indices)
        images = torch.from_numpy(self.bank.images[indices]).unsqueeze(1).to(torch.float32).div_(255.0)
        if self.augment:
            generator = torch.Generator().manual_seed(int(rng.integers(0, 2**63 - 1)))
            images = distort_glyphs(images, generator, self.distortion)

        num_support = way * shot
        return Episode(
            support_images=images[:num_support],
            support_labels=torch.arange(way, dtype=torch.int64).repeat_interleave(shot),
            query_images=images[num_support:],
            query_labels=torch.arange(way, dtype=torch.int64).repeat_interleave(self.query_per_class),
            way=way,
            shot=shot,
            class_names=[self.bank.class_names[c] for c in classes],
        )
