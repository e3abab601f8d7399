"""Tests of the derived network, weight inheritance from the supernet and ONNX export."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from archadapt import __version__
from archadapt.derivation import derive_genotype
from archadapt.errors import ConfigError
from archadapt.export import INPUT_NAME, OUTPUT_NAME, ExportedModel, export_onnx, read_metadata
from archadapt.genotype import Genotype
from archadapt.network import DerivedNetwork, inherit_weights
from archadapt.posterior import op_probs
from archadapt.search_space import InputSpec, SearchSpace
from archadapt.supernet import Supernet

SPACE = SearchSpace(channels=4, cells=2, reduce_cells=(1,), nodes=4)
SPEC = InputSpec(height=16, width=16)
CLASS_NAMES = ["circle", "square", "triangle"]
CHECKPOINT_ID = "test-checkpoint-step3"


def random_genotype(seed: int) -> Genotype:
    generator = torch.Generator().manual_seed(seed)
    probs = {
        cell_type: torch.softmax(torch.randn(SPACE.num_edges, SPACE.num_primitives, generator=generator), dim=-1)
        for cell_type in ("normal", "reduce")
    }
    return derive_genotype(SPACE, probs)


def images(batch: int, seed: int) -> torch.Tensor:
    return torch.rand(batch, SPEC.channels, SPEC.height, SPEC.width, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def exported() -> tuple[DerivedNetwork, ExportedModel]:
    """Export one network whose batch norms have running statistics of a few batches."""
    torch.manual_seed(0)
    network = DerivedNetwork(SPACE, SPEC, random_genotype(0), len(CLASS_NAMES))
    network.train()
    with torch.no_grad():
        for seed in range(3):
            network(images(6, seed))
    network.eval()
    return network, export_onnx(network, SPEC, CLASS_NAMES, CHECKPOINT_ID, parity_images=images(6, 10))


def test_onnx_matches_pytorch(exported: tuple[DerivedNetwork, ExportedModel]) -> None:
    network, model = exported
    session = onnxruntime.InferenceSession(model.onnx_bytes, providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        x = images(batch, seed=20 + batch)
        with torch.no_grad():
            expected = network(x).numpy()
        actual = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
        assert actual.shape == (batch, len(CLASS_NAMES))
        assert actual.dtype == np.float32
        assert np.abs(actual - expected).max() <= 1e-4
    assert model.max_abs_diff <= 1e-4


def test_onnx_names_and_dynamic_batch(exported: tuple[DerivedNetwork, ExportedModel]) -> None:
    _, model = exported
    graph = onnx.load_model_from_string(model.onnx_bytes).graph
    assert [value.name for value in graph.input] == ["images"]
    assert [value.name for value in graph.output] == ["logits"]

    input_dims = graph.input[0].type.tensor_type.shape.dim
    assert len(input_dims) == 4
    assert input_dims[0].dim_param != ""
    assert not input_dims[0].HasField("dim_value")
    assert [d.dim_value for d in input_dims[1:]] == [SPEC.channels, SPEC.height, SPEC.width]
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT

    output_dims = graph.output[0].type.tensor_type.shape.dim
    assert output_dims[0].dim_param != ""
    assert output_dims[1].dim_value == len(CLASS_NAMES)


def test_onnx_metadata_parses_back(exported: tuple[DerivedNetwork, ExportedModel]) -> None:
    network, model = exported
    metadata = read_metadata(model.onnx_bytes)
    assert set(metadata) == {"class_names", "input_spec", "genotype", "archadapt_version", "checkpoint_id"}

    assert json.loads(metadata["class_names"]) == CLASS_NAMES
    assert InputSpec.from_dict(json.loads(metadata["input_spec"])) == SPEC
    assert Genotype.from_json(metadata["genotype"]) == network.genotype
    # The version and the checkpoint id are plain strings, not JSON.
    assert metadata["archadapt_version"] == __version__
    assert metadata["checkpoint_id"] == CHECKPOINT_ID


def make_supernet() -> Supernet:
    torch.manual_seed(1)
    return Supernet(SPACE, SPEC)


def test_inherit_copies_supernet_tensors() -> None:
    supernet = make_supernet()
    weights = {name: t.detach() for name, t in supernet.named_parameters()}
    network = DerivedNetwork(SPACE, SPEC, random_genotype(1), len(CLASS_NAMES))
    head_weight = torch.randn(len(CLASS_NAMES), supernet.embedding_dim)
    head_bias = torch.randn(len(CLASS_NAMES))

    copied = inherit_weights(network, weights, head_weight, head_bias)

    parameters = dict(network.named_parameters())
    assert copied == len(parameters)
    for name, parameter in parameters.items():
        if name == "classifier.weight":
            assert torch.equal(parameter.detach(), head_weight)
        elif name == "classifier.bias":
            assert torch.equal(parameter.detach(), head_bias)
        else:
            assert torch.equal(parameter.detach(), weights[name]), name


def mode_alphas(genotype: Genotype) -> dict[str, torch.Tensor]:
    """Alphas whose most probable architecture is `genotype` on its chosen edges and `none` elsewhere.

    On a chosen edge the genotype's primitive has logit 5; on the other edges `none` has logit 6
    and every other primitive 0, so the DARTS rule derives `genotype` back from these alphas.
    """
    none_index = SPACE.primitives.index("none")
    alphas = {}
    for cell_type in ("normal", "reduce"):
        alpha = torch.zeros(SPACE.num_edges, SPACE.num_primitives)
        alpha[:, none_index] = 6.0
        for edge_index, primitive in genotype.edge_index(SPACE, cell_type):
            alpha[edge_index, none_index] = 0.0
            alpha[edge_index, SPACE.primitives.index(primitive)] = 5.0
        alphas[cell_type] = alpha
    return alphas


@pytest.mark.parametrize("seed", [2, 3])
def test_inherited_network_matches_supernet_mode(seed: int) -> None:
    genotype = random_genotype(seed)
    supernet = make_supernet()
    alphas = mode_alphas(genotype)
    with torch.no_grad():
        supernet.alpha_normal.copy_(alphas["normal"])
        supernet.alpha_reduce.copy_(alphas["reduce"])
    assert derive_genotype(SPACE, {t: op_probs(a) for t, a in alphas.items()}) == genotype

    network = DerivedNetwork(SPACE, SPEC, genotype, len(CLASS_NAMES))
    head_weight = torch.randn(len(CLASS_NAMES), supernet.embedding_dim)
    head_bias = torch.randn(len(CLASS_NAMES))
    inherit_weights(network, {n: t.detach() for n, t in supernet.named_parameters()}, head_weight, head_bias)

    # The supernet normalizes with batch statistics, as the derived network does in train mode.
    network.train()
    x = images(4, seed=30 + seed)
    with torch.no_grad():
        expected = supernet(x, mode="mode")
        embeddings = network.embed(x)
        logits = network(x)
    assert torch.allclose(embeddings, expected, rtol=0.0, atol=1e-6)
    assert torch.allclose(logits, expected @ head_weight.t() + head_bias, rtol=0.0, atol=1e-5)


def test_derived_network_rejects_invalid_genotype() -> None:
    genotype = random_genotype(4)
    invalid = Genotype(normal=(("none", 0),) + genotype.normal[1:], reduce=genotype.reduce)
    with pytest.raises(ConfigError):
        DerivedNetwork(SPACE, SPEC, invalid, len(CLASS_NAMES))


@pytest.mark.parametrize(
    "layout",
    [
        {"cells": 2, "reduce_cells": (1,)},
        # Every cell halves the resolution at one width (28, 14, 7, 4, 2), as MAML's 4-layer network does.
        {"cells": 4, "reduce_cells": (0, 1, 2, 3), "constant_channels": True},
    ],
)
def test_conv_3x3_network_exports(layout: dict) -> None:
    """A space with `conv_3x3` and a final ReLU inherits the supernet's weights and exports like the DARTS ones."""
    space = SearchSpace(
        primitives=("none", "max_pool_3x3", "conv_3x3"), channels=4, nodes=2, sample_none=False, final_relu=True,
        **layout,
    )
    cell = (("conv_3x3", 0), ("conv_3x3", 1), ("max_pool_3x3", 0), ("conv_3x3", 2))
    genotype = Genotype(normal=cell, reduce=cell)
    torch.manual_seed(5)
    supernet = Supernet(space, SPEC)
    network = DerivedNetwork(space, SPEC, genotype, len(CLASS_NAMES))
    head_weight = torch.randn(len(CLASS_NAMES), supernet.embedding_dim)
    copied = inherit_weights(network, {n: t.detach() for n, t in supernet.named_parameters()}, head_weight, torch.zeros(len(CLASS_NAMES)))
    assert copied == len(dict(network.named_parameters()))
    assert any(name.endswith(".1.weight") and p.shape[-1] == 3 and p.shape[1] == 4 for name, p in network.named_parameters())

    network.train()
    with torch.no_grad():
        network(images(6, seed=40))
    network.eval()
    model = export_onnx(network, SPEC, CLASS_NAMES, CHECKPOINT_ID, parity_images=images(4, 41))
    session = onnxruntime.InferenceSession(model.onnx_bytes, providers=["CPUExecutionProvider"])
    x = images(3, seed=42)
    with torch.no_grad():
        expected = network(x).numpy()
    assert np.abs(session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0] - expected).max() <= 1e-4
