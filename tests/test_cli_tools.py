"""The command line's --json output, exit codes, `archadapt show` and the Triton export.

A real server on 127.0.0.1 with the tiny e2e checkpoint adapts once (module fixture). The tests
read the returned ONNX model with the onnx package, and check the client's own ONNX reader, the
genotype diagram and the Triton config against it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import sys
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from PIL import Image

from archadapt.checkpoint import Checkpoint
from archadapt_client.cli import EXIT_FAILURE, EXIT_UNAUTHENTICATED, EXIT_UNAVAILABLE, EXIT_USAGE
from archadapt_client.onnx_model import read_onnx_info
from archadapt_client.triton import TritonExportError, write_triton_model
from server.app import RunningServer, create_server
from server.security import BearerTokenInterceptor, ServerSecurity
from test_server_e2e import FASHION_DIR, LIMITS, SERVING, address, server  # noqa: F401
from tiny_checkpoint import CHECKPOINT_ID, SPACE

REPO_ROOT = Path(__file__).resolve().parent.parent
TRITON_PROTO = Path(__file__).resolve().parent / "data" / "triton_model_config.proto"
TOKEN = "cli-token-5e6f7a8b"
# ONNX TensorProto element types and the Triton DataType names they map to.
TRITON_TYPE_OF = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.INT64: "TYPE_INT64"}


def run_cli(*arguments: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "archadapt_client", "--no-progress", *arguments],
        capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT,
    )


@pytest.fixture(scope="module")
def adapted(address: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run `archadapt adapt --json --triton-repo` once; return its JSON output with the paths used."""
    directory = tmp_path_factory.mktemp("adapted")
    out, repository = directory / "fashion.onnx", directory / "triton"
    completed = run_cli(
        "adapt", "--server", address, "--data", str(FASHION_DIR / "support.npz"), "--out", str(out),
        "--inner-steps", "2", "--finetune-steps", "5", "--triton-repo", str(repository),
        "--triton-name", "fashion_mnist", "--json",
    )
    assert completed.returncode == 0, completed.stderr
    document = json.loads(completed.stdout)
    document["directory"] = directory
    return document


def triton_config_class() -> type:
    """Compile the Triton ModelConfig subset and return its message class from a private pool."""
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as directory:
        output = Path(directory) / "triton_model_config.pb"
        exit_code = protoc.main(
            ["grpc_tools.protoc", f"-I{TRITON_PROTO.parent}", f"--descriptor_set_out={output}", str(TRITON_PROTO)]
        )
        assert exit_code == 0
        descriptor_set = descriptor_pb2.FileDescriptorSet.FromString(output.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in descriptor_set.file:
        pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))


def onnx_dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    return [dim.dim_value if dim.HasField("dim_value") else dim.dim_param for dim in value_info.type.tensor_type.shape.dim]


# ---------------------------------------------------------------------------------------------
# adapt --json and the Triton model repository
# ---------------------------------------------------------------------------------------------


def test_adapt_json_output(adapted: dict) -> None:
    model_path = Path(adapted["model"])
    assert model_path.is_file()
    assert adapted["model_bytes"] == model_path.stat().st_size
    assert adapted["checkpoint_id"] == CHECKPOINT_ID
    assert len(adapted["class_names"]) == 10
    assert set(adapted["genotype"]) == {"normal", "reduce"}
    assert 0.0 <= adapted["metrics"]["validation_accuracy"] <= 1.0
    assert adapted["triton_model"].endswith("fashion_mnist")
    assert len(adapted["edge_probabilities"]) == 2 * SPACE.num_edges


def test_triton_layout(adapted: dict) -> None:
    entry = Path(adapted["triton_model"])
    assert sorted(p.relative_to(entry).as_posix() for p in entry.rglob("*")) == [
        "1", "1/model.onnx", "config.pbtxt", "labels.txt",
    ]
    assert (entry / "1" / "model.onnx").read_bytes() == Path(adapted["model"]).read_bytes()
    assert (entry / "labels.txt").read_text(encoding="utf-8").splitlines() == adapted["class_names"]


