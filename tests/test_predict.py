"""`archadapt predict` and its image conversion, against a model exported by the core package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from archadapt.derivation import derive_genotype
from archadapt.export import export_onnx
from archadapt.network import DerivedNetwork
from archadapt.preprocessing import to_input_spec
from archadapt.search_space import InputSpec, SearchSpace
from archadapt_client.predict import InputSpec as ClientInputSpec
from archadapt_client.predict import Model, to_model_input

CLASS_NAMES = ["circle", "square", "triangle"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DerivedNetwork, InputSpec]:
    torch.manual_seed(0)
    space = SearchSpace(channels=4, cells=2, reduce_cells=(1,))
    spec = InputSpec(height=16, width=16)
    probabilities = {cell: torch.rand(space.num_edges, space.num_primitives) for cell in ("normal", "reduce")}
    network = DerivedNetwork(space, spec, derive_genotype(space, probabilities), len(CLASS_NAMES)).eval()
    path = tmp_path_factory.mktemp("model") / "model.onnx"
    path.write_bytes(export_onnx(network, spec, CLASS_NAMES, "predict-test").onnx_bytes)
    return path, network, spec


@pytest.mark.parametrize(
    "shape, dtype",
    [((20, 24), np.uint8), ((9, 9, 3), np.uint8), ((30, 12, 4), np.uint8), ((16, 16), np.float32), ((7, 40, 3), np.float32)],
)
@pytest.mark.parametrize("channels", [1, 3])
def test_conversion_matches_server(shape: tuple[int, ...], dtype: type, channels: int) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, shape).astype(np.uint8) if dtype == np.uint8 else rng.random(shape).astype(np.float32)
    spec = InputSpec(channels=channels, height=16, width=16, mean=(0.5,) * channels, std=(0.5,) * channels)
    client = to_model_input(image, ClientInputSpec(channels, 16, 16))
    server = to_input_spec(image, spec)
    assert client.shape == (channels, 16, 16)
    np.testing.assert_allclose(client, server, atol=1e-6)


def test_model_reads_metadata(exported) -> None:
    path, _, spec = exported
    model = Model(path)
    assert model.class_names == CLASS_NAMES
    assert (model.spec.channels, model.spec.height, model.spec.width) == (spec.channels, spec.height, spec.width)


def test_predictions_match_pytorch(exported, tmp_path: Path) -> None:
    path, network, spec = exported
    rng = np.random.default_rng(1)
    files = []
    for index, size in enumerate([(16, 16), (32, 20), (9, 13)]):
        file = tmp_path / f"image{index}.png"
        Image.fromarray(rng.integers(0, 256, (*size, 3)).astype(np.uint8), mode="RGB").save(file)
        files.append(file)

    predictions = Model(path).predict_files(files, top=3)

    for file, prediction in zip(files, predictions):
        converted = to_input_spec(np.asarray(Image.open(file)), spec)
        with torch.no_grad():
            expected = torch.softmax(network(torch.from_numpy(converted)[None]), dim=1)[0].numpy()
        best = int(expected.argmax())
        assert prediction.path == file
        assert prediction.top[0][0] == CLASS_NAMES[best]
        assert prediction.top[0][1] == pytest.approx(float(expected[best]), abs=1e-4)
        assert [p for _, p in prediction.top] == sorted((p for _, p in prediction.top), reverse=True)


def test_command_prints_top_classes(exported, tmp_path: Path) -> None:
    path, _, _ = exported
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(2):
        Image.fromarray(np.full((20, 20), 60 * index, dtype=np.uint8), mode="L").save(folder / f"{index}.png")

    completed = subprocess.run(
        [sys.executable, "-m", "archadapt_client", "predict", str(path), str(folder), "--top", "2"],
        capture_output=True, text=True, timeout=120,
    )

    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.strip().splitlines()
    assert len(lines) == 2
    for line in lines:
        assert line.count("%") == 2
        assert any(name in line for name in CLASS_NAMES)


def test_command_rejects_missing_model(tmp_path: Path) -> None:
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(image)

    completed = subprocess.run(
        [sys.executable, "-m", "archadapt_client", "predict", str(tmp_path / "absent.onnx"), str(image)],
        capture_output=True, text=True, timeout=120,
    )

    assert completed.returncode == 1
    assert "absent.onnx" in completed.stderr
    assert "not found" in completed.stderr
