"""Data-parallel meta-training over the processes that torchrun starts.

Every process (rank) keeps a full copy of the prior and the Adam state. An outer step's
meta-batch is split across ranks: rank r runs tasks r, r + W, r + 2W, ... of the step, where W
is the world size, so the ranks together run exactly the tasks of a single-process step. The
ranks then sum their meta-gradients with one all-reduce and take the same Adam step, so their
priors stay identical. A process started without torchrun's variables is a world of one, and
every function here then does nothing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from archadapt.errors import ConfigError

logger = logging.getLogger(__name__)

# torchrun sets all of these in every process it starts. Only the first three mark a process as a
# rank, because some clusters set MASTER_ADDR and MASTER_PORT for every job.
RANK_VARIABLES: tuple[str, ...] = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
TORCHRUN_VARIABLES: tuple[str, ...] = (*RANK_VARIABLES, "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Workers:
    """The rank of this process among the meta-training processes, and their number."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0  # rank among the processes on this machine, which selects its GPU

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the only rank that logs progress, validates and writes."""
        return self.rank == 0

    @classmethod
    def from_environment(cls, environment: Mapping[str, str] = os.environ) -> "Workers":
        """Read the rank and world size that torchrun sets, or return a world of one when none is set."""
        present = [name for name in RANK_VARIABLES if name in environment]
        if not present:
            return cls()
        missing = [name for name in TORCHRUN_VARIABLES if name not in environment]
        if missing:
            raise ConfigError(
                f"environment variables {missing} are missing while {present} are set; "
                "start distributed meta-training with torchrun, which sets all of them"
            )
        values = {}
        for name in RANK_VARIABLES:
            try:
                values[name] = int(environment[name])
            except ValueError:
                raise ConfigError(f"environment variable {name} is {environment[name]!r}; expected an integer") from None
        workers = cls(rank=values["RANK"], world_size=values["WORLD_SIZE"], local_rank=values["LOCAL_RANK"])
        if not 0 <= workers.rank < workers.world_size or workers.local_rank < 0 or workers.world_size < 1:
            raise ConfigError(
                f"RANK {workers.rank}, LOCAL_RANK {workers.local_rank} and WORLD_SIZE {workers.world_size} are invalid; "
                "expected 0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0"
            )
        return workers

    def device(self, requested: str) -> torch.device:
        """Return the device of this rank: `cuda` becomes cuda:LOCAL_RANK when distributed."""
        device = torch.device(requested)
        if device.type != "cuda" or not self.is_distributed:
            return device
        if device.index is not None:
            raise ConfigError(
                f"--device {requested} names one GPU, but each of the {self.world_size} ranks needs its own; "
                "pass --device cuda and every rank uses cuda:LOCAL_RANK"
            )
        available = torch.cuda.device_count()
        if self.local_rank >= available:
            raise ConfigError(
                f"LOCAL_RANK {self.local_rank} needs GPU cuda:{self.local_rank}, but this machine has {available}; "
                f"start at most {available} processes per machine (torchrun --nproc_per_node) or pass --device cpu"
            )
        return torch.device("cuda", self.local_rank)

    def task_indices(self, meta_batch_size: int) -> range:
        """Return the indices, within an outer step's meta-batch, of the tasks this rank runs."""
        check_meta_batch_size(meta_batch_size, self.world_size)
        return range(self.rank, meta_batch_size, self.world_size)

    def sum_across_ranks(self, tensors: list[torch.Tensor]) -> None:
        """Replace every tensor by its sum over all ranks, in place, with one all-reduce.

        All tensors must be on one device. One flat buffer costs one message instead of one per
        parameter tensor, as DistributedDataParallel's gradient buckets do.
        """
        if not self.is_distributed:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])  # (total elements,)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for tensor in tensors:
            tensor.copy_(flat[offset : offset + tensor.numel()].view_as(tensor))
            offset += tensor.numel()

    def decision_of_main(self, decision: bool, device: torch.device) -> bool:
        """Return rank 0's value of `decision` on every rank, so all ranks stop at the same step."""
        if not self.is_distributed:
            return decision
        flag = torch.tensor([1.0 if decision else 0.0], device=device)
        dist.broadcast(flag, src=0)
        return bool(flag.item() > 0.5)

    def check_same_step(self, step: int, device: torch.device) -> None:
        """Raise ConfigError unless every rank starts at the same outer step (after resuming)."""
        if not self.is_distributed:
            return
        steps = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(self.world_size)]
        dist.all_gather(steps, torch.tensor([step], dtype=torch.int64, device=device))
        found = [int(t.item()) for t in steps]
        if len(set(found)) > 1:
            raise ConfigError(
                f"ranks start at different outer steps {found}; every rank must see the same "
                "checkpoint, so put --output on storage that all machines share"
            )

    def broadcast_from_main(self, tensors: list[torch.Tensor]) -> None:
        """Overwrite every tensor with rank 0's copy."""
        if not self.is_distributed:
            return
        for tensor in tensors:
            dist.broadcast(tensor, src=0)


def check_meta_batch_size(meta_batch_size: int, world_size: int) -> None:
    """Raise ConfigError unless the meta-batch splits evenly across the ranks."""
    if meta_batch_size % world_size != 0:
        raise ConfigError(
            f"meta_batch_size {meta_batch_size} is not divisible by the world size {world_size}; "
            f"set meta_batch_size to a multiple of {world_size} or start a number of processes that divides "
            f"{meta_batch_size}"
        )


def backend_for(device: torch.device) -> str:
    """Return the torch.distributed backend for tensors on `device`: nccl on CUDA, gloo on the CPU."""
    return "nccl" if device.type == "cuda" else "gloo"


@contextmanager
def process_group(workers: Workers, device: torch.device) -> Iterator[None]:
    """Join the other ranks for the duration of the block; do nothing in a world of one.

    MASTER_ADDR and MASTER_PORT, set by torchrun, give the address of rank 0's rendezvous.
    """
    if not workers.is_distributed:
        yield
        return
    # NOTE: the nccl path (several ranks with --device cuda) has not been run yet. The tests
    # start gloo ranks on the CPU.
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = backend_for(device)
    dist.init_process_group(backend=backend, init_method="env://", rank=workers.rank, world_size=workers.world_size)
    logger.info(
        "joined %d ranks as rank %d with backend %s on %s", workers.world_size, workers.rank, backend, device
    )
    try:
        yield
    finally:
        dist.destroy_process_group()
