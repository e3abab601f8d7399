"""Tests of the outer loop: the three meta-gradients, and a short meta-training run that resumes."""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from archadapt.checkpoint import backup_directory, load_checkpoint, load_extra_tensors
from archadapt.config import InnerLoopConfig
from archadapt.inner_loop import Prior, run_inner_loop
from archadapt.search_space import InputSpec, SearchSpace
from archadapt.supernet import ALPHA_NAMES, Supernet
from meta_trainer.config import META_GRADIENTS, MetaTrainConfig, TaskConfig
from meta_trainer.glyphs import GlyphBank
from meta_trainer.outer_loop import MetaTrainer, make_optimizer, meta_gradient
from meta_trainer.task_distribution import Episode
from meta_train_runs import make_bank

SEED = 0


def make_config(space: SearchSpace, spec: InputSpec, method: str, **overrides) -> MetaTrainConfig:
    return MetaTrainConfig(
        search_space=space,
        input_spec=spec,
        tasks=TaskConfig(min_way=2, max_way=3, min_shot=1, max_shot=2, query_per_class=2),
        inner=InnerLoopConfig(inner_steps=2, inner_lr=0.02),
        meta_gradient=method,
        meta_batch_size=1,
        seed=SEED,
        **overrides,
    )


def make_episode(corner_squares: Callable) -> Episode:
    support_images, support_labels = corner_squares(2, seed=0)
    query_images, query_labels = corner_squares(2, seed=1)
    return Episode(
        support_images=support_images,
        support_labels=support_labels,
        query_images=query_images,
        query_labels=query_labels,
        way=3,
        shot=2,
        class_names=["top left", "top right", "bottom left"],
    )


def make_supernet(config: MetaTrainConfig) -> tuple[Supernet, Prior]:
    """Return a supernet with zero .grad fields, as MetaTrainer.train prepares it, and its prior."""
    torch.manual_seed(SEED)
    supernet = Supernet(config.search_space, config.input_spec)
    for parameter in supernet.parameters():
        parameter.grad = torch.zeros_like(parameter)
    return supernet, Prior.from_supernet(supernet, config.inner.prior_sigma)


@pytest.mark.parametrize("method", META_GRADIENTS)
def test_meta_gradient_changes_theta(tiny_space: SearchSpace, tiny_spec: InputSpec, corner_squares: Callable, method: str) -> None:
    config = make_config(tiny_space, tiny_spec, method)
    supernet, prior = make_supernet(config)
    optimizer = make_optimizer(supernet, config)
    before = {name: t.detach().clone() for name, t in supernet.named_parameters()}

    loss = meta_gradient(supernet, prior, make_episode(corner_squares), config, torch.Generator().manual_seed(1), "cpu")
    for name in ("stem.0.weight", "alpha_normal", "alpha_reduce"):
        grad = dict(supernet.named_parameters())[name].grad
        assert bool(torch.isfinite(grad).all()), name
        assert grad.abs().sum().item() > 0.0, name
    optimizer.step()

    assert math.isfinite(loss)
    assert loss > 0.0
    parameters = dict(supernet.named_parameters())
    for name in ("stem.0.weight", "alpha_normal", "alpha_reduce"):
        assert not torch.equal(parameters[name].detach(), before[name]), name


def test_reptile_gradient_is_theta_minus_phi(tiny_space: SearchSpace, tiny_spec: InputSpec, corner_squares: Callable) -> None:
    config = make_config(tiny_space, tiny_spec, "reptile")
    supernet, prior = make_supernet(config)
    episode = make_episode(corner_squares)
    meta_gradient(supernet, prior, episode, config, torch.Generator().manual_seed(1), "cpu")

    posterior = run_inner_loop(
        supernet, prior, episode.support_images, episode.support_labels, episode.way, config.inner,
        generator=torch.Generator().manual_seed(1),
    )
    for name, parameter in supernet.named_parameters():
        expected = (parameter.detach() - posterior.parameters[name].detach()) / config.meta_batch_size
        assert torch.allclose(parameter.grad, expected, atol=1e-7), name


@pytest.mark.parametrize("method", ["first_order", "second_order"])
def test_meta_gradient_accumulates(tiny_space: SearchSpace, tiny_spec: InputSpec, corner_squares: Callable, method: str) -> None:
    config = make_config(tiny_space, tiny_spec, method)
    supernet, prior = make_supernet(config)
    episode = make_episode(corner_squares)

    meta_gradient(supernet, prior, episode, config, torch.Generator().manual_seed(1), "cpu")
    once = {name: p.grad.clone() for name, p in supernet.named_parameters()}
    meta_gradient(supernet, prior, episode, config, torch.Generator().manual_seed(1), "cpu")

    for name, parameter in supernet.named_parameters():
        assert torch.allclose(parameter.grad, 2.0 * once[name], rtol=1e-4, atol=1e-7), name


def test_second_order_differs_from_first(tiny_space: SearchSpace, tiny_spec: InputSpec, corner_squares: Callable) -> None:
    grads = {}
    for method in ("first_order", "second_order"):
        config = make_config(tiny_space, tiny_spec, method)
        supernet, prior = make_supernet(config)
        meta_gradient(supernet, prior, make_episode(corner_squares), config, torch.Generator().manual_seed(1), "cpu")
        grads[method] = supernet.stem[0].weight.grad.clone()
    assert not torch.allclose(grads["first_order"], grads["second_order"], atol=1e-6)


def trainer_config(space: SearchSpace, spec: InputSpec) -> MetaTrainConfig:
    return make_config(
        space, spec, "first_order", meta_steps=2, checkpoint_interval=1, val_interval=2, val_tasks=1
    )