def test_triton_config_matches_onnx(adapted: dict) -> None:
    entry = Path(adapted["triton_model"])
    config = text_format.Parse((entry / "config.pbtxt").read_text(encoding="utf-8"), triton_config_class()())
    model = onnx.load(entry / "1" / "model.onnx")
    data_type_name = config.DESCRIPTOR.fields_by_name["input"].message_type.fields_by_name["data_type"].enum_type.values_by_number

    assert config.name == "fashion_mnist"
    assert config.platform == "onnxruntime_onnx"
    assert config.backend == "onnxruntime"
    assert config.max_batch_size > 0
    assert [tensor.name for tensor in config.input] == [value.name for value in model.graph.input] == ["images"]
    assert [tensor.name for tensor in config.output] == [value.name for value in model.graph.output] == ["logits"]
    for tensor, value in [*zip(config.input, model.graph.input), *zip(config.output, model.graph.output)]:
        dims = onnx_dims(value)
        assert isinstance(dims[0], str), f"{value.name} has a fixed batch axis {dims[0]}"
        assert list(tensor.dims) == dims[1:]
        assert data_type_name[tensor.data_type].name == TRITON_TYPE_OF[value.type.tensor_type.elem_type]
    assert list(config.input[0].dims) == [1, 28, 28]
    assert list(config.output[0].dims) == [10]
    assert config.output[0].label_filename == "labels.txt"


def test_triton_rejects_existing_version(adapted: dict) -> None:
    entry = Path(adapted["triton_model"])
    with pytest.raises(TritonExportError, match="already exists"):
        write_triton_model(Path(adapted["model"]), entry.parent, entry.name)
    written = write_triton_model(Path(adapted["model"]), entry.parent, entry.name, version=2)
    assert (written / "2" / "model.onnx").is_file()


@pytest.mark.parametrize("name", ["", "../escape", "with space", ".hidden"])
def test_triton_rejects_bad_name(adapted: dict, tmp_path: Path, name: str) -> None:
    with pytest.raises(TritonExportError, match="invalid Triton model name"):
        write_triton_model(Path(adapted["model"]), tmp_path, name)
    assert list(tmp_path.iterdir()) == []


def test_triton_rejects_model_without_class_names(tmp_path: Path) -> None:
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "bare",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 3])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 3])],
    )
    bare = onnx.helper.make_model(graph).SerializeToString()
    with pytest.raises(ValueError, match="no 'class_names' metadata"):
        write_triton_model(bare, tmp_path, "bare")


# ---------------------------------------------------------------------------------------------
# The client's ONNX reader against the onnx package
# ---------------------------------------------------------------------------------------------


def test_onnx_reader_matches_onnx_package(adapted: dict) -> None:
    path = Path(adapted["model"])
    info = read_onnx_info(path)
    model = onnx.load(path)

    assert info.metadata == {entry.key: entry.value for entry in model.metadata_props}
    assert info.genotype() == adapted["genotype"]
    assert info.class_names() == adapted["class_names"]
    for read, expected in [*zip(info.inputs, model.graph.input), *zip(info.outputs, model.graph.output)]:
        assert read.name == expected.name
        assert read.element_type == onnx.TensorProto.DataType.Name(expected.type.tensor_type.elem_type)
        assert list(read.dims) == onnx_dims(expected)
    assert len(info.inputs) == len(model.graph.input)
    assert len(info.outputs) == len(model.graph.output)


@pytest.mark.parametrize("data", [b"", b"\x89PNG\r\n\x1a\n", b"\x08" * 3], ids=["empty", "png", "truncated"])
def test_onnx_reader_rejects_non_onnx(data: bytes) -> None:
    with pytest.raises(ValueError):
        read_onnx_info(data)


# ---------------------------------------------------------------------------------------------
# archadapt show
# ---------------------------------------------------------------------------------------------


