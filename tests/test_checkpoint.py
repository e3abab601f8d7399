"""Tests of checkpoint saving and loading: safetensors and JSON, verified against the manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from archadapt.checkpoint import (
    MANIFEST_FILE,
    TENSORS_FILE,
    Checkpoint,
    load_checkpoint,
    load_extra_tensors,
    save_checkpoint,
)
from archadapt.errors import CheckpointError
from archadapt.inner_loop import Prior
from archadapt.search_space import InputSpec, SearchSpace
from archadapt.supernet import Supernet


def make_checkpoint(space: SearchSpace, spec: InputSpec) -> Checkpoint:
    torch.manual_seed(0)
    supernet = Supernet(space, spec)
    with torch.no_grad():
        supernet.alpha_normal.normal_(0.0, 1.0)
        supernet.alpha_reduce.normal_(0.0, 1.0)
    prior = Prior.from_supernet(supernet, 0.05)
    prior.log_sigma["stem.0.weight"] = torch.tensor(-1.5)
    return Checkpoint(
        space=space,
        spec=spec,
        prior=prior,
        config={"meta_gradient": "first_order", "inner": {"inner_steps": 3}},
        provenance={"checkpoint_id": "test-step7", "seed": 0},
        metrics={"meta_val": {"mean": 0.5, "ci95": 0.1, "tasks": 4}},
        state={"step": 7, "wall_seconds": 1.5, "tasks_seen": 14},
    )


@pytest.fixture
def saved(tmp_path: Path, tiny_space: SearchSpace, tiny_spec: InputSpec) -> tuple[Checkpoint, Path]:
    checkpoint = make_checkpoint(tiny_space, tiny_spec)
    directory = tmp_path / "prior"
    extra = {"adam/exp_avg/alpha_normal": torch.ones(3, 2), "adam/step/alpha_normal": torch.tensor(7.0)}
    save_checkpoint(checkpoint, directory, extra_tensors=extra)
    return checkpoint, directory


def test_round_trip_keeps_every_tensor(saved: tuple[Checkpoint, Path]) -> None:
    checkpoint, directory = saved
    loaded = load_checkpoint(directory)

    assert loaded.prior.parameters.keys() == checkpoint.prior.parameters.keys()
    for name, tensor in checkpoint.prior.parameters.items():
        assert loaded.prior.parameters[name].dtype == tensor.dtype, name
        assert torch.equal(loaded.prior.parameters[name], tensor.detach()), name
    assert "alpha_normal" in loaded.prior.parameters
    assert "alpha_reduce" in loaded.prior.parameters

    assert loaded.prior.log_sigma.keys() == checkpoint.prior.log_sigma.keys()
    for name, tensor in checkpoint.prior.log_sigma.items():
        assert torch.equal(loaded.prior.log_sigma[name], tensor), name
    assert loaded.prior.log_sigma["stem.0.weight"].item() == -1.5


def test_round_trip_keeps_metadata(saved: tuple[Checkpoint, Path]) -> None:
    checkpoint, directory = saved
    loaded = load_checkpoint(directory)
    assert loaded.space == checkpoint.space
    assert loaded.spec == checkpoint.spec
    assert loaded.config == checkpoint.config
    assert loaded.provenance == checkpoint.provenance
    assert loaded.metrics == checkpoint.metrics
    assert loaded.state == checkpoint.state
    assert loaded.checkpoint_id == "test-step7"


def test_extra_tensors_round_trip(saved: tuple[Checkpoint, Path]) -> None:
    _, directory = saved
    extra = load_extra_tensors(directory)
    assert set(extra) == {"adam/exp_avg/alpha_normal", "adam/step/alpha_normal"}
    assert torch.equal(extra["adam/exp_avg/alpha_normal"], torch.ones(3, 2))
    assert extra["adam/step/alpha_normal"].item() == 7.0


def test_loaded_supernet_has_equal_parameters(saved: tuple[Checkpoint, Path]) -> None:
    checkpoint, directory = saved
    supernet = load_checkpoint(directory).build_supernet()
    parameters = dict(supernet.named_parameters())
    assert parameters.keys() == checkpoint.prior.parameters.keys()
    for name, tensor in checkpoint.prior.parameters.items():
        assert torch.equal(parameters[name].detach(), tensor.detach()), name


def test_modified_tensor_byte_raises(saved: tuple[Checkpoint, Path]) -> None:
    _, directory = saved
    path = directory / TENSORS_FILE
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # a bit of the last tensor's data
    path.write_bytes(bytes(data))

    with pytest.raises(CheckpointError) as error:
        load_checkpoint(directory)
    assert TENSORS_FILE in str(error.value)
    assert "SHA-256" in str(error.value)


def test_modified_state_byte_raises(saved: tuple[Checkpoint, Path]) -> None:
    _, directory = saved
    path = directory / "state.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))

    with pytest.raises(CheckpointError) as error:
        load_checkpoint(directory)
    assert "state.safetensors" in str(error.value)


def test_missing_manifest_raises(saved: tuple[Checkpoint, Path]) -> None:
    _, directory = saved
    (directory / MANIFEST_FILE).unlink()
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(directory)
    assert MANIFEST_FILE in str(error.value)


def test_missing_directory_raises(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(tmp_path / "absent")
    assert "not found" in str(error.value)


def test_missing_tensor_file_raises(saved: tuple[Checkpoint, Path]) -> None:
    _, directory = saved
    (directory / TENSORS_FILE).unlink()
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(directory)
    assert TENSORS_FILE in str(error.value)


def test_invalid_manifest_json_raises(saved: tuple[Checkpoint, Path]) -> None:
    _, directory = saved
    (directory / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(directory)
    assert MANIFEST_FILE in str(error.value)


def test_wrong_format_version_raises(saved: tuple[Checkpoint, Path]) -> None:
    _, directory = saved
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    manifest["format_version"] = 99
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(directory)
    assert "format_version 99" in str(error.value)


def test_invalid_search_space_raises(saved: tuple[Checkpoint, Path]) -> None:
    _, directory = saved
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    manifest["search_space"]["nodes"] = 99
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(directory)
    assert "nodes is 99" in str(error.value)


def test_directory_holds_no_pickle(saved: tuple[Checkpoint, Path]) -> None:
    _, directory = saved
    names = sorted(path.name for path in directory.iterdir())
    assert names == sorted([MANIFEST_FILE, TENSORS_FILE, "state.safetensors"])
    for path in directory.iterdir():
        assert path.suffix in (".safetensors", ".json"), path.name
        # Pickle streams of protocol 2 and later start with the PROTO opcode 0x80.
        assert path.read_bytes()[:1] != b"\x80", path.name
    json.loads((directory / MANIFEST_FILE).read_text())


def test_manifest_lists_file_digests(saved: tuple[Checkpoint, Path]) -> None:
    _, directory = saved
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    assert set(manifest["files"]) == {TENSORS_FILE, "state.safetensors"}
    assert all(len(digest) == 64 for digest in manifest["files"].values())


def test_overwrite_leaves_no_temporary_files(tmp_path: Path, tiny_space: SearchSpace, tiny_spec: InputSpec) -> None:
    checkpoint = make_checkpoint(tiny_space, tiny_spec)
    directory = tmp_path / "prior"
    save_checkpoint(checkpoint, directory)
    checkpoint.state = {"step": 8}
    save_checkpoint(checkpoint, directory)

    assert [path.name for path in tmp_path.iterdir()] == ["prior"]
    assert sorted(path.name for path in directory.iterdir()) == [MANIFEST_FILE, TENSORS_FILE]
    assert load_checkpoint(directory).state == {"step": 8}
    assert load_extra_tensors(directory) == {}
