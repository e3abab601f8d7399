"""Command line of the meta-trainer: `archadapt-meta-train` or `python -m meta_trainer`.

Started by `torchrun --nproc_per_node N -m meta_trainer ...`, it runs as N data-parallel ranks.
"""

from __future__ import annotations

import os

# OpenMP threads that spin while they wait slow PyTorch down when another process competes for
# the cores: 10 fine-tuning steps took 13.8 s spinning and 11.2 s passive, with two threads beside
# a busy process on a 2-core machine. It must be set before torch loads the OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path

import torch

from archadapt.checkpoint import load_checkpoint
from archadapt.config import load_json, to_dict
from archadapt.errors import ArchadaptError
from meta_trainer.config import MetaTrainConfig
from meta_trainer.distributed import Workers, check_meta_batch_size, process_group
from meta_trainer.evaluation import episode_accuracy
from meta_trainer.model_card import write_model_card
from meta_trainer.outer_loop import MetaTrainer
from meta_trainer.task_distribution import EpisodeSampler

logger = logging.getLogger("meta_trainer")

# (way, shot) settings measured on meta_val and meta_test at the end of a run.
FINAL_SETTINGS: tuple[tuple[int, int], ...] = ((5, 1), (5, 5), (20, 5))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="archadapt-meta-train",
        description="Meta-train the architecture and weight prior on glyph tasks and write a checkpoint.",
    )
    parser.add_argument("--config", type=Path, help="JSON config file (MetaTrainConfig fields); defaults apply to absent keys")
    parser.add_argument("--output", type=Path, required=True, help="checkpoint directory; an existing one is resumed")
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device (default: cuda when available, else cpu); under torchrun, cuda means cuda:LOCAL_RANK",
    )
    parser.add_argument("--no-resume", action="store_true", help="exit with an error instead of resuming when --output contains a checkpoint")
    parser.add_argument("--final-tasks", type=int, default=100, help="meta_val and meta_test tasks per setting in the final evaluation")
    parser.add_argument("--evaluate-only", action="store_true", help="skip training and only run the final evaluation on --output")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    return parser.parse_args(argv)


def final_evaluation(trainer: MetaTrainer, tasks: int) -> dict:
    """Measure few-shot accuracy on meta_val and meta_test at fixed way and shot."""
    results = {}
    for split in ("meta_val", "meta_test"):
        bank = trainer.bank.split(split)
        sampler = EpisodeSampler(bank, 2, min(20, bank.num_classes), 1, 10, trainer.config.tasks.query_per_class, augment=False)
        for way, shot in FINAL_SETTINGS:
            if way > bank.num_classes:
                continue
            estimate = episode_accuracy(
                trainer.supernet, trainer.prior, sampler, trainer.config.inner, tasks,
                seed=20_000, way=way, shot=shot, device=trainer.device,
            )
            results[f"{split}/{way}-way-{shot}-shot"] = estimate.to_dict()
            logger.info("%s %d-way %d-shot accuracy %.3f +- %.3f", split, way, shot, estimate.mean, estimate.ci95)
    return results


def configure_logging(workers: Workers) -> None:
    """Log at INFO on rank 0 and only warnings and errors on the other ranks, each tagged with its rank."""
    rank = f" rank {workers.rank}/{workers.world_size}" if workers.is_distributed else ""
    logging.basicConfig(
        level=logging.INFO if workers.is_main else logging.WARNING,
        format=f"%(asctime)s %(levelname)s{rank} %(name)s: %(message)s",
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        workers = Workers.from_environment()
    except ArchadaptError as error:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logger.error("%s", error)
        return 2
    configure_logging(workers)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        config = load_json(MetaTrainConfig, args.config) if args.config else MetaTrainConfig()
        check_meta_batch_size(config.meta_batch_size, workers.world_size)
        device = workers.device(args.device)
        with process_group(workers, device):
            trainer = MetaTrainer(config, args.output, device=device, workers=workers)
            resumed = trainer.resume()
            if resumed and args.no_resume:
                logger.error("%s already contains a checkpoint and --no-resume is set; choose another --output", args.output)
                return 2
            if not args.evaluate_only:
                logger.info("meta-training with config %s", json.dumps(to_dict(config)))
                trainer.train()
            if not workers.is_main:
                return 0

            # Only rank 0 evaluates and writes. The other ranks exit here because no collective
            # call remains for them to join.
            trainer.metrics["final"] = final_evaluation(trainer, args.final_tasks)
            trainer.save()
            command = " ".join(["archadapt-meta-train", *map(shlex.quote, sys.argv[1:] if argv is None else argv)])
            write_model_card(load_checkpoint(args.output), args.output, command)
    except (ArchadaptError, ValueError) as error:
        logger.error("%s", error)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
