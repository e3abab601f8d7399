"""Distributed meta-training: ranks started by torchrun on the CPU (gloo, loopback only) reach the
same prior as one process, and a meta-batch that does not split across the ranks is rejected."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from archadapt.config import load_json
from archadapt.errors import ConfigError
from meta_trainer.config import MetaTrainConfig
from meta_train_runs import RunState, free_loopback_port, run_to_end, torchrun_command, write_run_files
from meta_trainer.distributed import Workers, backend_for
from meta_trainer.main import main
from meta_trainer.outer_loop import MetaTrainer


def test_two_ranks_match_one_process(meta_train_reference: tuple[Path, Path], tmp_path: Path) -> None:
    config_path, reference_dir = meta_train_reference
    output_dir = tmp_path / "two_ranks"
    log_path = tmp_path / "torchrun.log"
    run_to_end(torchrun_command(config_path, output_dir, processes=2), log_path)
    reference = RunState.load(reference_dir)
    distributed = RunState.load(output_dir)

    # Exact equality, not a tolerance: every task's gradient is computed alone in float32 and the
    # sum over tasks and ranks is taken in float64, where these few float32 terms add exactly.
    assert distributed.prior.keys() == reference.prior.keys()
    for name, tensor in reference.prior.items():
        assert torch.equal(distributed.prior[name], tensor), name
    assert distributed.adam.keys() == reference.adam.keys()
    for name, tensor in reference.adam.items():
        assert torch.equal(distributed.adam[name], tensor), name
    assert distributed.state["step"] == reference.state["step"] == 8
    assert distributed.state["tasks_seen"] == reference.state["tasks_seen"] == 32
    assert distributed.metrics["meta_val"] == reference.metrics["meta_val"]

    names = sorted(path.name for path in output_dir.iterdir())
    assert names == ["MODEL_CARD.md", "checkpoint.json", "prior.safetensors", "state.safetensors"]
    manifest = json.loads((output_dir / "checkpoint.json").read_text())
    assert manifest["provenance"]["world_size"] == 2
    log = log_path.read_text()
    assert "joined 2 ranks as rank 0 with backend gloo on cpu" in log
    assert " INFO rank 1/2 " not in log
    saves = [line for line in log.splitlines() if "saved checkpoint" in line]
    assert saves
    assert all(" rank 0/2 " in line for line in saves)


@pytest.mark.parametrize("world_size", [2, 3])
def test_task_indices_cover_meta_batch(world_size: int) -> None:
    meta_batch_size = 6
    per_rank = [list(Workers(rank, world_size, rank).task_indices(meta_batch_size)) for rank in range(world_size)]
    assert sorted(sum(per_rank, [])) == list(range(meta_batch_size))
    assert all(len(tasks) == meta_batch_size // world_size for tasks in per_rank)


def test_trainer_rejects_uneven_meta_batch(tmp_path: Path) -> None:
    config_path = write_run_files(tmp_path, meta_batch_size=3)
    config = load_json(MetaTrainConfig, config_path)
    with pytest.raises(ConfigError) as error:
        MetaTrainer(config, tmp_path / "run", workers=Workers(rank=0, world_size=2, local_rank=0))
    message = str(error.value)
    assert "meta_batch_size 3" in message
    assert "world size 2" in message
    assert "multiple of 2" in message


def test_command_line_rejects_uneven_meta_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The check runs before the process group forms, so each rank exits at once instead of waiting for the others."""
    config_path = write_run_files(tmp_path, meta_batch_size=4)
    environment = {"RANK": "1", "WORLD_SIZE": "3", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_loopback_port())}
    for name, value in environment.items():
        monkeypatch.setenv(name, value)

    with caplog.at_level(logging.ERROR):
        status = main(["--config", str(config_path), "--output", str(tmp_path / "run"), "--device", "cpu"])
    assert status == 2
    assert "meta_batch_size 4 is not divisible by the world size 3" in caplog.text
    assert not (tmp_path / "run").exists()


def test_partial_torchrun_environment_is_rejected() -> None:
    with pytest.raises(ConfigError) as error:
        Workers.from_environment({"RANK": "0", "WORLD_SIZE": "2"})
    assert "LOCAL_RANK" in str(error.value)
    assert "torchrun" in str(error.value)


@pytest.mark.parametrize("environment", [{}, {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}])
def test_single_process_without_rank_variables(environment: dict[str, str]) -> None:
    workers = Workers.from_environment(environment)
    assert workers == Workers(rank=0, world_size=1, local_rank=0)
    assert not workers.is_distributed
    assert workers.is_main


def test_device_and_backend_per_rank() -> None:
    workers = Workers(rank=1, world_size=2, local_rank=1)
    assert workers.device("cpu") == torch.device("cpu")
    assert backend_for(torch.device("cpu")) == "gloo"
    assert backend_for(torch.device("cuda", 1)) == "nccl"
    with pytest.raises(ConfigError) as error:
        workers.device("cuda:0")
    assert "--device cuda" in str(error.value)
    if torch.cuda.device_count() > 1:
        assert workers.device("cuda") == torch.device("cuda", 1)
    else:
        with pytest.raises(ConfigError) as error:
            workers.device("cuda")
        assert "LOCAL_RANK 1" in str(error.value)


@pytest.mark.parametrize(
    ("rank", "world_size", "expected"),
    [("2", "2", "0 <= RANK < WORLD_SIZE"), ("zero", "2", "RANK is 'zero'; expected an integer")],
)
def test_invalid_rank_variables_are_rejected(rank: str, world_size: str, expected: str) -> None:
    environment = {"RANK": rank, "WORLD_SIZE": world_size, "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    with pytest.raises(ConfigError) as error:
        Workers.from_environment(environment)
    assert expected in str(error.value)