def svg_texts(path: Path) -> list[str]:
    root = ElementTree.parse(path).getroot()
    return [element.text.strip() for element in root.iter() if element.tag.endswith("text") and element.text]


@pytest.mark.parametrize("source", ["model", "json"])
def test_show_draws_both_cells(adapted: dict, tmp_path: Path, source: str) -> None:
    if source == "model":
        path = Path(adapted["model"])
    else:
        path = tmp_path / "result.json"
        path.write_text(json.dumps({key: value for key, value in adapted.items() if key != "directory"}))
    out = tmp_path / "cells.svg"

    completed = run_cli("show", str(path), "--out", str(out))

    assert completed.returncode == 0, completed.stderr
    texts = svg_texts(out)
    assert "normal cell" in texts
    assert "reduce cell" in texts
    for label in ("c_{k-2}", "c_{k-1}", "c_{k}", "0", "1", "2", "3", "concat"):
        assert label in texts, label
    for cell_type in ("normal", "reduce"):
        for primitive, _ in adapted["genotype"][cell_type]:
            assert primitive in texts, (cell_type, primitive)
    # 2 input nodes, 4 intermediate nodes and 1 output per cell; one edge per genotype pair plus 4 concat edges.
    root = ElementTree.parse(out).getroot()
    classes = [element.get("class") for element in root.iter()]
    assert classes.count("node") == 2 * 7
    assert classes.count("edge") == 2 * (2 * SPACE.nodes + SPACE.nodes)
    assert "normal node 0 = " in completed.stdout


def test_show_png_and_json(adapted: dict, tmp_path: Path) -> None:
    out = tmp_path / "cells.png"
    completed = run_cli("show", adapted["model"], "--out", str(out), "--json")

    assert completed.returncode == 0, completed.stderr
    document = json.loads(completed.stdout)
    assert document["genotype"] == adapted["genotype"]
    assert document["diagram"] == str(out)
    assert len(document["nodes"]) == 2 * (SPACE.nodes + 1)
    with Image.open(out) as image:
        assert image.format == "PNG"
        assert image.width > 100


