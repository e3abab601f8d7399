"""Tests of the weight-sharing supernet and its Gumbel-Softmax architecture sampling."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch import nn

from archadapt.cells import EMBEDDING_RADIUS, scale_embeddings
from archadapt.derivation import derive_genotype
from archadapt.genotype import Genotype
from archadapt.network import DerivedNetwork, inherit_weights
from archadapt.posterior import op_probs
from archadapt.search_space import InputSpec, SearchSpace
from archadapt.supernet import MixedOp, Supernet, sample_op_weights, weight_names

BATCH = 4


def make_supernet(space: SearchSpace, spec: InputSpec, seed: int = 0) -> Supernet:
    torch.manual_seed(seed)
    supernet = Supernet(space, spec)
    with torch.no_grad():
        # Spread the alphas so that sampled architectures differ from seed to seed.
        supernet.alpha_normal.normal_(0.0, 1.0)
        supernet.alpha_reduce.normal_(0.0, 1.0)
    return supernet


def images(spec: InputSpec, seed: int = 0) -> torch.Tensor:
    return torch.rand(BATCH, spec.channels, spec.height, spec.width, generator=torch.Generator().manual_seed(seed))


class OpCalls:
    """Record which primitive of which edge of which cell runs, through forward hooks."""

    def __init__(self, supernet: Supernet):
        self.calls: Counter[tuple[int, int, str]] = Counter()
        self.handles = []
        for cell_index, cell in enumerate(supernet.cells):
            for edge_index, mixed in enumerate(cell.edges):
                assert isinstance(mixed, MixedOp)
                for primitive, op in mixed.ops.items():
                    key = (cell_index, edge_index, primitive)
                    self.handles.append(op.register_forward_hook(self._hook(key)))

    def _hook(self, key: tuple[int, int, str]):
        def hook(module, inputs, output):
            self.calls[key] += 1

        return hook

    def per_edge(self) -> Counter[tuple[int, int]]:
        counts: Counter[tuple[int, int]] = Counter()
        for (cell_index, edge_index, _), n in self.calls.items():
            counts[(cell_index, edge_index)] += n
        return counts

    def executed(self, cell_index: int) -> dict[int, str]:
        """Return edge index -> the primitive that ran, for edges where exactly one ran."""
        return {edge: primitive for (cell, edge, primitive), n in self.calls.items() if cell == cell_index and n == 1}

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def sampled_indices(supernet: Supernet, seed: int, mode: str) -> dict[str, list[int]]:
    """Replay the supernet's draws: it samples the normal cell, then the reduce cell, from one generator."""
    generator = torch.Generator().manual_seed(seed)
    indices = {}
    for cell_type, alpha in supernet.alphas().items():
        _, index = sample_op_weights(alpha.detach(), 1.0, mode, generator)
        indices[cell_type] = index.tolist()
    return indices


def test_hard_runs_one_op_per_edge(tiny_space: SearchSpace, tiny_spec: InputSpec) -> None:
    supernet = make_supernet(tiny_space, tiny_spec)
    recorder = OpCalls(supernet)
    supernet(images(tiny_spec), mode="hard", generator=torch.Generator().manual_seed(5))
    recorder.remove()

    per_edge = recorder.per_edge()
    assert len(per_edge) == tiny_space.cells * tiny_space.num_edges
    assert set(per_edge.values()) == {1}
    assert sum(recorder.calls.values()) == tiny_space.cells * tiny_space.num_edges


def test_hard_runs_sampled_primitive(tiny_space: SearchSpace, tiny_spec: InputSpec) -> None:
    supernet = make_supernet(tiny_space, tiny_spec)
    expected = sampled_indices(supernet, seed=5, mode="hard")
    recorder = OpCalls(supernet)
    supernet(images(tiny_spec), mode="hard", generator=torch.Generator().manual_seed(5))
    recorder.remove()

    for cell_index, cell_type in enumerate(tiny_space.cell_types()):
        executed = recorder.executed(cell_index)
        assert executed == {e: tiny_space.primitives[i] for e, i in enumerate(expected[cell_type])}


def test_soft_runs_every_op(tiny_space: SearchSpace, tiny_spec: InputSpec) -> None:
    supernet = make_supernet(tiny_space, tiny_spec)
    recorder = OpCalls(supernet)
    supernet(images(tiny_spec), mode="soft", generator=torch.Generator().manual_seed(5))
    recorder.remove()

    assert len(recorder.calls) == tiny_space.cells * tiny_space.num_edges * tiny_space.num_primitives
    assert set(recorder.calls.values()) == {1}


def test_mode_runs_most_probable_op(tiny_space: SearchSpace, tiny_spec: InputSpec) -> None:
    supernet = make_supernet(tiny_space, tiny_spec)
    recorder = OpCalls(supernet)
    supernet(images(tiny_spec), mode="mode")
    recorder.remove()

    assert set(recorder.per_edge().values()) == {1}
    for cell_index, cell_type in enumerate(tiny_space.cell_types()):
        argmax = supernet.alphas()[cell_type].argmax(dim=1).tolist()
        assert recorder.executed(cell_index) == {e: tiny_space.primitives[i] for e, i in enumerate(argmax)}


