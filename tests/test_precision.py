"""bfloat16 autocast in the training loops: the loops learn, and the exported model stays float32
and matches PyTorch in onnxruntime."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from archadapt.adaptation import ServingConfig
from archadapt.config import FinetuneConfig, InnerLoopConfig
from archadapt.derivation import derive_genotype
from archadapt.errors import ConfigError
from archadapt.export import export_onnx
from archadapt.finetune import finetune
from archadapt.inner_loop import initial_head, run_inner_loop
from archadapt.network import DerivedNetwork
from archadapt.posterior import op_probs
from archadapt.precision import autocast
from archadapt.search_space import InputSpec, SearchSpace
from archadapt.supernet import ALPHA_NAMES, Supernet
from test_inner_loop import CONFIG, PER_CLASS, make_prior, mode_cross_entropy

NUM_CLASSES = 3
BFLOAT16_FINETUNE = FinetuneConfig(steps=30, lr=0.01, batch_size=12, precision="bfloat16")


def make_network(space: SearchSpace, spec: InputSpec) -> DerivedNetwork:
    torch.manual_seed(0)
    supernet = Supernet(space, spec)
    probs = {cell_type: op_probs(getattr(supernet, name)).detach() for cell_type, name in ALPHA_NAMES.items()}
    return DerivedNetwork(space, spec, derive_genotype(space, probs), NUM_CLASSES)


def cross_entropy(network: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    network.eval()
    with torch.no_grad():
        return float(nn.functional.cross_entropy(network(images), labels))


def test_autocast_runs_convolutions_in_bfloat16() -> None:
    convolution = nn.Conv2d(1, 2, 3)
    with autocast("bfloat16", torch.device("cpu")):
        output = convolution(torch.rand(1, 1, 8, 8))
    assert output.dtype == torch.bfloat16
    assert convolution.weight.dtype == torch.float32


def test_autocast_rejects_unknown_precision() -> None:
    with pytest.raises(ValueError, match="precision is 'float16'"):
        autocast("float16", torch.device("cpu"))


@pytest.mark.parametrize("config_type", [InnerLoopConfig, FinetuneConfig])
def test_configs_reject_unknown_precision(config_type: type) -> None:
    with pytest.raises(ConfigError, match="precision is 'half'; allowed: \\['float32', 'bfloat16'\\]"):
        config_type(precision="half")


def test_serving_config_sets_both_loops() -> None:
    config = ServingConfig().with_precision("bfloat16")
    assert config.inner.precision == "bfloat16"
    assert config.finetune.precision == "bfloat16"
    assert ServingConfig().inner.precision == "float32"


def test_bfloat16_inner_loop_lowers_loss(tiny_space: SearchSpace, tiny_spec: InputSpec, corner_squares: Callable) -> None:
    images, labels = corner_squares(PER_CLASS)
    supernet, prior = make_prior(tiny_space, tiny_spec)
    config = dataclasses.replace(CONFIG, precision="bfloat16")
    head = initial_head(supernet, prior, images, labels, NUM_CLASSES, config, None, keep_graph=False)
    before = mode_cross_entropy(supernet, prior.parameters, head, images, labels)

    posterior = run_inner_loop(supernet, prior, images, labels, NUM_CLASSES, config, generator=torch.Generator().manual_seed(0))

    assert all(math.isfinite(loss) for loss in posterior.losses)
    assert mode_cross_entropy(supernet, posterior.parameters, posterior.head, images, labels) < before
    assert all(t.dtype == torch.float32 for t in posterior.parameters.values())
    assert posterior.head.weight.dtype == torch.float32


def test_bfloat16_finetune_lowers_loss(tiny_space: SearchSpace, tiny_spec: InputSpec, corner_squares: Callable) -> None:
    images, labels = corner_squares(6)
    before = cross_entropy(make_network(tiny_space, tiny_spec), images, labels)
    network = make_network(tiny_space, tiny_spec)

    losses = finetune(network, images, labels, BFLOAT16_FINETUNE, torch.Generator().manual_seed(0))

    assert len(losses) == BFLOAT16_FINETUNE.steps
    assert all(math.isfinite(loss) for loss in losses)
    assert cross_entropy(network, images, labels) < before


def test_bfloat16_finetuned_export_is_float32(tiny_space: SearchSpace, tiny_spec: InputSpec, corner_squares: Callable) -> None:
    images, labels = corner_squares(6)
    network = make_network(tiny_space, tiny_spec)
    finetune(network, images, labels, BFLOAT16_FINETUNE, torch.Generator().manual_seed(0))

    assert all(p.dtype == torch.float32 for p in network.state_dict().values() if p.is_floating_point())
    exported = export_onnx(network, tiny_spec, ["a", "b", "c"], "test-checkpoint", parity_images=images[:6])
    model = onnx.load_from_string(exported.onnx_bytes)
    float_type = onnx.TensorProto.FLOAT
    assert model.graph.input[0].type.tensor_type.elem_type == float_type
    assert model.graph.output[0].type.tensor_type.elem_type == float_type
    assert all(tensor.data_type == float_type for tensor in model.graph.initializer if tensor.data_type != onnx.TensorProto.INT64)
    assert exported.max_abs_diff <= 1e-4
    assert np.isfinite(exported.max_abs_diff)
