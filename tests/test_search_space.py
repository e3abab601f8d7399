"""Tests of the primitives, the cell search space and the input spec."""

from __future__ import annotations

import math

import pytest
import torch

from archadapt.cells import cell_channels, embedding_dim
from archadapt.errors import ConfigError
from archadapt.operations import OPS
from archadapt.search_space import ALLOWED_PRIMITIVES, PRIMITIVES, InputSpec, SearchSpace

CHANNELS = 4
SIZES = (7, 8, 16)


@pytest.mark.parametrize("primitive", ALLOWED_PRIMITIVES)
@pytest.mark.parametrize("track", [False, True])
def test_primitive_stride1_keeps_shape(primitive: str, track: bool) -> None:
    torch.manual_seed(0)
    op = OPS[primitive](CHANNELS, 1, track)
    for size in SIZES:
        x = torch.rand(3, CHANNELS, size, size + 1)
        assert op(x).shape == (3, CHANNELS, size, size + 1)


@pytest.mark.parametrize("primitive", ALLOWED_PRIMITIVES)
@pytest.mark.parametrize("track", [False, True])
def test_primitive_stride2_halves_size(primitive: str, track: bool) -> None:
    torch.manual_seed(0)
    op = OPS[primitive](CHANNELS, 2, track)
    for size in SIZES:
        x = torch.rand(3, CHANNELS, size, size + 1)
        expected = (3, CHANNELS, math.ceil(size / 2), math.ceil((size + 1) / 2))
        assert op(x).shape == expected


def test_ops_cover_every_primitive() -> None:
    assert set(OPS) == set(ALLOWED_PRIMITIVES)


def test_default_primitives_are_the_darts_set() -> None:
    assert SearchSpace().primitives == PRIMITIVES
    assert "conv_3x3" not in PRIMITIVES


def test_space_with_an_extra_primitive_round_trips() -> None:
    space = SearchSpace(primitives=("none", "skip_connect", "conv_3x3"), nodes=2)
    assert SearchSpace.from_dict(space.to_dict()) == space


def test_repeated_primitive_is_rejected() -> None:
    with pytest.raises(ConfigError, match="duplicate primitives"):
        SearchSpace(primitives=("none", "conv_3x3", "conv_3x3"))


def test_four_nodes_have_14_edges() -> None:
    space = SearchSpace(nodes=4)
    assert space.num_edges == 14
    assert len(space.edges) == 14
    assert space.num_primitives == len(PRIMITIVES)


def test_edge_sources_and_targets() -> None:
    space = SearchSpace(nodes=4)
    expected = [(source, target) for target in range(2, 6) for source in range(target)]
    assert [(edge.source, edge.target) for edge in space.edges] == expected
    assert [edge.index for edge in space.edges] == list(range(14))
    for target in range(2, 6):
        incoming = space.incoming_edges(target)
        assert [edge.source for edge in incoming] == list(range(target))
        assert all(edge.target == target for edge in incoming)


@pytest.mark.parametrize("nodes", [2, 3, 5, 8])
def test_edge_count_for_other_nodes(nodes: int) -> None:
    space = SearchSpace(nodes=nodes)
    # Node k + 2 has k + 2 inputs.
    assert space.num_edges == sum(k + 2 for k in range(nodes))


def test_cell_types_follow_reduce_cells() -> None:
    space = SearchSpace(cells=4, reduce_cells=(1, 3))
    assert space.cell_types() == ["normal", "reduce", "normal", "reduce"]


def test_search_space_dict_round_trip() -> None:
    space = SearchSpace(channels=8, cells=3, reduce_cells=(0, 2), nodes=3)
    assert SearchSpace.from_dict(space.to_dict()) == space


def test_constant_channels_round_trip() -> None:
    space = SearchSpace(channels=8, cells=3, reduce_cells=(0, 1, 2), constant_channels=True)
    assert space.to_dict()["constant_channels"] is True
    assert SearchSpace.from_dict(space.to_dict()) == space
    # Spaces without the setting keep the dict that earlier checkpoints store.
    assert "constant_channels" not in SearchSpace().to_dict()


@pytest.mark.parametrize("constant_channels, widths", [(False, [16, 32, 64, 128]), (True, [8, 8, 8, 8])])
def test_constant_channels_cell_widths(constant_channels: bool, widths: list[int]) -> None:
    space = SearchSpace(channels=8, cells=4, reduce_cells=(0, 1, 2, 3), nodes=2, constant_channels=constant_channels)
    assert [c for _, _, c, _, _ in cell_channels(space)] == widths
    assert embedding_dim(space) == 2 * widths[-1]  # the last cell concatenates its 2 intermediate nodes


@pytest.mark.parametrize(
    ("values", "bad_value"),
    [
        ({"primitives": ("none", "conv_7x7")}, "conv_7x7"),
        ({"primitives": ("skip_connect", "max_pool_3x3")}, "skip_connect"),
        ({"primitives": ("none",)}, "['none']"),
        ({"nodes": 9}, "nodes is 9"),
        ({"nodes": 1}, "nodes is 1"),
        ({"cells": 21}, "cells is 21"),
        ({"cells": 0}, "cells is 0"),
        ({"channels": 3}, "channels is 3"),
        ({"channels": 1000}, "channels is 1000"),
        ({"cells": 2, "reduce_cells": (5,)}, "[5]"),
        ({"cells": 4, "reduce_cells": (1, 1)}, "[1, 1]"),
        ({"cells": 4, "reduce_cells": (-1,)}, "[-1]"),
    ],
)
def test_invalid_search_space_raises(values: dict, bad_value: str) -> None:
    with pytest.raises(ConfigError) as error:
        SearchSpace(**values)
    assert bad_value in str(error.value)


def test_unknown_search_space_key_raises() -> None:
    with pytest.raises(ConfigError) as error:
        SearchSpace.from_dict({"nodes": 4, "depth": 3})
    assert "depth" in str(error.value)


@pytest.mark.parametrize(
    ("values", "bad_value"),
    [
        ({"channels": 2, "mean": (0.5, 0.5), "std": (0.5, 0.5)}, "input channels is 2"),
        ({"height": 7}, "7x28"),
        ({"width": 513}, "28x513"),
        ({"mean": (0.5, 0.5)}, "[0.5, 0.5]"),
        ({"std": (0.25, 0.75)}, "[0.25, 0.75]"),
        ({"std": (-0.5,)}, "[-0.5]"),
        ({"std": (0.0,)}, "[0.0]"),
    ],
)
def test_invalid_input_spec_raises(values: dict, bad_value: str) -> None:
    with pytest.raises(ConfigError) as error:
        InputSpec(**values)
    assert bad_value in str(error.value)


def test_unknown_input_spec_key_raises() -> None:
    with pytest.raises(ConfigError) as error:
        InputSpec.from_dict({"channels": 1, "depth": 3})
    assert "depth" in str(error.value)


def test_input_spec_dict_round_trip() -> None:
    spec = InputSpec(channels=3, height=32, width=24, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    assert InputSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize("name", ["sample_none", "final_relu", "sample_two_inputs", "constant_channels"])
def test_non_boolean_switch_is_rejected(name: str) -> None:
    with pytest.raises(ConfigError, match=f"invalid {name} 'no'"):
        SearchSpace(**{name: "no"})


def test_two_inputs_needs_sample_none_false() -> None:
    with pytest.raises(ConfigError, match="set sample_none to false"):
        SearchSpace(sample_two_inputs=True)