def test_hard_weights_are_one_hot() -> None:
    alpha = torch.randn(14, 8, generator=torch.Generator().manual_seed(0))
    weights, index = sample_op_weights(alpha, 1.0, "hard", torch.Generator().manual_seed(1))
    assert index is not None
    expected = nn.functional.one_hot(index, 8).to(weights.dtype)
    assert torch.allclose(weights, expected, atol=1e-6)


def test_soft_weights_are_distributions() -> None:
    alpha = torch.randn(14, 8, generator=torch.Generator().manual_seed(0))
    weights, index = sample_op_weights(alpha, 0.5, "soft", torch.Generator().manual_seed(1))
    assert index is None
    assert torch.allclose(weights.sum(dim=1), torch.ones(14))
    assert bool((weights > 0).all())


def test_hard_gradient_reaches_alphas(tiny_space: SearchSpace, tiny_spec: InputSpec) -> None:
    supernet = make_supernet(tiny_space, tiny_spec)
    embeddings = supernet(images(tiny_spec), mode="hard", generator=torch.Generator().manual_seed(5))
    direction = torch.randn(embeddings.shape, generator=torch.Generator().manual_seed(6))
    (embeddings * direction).sum().backward()

    for name in ("alpha_normal", "alpha_reduce"):
        grad = getattr(supernet, name).grad
        assert grad is not None
        assert bool(torch.isfinite(grad).all())
        assert grad.abs().sum().item() > 0.0


def test_same_seed_same_architecture(tiny_space: SearchSpace, tiny_spec: InputSpec) -> None:
    supernet = make_supernet(tiny_space, tiny_spec)
    for mode in ("hard", "soft"):
        first = sample_op_weights(supernet.alpha_normal, 1.0, mode, torch.Generator().manual_seed(11))
        second = sample_op_weights(supernet.alpha_normal, 1.0, mode, torch.Generator().manual_seed(11))
        assert torch.equal(first[0], second[0])
    assert sampled_indices(supernet, 11, "hard") == sampled_indices(supernet, 11, "hard")

    x = images(tiny_spec)
    with torch.no_grad():
        first = supernet(x, mode="hard", generator=torch.Generator().manual_seed(11))
        second = supernet(x, mode="hard", generator=torch.Generator().manual_seed(11))
    assert torch.equal(first, second)


def test_other_seed_other_architecture(tiny_space: SearchSpace, tiny_spec: InputSpec) -> None:
    supernet = make_supernet(tiny_space, tiny_spec)
    assert sampled_indices(supernet, 11, "hard") != sampled_indices(supernet, 12, "hard")


def test_alphas_are_registered_parameters(tiny_space: SearchSpace, tiny_spec: InputSpec) -> None:
    supernet = make_supernet(tiny_space, tiny_spec)
    shape = (tiny_space.num_edges, tiny_space.num_primitives)
    parameters = dict(supernet.named_parameters())
    state = supernet.state_dict()
    for name in ("alpha_normal", "alpha_reduce"):
        assert name in parameters
        assert isinstance(parameters[name], nn.Parameter)
        assert parameters[name].requires_grad
        assert parameters[name].shape == shape
        assert name in state
        assert torch.equal(state[name], parameters[name].detach())
        assert name not in weight_names(supernet)
    assert len(weight_names(supernet)) == len(parameters) - 2


def test_embeddings_lie_on_sphere(tiny_space: SearchSpace, tiny_spec: InputSpec) -> None:
    supernet = make_supernet(tiny_space, tiny_spec)
    with torch.no_grad():
        embeddings = supernet(images(tiny_spec), mode="mode")
    assert embeddings.shape == (BATCH, supernet.embedding_dim)
    assert torch.allclose(embeddings.norm(dim=1), torch.full((BATCH,), EMBEDDING_RADIUS), atol=1e-4)


@pytest.mark.parametrize("mode", ["soft", "hard", "mode"])
def test_modes_give_finite_embeddings(tiny_space: SearchSpace, tiny_spec: InputSpec, mode: str) -> None:
    supernet = make_supernet(tiny_space, tiny_spec)
    with torch.no_grad():
        embeddings = supernet(images(tiny_spec), mode=mode, generator=torch.Generator().manual_seed(3))
    assert embeddings.shape == (BATCH, supernet.embedding_dim)
    assert bool(torch.isfinite(embeddings).all())


