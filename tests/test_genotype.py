"""Tests of genotype derivation by the DARTS rule, the genotype JSON form and its validation."""

from __future__ import annotations

import json
import os

import pytest
import torch

from archadapt.derivation import derive_cell, derive_genotype
from archadapt.errors import ConfigError
from archadapt.genotype import Genotype
from archadapt.search_space import SearchSpace

SPACE = SearchSpace(nodes=4)
PRIMITIVES = SPACE.primitives
OTHER_MASS = 0.01  # probability of every primitive on an edge that is neither chosen nor `none`


def edge_row(primitive: str, strength: float) -> torch.Tensor:
    """Return one edge's probabilities: `strength` on `primitive`, 0.01 on the others but `none`,
    and the remaining mass on `none` (the largest entry when strength is below about 0.47)."""
    row = torch.full((len(PRIMITIVES),), OTHER_MASS)
    row[PRIMITIVES.index(primitive)] = strength
    row[PRIMITIVES.index("none")] = 0.0
    row[PRIMITIVES.index("none")] = 1.0 - row.sum()
    return row


def table(rows: list[tuple[str, float]]) -> torch.Tensor:
    assert len(rows) == SPACE.num_edges
    return torch.stack([edge_row(primitive, strength) for primitive, strength in rows])


# Edges in the order of SPACE.edges: node 2 has sources 0-1, node 3 sources 0-2, node 4
# sources 0-3 and node 5 sources 0-4.
NORMAL_ROWS = [
    ("sep_conv_3x3", 0.5), ("max_pool_3x3", 0.06),  # node 2: both edges, `none` is 0.88 on edge 1
    ("skip_connect", 0.3), ("dil_conv_3x3", 0.7), ("avg_pool_3x3", 0.6),  # node 3: sources 1, 2
    ("sep_conv_5x5", 0.8), ("max_pool_3x3", 0.2), ("skip_connect", 0.3), ("dil_conv_5x5", 0.75),  # node 4: 0, 3
    ("sep_conv_3x3", 0.1), ("sep_conv_5x5", 0.2), ("avg_pool_3x3", 0.3), ("dil_conv_3x3", 0.4), ("skip_connect", 0.45),
]
NORMAL_EXPECTED = (
    ("sep_conv_3x3", 0), ("max_pool_3x3", 1),
    ("dil_conv_3x3", 1), ("avg_pool_3x3", 2),
    ("sep_conv_5x5", 0), ("dil_conv_5x5", 3),
    ("dil_conv_3x3", 3), ("skip_connect", 4),
)
# Ties: node 3 has three edges of equal strength, node 5 two of equal strength after the best.
REDUCE_ROWS = [
    ("max_pool_3x3", 0.3), ("avg_pool_3x3", 0.3),
    ("sep_conv_3x3", 0.4), ("sep_conv_5x5", 0.4), ("dil_conv_3x3", 0.4),
    ("skip_connect", 0.2), ("skip_connect", 0.9), ("skip_connect", 0.2), ("skip_connect", 0.85),
    ("dil_conv_5x5", 0.2), ("dil_conv_5x5", 0.3), ("dil_conv_5x5", 0.3), ("dil_conv_5x5", 0.5), ("dil_conv_5x5", 0.1),
]
REDUCE_EXPECTED = (
    ("max_pool_3x3", 0), ("avg_pool_3x3", 1),
    ("sep_conv_3x3", 0), ("sep_conv_5x5", 1),
    ("skip_connect", 1), ("skip_connect", 3),
    ("dil_conv_5x5", 1), ("dil_conv_5x5", 3),
)


def valid_genotype() -> Genotype:
    return Genotype(normal=NORMAL_EXPECTED, reduce=REDUCE_EXPECTED)


def random_probs(seed: int, none_boost: float) -> dict[str, torch.Tensor]:
    """Random (edges, primitives) probability tables with `none_boost` added to the `none` logit."""
    generator = torch.Generator().manual_seed(seed)
    probs = {}
    for cell_type in ("normal", "reduce"):
        logits = torch.randn(SPACE.num_edges, SPACE.num_primitives, generator=generator)
        logits[:, PRIMITIVES.index("none")] += none_boost
        probs[cell_type] = torch.softmax(logits, dim=-1)
    return probs


