#!/usr/bin/env python3
"""Compare BASE with the alternatives a practitioner would pick, on the same few-shot tasks.

Settings: glyph tasks from the meta_test scripts (5-way and 20-way, 1 and 5 shots, the
Omniglot protocol) and Fashion-MNIST tasks (5-way and 10-way, 5 and 20 shots), a domain that
meta-training never saw. Task i of a setting is the same for every method, so differences are
paired. Every method gets the same adaptation budget: `--inner-steps` steps of architecture
and weight adaptation (or search), then `--finetune-steps` steps of training the derived
network with the serving recipe. Accuracy is measured in PyTorch on the query images.

Each finished task is one line in a JSON Lines file, so an interrupted run resumes where it
stopped when started again with the same options. The report (a table per setting with 95%
confidence intervals, parameters, multiply-accumulates, times and the meta-training cost each
row relies on) is appended to docs/benchmarks.md.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import datetime
import functools
import json
import math
import shlex
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from demo_task import fashion_mnist, mean_ci
from markdown_report import append_section, current_commit, machine_description
from sklearn.linear_model import LogisticRegression
from torch import nn

from archadapt.adaptation import ServingConfig
from archadapt.checkpoint import Checkpoint, load_checkpoint
from archadapt.config import FinetuneConfig
from archadapt.conv4 import DEFAULT_CHANNELS, Conv4Network
from archadapt.cost_model import Budget as CostBudget
from archadapt.cost_model import CostModel, budget_penalty
from archadapt.derivation import derive_genotype, derive_within_budget
from archadapt.finetune import finetune
from archadapt.genotype import Genotype
from archadapt.inner_loop import run_inner_loop
from archadapt.network import (
    DerivedNetwork,
    count_multiply_accumulates,
    count_parameters,
    inherit_weights,
)
from archadapt.posterior import op_probs
from archadapt.search_space import InputSpec, SearchSpace
from archadapt.supernet import ALPHA_NAMES, Supernet

ROOT = Path(__file__).resolve().parents[1]

# name -> (source, way, shot)
SETTINGS: dict[str, tuple[str, int, int]] = {
    "glyphs-5way-1shot": ("glyphs", 5, 1),
    "glyphs-5way-5shot": ("glyphs", 5, 5),
    "glyphs-20way-1shot": ("glyphs", 20, 1),
    "glyphs-20way-5shot": ("glyphs", 20, 5),
    "fashion-5way-5shot": ("fashion", 5, 5),
    "fashion-5way-20shot": ("fashion", 5, 20),
    "fashion-10way-5shot": ("fashion", 10, 5),
    "fashion-10way-20shot": ("fashion", 10, 20),
}
GLYPH_QUERY_PER_CLASS = 10
FASHION_QUERY_PER_CLASS = 50


@dataclass
class Task:
    """Support and query images (N, 1, H, W) float32 in [0, 1] with labels in [0, way)."""

    support_images: torch.Tensor
    support_labels: torch.Tensor
    query_images: torch.Tensor
    query_labels: torch.Tensor
    way: int


@dataclass(frozen=True)
class Outcome:
    accuracy: float
    parameters: int
    multiply_accumulates: int
    adapt_seconds: float  # architecture and weight adaptation, or search
    finetune_seconds: float  # deriving and training the final network
    genotype: str = ""


@dataclass(frozen=True)
class Budget:
    inner_steps: int
    finetune_steps: int

    def serving(self) -> ServingConfig:
        base = ServingConfig()
        return replace(
            base,
            inner=replace(base.inner, inner_steps=self.inner_steps),
            finetune=replace(base.finetune, steps=self.finetune_steps),
            validation_fraction=0.0,
        )


class TaskSource:
    """Draws task i of a setting the same way on every run."""

    def __init__(self, checkpoint: Checkpoint):
        self.checkpoint = checkpoint
        self._glyph_sampler = None
        self._fashion = None

    def task(self, setting: str, index: int) -> Task:
        source, way, shot = SETTINGS[setting]
        rng = np.random.default_rng([list(SETTINGS).index(setting), index, 7_919])
        if source == "glyphs":
            episode = self.glyph_sampler().sample(rng, way=way, shot=shot)
            return Task(episode.support_images, episode.support_labels, episode.query_images, episode.query_labels, way)
        train_images, train_labels, test_images, test_labels = self.fashion()
        classes = rng.choice(10, size=way, replace=False)
        support = np.concatenate([rng.choice(np.nonzero(train_labels == c)[0], shot, replace=False) for c in classes])
        query = np.concatenate([
            rng.choice(np.nonzero(test_labels == c)[0], FASHION_QUERY_PER_CLASS, replace=False) for c in classes
        ])
        labels = torch.arange(way).repeat_interleave
        return Task(
            torch.from_numpy(train_images[support]).float().div(255.0)[:, None],
            labels(shot),
            torch.from_numpy(test_images[query]).float().div(255.0)[:, None],
            labels(FASHION_QUERY_PER_CLASS),
            way,
        )

    def glyph_sampler(self):
        if self._glyph_sampler is None:
            from meta_trainer.config import MetaTrainConfig
            from meta_trainer.glyphs import load_or_build_glyph_bank
            from meta_trainer.task_distribution import EpisodeSampler

            config = MetaTrainConfig()
            bank = load_or_build_glyph_bank(
                ROOT / config.glyph_cache_dir, font_dir=Path(config.font_dir),
                image_size=self.checkpoint.spec.height, max_classes_per_script=config.tasks.max_classes_per_script,
            ).split("meta_test")
            # The renderings of one letter in the fonts of one family are nearly identical, so
            # without the meta-training distortions a glyph task measures font matching.
            self._glyph_sampler = EpisodeSampler(bank, 2, 20, 1, 10, GLYPH_QUERY_PER_CLASS, augment=True)
        return self._glyph_sampler

    def fashion(self):
        if self._fashion is None:
            self._fashion = (*fashion_mnist("train"), *fashion_mnist("t10k"))
        return self._fashion


def query_accuracy(network: nn.Module, task: Task) -> float:
    network.eval()
    with torch.no_grad():
        predictions = network(task.query_images).argmax(dim=1)
    return float((predictions == task.query_labels).float().mean())


def describe(network: nn.Module, spec: InputSpec, task: Task, adapt_seconds: float, finetune_seconds: float, genotype: str) -> Outcome:
    return Outcome(
        accuracy=query_accuracy(network, task),
        parameters=count_parameters(network),
        multiply_accumulates=count_multiply_accumulates(network, spec),
        adapt_seconds=adapt_seconds,
        finetune_seconds=finetune_seconds,
        genotype=genotype,
    )


def adapt_from_prior(
    checkpoint: Checkpoint,
    task: Task,
    config: ServingConfig,
    seed: int,
    *,
    genotype: Genotype | None = None,
    inherit: bool = True,
    cost_budget: CostBudget = CostBudget(),
) -> Outcome:
    """BASE and its variants: inner loop from the prior, derivation, fine-tuning.

    `genotype` replaces the derived one; `inherit=False` trains the derived network from its
    random initialization instead of the adapted supernet weights. With `cost_budget` set, the
    inner loop adds the budget term and derivation keeps to the budget, as a request with
    that budget does. A conv4 checkpoint has no genotype to derive, so its classifier is the conv4
    network with the task head as its last layer.
    """
    if genotype is not None and checkpoint.architecture != "supernet":
        raise ValueError(
            f"a genotype applies only to supernet checkpoints, but checkpoint {checkpoint.checkpoint_id} "
            f"is {checkpoint.architecture}; pass genotype=None"
        )
    if cost_budget.is_set and checkpoint.architecture != "supernet":
        raise ValueError(
            f"a cost budget applies only to supernet checkpoints, but checkpoint {checkpoint.checkpoint_id} "
            f"is {checkpoint.architecture}; pass no cost_budget"
        )
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    embedding_network = checkpoint.build_embedding_network()
    cost_model = CostModel.build(checkpoint.space, checkpoint.spec, task.way) if cost_budget.is_set else None
    alpha_penalty = None
    if cost_model is not None:
        alpha_penalty = functools.partial(budget_penalty, cost_model, cost_budget, weight=config.budget_penalty)
    started = time.perf_counter()
    posterior = run_inner_loop(
        embedding_network, checkpoint.prior, task.support_images, task.support_labels, task.way, config.inner,
        generator=generator, alpha_penalty=alpha_penalty,
    )
    adapt_seconds = time.perf_counter() - started

    started = time.perf_counter()
    if checkpoint.architecture == "conv4":
        network: nn.Module = Conv4Network(checkpoint.spec, checkpoint.conv4_channels, task.way)
        genotype_name = "conv4"
    else:
        if genotype is None:
            probs = {cell_type: op_probs(posterior.parameters[name], checkpoint.space).detach() for cell_type, name in ALPHA_NAMES.items()}
            if cost_model is None:
                genotype = derive_genotype(checkpoint.space, probs)
            else:
                genotype = derive_within_budget(checkpoint.space, probs, cost_model, cost_budget)
        network = DerivedNetwork(checkpoint.space, checkpoint.spec, genotype, task.way)
        genotype_name = genotype.to_json()
    if inherit:
        head = posterior.head
        inherit_weights(network, posterior.parameters, config.head_scale * head.weight, config.head_scale * head.bias)
    finetune(network, task.support_images, task.support_labels, config.finetune, generator)
    return describe(network, checkpoint.spec, task, adapt_seconds, time.perf_counter() - started, genotype_name)


def random_genotype(space: SearchSpace, rng: np.random.Generator) -> Genotype:
    """A genotype drawn uniformly from those the derivation rule can return."""
    primitives = [p for p in space.primitives if p != "none"]

    def cell() -> tuple[tuple[str, int], ...]:
        pairs = []
        for target in range(2, space.nodes + 2):
            sources = sorted(rng.choice(target, size=2, replace=False).tolist())
            pairs += [(str(rng.choice(primitives)), int(source)) for source in sources]
        return tuple(pairs)

    return Genotype(normal=cell(), reduce=cell())


def darts_from_scratch(
    space: SearchSpace,
    spec: InputSpec,
    task: Task,
    search_steps: int,
    finetune_config: FinetuneConfig,
    seed: int,
    pretrained: dict[str, torch.Tensor] | None = None,
) -> Outcome:
    """First-order DARTS on the task, then training of the derived network.

    The search alternates an Adam step on the alpha logits (on one half of each class's support
    images) and an SGD step on the weights (on the other half), both through the continuous
    relaxation. With one shot per class both steps use the whole support set. From a random
    initialization the derived network is trained from scratch. With `pretrained` supernet
    weights the search starts from them, with uniform alphas, and the derived network inherits
    the searched weights before training. Training uses the serving recipe.
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    started = time.perf_counter()
    supernet = Supernet(space, spec)
    if pretrained is not None:
        supernet.load_state_dict({n: t for n, t in pretrained.items() if n not in ALPHA_NAMES.values()}, strict=False)
    head = nn.Linear(supernet.embedding_dim, task.way)
    weights = [p for n, p in supernet.named_parameters() if n not in ALPHA_NAMES.values()] + list(head.parameters())
    weight_optimizer = torch.optim.SGD(weights, lr=0.025, momentum=0.9, weight_decay=3e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(weight_optimizer, max(1, search_steps), eta_min=1e-3)
    # DARTS uses 3e-4 over tens of thousands of steps, so a search of tens of steps needs a larger one.
    alpha_optimizer = torch.optim.Adam(list(supernet.alphas().values()), lr=3e-3, betas=(0.5, 0.999), weight_decay=1e-3)
    train_index, val_index = split_halves(task.support_labels, generator)

    def loss_on(index: torch.Tensor) -> torch.Tensor:
        batch = index[torch.randperm(len(index), generator=generator)[:64]]
        logits = head(supernet(task.support_images[batch], mode="relaxed"))
        return nn.functional.cross_entropy(logits, task.support_labels[batch])

    supernet.train()
    for _ in range(search_steps):
        alpha_optimizer.zero_grad(set_to_none=True)
        loss_on(val_index).backward()
        alpha_optimizer.step()
        weight_optimizer.zero_grad(set_to_none=True)
        loss_on(train_index).backward()
        nn.utils.clip_grad_norm_(weights, 5.0)
        weight_optimizer.step()
        schedule.step()
    probs = {cell_type: op_probs(alpha.detach(), space) for cell_type, alpha in supernet.alphas().items()}
    genotype = derive_genotype(space, probs)
    search_seconds = time.perf_counter() - started

    started = time.perf_counter()
    network = DerivedNetwork(space, spec, genotype, task.way)
    if pretrained is not None:
        inherit_weights(network, dict(supernet.named_parameters()), head.weight, head.bias)
    finetune(network, task.support_images, task.support_labels, finetune_config, generator)
    return describe(network, spec, task, search_seconds, time.perf_counter() - started, genotype.to_json())


def split_halves(labels: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Split each class's examples in two halves. With one example per class, both halves are all examples."""
    if int(torch.bincount(labels).min()) < 2:
        everything = torch.arange(len(labels))
        return everything, everything
    first, second = [], []
    for c in range(int(labels.max()) + 1):
        members = torch.nonzero(labels == c).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        first.append(members[: len(members) // 2])
        second.append(members[len(members) // 2 :])
    return torch.cat(first), torch.cat(second)


def logistic_regression(task: Task) -> Outcome:
    started = time.perf_counter()
    support = task.support_images.flatten(1).numpy()
    model = LogisticRegression(max_iter=2000).fit(support, task.support_labels.numpy())
    accuracy = float(model.score(task.query_images.flatten(1).numpy(), task.query_labels.numpy()))
    features = support.shape[1]
    return Outcome(accuracy, (features + 1) * task.way, features * task.way, 0.0, time.perf_counter() - started)


@dataclass(frozen=True)
class Method:
    description: str
    run: Callable[[Checkpoint, Task, Budget, int], Outcome]
    uses_meta_training: bool
    slow: bool = False  # measured on --slow-tasks tasks per setting
    # Name of the meta-training variant (configs/variants/NAME.json) whose checkpoint, in
    # --variants-dir/NAME, the row adapts. None adapts the checkpoint given by --checkpoint.
    variant: str | None = None
    # Row that the difference column pairs each task with, normally one meta-trained with the same budget.
    reference: str = "base"


def _with_inner(budget: Budget, **changes) -> ServingConfig:
    config = budget.serving()
    return replace(config, inner=replace(config.inner, **changes))


def _base(checkpoint: Checkpoint, task: Task, budget: Budget, seed: int) -> Outcome:
    return adapt_from_prior(checkpoint, task, budget.serving(), seed)


def _fixed_architecture(checkpoint: Checkpoint, task: Task, budget: Budget, seed: int) -> Outcome:
    return adapt_from_prior(checkpoint, task, _with_inner(budget, inner_lr_alpha=0.0), seed)


def _random_genotype(checkpoint: Checkpoint, task: Task, budget: Budget, seed: int) -> Outcome:
    genotype = random_genotype(checkpoint.space, np.random.default_rng([seed, 104_729]))
    return adapt_from_prior(checkpoint, task, _with_inner(budget, inner_lr_alpha=0.0), seed, genotype=genotype)


def _darts(checkpoint: Checkpoint, task: Task, budget: Budget, seed: int) -> Outcome:
    return darts_from_scratch(checkpoint.space, checkpoint.spec, task, budget.inner_steps, budget.serving().finetune, seed)


def _pretrained_darts(checkpoint: Checkpoint, task: Task, budget: Budget, seed: int) -> Outcome:
    return darts_from_scratch(
        checkpoint.space, checkpoint.spec, task, budget.inner_steps, budget.serving().finetune, seed,
        pretrained=checkpoint.prior.parameters,
    )


# Width of the conv4 row sized to BASE: 63,269 to 64,004 parameters at 5 to 20 ways, below the
# per-setting means of 65,908 to 70,999 of the networks BASE derives from the default checkpoint.
SMALL_CONV4_CHANNELS = 48


def _conv4_from_scratch(channels: int) -> Callable[[Checkpoint, Task, Budget, int], Outcome]:
    """Return a row that trains MAML's 4-layer network, `channels` filters per layer, from random weights."""

    def run(checkpoint: Checkpoint, task: Task, budget: Budget, seed: int) -> Outcome:
        generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        network = Conv4Network(checkpoint.spec, channels, task.way)
        started = time.perf_counter()
        finetune(network, task.support_images, task.support_labels, budget.serving().finetune, generator)
        return describe(network, checkpoint.spec, task, 0.0, time.perf_counter() - started, "conv4")

    return run


def _within_conv4_parameters(checkpoint: Checkpoint, task: Task, budget: Budget, seed: int) -> Outcome:
    """Run BASE with a parameter budget equal to the count of MAML's 4-layer network for the task's way."""
    limit = count_parameters(Conv4Network(checkpoint.spec, DEFAULT_CHANNELS, task.way))
    return adapt_from_prior(checkpoint, task, budget.serving(), seed, cost_budget=CostBudget(max_parameters=limit))


def _scratch_weights(checkpoint: Checkpoint, task: Task, budget: Budget, seed: int) -> Outcome:
    return adapt_from_prior(checkpoint, task, budget.serving(), seed, inherit=False)


def _inner_variant(**changes) -> Callable[[Checkpoint, Task, Budget, int], Outcome]:
    def run(checkpoint: Checkpoint, task: Task, budget: Budget, seed: int) -> Outcome:
        return adapt_from_prior(checkpoint, task, _with_inner(budget, **changes), seed)

    return run


METHODS: dict[str, Method] = {
    "base": Method("BASE: architecture and weights adapted from the prior", _base, True),
    "base-conv4-parameters": Method(
        "BASE with a parameter budget of the 4-layer convolutional network's count", _within_conv4_parameters, True,
    ),
    "base-fixed-architecture": Method("BASE without architecture adaptation (the prior's genotype)", _fixed_architecture, True),
    "random-genotype": Method("random genotype with meta-learned weights", _random_genotype, True),
    "darts-from-scratch": Method("first-order DARTS from scratch on the task", _darts, False, slow=True),
    "logistic-regression": Method("logistic regression on raw pixels", lambda c, t, b, s: logistic_regression(t), False),
    "conv4-from-scratch": Method("4-layer convolutional network trained from random weights", _conv4_from_scratch(DEFAULT_CHANNELS), False),
    "conv4-48-from-scratch": Method(
        f"4-layer convolutional network, {SMALL_CONV4_CHANNELS} channels, trained from random weights",
        _conv4_from_scratch(SMALL_CONV4_CHANNELS), False,
    ),
    # Serving-time ablations of BASE.
    "soft-sampling": Method("BASE with soft Gumbel-Softmax in the inner loop", _inner_variant(sampling="soft"), True, slow=True),
    "constant-temperature": Method("BASE with temperature 1.0 throughout", _inner_variant(temperature_end=1.0), True, slow=True),
    "no-architecture-kl": Method("BASE without the architecture KL term in the inner loop", _inner_variant(beta_alpha=0.0), True, slow=True),
    "no-weight-kl": Method("BASE without the weight KL term in the inner loop", _inner_variant(beta_w=0.0), True, slow=True),
    "inner-steps-0": Method("BASE with no inner steps (the prior's mode, fine-tuned)", _inner_variant(inner_steps=0), True, slow=True),
    "inner-steps-50": Method("BASE with 50 inner steps", _inner_variant(inner_steps=50), True, slow=True),
    "scratch-weights": Method("BASE's genotype trained from random weights", _scratch_weights, True, slow=True),
}
VARIANT_RUNS = {"darts-cell": _fixed_architecture, "conv4": _fixed_architecture, "pretrained-supernet": _pretrained_darts}
# Rows that adapt checkpoints meta-trained with configs/variants/*.json. Most are meta-trained
# for 60 outer steps and compare with the "base" variant, trained for as long. The "-full" rows
# get the budget that FULL_BUDGETS names and compare with BASE.
SHORT_VARIANTS = {
    "base": "BASE meta-trained at the variants' budget",
    "darts-cell": "the DARTS (V2) cell, weights meta-learned by the same outer loop",
    "conv4": "4-layer convolutional network meta-learned by the same outer loop",
    "second-order": "BASE meta-trained with second-order meta-gradients",
    "reptile": "BASE meta-trained with Reptile",
    "no-architecture-kl": "BASE meta-trained without the architecture KL",
    "no-weight-kl": "BASE meta-trained without the weight KL",
    "pretrained-supernet": "a supernet trained on the meta_train tasks without an inner loop, then DARTS on the task",
    "meta-lr-alpha-0.03": "BASE meta-trained with alpha logits' learning rate 0.03 instead of 0.003",
    "meta-lr-alpha-0.1": "BASE meta-trained with alpha logits' learning rate 0.1 instead of 0.003",
    "meta-lr-0.003": "BASE meta-trained with weights' learning rate 0.003 instead of 0.001",
    "channels-24": "BASE meta-trained on a search space of 24 channels instead of 12",
}
METHODS.update({
    f"variant-{name}": Method(
        description, VARIANT_RUNS.get(name, _base), True, slow=True, variant=name,
        reference="base" if name == "base" else "variant-base",
    )
    for name, description in SHORT_VARIANTS.items()
})
# Meta-training budget of each "-full" row. The conv4 row gets the 1,600 outer steps that
# configs/default.json set until 2026-12-06. The other two keep the 800 steps it set before
# that, because 800 steps of either took over 30 minutes on 2 cores.
FULL_BUDGETS = {
    "conv4": "meta-trained for 1,600 outer steps, the default prior's budget until 2026-12-06",
    "darts-cell": "meta-trained for 800 outer steps, half the default prior's",
    "pretrained-supernet": "trained for 800 outer steps, half the default prior's",
}
METHODS.update({
    f"variant-{name}-full": Method(
        f"{SHORT_VARIANTS[name]}, {FULL_BUDGETS[name]}", VARIANT_RUNS[name], True,
        slow=name == "pretrained-supernet", variant=f"{name}-full",
    )
    for name in VARIANT_RUNS
})
# BASE's serving-time adaptation of a prior whose weights were trained without an inner loop and
# whose alpha logits stayed uniform, so the row separates the weight prior from the meta-learned alphas.
METHODS["base-pretrained-prior"] = Method(
    f"BASE adapting the supernet trained without an inner loop, {FULL_BUDGETS['pretrained-supernet']}", _base, True,
    variant="pretrained-supernet-full",
)
# BASE adapting the default prior until 2026-12-05, on the DARTS cell space, meta-trained with
# configs/variants/darts-space-full.json (the default config until then). Its run stopped at the
# 60-minute limit after 655 outer steps, so training it again may stop at another step. The
# benchmarked checkpoint is checkpoints/default at commit fcee7bc.
METHODS["variant-darts-space-full"] = Method(
    "BASE on the DARTS cell space (4 nodes, 12 channels, the 8 DARTS primitives), the default prior until 2026-12-05",
    _base, True, variant="darts-space-full",
)
# Earlier default priors: outer steps, then the commit whose checkpoints/default is benchmarked.
# configs/variants/default-STEPS.json trains each again, and the next default prior continued it.
EARLIER_DEFAULTS = {800: "034d54c", 1600: "ab15996"}
for steps, commit in EARLIER_DEFAULTS.items():
    METHODS[f"variant-default-{steps}"] = Method(
        f"BASE on the default space meta-trained for {steps:,} outer steps, the default prior at commit {commit}",
        _base, True, variant=f"default-{steps}",
    )
# The default prior's genotype with its weights meta-learned from random ones by the same outer
# loop (configs/variants/default-genotype-full.json). Architecture search usually trains the
# architecture it finds a second time without weight sharing, and this row does the same.
METHODS["variant-default-genotype-full"] = Method(
    "the 1,600-step default prior's genotype, weights meta-learned again from random ones by the same outer loop "
    "for 1,600 outer steps",
    _fixed_architecture, True, variant="default-genotype-full",
)
# The 4-layer network's run continued from 1,600 to 2,800 outer steps
# (configs/variants/conv4-2800.json), to compare with BASE at the default prior's budget.
# scripts/train_variants.sh starts it from the conv4-full checkpoint.
METHODS["variant-conv4-2800"] = Method(
    "4-layer convolutional network meta-learned by the same outer loop for 2,800 outer steps, the default prior's budget",
    _fixed_architecture, True, variant="conv4-2800",
)
# BASE on a space laid out like MAML's 4-layer network (configs/variants/reduce-every-cell.json):
# 4 reduction cells at one width of 24 channels, so every genotype has fewer parameters than that
# network. The rest is the default config.
METHODS["variant-reduce-every-cell"] = Method(
    "BASE on a space of 4 reduction cells that keep 24 channels, the 4-layer network's macro layout, "
    "meta-trained for 1,600 outer steps",
    _base, True, variant="reduce-every-cell",
)
HEADLINE = (
    "base", "base-fixed-architecture", "random-genotype", "darts-from-scratch", "logistic-regression", "conv4-from-scratch",
    "conv4-48-from-scratch",
)


def run_key_of(base_key: str, method: str, budget: Budget, checkpoints: dict[str | None, Checkpoint] | None = None) -> str:
    """Return the results key of `method`'s tasks under `base_key` (checkpoint and budget).

    Rows that adapt a prior fine-tune its task head, scaled by the serving head_scale, so their
    key names a scale other than 1 and a result made with another scale is not reused. A variant
    row's key also names its checkpoint, taken from `checkpoints`, so a variant meta-trained again
    for longer does not reuse the tasks of the shorter run.
    """
    key = base_key
    head_scale = budget.serving().head_scale
    if METHODS[method].uses_meta_training and head_scale != 1.0:
        key = f"{key}/head{head_scale:g}"
    variant = METHODS[method].variant
    if variant is not None:
        if checkpoints is None or variant not in checkpoints:
            raise ValueError(
                f"row {method} adapts the variant checkpoint {variant!r}, which is missing from checkpoints. "
                f"Load it with load_checkpoint and pass it under the key {variant!r}"
            )
        key = f"{key}/{variant}@{checkpoints[variant].checkpoint_id}"
    return key


def load_results(path: Path) -> dict[tuple, dict]:
    results = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                results[(row["run"], row["setting"], row["method"], row["task"])] = row
    return results


def meta_training_cost(checkpoint: Checkpoint) -> str:
    return f"{checkpoint.state.get('wall_seconds', 0.0) / 60:.0f} min, {checkpoint.state.get('tasks_seen', 0)} tasks"


def report(args: argparse.Namespace, run_key: str, results: dict[tuple, dict], checkpoints: dict[str | None, Checkpoint], settings: list[str], methods: list[str]) -> list[str]:
    checkpoint = checkpoints[None]
    lines = [
        "",
        f"## BASE against its baselines ({datetime.date.today().isoformat()})",
        "",
        f"- Command: `python benchmarks/baselines.py {' '.join(map(shlex.quote, sys.argv[1:]))}`",
        f"- Commit: {current_commit()}; checkpoint `{checkpoint.checkpoint_id}`",
        f"- Machine: {machine_description()}",
        f"- Adaptation budget of every row: {args.inner_steps} inner (or search) steps, then {args.finetune_steps} "
        "fine-tuning steps with the serving recipe; no validation split.",
        f"- Query images: {GLYPH_QUERY_PER_CLASS} per class for glyphs (meta_test scripts), "
        f"{FASHION_QUERY_PER_CLASS} per class for Fashion-MNIST (t10k file).",
        "- Meta-training: CPU wall time and tasks seen by the checkpoint a row adapts; variant rows adapt "
        "checkpoints trained with `configs/variants/NAME.json`.",
        "- Accuracy: mean over tasks with a 95% confidence interval. Difference: the paired per-task "
        "difference from the reference row on the tasks both ran, with its 95% interval. The reference "
        "is BASE, except for the variants meta-trained for 60 outer steps, whose reference is the base "
        "variant (the same meta-training budget). The BASE row's checkpoint meta-trained for "
        f"{checkpoint.state.get('step', 0):,} outer steps.",
        "",
    ]
    for setting in settings:
        def rows_of(method: str) -> dict[int, dict]:
            key = run_key_of(run_key, method, Budget(args.inner_steps, args.finetune_steps), checkpoints)
            return {task: row for (run, s, m, task), row in results.items() if run == key and s == setting and m == method}

        lines += [f"### {setting}", "", "| method | accuracy | tasks | difference from reference | parameters | MACs | adapt s | fine-tune s | meta-training |", "|---|---|---|---|---|---|---|---|---|"]
        for method in methods:
            rows = list(rows_of(method).values())
            if not rows:
                continue
            accuracy, ci = mean_ci([r["accuracy"] for r in rows])
            reference = rows_of(METHODS[method].reference)
            paired = [r["accuracy"] - reference[r["task"]]["accuracy"] for r in rows if r["task"] in reference]
            if method == "base" or len(paired) < 2:
                difference = "-"
            else:
                delta, delta_ci = mean_ci(paired)
                difference = f"{100 * delta:+.1f} ± {100 * delta_ci:.1f}"
            cost = meta_training_cost(checkpoints[METHODS[method].variant]) if METHODS[method].uses_meta_training else "none"
            lines.append(
                f"| {METHODS[method].description} | {100 * accuracy:.1f}% ± {100 * ci:.1f} | {len(rows)} | {difference} | "
                f"{np.mean([r['parameters'] for r in rows]):,.0f} | {np.mean([r['multiply_accumulates'] for r in rows]):,.0f} | "
                f"{np.mean([r['adapt_seconds'] for r in rows]):.2f} | {np.mean([r['finetune_seconds'] for r in rows]):.2f} | {cost} |"
            )
        lines.append("")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints" / "default", help="checkpoint directory")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS), help="settings to run (default: all)")
    parser.add_argument("--methods", nargs="+", default=list(HEADLINE), choices=list(METHODS), help="rows to run (default: the headline rows)")
    parser.add_argument("--tasks", type=int, default=100, help="tasks per setting for the fast rows")
    parser.add_argument("--slow-tasks", type=int, default=20, help="tasks per setting for slow rows (DARTS from scratch and ablations)")
    parser.add_argument("--inner-steps", type=int, default=10, help="inner-loop (or search) steps of every row")
    parser.add_argument("--finetune-steps", type=int, default=100, help="fine-tuning steps of every row (the server's default is 300; 100 keeps a full run to hours on 2 cores)")
    parser.add_argument("--results", type=Path, default=ROOT / ".cache" / "baselines" / "results.jsonl", help="JSON Lines file of finished tasks; a rerun resumes from it")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md", help="Markdown file the report is appended to")
    parser.add_argument("--report-only", action="store_true", help="write the report from the results file without running tasks")
    parser.add_argument("--variants-dir", type=Path, default=ROOT / ".cache" / "variants", help="directory of the variant checkpoints, one subdirectory per configs/variants/NAME.json")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    checkpoint = load_checkpoint(args.checkpoint)
    checkpoints: dict[str | None, Checkpoint] = {None: checkpoint}
    references = {METHODS[method].reference for method in args.methods}
    for method in set(args.methods) | references:
        variant = METHODS[method].variant
        if variant is not None and variant not in checkpoints:
            directory = args.variants_dir / variant
            if not (directory / "checkpoint.json").exists():
                parser.error(
                    f"row {method} needs the checkpoint {directory}; train it with "
                    f"`archadapt-meta-train --config configs/variants/{variant}.json --output {directory}`"
                )
            checkpoints[variant] = load_checkpoint(directory)
    budget = Budget(args.inner_steps, args.finetune_steps)
    run_key = f"{checkpoint.checkpoint_id}/inner{budget.inner_steps}/finetune{budget.finetune_steps}"
    args.results.parent.mkdir(parents=True, exist_ok=True)
    results = load_results(args.results)
    source = TaskSource(checkpoint)

    if not args.report_only:
        max_tasks = max(args.tasks, args.slow_tasks)
        total = sum(
            min(max_tasks, args.slow_tasks if METHODS[m].slow else args.tasks) for m in args.methods
        ) * len(args.settings)
        done = 0
        started = time.perf_counter()
        with open(args.results, "a") as handle:
            for index in range(max_tasks):
                for setting in args.settings:
                    task = None
                    for method in args.methods:
                        if index >= (args.slow_tasks if METHODS[method].slow else args.tasks):
                            continue
                        done += 1
                        method_key = run_key_of(run_key, method, budget, checkpoints)
                        key = (method_key, setting, method, index)
                        if key in results:
                            continue
                        task = task or source.task(setting, index)
                        outcome = METHODS[method].run(checkpoints[METHODS[method].variant], task, budget, index)
                        row = {"run": method_key, "setting": setting, "method": method, "task": index, **outcome.__dict__}
                        results[key] = row
                        handle.write(json.dumps(row) + "\n")
                        handle.flush()
                        print(
                            f"[{done}/{total}, {time.perf_counter() - started:.0f} s] {setting} task {index} {method}: "
                            f"{100 * outcome.accuracy:.1f}% ({outcome.adapt_seconds + outcome.finetune_seconds:.1f} s)",
                            flush=True,
                        )
    append_section(args.output, report(args, run_key, results, checkpoints, args.settings, args.methods))
    return 0


if __name__ == "__main__":
    sys.exit(main())
