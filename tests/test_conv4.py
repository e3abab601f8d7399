"""Tests of MAML's 4-layer convolutional network as a meta-learned baseline: its config checks,
meta-training it with the outer loop, its checkpoints, the server's rejection of them and the
`variant-conv4` row of the baseline comparison."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from pathlib import Path

import pytest
import torch

from archadapt.checkpoint import MANIFEST_FILE, Checkpoint, load_checkpoint, save_checkpoint
from archadapt.config import InnerLoopConfig
from archadapt.conv4 import Conv4, Conv4Network
from archadapt.errors import CheckpointError, ConfigError
from archadapt.inner_loop import Prior
from archadapt.network import count_multiply_accumulates, count_parameters, inherit_weights
from archadapt.search_space import InputSpec, SearchSpace
from archadapt.supernet import Supernet
from meta_trainer.config import MetaTrainConfig, TaskConfig
from meta_trainer.outer_loop import MetaTrainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from baselines import METHODS, Budget, CostBudget, Task, adapt_from_prior
from meta_train_runs import make_bank

CHANNELS = 8


def conv4_config(space: SearchSpace, spec: InputSpec, **overrides) -> MetaTrainConfig:
    fields = {
        "search_space": space,
        "input_spec": spec,
        "tasks": TaskConfig(min_way=2, max_way=3, min_shot=1, max_shot=2, query_per_class=2),
        "inner": InnerLoopConfig(inner_steps=1, inner_lr=0.02, inner_lr_alpha=0.0),
        "meta_lr_alpha": 0.0,
        "meta_batch_size": 1,
        "meta_steps": 2,
        "val_interval": 100,
        "architecture": "conv4",
        "conv4_channels": CHANNELS,
    }
    return MetaTrainConfig(**{**fields, **overrides})


def conv4_parameters(in_channels: int, channels: int, classes: int) -> int:
    """Parameters of a Conv4Network: bias-free 3x3 convolutions, affine batch norms, linear head."""
    convolutions = 9 * in_channels * channels + 3 * 9 * channels * channels
    batch_norms = 4 * 2 * channels
    return convolutions + batch_norms + channels * classes + classes


def test_conv4_config_rejects_meta_lr_alpha(tiny_space: SearchSpace, tiny_spec: InputSpec) -> None:
    config = conv4_config(tiny_space, tiny_spec)
    with pytest.raises(ConfigError, match=r"meta_lr_alpha is 0.003 and inner.inner_lr_alpha is 0.0; set both to 0"):
        dataclasses.replace(config, meta_lr_alpha=0.003)


def test_conv4_config_rejects_inner_lr_alpha(tiny_space: SearchSpace, tiny_spec: InputSpec) -> None:
    config = conv4_config(tiny_space, tiny_spec)
    with pytest.raises(ConfigError, match=r"meta_lr_alpha is 0.0 and inner.inner_lr_alpha is 1.0; set both to 0"):
        dataclasses.replace(config, inner=InnerLoopConfig(inner_lr_alpha=1.0))


def test_architecture_rejects_unknown_name(tiny_space: SearchSpace, tiny_spec: InputSpec) -> None:
    with pytest.raises(ConfigError, match=r"architecture is 'resnet12'; allowed: \['supernet', 'conv4'\]"):
        conv4_config(tiny_space, tiny_spec, architecture="resnet12")


def test_conv4_config_rejects_fixed_genotype(tiny_space: SearchSpace, tiny_spec: InputSpec) -> None:
    genotype = {"normal": [["skip_connect", 0]] * 8, "reduce": [["skip_connect", 0]] * 8}
    with pytest.raises(ConfigError, match="fixed_genotype .* needs architecture 'supernet', not 'conv4'"):
        conv4_config(tiny_space, tiny_spec, fixed_genotype=genotype)


def test_conv4_config_rejects_small_images(tiny_space: SearchSpace) -> None:
    with pytest.raises(ConfigError, match="at least 16x16 .* input_spec is 8x8"):
        conv4_config(tiny_space, InputSpec(height=8, width=8))


def test_conv4_config_rejects_zero_channels(tiny_space: SearchSpace, tiny_spec: InputSpec) -> None:
    with pytest.raises(ConfigError, match="conv4_channels is 0"):
        conv4_config(tiny_space, tiny_spec, conv4_channels=0)


def test_conv4_ignores_architecture_arguments(tiny_space: SearchSpace, tiny_spec: InputSpec) -> None:
    network = Conv4(tiny_space, tiny_spec, CHANNELS)
    images = torch.rand(5, tiny_spec.channels, tiny_spec.height, tiny_spec.width, generator=torch.Generator().manual_seed(0))
    hard = network(images, 1.0, "hard", torch.Generator().manual_seed(1))
    mode = network(images, 0.2, "mode", None)
    assert hard.shape == (5, network.embedding_dim)
    torch.testing.assert_close(hard, mode)
    torch.testing.assert_close(hard.norm(dim=1), torch.full((5,), 3.0))  # the supernet's embedding radius
    for cell_type, alpha in network.alphas().items():
        assert alpha.shape == (tiny_space.num_edges, tiny_space.num_primitives), cell_type


def test_conv4_network_inherits_every_weight(tiny_space: SearchSpace, tiny_spec: InputSpec) -> None:
    embedding = Conv4(tiny_space, tiny_spec, CHANNELS)
    weights = {n: torch.randn_like(t) for n, t in embedding.named_parameters()}
    network = Conv4Network(tiny_spec, CHANNELS, num_classes=3)
    head_weight, head_bias = torch.randn(3, CHANNELS), torch.randn(3)
    copied = inherit_weights(network, weights, head_weight, head_bias)
    assert copied == len(list(network.parameters()))
    for name, parameter in network.named_parameters():
        expected = {"classifier.weight": head_weight, "classifier.bias": head_bias}.get(name, weights.get(name))
        torch.testing.assert_close(parameter.detach(), expected, msg=name)


def test_conv4_meta_training_keeps_alphas(tmp_path: Path) -> None:
    space = SearchSpace(channels=4, cells=2, reduce_cells=(1,), nodes=4)
    spec = InputSpec(height=16, width=16)
    trainer = MetaTrainer(conv4_config(space, spec), tmp_path / "run", bank=make_bank(spec.height))
    assert isinstance(trainer.supernet, Conv4)
    before = {n: p.detach().clone() for n, p in trainer.supernet.named_parameters()}
    trainer.train()

    for name in ("alpha_normal", "alpha_reduce"):
        assert torch.equal(getattr(trainer.supernet, name).detach(), before[name]), name
    moved = [n for n, p in trainer.supernet.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert moved, "meta-training changed no weight"

    checkpoint = load_checkpoint(tmp_path / "run")
    assert checkpoint.architecture == "conv4"
    assert checkpoint.conv4_channels == CHANNELS
    rebuilt = checkpoint.build_embedding_network()
    assert isinstance(rebuilt, Conv4)
    assert rebuilt.embedding_dim == CHANNELS
    for name, parameter in trainer.supernet.named_parameters():
        torch.testing.assert_close(dict(rebuilt.named_parameters())[name].detach(), parameter.detach(), msg=name)
    with pytest.raises(CheckpointError, match="contains a conv4 network, but adaptation needs a supernet checkpoint"):
        checkpoint.build_supernet()


def test_conv4_run_resumes_with_same_config(tmp_path: Path) -> None:
    space = SearchSpace(channels=4, cells=2, reduce_cells=(1,), nodes=4)
    spec = InputSpec(height=16, width=16)
    bank = make_bank(spec.height)
    MetaTrainer(conv4_config(space, spec), tmp_path / "run", bank=bank).train()
    longer = MetaTrainer(conv4_config(space, spec), tmp_path / "run", bank=bank)
    assert longer.resume()
    wider = MetaTrainer(conv4_config(space, spec, conv4_channels=CHANNELS + 1), tmp_path / "run", bank=bank)
    with pytest.raises(ValueError, match="was made with another config"):
        wider.resume()


def test_checkpoint_without_architecture_loads_as_supernet(tmp_path: Path, tiny_space: SearchSpace, tiny_spec: InputSpec) -> None:
    supernet = Supernet(tiny_space, tiny_spec)
    save_checkpoint(Checkpoint(tiny_space, tiny_spec, Prior.from_supernet(supernet, 0.1)), tmp_path / "old")
    manifest_path = tmp_path / "old" / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    assert manifest.pop("architecture") == "supernet"
    manifest_path.write_text(json.dumps(manifest))

    checkpoint = load_checkpoint(tmp_path / "old")
    assert checkpoint.architecture == "supernet"
    rebuilt = checkpoint.build_embedding_network()
    assert isinstance(rebuilt, Supernet)
    torch.testing.assert_close(rebuilt.alpha_normal.detach(), supernet.alpha_normal.detach())


def test_checkpoint_rejects_unknown_architecture(tmp_path: Path, tiny_space: SearchSpace, tiny_spec: InputSpec) -> None:
    supernet = Supernet(tiny_space, tiny_spec)
    save_checkpoint(Checkpoint(tiny_space, tiny_spec, Prior.from_supernet(supernet, 0.1)), tmp_path / "bad")
    manifest_path = tmp_path / "bad" / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    manifest["architecture"] = "resnet12"
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"architecture 'resnet12'; allowed: \['supernet', 'conv4'\]"):
        load_checkpoint(tmp_path / "bad")


def conv4_checkpoint(space: SearchSpace, spec: InputSpec) -> Checkpoint:
    torch.manual_seed(0)
    network = Conv4(space, spec, CHANNELS)
    return Checkpoint(space, spec, Prior.from_supernet(network, 0.1), architecture="conv4", conv4_channels=CHANNELS)


def test_server_rejects_conv4_checkpoint(
    tmp_path: Path, tiny_space: SearchSpace, tiny_spec: InputSpec, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from server.main import main

    def create_server(*args, **kwargs):
        raise AssertionError("the server started with a conv4 checkpoint")

    monkeypatch.setattr("server.main.create_server", create_server)
    save_checkpoint(conv4_checkpoint(tiny_space, tiny_spec), tmp_path / "conv4")
    with caplog.at_level(logging.ERROR):
        code = main(["--port", "0", "--checkpoint", str(tmp_path / "conv4"), "--data-dir", str(tmp_path / "data"), "--device", "cpu"])
    assert code == 2
    assert "contains a conv4 network, but adaptation needs a supernet checkpoint" in caplog.text
    assert not (tmp_path / "data").exists()


def test_variant_conv4_row_runs(tiny_space: SearchSpace, tiny_spec: InputSpec, corner_squares) -> None:
    support_images, support_labels = corner_squares(2, seed=0)
    task = Task(support_images, support_labels, *corner_squares(4, seed=1), int(support_labels.max()) + 1)
    method = METHODS["variant-conv4"]
    assert method.variant == "conv4"
    assert method.reference == "variant-base"
    assert METHODS["variant-conv4-full"].variant == "conv4-full"
    assert METHODS["variant-conv4-full"].reference == "base"
    assert METHODS["base-pretrained-prior"].variant == "pretrained-supernet-full"

    outcome = method.run(conv4_checkpoint(tiny_space, tiny_spec), task, Budget(inner_steps=2, finetune_steps=3), 0)
    assert 0.0 <= outcome.accuracy <= 1.0
    assert outcome.genotype == "conv4"
    assert outcome.parameters == conv4_parameters(tiny_spec.channels, CHANNELS, task.way)
    assert outcome.parameters == count_parameters(Conv4Network(tiny_spec, CHANNELS, task.way))
    side = tiny_spec.height  # each block's convolution runs at this side, then halves it
    expected_macs = 0
    in_channels = tiny_spec.channels
    for _ in range(4):
        expected_macs += side * side * CHANNELS * 9 * in_channels
        in_channels, side = CHANNELS, side // 2
    expected_macs += CHANNELS * task.way
    assert outcome.multiply_accumulates == expected_macs
    assert outcome.multiply_accumulates == count_multiply_accumulates(Conv4Network(tiny_spec, CHANNELS, task.way), tiny_spec)
    assert outcome.adapt_seconds > 0
    assert outcome.finetune_seconds > 0


def test_cost_budget_rejects_conv4_checkpoint(tiny_space: SearchSpace, tiny_spec: InputSpec, corner_squares) -> None:
    support_images, support_labels = corner_squares(2, seed=0)
    task = Task(support_images, support_labels, *corner_squares(2, seed=1), int(support_labels.max()) + 1)
    serving = Budget(inner_steps=1, finetune_steps=1).serving()
    with pytest.raises(ValueError, match="a cost budget applies only to supernet checkpoints"):
        adapt_from_prior(conv4_checkpoint(tiny_space, tiny_spec), task, serving, 0, cost_budget=CostBudget(max_parameters=1000))