@pytest.mark.parametrize(
    ("content", "message"),
    [('{"normal": []}', "exactly the keys"), ("not json", "neither an .onnx model nor valid JSON")],
    ids=["missing-reduce", "not-json"],
)
def test_show_rejects_bad_input(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    completed = run_cli("show", str(path), "--json")

    assert completed.returncode == EXIT_FAILURE
    assert message in completed.stderr
    assert json.loads(completed.stdout)["exit_code"] == EXIT_FAILURE


def test_show_rejects_unknown_suffix(adapted: dict, tmp_path: Path) -> None:
    completed = run_cli("show", adapted["model"], "--out", str(tmp_path / "cells.gif"))
    assert completed.returncode == EXIT_FAILURE
    assert "must end in .svg, .png" in completed.stderr


# ---------------------------------------------------------------------------------------------
# info --json, predict --json and exit codes
# ---------------------------------------------------------------------------------------------


def test_info_json(address: str) -> None:
    completed = run_cli("info", "--server", address, "--json")
    assert completed.returncode == 0, completed.stderr
    document = json.loads(completed.stdout)
    assert document["checkpoint_id"] == CHECKPOINT_ID
    assert document["input_spec"]["channels"] == 1
    assert document["search_space"]["nodes"] == SPACE.nodes
    assert document["limits"]["max_images"] == LIMITS.max_images


def test_predict_json(adapted: dict, tmp_path: Path) -> None:
    for index in range(3):
        Image.fromarray(np.full((28, 28), 40 * index, np.uint8)).save(tmp_path / f"image{index}.png")
    completed = run_cli("predict", adapted["model"], str(tmp_path), "--top", "2", "--json")

    assert completed.returncode == 0, completed.stderr
    predictions = json.loads(completed.stdout)
    assert [Path(p["path"]).name for p in predictions] == ["image0.png", "image1.png", "image2.png"]
    for prediction in predictions:
        assert len(prediction["top"]) == 2
        assert all(entry["class_name"] in adapted["class_names"] for entry in prediction["top"])
        assert prediction["top"][0]["probability"] >= prediction["top"][1]["probability"]


@pytest.fixture(scope="module")
def token_server(checkpoint: Checkpoint) -> Iterator[RunningServer]:
    security = ServerSecurity(interceptors=(BearerTokenInterceptor([TOKEN.encode()]),))
    running = create_server("127.0.0.1:0", checkpoint, torch.device("cpu"), LIMITS, SERVING, max_workers=2, security=security)
    yield running
    running.stop(grace=1.0)


def test_exit_code_unauthenticated(token_server: RunningServer, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("wrong-token\n")
    completed = run_cli("info", "--server", f"127.0.0.1:{token_server.port}", "--token-file", str(token_file), "--json")

    assert completed.returncode == EXIT_UNAUTHENTICATED
    assert "error: UNAUTHENTICATED" in completed.stderr
    assert json.loads(completed.stdout)["error"]["code"] == "UNAUTHENTICATED"
    assert "wrong-token" not in completed.stderr


def test_token_file_and_environment(token_server: RunningServer, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(f"{TOKEN}\n")
    address = f"127.0.0.1:{token_server.port}"

    from_file = run_cli("info", "--server", address, "--token-file", str(token_file))
    assert from_file.returncode == 0, from_file.stderr
    assert f"checkpoint: {CHECKPOINT_ID}" in from_file.stdout

    from_environment = subprocess.run(
        [sys.executable, "-m", "archadapt_client", "info", "--server", address],
        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT, env={**os.environ, "ARCHADAPT_TOKEN": TOKEN},
    )
    assert from_environment.returncode == 0, from_environment.stderr


def test_exit_code_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    completed = run_cli("info", "--server", f"127.0.0.1:{port}", "--retries", "1", "--timeout", "20")

    assert completed.returncode == EXIT_UNAVAILABLE
    assert "error: UNAVAILABLE" in completed.stderr


def test_exit_code_usage() -> None:
    completed = run_cli("adapt", "--server", "127.0.0.1:1")
    assert completed.returncode == EXIT_USAGE
    assert "the following arguments are required: --data, --out" in completed.stderr


def test_exit_code_invalid_data(tmp_path: Path) -> None:
    completed = run_cli("adapt", "--server", "127.0.0.1:1", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "m.onnx"))
    assert completed.returncode == EXIT_FAILURE
    assert "error: dataset path" in completed.stderr


def test_help_lists_exit_codes() -> None:
    completed = run_cli("--help")
    assert completed.returncode == 0
    for code in (0, 1, 2, 3, 4, 130):
        assert f"\n  {code} " in completed.stdout, code


# ---------------------------------------------------------------------------------------------
# Runnable examples
# ---------------------------------------------------------------------------------------------


def test_python_client_example_runs(address: str, tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, str(REPO_ROOT / "examples" / "python_client.py"), "--server", address, "--out-dir", str(tmp_path),
         "--inner-steps", "1", "--finetune-steps", "2"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert f"checkpoint {CHECKPOINT_ID}" in completed.stdout
    assert (tmp_path / "fashion.onnx").is_file()
    assert (tmp_path / "triton" / "fashion_mnist" / "config.pbtxt").is_file()
    assert (tmp_path / "cells.svg").is_file()
    assert "normal node 0 = " in completed.stdout


def test_library_docstring_examples() -> None:
    """The examples in the client's docstrings run (those that need a server are marked to skip)."""
    import doctest
    import importlib

    attempted = 0
    for name in ("client", "genotype_diagram", "triton", "onnx_model", "errors", "loaders"):
        module = importlib.import_module(f"archadapt_client.{name}")
        results = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert results.failed == 0, name
        attempted += results.attempted
    assert attempted >= 4