def test_sample_none_false_never_draws_none(tiny_spec: InputSpec) -> None:
    space = SearchSpace(channels=4, cells=2, reduce_cells=(1,), nodes=4, sample_none=False)
    supernet = make_supernet(space, tiny_spec)
    none_index = space.primitives.index("none")
    with torch.no_grad():
        # `none` is the most probable primitive on every edge, so a sampler that ignored the
        # setting would draw it often.
        supernet.alpha_normal[:, none_index] = 3.0
        supernet.alpha_reduce[:, none_index] = 3.0
    for seed in range(20):
        for mode in ("hard", "mode"):
            recorder = OpCalls(supernet)
            supernet(images(tiny_spec), mode=mode, generator=torch.Generator().manual_seed(seed))
            recorder.remove()
            executed = {primitive for (_, _, primitive) in recorder.calls}
            assert "none" not in executed
            assert executed


def test_sample_none_false_blocks_none_gradient(tiny_spec: InputSpec) -> None:
    space = SearchSpace(channels=4, cells=2, reduce_cells=(1,), nodes=4, sample_none=False)
    supernet = make_supernet(space, tiny_spec)
    embeddings = supernet(images(tiny_spec), mode="hard", generator=torch.Generator().manual_seed(5))
    direction = torch.randn(embeddings.shape, generator=torch.Generator().manual_seed(6))
    (embeddings * direction).sum().backward()
    none_index = space.primitives.index("none")
    for name in ("alpha_normal", "alpha_reduce"):
        grad = getattr(supernet, name).grad
        assert bool(torch.isfinite(grad).all())
        assert torch.count_nonzero(grad[:, none_index]) == 0
        assert grad.abs().sum().item() > 0.0


@pytest.mark.parametrize("network_type", ["supernet", "derived"])
def test_final_relu_rectifies_before_pooling(tiny_spec: InputSpec, network_type: str) -> None:
    """With final_relu the embedding projects the mean of relu(last cell output), and without it the mean of that output."""
    cell = (("sep_conv_3x3", 0), ("skip_connect", 1), ("sep_conv_3x3", 0), ("dil_conv_3x3", 2),
            ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 1), ("skip_connect", 3))
    outputs = {}
    for final_relu in (False, True):
        space = SearchSpace(channels=4, cells=2, reduce_cells=(1,), nodes=4, final_relu=final_relu)
        torch.manual_seed(0)
        if network_type == "supernet":
            network = Supernet(space, tiny_spec)
            run = lambda x, n=network: n(x, mode="mode")
        else:
            network = DerivedNetwork(space, tiny_spec, Genotype(normal=cell, reduce=cell), 3).train()
            run = network.embed
        last = {}
        network.cells[-1].register_forward_hook(lambda module, inputs, output: last.update(output=output))
        with torch.no_grad():
            embeddings = run(images(tiny_spec))
        features = torch.relu(last["output"]) if final_relu else last["output"]
        assert torch.allclose(embeddings, scale_embeddings(features.mean(dim=(2, 3))), atol=1e-6)
        outputs[final_relu] = embeddings
    assert not torch.allclose(outputs[False], outputs[True], atol=1e-3)


def two_input_space(sample_two_inputs: bool) -> SearchSpace:
    # Three intermediate nodes, so nodes have two, three and four inputs.
    return SearchSpace(
        channels=4, cells=2, reduce_cells=(1,), nodes=3, sample_none=False, sample_two_inputs=sample_two_inputs
    )


def test_two_inputs_runs_two_edges_per_node(tiny_spec: InputSpec) -> None:
    space = two_input_space(True)
    supernet = make_supernet(space, tiny_spec)
    for seed in range(10):
        recorder = OpCalls(supernet)
        supernet(images(tiny_spec), mode="hard", generator=torch.Generator().manual_seed(seed))
        recorder.remove()
        for cell_index in range(space.cells):
            ran = recorder.executed(cell_index)
            for target in range(2, space.nodes + 2):
                incoming = [e.index for e in space.incoming_edges(target) if e.index in ran]
                assert len(incoming) == 2, (seed, cell_index, target, incoming)


@pytest.mark.parametrize("sample_two_inputs", [True, False])
def test_two_inputs_mode_equals_derived_network(tiny_spec: InputSpec, sample_two_inputs: bool) -> None:
    space = two_input_space(sample_two_inputs)
    supernet = make_supernet(space, tiny_spec)
    genotype = derive_genotype(space, {t: op_probs(a, space) for t, a in supernet.alphas().items()})
    network = DerivedNetwork(space, tiny_spec, genotype, num_classes=3)
    weights = {name: p.detach() for name, p in supernet.named_parameters()}
    inherit_weights(network, weights, torch.zeros(3, supernet.embedding_dim), torch.zeros(3))
    batch = images(tiny_spec)
    with torch.no_grad():
        expected = network.embed(batch)  # train mode: batch statistics, as in the supernet
        embeddings = supernet(batch, mode="mode")
    # Without the setting the supernet also runs the edges that derivation drops.
    assert torch.allclose(embeddings, expected, atol=1e-5) == sample_two_inputs


def test_two_inputs_setting_round_trips() -> None:
    space = two_input_space(True)
    assert SearchSpace.from_dict(space.to_dict()) == space
    assert "sample_two_inputs" not in two_input_space(False).to_dict()
