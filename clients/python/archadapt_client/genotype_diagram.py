"""Draw a genotype's normal and reduce cells as a diagram with Graphviz.

A cell has two input nodes, c_{k-2} and c_{k-1} (the outputs of the two previous cells), and
intermediate nodes 0 .. N-1. Each intermediate node sums two edges, each labelled with its
primitive, and the cell's output c_{k} concatenates every intermediate node. In a genotype, pairs
2i and 2i + 1 are the (primitive, input) edges of intermediate node i, and input 0 is c_{k-2},
input 1 is c_{k-1} and input j >= 2 is intermediate node j - 2.

Rendering needs the ``graphviz`` Python package (``pip install archadapt-client[show]``) and
Graphviz's ``dot`` program (Debian: ``apt-get install graphviz``).

Example:
    >>> from archadapt_client.genotype_diagram import genotype_dot
    >>> genotype = {"normal": [["sep_conv_3x3", 0], ["skip_connect", 1]],
    ...             "reduce": [["max_pool_3x3", 0], ["max_pool_3x3", 1]]}
    >>> 'label=sep_conv_3x3' in genotype_dot(genotype)
    True
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from archadapt_client.onnx_model import OnnxFormatError, read_onnx_info

CELL_TYPES = ("normal", "reduce")
OUTPUT_FORMATS = ("svg", "png")


class GenotypeError(ValueError):
    """The input contains no genotype, or the genotype is malformed."""


class RendererMissingError(ImportError):
    """The graphviz package or Graphviz's dot program is not installed."""


def check_genotype(genotype: Any) -> dict[str, list[tuple[str, int]]]:
    """Return the normal and reduce cells as (primitive, input) pairs; raise GenotypeError when malformed."""
    if not isinstance(genotype, Mapping) or set(genotype) != set(CELL_TYPES):
        keys = sorted(genotype) if isinstance(genotype, Mapping) else type(genotype).__name__
        raise GenotypeError(f"a genotype has exactly the keys {list(CELL_TYPES)}; got {keys}")
    cells: dict[str, list[tuple[str, int]]] = {}
    for cell_type in CELL_TYPES:
        pairs = genotype[cell_type]
        if not isinstance(pairs, list) or not pairs or len(pairs) % 2:
            raise GenotypeError(f"the {cell_type} cell must list two [primitive, input] pairs per node; got {pairs!r}")
        checked = []
        for index, pair in enumerate(pairs):
            node = index // 2
            valid = (
                isinstance(pair, (list, tuple))
                and len(pair) == 2
                and isinstance(pair[0], str)
                and isinstance(pair[1], int)
                and not isinstance(pair[1], bool)
                and 0 <= pair[1] < node + 2
            )
            if not valid:
                raise GenotypeError(
                    f"pair {index} of the {cell_type} cell is {pair!r}; expected [primitive, input] "
                    f"with input from 0 to {node + 1} (intermediate node {node} takes earlier nodes only)"
                )
            checked.append((pair[0], pair[1]))
        cells[cell_type] = checked
    return cells


def load_genotype(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read the genotype from an ONNX model's metadata or from a JSON file.

    The JSON may be the output of ``archadapt adapt --json`` (with a "genotype" key) or a bare
    genotype. Raises GenotypeError when the file contains none, OSError when it cannot be read.
    """
    source = Path(path)
    data = source.read_bytes()
    if source.suffix.lower() == ".onnx":
        try:
            genotype = read_onnx_info(data).genotype()
        except OnnxFormatError as error:
            raise GenotypeError(f"cannot read a genotype from {source}: {error}") from error
    else:
        try:
            document = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise GenotypeError(f"{source} is neither an .onnx model nor valid JSON: {error}") from error
        genotype = document.get("genotype", document) if isinstance(document, dict) else document
    check_genotype(genotype)
    return dict(genotype)


def _node_name(cell_type: str, node: int) -> str:
    return f"{cell_type}_{node}"


def _input_label(source: int) -> str:
    return {0: "c_{k-2}", 1: "c_{k-1}"}.get(source, str(source - 2))


def build_graph(genotype: Mapping[str, Any]) -> Any:
    """Return a ``graphviz.Digraph`` with one cluster per cell type."""
    try:
        import graphviz
    except ImportError as error:
        raise RendererMissingError(
            "drawing a genotype needs the graphviz package; install archadapt-client[show]"
        ) from error

    cells = check_genotype(genotype)
    graph = graphviz.Digraph("genotype", format="svg")
    graph.attr(rankdir="LR", fontname="Helvetica")
    graph.attr("node", fontname="Helvetica", fontsize="18", height="0.6")
    graph.attr("edge", fontname="Helvetica", fontsize="14")
    for cell_type, pairs in cells.items():
        nodes = len(pairs) // 2
        with graph.subgraph(name=f"cluster_{cell_type}") as cell:
            cell.attr(label=f"{cell_type} cell", fontsize="20")
            for source in (0, 1):
                cell.node(_node_name(cell_type, source), _input_label(source), shape="box", style="filled", fillcolor="darkseagreen2")
            for node in range(nodes):
                cell.node(_node_name(cell_type, node + 2), str(node), shape="box", style="filled", fillcolor="lightblue")
            output = f"{cell_type}_output"
            cell.node(output, "c_{k}", shape="box", style="filled", fillcolor="palegoldenrod")
            for index, (primitive, source) in enumerate(pairs):
                target = index // 2 + 2
                cell.edge(_node_name(cell_type, source), _node_name(cell_type, target), label=primitive)
            for node in range(nodes):
                cell.edge(_node_name(cell_type, node + 2), output, style="dashed", label="concat" if node == 0 else None)
    return graph


def genotype_dot(genotype: Mapping[str, Any]) -> str:
    """Return the Graphviz DOT source of the diagram."""
    return str(build_graph(genotype).source)


def render_genotype(genotype: Mapping[str, Any], out: str | os.PathLike[str]) -> Path:
    """Draw the diagram into ``out``, an .svg or .png file, and return its path.

    Raises GenotypeError for a malformed genotype or another suffix, and RendererMissingError when
    graphviz or dot is not installed.
    """
    target = Path(out)
    output_format = target.suffix.lower().lstrip(".")
    if output_format not in OUTPUT_FORMATS:
        raise GenotypeError(f"cannot draw into {target}; the file must end in {', '.join('.' + f for f in OUTPUT_FORMATS)}")
    graph = build_graph(genotype)

    import graphviz

    try:
        image = graph.pipe(format=output_format)
    except graphviz.ExecutableNotFound as error:
        raise RendererMissingError(
            "Graphviz's dot program was not found on PATH; install Graphviz (Debian: apt-get install graphviz)"
        ) from error
    target.write_bytes(image)
    return target


def describe_genotype(genotype: Mapping[str, Any]) -> str:
    """Return one line per intermediate node, e.g. ``normal node 0 = sep_conv_3x3(c_{k-2}) + skip_connect(c_{k-1})``."""
    lines = []
    for cell_type, pairs in check_genotype(genotype).items():
        for node in range(len(pairs) // 2):
            terms = [f"{primitive}({_input_label(source)})" for primitive, source in pairs[2 * node : 2 * node + 2]]
            lines.append(f"{cell_type} node {node} = {' + '.join(terms)}")
        lines.append(f"{cell_type} output c_{{k}} = concat({', '.join(str(n) for n in range(len(pairs) // 2))})")
    return "\n".join(lines)