def parameters_of(trainer: MetaTrainer) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in trainer.supernet.named_parameters()}


def assert_parameters_equal(trainer: MetaTrainer, expected: dict[str, torch.Tensor]) -> None:
    actual = parameters_of(trainer)
    assert actual.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(actual[name], tensor), name


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[MetaTrainConfig, GlyphBank, Path, Path, dict]:
    """Run 2 outer steps; keep a copy of the checkpoint that step 1 wrote."""
    space = SearchSpace(channels=4, cells=2, reduce_cells=(1,), nodes=4)
    spec = InputSpec(height=16, width=16)
    config = trainer_config(space, spec)
    bank = make_bank(spec.height)
    root = tmp_path_factory.mktemp("meta_train")
    output_dir = root / "run"
    step1_dir = root / "step1"

    trainer = MetaTrainer(config, output_dir, bank=bank)
    save = trainer.save

    def save_and_copy() -> None:
        save()
        if trainer.state.step == 1:
            shutil.copytree(output_dir, step1_dir)

    trainer.save = save_and_copy
    trainer.train()
    return config, bank, output_dir, step1_dir, parameters_of(trainer)


def test_training_writes_checkpoints(finished_run) -> None:
    config, _, output_dir, step1_dir, final = finished_run
    for directory in (output_dir, step1_dir):
        names = sorted(path.name for path in directory.iterdir())
        assert names == ["checkpoint.json", "prior.safetensors", "state.safetensors"]

    checkpoint = load_checkpoint(output_dir)
    assert checkpoint.state["step"] == 2
    assert checkpoint.state["tasks_seen"] == 2
    assert checkpoint.checkpoint_id == "glyphs-0-step2"
    assert checkpoint.metrics["meta_val"]["tasks"] == 1
    assert load_checkpoint(step1_dir).state["step"] == 1
    for name, tensor in final.items():
        assert torch.equal(checkpoint.prior.parameters[name], tensor), name
    assert any(name.startswith("adam/exp_avg/") for name in load_extra_tensors(output_dir))


def test_resume_restores_saved_step(finished_run) -> None:
    config, bank, output_dir, _, final = finished_run
    trainer = MetaTrainer(config, output_dir, bank=bank)
    assert trainer.resume()
    assert trainer.state.step == 2
    resumed = parameters_of(trainer)
    assert resumed.keys() == final.keys()
    for name, tensor in final.items():
        assert torch.equal(resumed[name], tensor), name
    for name in ALPHA_NAMES.values():
        assert trainer.prior.parameters[name] is dict(trainer.supernet.named_parameters())[name]


def test_resumed_run_matches_uninterrupted(finished_run) -> None:
    config, bank, _, step1_dir, final = finished_run
    trainer = MetaTrainer(config, step1_dir, bank=bank)
    assert trainer.resume()
    assert trainer.state.step == 1
    trainer.train()
    assert trainer.state.step == 2
    assert_parameters_equal(trainer, final)


def test_resume_from_backup_of_interrupted_save(finished_run, tmp_path: Path) -> None:
    """A save killed between its two renames leaves the previous checkpoint only in the backup."""
    config, bank, output_dir, _, final = finished_run
    run_dir = tmp_path / "run"
    shutil.copytree(output_dir, backup_directory(run_dir))
    trainer = MetaTrainer(config, run_dir, bank=bank)
    assert trainer.resume()
    assert trainer.state.step == 2
    assert_parameters_equal(trainer, final)

    trainer.save()
    assert load_checkpoint(run_dir).state["step"] == 2
    assert not backup_directory(run_dir).exists()


def test_longer_run_continues_finished(finished_run, tmp_path: Path) -> None:
    """A run of 1 outer step, resumed with meta_steps 2, ends where the 2-step run ended."""
    config, bank, _, _, final = finished_run
    MetaTrainer(replace(config, meta_steps=1, max_wall_minutes=5), tmp_path, bank=bank).train()
    trainer = MetaTrainer(config, tmp_path, bank=bank)
    assert trainer.resume()
    assert trainer.state.step == 1
    trainer.train()
    assert trainer.state.step == 2
    assert_parameters_equal(trainer, final)
    assert load_checkpoint(tmp_path).config["meta_steps"] == 2


def test_resume_rejects_other_config(finished_run) -> None:
    config, bank, output_dir, _, _ = finished_run
    other = make_config(
        config.search_space, config.input_spec, "reptile", meta_steps=2, checkpoint_interval=1, val_interval=2, val_tasks=1
    )
    trainer = MetaTrainer(other, output_dir, bank=bank)
    with pytest.raises(ValueError) as error:
        trainer.resume()
    assert "another config" in str(error.value)


def test_alpha_warmup_holds_alphas(tiny_space: SearchSpace, tiny_spec: InputSpec, tmp_path: Path) -> None:
    config = make_config(
        tiny_space, tiny_spec, "first_order", meta_steps=2, checkpoint_interval=1, val_interval=2, val_tasks=1,
        meta_lr_alpha=0.1, alpha_warmup_steps=1,
    )
    trainer = MetaTrainer(config, tmp_path / "run", bank=make_bank(tiny_spec.height))
    before = parameters_of(trainer)
    trainer.config = replace(config, meta_steps=1)
    trainer.train()
    after_warmup = parameters_of(trainer)
    for name in ALPHA_NAMES.values():
        assert torch.equal(after_warmup[name], before[name]), name
    assert any(not torch.equal(after_warmup[n], before[n]) for n in before if n not in ALPHA_NAMES.values())

    trainer.config = config
    trainer.train()
    after = parameters_of(trainer)
    for name in ALPHA_NAMES.values():
        assert not torch.equal(after[name], after_warmup[name]), name
