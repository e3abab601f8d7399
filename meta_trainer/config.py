"""Typed configuration of a meta-training run, read from a JSON file."""

from __future__ import annotations

from dataclasses import dataclass, field

from archadapt.config import InnerLoopConfig, check_choice, check_range
from archadapt.conv4 import ARCHITECTURES, DEFAULT_CHANNELS, check_input_size
from archadapt.errors import ConfigError
from archadapt.genotype import Genotype
from archadapt.search_space import InputSpec, SearchSpace

META_GRADIENTS: tuple[str, ...] = ("first_order", "second_order", "reptile")


@dataclass(frozen=True)
class TaskConfig:
    """The episodes of meta-training: way, shot and query size ranges."""

    min_way: int = 2
    max_way: int = 20
    min_shot: int = 1
    max_shot: int = 10
    query_per_class: int = 5
    max_classes_per_script: int = 200  # cap on classes per script in the glyph bank

    def __post_init__(self) -> None:
        check_range("min_way", self.min_way, 2, 1000)
        check_range("max_way", self.max_way, self.min_way, 1000)
        check_range("min_shot", self.min_shot, 1, 1000)
        check_range("max_shot", self.max_shot, self.min_shot, 1000)
        check_range("query_per_class", self.query_per_class, 1, 1000)
        check_range("max_classes_per_script", self.max_classes_per_script, 1, 100_000)


@dataclass(frozen=True)
class MetaTrainConfig:
    """Everything that determines a meta-training run; written beside every checkpoint."""

    search_space: SearchSpace = SearchSpace(channels=12, cells=3, reduce_cells=(0, 2))
    input_spec: InputSpec = InputSpec()
    tasks: TaskConfig = TaskConfig()
    inner: InnerLoopConfig = InnerLoopConfig()
    meta_gradient: str = "first_order"  # "first_order", "second_order" or "reptile"
    meta_lr: float = 1e-3  # Adam step size of the prior weights
    meta_lr_alpha: float = 3e-3  # Adam step size of the prior alpha logits
    # Outer steps at the start in which the alpha logits stay fixed, so that the weights learn
    # under near-uniform architectures before the alphas choose among primitives. Without it, a
    # large meta_lr_alpha settles on `none` and pooling while every convolution is still untrained.
    alpha_warmup_steps: int = 0
    meta_batch_size: int = 4  # tasks per outer step
    meta_steps: int = 1000  # outer steps
    val_interval: int = 50  # outer steps between meta_val evaluations
    val_tasks: int = 40  # meta_val tasks per evaluation
    checkpoint_interval: int = 25  # outer steps between checkpoints
    max_wall_minutes: float = 0.0  # stop and save after this many minutes (0: no limit)
    seed: int = 0
    glyph_cache_dir: str = ".cache/glyphs"  # relative to the working directory
    font_dir: str = "/usr/share/fonts/truetype/noto"
    # A genotype in its JSON form that fixes the architecture, so that only the weights are
    # meta-learned (the fixed-architecture baseline); None searches the whole space.
    fixed_genotype: dict | None = None
    # "supernet" searches architectures. "conv4" meta-learns the weights of MAML's 4-layer
    # convolutional network instead (the fixed-architecture baseline of meta-learning).
    architecture: str = "supernet"
    conv4_channels: int = DEFAULT_CHANNELS  # filters per convolution of conv4 (unused by the supernet)

    def __post_init__(self) -> None:
        check_choice("meta_gradient", self.meta_gradient, META_GRADIENTS)
        check_choice("architecture", self.architecture, ARCHITECTURES)
        check_range("conv4_channels", self.conv4_channels, 1, 1024)
        check_range("meta_lr", self.meta_lr, 0.0, 10.0)
        check_range("meta_lr_alpha", self.meta_lr_alpha, 0.0, 10.0)
        check_range("alpha_warmup_steps", self.alpha_warmup_steps, 0, 10_000_000)
        check_range("meta_batch_size", self.meta_batch_size, 1, 10_000)
        check_range("meta_steps", self.meta_steps, 0, 10_000_000)
        check_range("val_interval", self.val_interval, 1, 10_000_000)
        check_range("val_tasks", self.val_tasks, 1, 100_000)
        check_range("checkpoint_interval", self.checkpoint_interval, 1, 10_000_000)
        check_range("max_wall_minutes", self.max_wall_minutes, 0.0, 1e6)
        if self.architecture == "conv4":
            if self.fixed_genotype is not None:
                raise ConfigError("fixed_genotype fixes a cell of the supernet, so it needs architecture 'supernet', not 'conv4'")
            if self.meta_lr_alpha != 0 or self.inner.inner_lr_alpha != 0:
                raise ConfigError(
                    f"architecture 'conv4' needs frozen alpha logits, but meta_lr_alpha is {self.meta_lr_alpha} and "
                    f"inner.inner_lr_alpha is {self.inner.inner_lr_alpha}; set both to 0"
                )
            check_input_size(self.input_spec)
        if self.fixed_genotype is not None:
            Genotype.from_dict(self.fixed_genotype).validate(self.search_space)
            if self.meta_lr_alpha != 0 or self.inner.inner_lr_alpha != 0:
                raise ConfigError(
                    f"fixed_genotype needs frozen alpha logits, but meta_lr_alpha is {self.meta_lr_alpha} and "
                    f"inner.inner_lr_alpha is {self.inner.inner_lr_alpha}; set both to 0"
                )
            space = self.search_space
            if not (space.sample_none or space.sample_two_inputs):
                # Without `none` in the draw, an edge the genotype drops would run a primitive drawn
                # uniformly from the others, so the network trained would not be the genotype.
                raise ConfigError(
                    "fixed_genotype needs search_space.sample_none or search_space.sample_two_inputs set to true, "
                    "but both are false. Set sample_none to true so that the edges the genotype drops stay empty."
                )
        if self.input_spec.height != self.input_spec.width:
            raise ValueError(
                f"glyph tasks render square images; input_spec is {self.input_spec.height}x{self.input_spec.width}"
            )
