"""Tests of the pieces behind the baseline comparison: the relaxed supernet mode, fixed
architectures, the random genotype, DARTS from scratch and the fixed-architecture meta-training."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from archadapt.conv4 import DEFAULT_CHANNELS, Conv4Network
from archadapt.checkpoint import load_checkpoint
from archadapt.config import FinetuneConfig, InnerLoopConfig, load_json
from archadapt.cost_model import CostModel
from archadapt.derivation import derive_genotype, genotype_logits, smallest_cost
from archadapt.errors import ConfigError
from archadapt.genotype import Genotype
from archadapt.network import count_parameters
from archadapt.posterior import op_probs
from archadapt.search_space import InputSpec, SearchSpace
from archadapt.supernet import ALPHA_NAMES, Supernet, sample_op_weights
from meta_trainer.config import MetaTrainConfig, TaskConfig
from meta_trainer.outer_loop import MetaTrainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from baselines import (
    METHODS,
    SMALL_CONV4_CHANNELS,
    Budget,
    CostBudget,
    Task,
    adapt_from_prior,
    darts_from_scratch,
    random_genotype,
    split_halves,
)
from meta_train_runs import make_bank

SPACE = SearchSpace(nodes=4)


def darts_v2() -> Genotype:
    return Genotype(
        normal=(("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
                ("skip_connect", 0), ("sep_conv_3x3", 1), ("skip_connect", 0), ("dil_conv_3x3", 2)),
        reduce=(("max_pool_3x3", 0), ("max_pool_3x3", 1), ("max_pool_3x3", 1), ("skip_connect", 2),
                ("max_pool_3x3", 0), ("skip_connect", 2), ("max_pool_3x3", 1), ("skip_connect", 2)),
    )


def test_relaxed_mode_is_softmax_without_noise() -> None:
    alpha = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
    first, index = sample_op_weights(alpha, 2.0, "relaxed", torch.Generator().manual_seed(1))
    second, _ = sample_op_weights(alpha, 2.0, "relaxed", torch.Generator().manual_seed(2))
    assert index is None
    torch.testing.assert_close(first, torch.softmax(alpha / 2.0, dim=-1))
    torch.testing.assert_close(first, second)


def test_relaxed_mode_passes_gradient_to_alphas(tiny_space: SearchSpace, tiny_spec: InputSpec) -> None:
    supernet = Supernet(tiny_space, tiny_spec)
    supernet(torch.rand(2, tiny_spec.channels, tiny_spec.height, tiny_spec.width), mode="relaxed").sum().backward()
    assert float(supernet.alpha_normal.grad.abs().sum()) > 0


def test_genotype_logits_derive_back() -> None:
    genotype = darts_v2()
    logits = genotype_logits(SPACE, genotype)
    probs = {cell_type: op_probs(alpha) for cell_type, alpha in logits.items()}
    assert derive_genotype(SPACE, probs) == genotype


def test_genotype_logits_fix_hard_samples() -> None:
    logits = genotype_logits(SPACE, darts_v2())
    _, expected = sample_op_weights(logits["normal"], 1.0, "mode", None)
    for seed in range(20):
        _, index = sample_op_weights(logits["normal"], 1.0, "hard", torch.Generator().manual_seed(seed))
        assert torch.equal(index, expected)


def test_random_genotype_is_valid_and_varies() -> None:
    genotypes = {random_genotype(SPACE, np.random.default_rng(seed)) for seed in range(10)}
    for genotype in genotypes:
        genotype.validate(SPACE)
    assert len(genotypes) > 5


def test_split_halves_covers_each_class_once() -> None:
    labels = torch.arange(3).repeat_interleave(4)
    first, second = split_halves(labels, torch.Generator().manual_seed(0))
    assert sorted(torch.cat([first, second]).tolist()) == list(range(12))
    assert torch.bincount(labels[first]).tolist() == [2, 2, 2]


def test_split_halves_one_shot_repeats() -> None:
    labels = torch.arange(5)
    first, second = split_halves(labels, torch.Generator().manual_seed(0))
    assert first.tolist() == second.tolist() == list(range(5))


def test_darts_scratch_learns_separable_task(tiny_space, tiny_spec, corner_squares) -> None:
    support_images, support_labels = corner_squares(4, seed=0)
    query_images, query_labels = corner_squares(4, seed=1)
    task = Task(support_images, support_labels, query_images, query_labels, int(support_labels.max()) + 1)
    outcome = darts_from_scratch(tiny_space, tiny_spec, task, 5, FinetuneConfig(steps=40, lr=0.01), seed=0)
    Genotype.from_json(outcome.genotype).validate(tiny_space)
    assert outcome.parameters > 0
    assert outcome.multiply_accumulates > 0
    assert outcome.accuracy > 1.5 / task.way  # well above chance


def fixed_config(space: SearchSpace, spec: InputSpec, genotype: Genotype, **overrides) -> MetaTrainConfig:
    return MetaTrainConfig(
        search_space=space,
        input_spec=spec,
        tasks=TaskConfig(min_way=2, max_way=3, min_shot=1, max_shot=2, query_per_class=2),
        inner=InnerLoopConfig(inner_steps=1, inner_lr=0.02, inner_lr_alpha=0.0),
        meta_lr_alpha=0.0,
        meta_batch_size=1,
        meta_steps=2,
        val_interval=100,
        fixed_genotype=genotype.to_dict(),
        **overrides,
    )


def test_fixed_genotype_needs_frozen_alphas(tiny_space: SearchSpace, tiny_spec: InputSpec) -> None:
    config = fixed_config(tiny_space, tiny_spec, random_genotype(tiny_space, np.random.default_rng(0)))
    with pytest.raises(ConfigError, match="meta_lr_alpha is 0.003 .* set both to 0"):
        dataclasses.replace(config, meta_lr_alpha=0.003)


def test_fixed_genotype_needs_empty_dropped_edges(tiny_space: SearchSpace, tiny_spec: InputSpec) -> None:
    genotype = random_genotype(tiny_space, np.random.default_rng(0))
    space_without_none = dataclasses.replace(tiny_space, sample_none=False)
    with pytest.raises(ConfigError, match="needs search_space.sample_none or search_space.sample_two_inputs"):
        fixed_config(space_without_none, tiny_spec, genotype)
    # Drawing two inputs per node drops the genotype's other edges, so that space is accepted.
    fixed_config(dataclasses.replace(space_without_none, sample_two_inputs=True), tiny_spec, genotype)


def test_fixed_genotype_keeps_architecture(tmp_path: Path) -> None:
    space = SearchSpace(channels=4, cells=2, reduce_cells=(1,), nodes=4)
    spec = InputSpec(height=16, width=16)
    genotype = random_genotype(space, np.random.default_rng(1))
    trainer = MetaTrainer(fixed_config(space, spec, genotype), tmp_path / "run", bank=make_bank(spec.height))
    weights_before = {n: p.detach().clone() for n, p in trainer.supernet.named_parameters() if not n.startswith("alpha_")}
    trainer.train()
    final = {t: op_probs(a.detach()) for t, a in trainer.supernet.alphas().items()}
    assert derive_genotype(space, final) == genotype
    torch.testing.assert_close(trainer.supernet.alpha_normal.detach(), genotype_logits(space, genotype)["normal"])
    moved = [n for n, p in trainer.supernet.named_parameters() if n in weights_before and not torch.equal(p, weights_before[n])]
    assert moved, "meta-training changed no weight"


def test_darts_starts_from_pretrained_weights(tiny_space, tiny_spec, corner_squares) -> None:
    support_images, support_labels = corner_squares(2, seed=0)
    task = Task(support_images, support_labels, *corner_squares(2, seed=1), int(support_labels.max()) + 1)
    # Zero weights make every embedding zero, so a network that inherits them predicts one class.
    zeros = {n: torch.zeros_like(t) for n, t in Supernet(tiny_space, tiny_spec).named_parameters()}
    inherited = darts_from_scratch(tiny_space, tiny_spec, task, 0, FinetuneConfig(steps=0), seed=0, pretrained=zeros)
    fresh = darts_from_scratch(tiny_space, tiny_spec, task, 0, FinetuneConfig(steps=0), seed=0)
    assert inherited.accuracy == pytest.approx(1.0 / task.way)
    assert fresh.accuracy != pytest.approx(1.0 / task.way)


def largest_parameters(model: CostModel) -> int:
    """Return the maximum parameter count of any genotype of the space: the two costliest inputs of every node."""
    none_index = model.space.primitives.index("none")
    total = model.fixed.parameters
    for costs in model.edge_costs["parameters"].values():
        costs = costs.clone()
        costs[:, none_index] = 0.0
        costliest = costs.max(dim=1).values  # (E,)
        for target in range(2, model.space.nodes + 2):
            incoming = sorted((float(costliest[edge.index]) for edge in model.space.incoming_edges(target)), reverse=True)
            total += int(incoming[0] + incoming[1])
    return total


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "configs" / "variants").glob("*.json")), ids=lambda p: p.stem)
def test_variant_configs_load(path: Path) -> None:
    config = load_json(MetaTrainConfig, path)
    default = load_json(MetaTrainConfig, path.parents[1] / "default.json")
    darts_space = load_json(MetaTrainConfig, path.parent / "darts-space-full.json")
    # The default config at 1,600 outer steps, the budget of the rows that compare with that prior.
    default_1600 = load_json(MetaTrainConfig, path.parent / "default-1600.json")
    if path.stem == "default-800":
        # The default prior before its run was first extended: half of its 1,600 outer steps.
        assert dataclasses.replace(config, meta_steps=default_1600.meta_steps) == default_1600
        assert config.meta_steps * 2 == default_1600.meta_steps
    elif path.stem == "default-1600":
        # The default prior before its run was continued to 2,800 outer steps, with wall time in proportion.
        assert dataclasses.replace(config, meta_steps=default.meta_steps, max_wall_minutes=default.max_wall_minutes) == default
        assert (config.meta_steps, default.meta_steps) == (1600, 2800)
        assert config.max_wall_minutes * default.meta_steps == default.max_wall_minutes * config.meta_steps
    elif path.stem == "default-genotype-full":
        # The committed prior's genotype, fixed, with alphas frozen. Sampling may still draw `none`,
        # so the edges the genotype drops stay empty. Everything else is the 1,600-step default config.
        committed = load_checkpoint(path.parents[2] / "checkpoints" / "default")
        probs = {cell_type: op_probs(committed.prior.parameters[name], committed.space) for cell_type, name in ALPHA_NAMES.items()}
        assert Genotype.from_dict(config.fixed_genotype) == derive_genotype(committed.space, probs)
        assert config.search_space == dataclasses.replace(default.search_space, sample_none=True)
        assert config.meta_lr_alpha == 0
        assert config.inner.inner_lr_alpha == 0
        unfixed = dataclasses.replace(
            config,
            search_space=default.search_space,
            fixed_genotype=None,
            meta_lr_alpha=default.meta_lr_alpha,
            alpha_warmup_steps=default.alpha_warmup_steps,
            inner=dataclasses.replace(config.inner, inner_lr_alpha=default.inner.inner_lr_alpha),
        )
        assert unfixed == default_1600
    elif path.stem == "reduce-every-cell":
        # The 1,600-step default config on a space of reduction cells that keep the channels. Only
        # the layout and the width change, and no genotype of the space is as large as the 4-layer network.
        space = config.search_space
        assert space.constant_channels
        assert space.reduce_cells == tuple(range(space.cells))
        layout = {"channels": space.channels, "cells": space.cells, "reduce_cells": space.reduce_cells, "constant_channels": True}
        assert dataclasses.replace(default.search_space, **layout) == space
        assert dataclasses.replace(config, search_space=default.search_space) == default_1600
        for way in (5, 20):
            conv4 = count_parameters(Conv4Network(config.input_spec, DEFAULT_CHANNELS, way))
            assert largest_parameters(CostModel.build(space, config.input_spec, way)) < conv4
    else:
        # The other variants change the prior that was the default on the DARTS cell space. The
        # width variant changes only the channels of its search space.
        assert dataclasses.replace(config.search_space, channels=darts_space.search_space.channels) == darts_space.search_space
        assert (config.search_space.channels != darts_space.search_space.channels) == path.stem.startswith("channels-")
    if path.stem == "conv4-2800":
        # The conv4-full run continued to 2,800 outer steps, with wall time in proportion.
        conv4 = load_json(MetaTrainConfig, path.parent / "conv4-full.json")
        assert dataclasses.replace(config, meta_steps=conv4.meta_steps, max_wall_minutes=conv4.max_wall_minutes) == conv4
        assert config.max_wall_minutes * conv4.meta_steps == conv4.max_wall_minutes * config.meta_steps
    assert config.input_spec == default.input_spec
    assert f"variant-{path.stem}" in METHODS, f"configs/variants/{path.name} has no row in benchmarks/baselines.py"


@pytest.mark.parametrize(
    ("name", "channels"), [("conv4-from-scratch", DEFAULT_CHANNELS), ("conv4-48-from-scratch", SMALL_CONV4_CHANNELS)]
)
def test_conv4_scratch_row_trains(tiny_spec: InputSpec, corner_squares, name: str, channels: int) -> None:
    support_images, support_labels = corner_squares(4, seed=0)
    task = Task(support_images, support_labels, *corner_squares(6, seed=1), int(support_labels.max()) + 1)
    checkpoint = SimpleNamespace(spec=tiny_spec)
    method = METHODS[name]
    assert not method.uses_meta_training
    assert not method.slow
    untrained = method.run(checkpoint, task, Budget(inner_steps=0, finetune_steps=0), 0)
    trained = method.run(checkpoint, task, Budget(inner_steps=0, finetune_steps=60), 0)
    assert trained.genotype == "conv4"
    assert trained.parameters == count_parameters(Conv4Network(tiny_spec, channels, task.way))
    assert trained.accuracy >= 0.9
    assert trained.accuracy > untrained.accuracy


def test_budget_row_stays_within_limit(checkpoint, corner_squares) -> None:
    support_images, support_labels = corner_squares(2, seed=0)
    task = Task(support_images, support_labels, *corner_squares(2, seed=1), int(support_labels.max()) + 1)
    serving = Budget(inner_steps=2, finetune_steps=2).serving()
    unlimited = adapt_from_prior(checkpoint, task, serving, seed=0)
    least = smallest_cost(CostModel.build(checkpoint.space, checkpoint.spec, task.way), "parameters")
    assert unlimited.parameters > least, "the tiny prior derives the cheapest genotype, so no limit can bind"

    limited = adapt_from_prior(checkpoint, task, serving, seed=0, cost_budget=CostBudget(max_parameters=least))
    assert limited.parameters <= least
    assert limited.genotype != unlimited.genotype
    assert METHODS["base-conv4-parameters"].uses_meta_training


def test_time_to_accuracy_keys_base_by_head_scale() -> None:
    from time_to_accuracy import result_key

    assert result_key("base", 300, 0, 0.1) != result_key("base", 300, 0, 1.0)
    assert result_key("darts", 3000, 0, 0.1) == result_key("darts", 3000, 0, 1.0)


def test_baseline_rows_key_by_head_scale() -> None:
    from baselines import run_key_of

    budget = Budget(inner_steps=10, finetune_steps=100)
    assert budget.serving().head_scale == 0.1
    assert run_key_of("prior/inner10/finetune100", "base", budget) == "prior/inner10/finetune100/head0.1"
    assert run_key_of("prior/inner10/finetune100", "darts-from-scratch", budget) == "prior/inner10/finetune100"


def test_variant_rows_key_by_their_checkpoint() -> None:
    from types import SimpleNamespace

    from baselines import run_key_of

    budget = Budget(inner_steps=10, finetune_steps=100)
    short = {"conv4": SimpleNamespace(checkpoint_id="glyphs-0-step60")}
    full = {"conv4": SimpleNamespace(checkpoint_id="glyphs-0-step800")}
    key = run_key_of("prior/inner10/finetune100", "variant-conv4", budget, short)
    assert key == "prior/inner10/finetune100/head0.1/conv4@glyphs-0-step60"
    assert run_key_of("prior/inner10/finetune100", "variant-conv4", budget, full) != key
    with pytest.raises(ValueError, match="variant checkpoint 'conv4'"):
        run_key_of("prior/inner10/finetune100", "variant-conv4", budget)