def test_hand_table_picks_strongest_edges() -> None:
    probs = {"normal": table(NORMAL_ROWS), "reduce": table(REDUCE_ROWS)}
    genotype = derive_genotype(SPACE, probs)
    assert genotype.normal == NORMAL_EXPECTED
    assert genotype.reduce == REDUCE_EXPECTED


def test_hand_table_rows_are_distributions() -> None:
    for rows in (NORMAL_ROWS, REDUCE_ROWS):
        probs = table(rows)
        assert torch.allclose(probs.sum(dim=1), torch.ones(SPACE.num_edges))
        assert bool((probs >= 0).all())


def test_ties_go_to_earlier_input() -> None:
    cell = derive_cell(SPACE, table(REDUCE_ROWS))
    # Node 3: three edges of strength 0.4 keep sources 0 and 1.
    assert [source for _, source in cell[2:4]] == [0, 1]
    # Node 5: after source 3 (0.5), sources 1 and 2 tie at 0.3 and source 1 wins.
    assert [source for _, source in cell[6:8]] == [1, 3]


@pytest.mark.parametrize("seed", range(10))
def test_derived_nodes_have_two_inputs(seed: int) -> None:
    genotype = derive_genotype(SPACE, random_probs(seed, none_boost=0.0))
    for cell in (genotype.normal, genotype.reduce):
        assert len(cell) == 2 * SPACE.nodes
        for k in range(SPACE.nodes):
            sources = [source for _, source in cell[2 * k : 2 * k + 2]]
            assert len(set(sources)) == 2
            assert all(0 <= source < k + 2 for source in sources)
            assert sources == sorted(sources)


@pytest.mark.parametrize("seed", range(10))
def test_derivation_never_picks_none(seed: int) -> None:
    probs = random_probs(seed, none_boost=5.0)
    none_index = PRIMITIVES.index("none")
    assert bool((probs["normal"].argmax(dim=1) == none_index).all())
    assert bool((probs["reduce"].argmax(dim=1) == none_index).all())

    genotype = derive_genotype(SPACE, probs)
    for primitive, _ in genotype.normal + genotype.reduce:
        assert primitive != "none"


@pytest.mark.parametrize("seed", range(10))
def test_derivation_matches_reference_rule(seed: int) -> None:
    probs = random_probs(seed, none_boost=2.0)
    genotype = derive_genotype(SPACE, probs)
    for cell_type in ("normal", "reduce"):
        expected = []
        for target in range(2, SPACE.nodes + 2):
            candidates = []
            for edge in SPACE.incoming_edges(target):
                row = probs[cell_type][edge.index].tolist()
                best = max((p, PRIMITIVES[i]) for i, p in enumerate(row) if PRIMITIVES[i] != "none")
                candidates.append((best[0], edge.source, best[1]))
            strongest = sorted(candidates, reverse=True)[:2]
            expected += [(primitive, source) for _, source, primitive in sorted(strongest, key=lambda c: c[1])]
        assert genotype.cell(cell_type) == tuple(expected)


def test_json_round_trip_is_equal() -> None:
    genotype = valid_genotype()
    text = genotype.to_json()
    assert Genotype.from_json(text) == genotype
    assert Genotype.from_dict(genotype.to_dict()) == genotype


def test_json_form_is_plain_lists() -> None:
    data = json.loads(valid_genotype().to_json())
    assert set(data) == {"normal", "reduce"}
    assert data["normal"][0] == ["sep_conv_3x3", 0]
    assert len(data["reduce"]) == 2 * SPACE.nodes


def test_derived_genotype_round_trips() -> None:
    genotype = derive_genotype(SPACE, random_probs(3, none_boost=1.0))
    assert Genotype.from_json(genotype.to_json()) == genotype


def test_valid_genotype_passes_validation() -> None:
    valid_genotype().validate(SPACE)


def test_validate_rejects_none() -> None:
    normal = (("none", 0),) + NORMAL_EXPECTED[1:]
    with pytest.raises(ConfigError) as error:
        Genotype(normal=normal, reduce=REDUCE_EXPECTED).validate(SPACE)
    assert "'none'" in str(error.value)


def test_validate_rejects_unknown_primitive() -> None:
    reduce = REDUCE_EXPECTED[:5] + (("conv_7x7", 2),) + REDUCE_EXPECTED[6:]
    with pytest.raises(ConfigError) as error:
        Genotype(normal=NORMAL_EXPECTED, reduce=reduce).validate(SPACE)
    assert "conv_7x7" in str(error.value)


def test_validate_rejects_repeated_input() -> None:
    normal = NORMAL_EXPECTED[:2] + (("dil_conv_3x3", 2), ("avg_pool_3x3", 2)) + NORMAL_EXPECTED[4:]
    with pytest.raises(ConfigError) as error:
        Genotype(normal=normal, reduce=REDUCE_EXPECTED).validate(SPACE)
    assert "[2, 2]" in str(error.value)


def test_validate_rejects_later_input() -> None:
    # Node 3 may take inputs 0 to 2; input 3 is the node itself and 4 a later node.
    for source in (3, 4):
        normal = NORMAL_EXPECTED[:2] + (("dil_conv_3x3", 1), ("avg_pool_3x3", source)) + NORMAL_EXPECTED[4:]
        with pytest.raises(ConfigError) as error:
            Genotype(normal=normal, reduce=REDUCE_EXPECTED).validate(SPACE)
        assert f"takes input {source}" in str(error.value)


def test_validate_rejects_negative_input() -> None:
    normal = (("sep_conv_3x3", -1),) + NORMAL_EXPECTED[1:]
    with pytest.raises(ConfigError) as error:
        Genotype(normal=normal, reduce=REDUCE_EXPECTED).validate(SPACE)
    assert "takes input -1" in str(error.value)


def test_validate_rejects_wrong_edge_count() -> None:
    for reduce in (REDUCE_EXPECTED[:-2], REDUCE_EXPECTED + (("skip_connect", 0), ("skip_connect", 1))):
        with pytest.raises(ConfigError) as error:
            Genotype(normal=NORMAL_EXPECTED, reduce=reduce).validate(SPACE)
        assert f"reduce cell has {len(reduce)} edges" in str(error.value)


def test_validate_checks_node_count() -> None:
    # A valid 4-node genotype has the wrong edge count for a 3-node space.
    with pytest.raises(ConfigError) as error:
        valid_genotype().validate(SearchSpace(nodes=3))
    assert "expected 6" in str(error.value)


def test_from_json_rejects_python_code() -> None:
    probe = "ARCHADAPT_TEST_EVALUATED"
    os.environ.pop(probe, None)
    for text in ("__import__('os')", f"__import__('os').environ.setdefault('{probe}', '1')"):
        with pytest.raises(ConfigError):
            Genotype.from_json(text)
    assert probe not in os.environ


def test_code_in_primitive_stays_string() -> None:
    data = valid_genotype().to_dict()
    data["normal"][0] = ["__import__('os').getcwd()", 0]
    genotype = Genotype.from_json(json.dumps(data))
    assert genotype.normal[0] == ("__import__('os').getcwd()", 0)
    with pytest.raises(ConfigError) as error:
        genotype.validate(SPACE)
    assert "__import__" in str(error.value)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[1, 2]",
        "5",
        '"normal"',
        '{"normal": []}',
        '{"normal": [], "reduce": [], "extra": []}',
        '{"normal": 5, "reduce": []}',
        '{"normal": [["skip_connect"]], "reduce": []}',
        '{"normal": [[0, "skip_connect"]], "reduce": []}',
        '{"normal": [["skip_connect", 0.5]], "reduce": []}',
        '{"normal": [7], "reduce": []}',
    ],
)
def test_from_json_rejects_malformed_text(text: str) -> None:
    with pytest.raises(ConfigError):
        Genotype.from_json(text)
