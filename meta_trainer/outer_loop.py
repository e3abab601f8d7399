"""The outer loop: learn the prior theta across glyph tasks.

Each outer step draws `meta_batch_size` episodes, runs the inner loop on each support set
and moves theta to raise the query likelihood of the adapted posterior minus its KL to the
prior. The meta-gradient is first order (the gradient at phi^T), second order (through the
unrolled steps) or Reptile (theta - phi^T). Checkpoints are written atomically every
`checkpoint_interval` steps with the Adam state, so a killed run resumes where it stopped.
Episodes and noise of step s depend only on (seed, s), so a resumed run draws the same tasks.
Under torchrun the tasks of each step are split across ranks (see meta_trainer/distributed.py).
"""

from __future__ import annotations

import logging
import os
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

import archadapt
from archadapt.checkpoint import Checkpoint, find_latest_checkpoint, load_checkpoint, load_extra_tensors, save_checkpoint
from archadapt.config import from_dict, to_dict
from archadapt.conv4 import Conv4
from archadapt.derivation import genotype_logits
from archadapt.genotype import Genotype
from archadapt.inner_loop import Prior, run_inner_loop
from archadapt.posterior import architecture_kl, embed, gaussian_kl
from archadapt.supernet import ALPHA_NAMES, Supernet
from meta_trainer.config import MetaTrainConfig
from meta_trainer.distributed import Workers, check_meta_batch_size
from meta_trainer.evaluation import episode_accuracy
from meta_trainer.glyphs import GlyphBank, load_or_build_glyph_bank
from meta_trainer.task_distribution import Episode, EpisodeSampler

logger = logging.getLogger(__name__)


@dataclass
class TrainingState:
    step: int = 0
    wall_seconds: float = 0.0
    tasks_seen: int = 0


def meta_gradient(supernet: Supernet, prior: Prior, episode: Episode, config: MetaTrainConfig, generator: torch.Generator, device) -> float:
    """Accumulate one task's meta-gradient into the supernet's .grad fields; return its query loss."""
    inner = config.inner
    second_order = config.meta_gradient == "second_order"
    support_images = episode.support_images.to(device)
    support_labels = episode.support_labels.to(device)
    query_images = episode.query_images.to(device)
    query_labels = episode.query_labels.to(device)

    posterior = run_inner_loop(
        supernet, prior, support_images, support_labels, episode.way, inner,
        generator=generator, create_graph=second_order,
    )
    phi = posterior.parameters
    theta = prior.parameters
    scale = 1.0 / config.meta_batch_size

    if config.meta_gradient == "reptile":
        with torch.no_grad():
            for name, parameter in theta.items():
                parameter.grad = parameter.grad + scale * (parameter - phi[name])
        with torch.no_grad():
            embeddings = embed(supernet, phi, query_images, inner.temperature, "mode", generator)
            return float(nn.functional.cross_entropy(posterior.head(embeddings), query_labels))

    embeddings = embed(supernet, phi, query_images, inner.temperature, inner.sampling, generator)
    query_loss = nn.functional.cross_entropy(posterior.head(embeddings), query_labels)
    num_examples = support_images.shape[0] + query_images.shape[0]
    phi_w = {n: t for n, t in phi.items() if n not in ALPHA_NAMES.values()}
    kl = inner.beta_alpha * architecture_kl(phi, theta) + inner.beta_w * gaussian_kl(phi_w, theta, prior.log_sigma)
    meta_loss = scale * (query_loss + kl / num_examples)

    names = list(theta)
    if second_order:
        grads = torch.autograd.grad(meta_loss, [theta[n] for n in names], allow_unused=True)
    else:
        # First order: treat d phi^T / d theta as the identity, so the gradient at phi^T is
        # added to theta's own (direct) gradient from the KL term.
        at_phi = torch.autograd.grad(meta_loss, [phi[n] for n in names], retain_graph=True, allow_unused=True)
        direct = torch.autograd.grad(meta_loss, [theta[n] for n in names], allow_unused=True)
        grads = [_sum_optional(a, b) for a, b in zip(at_phi, direct)]
    with torch.no_grad():
        for name, grad in zip(names, grads):
            if grad is not None:
                theta[name].grad += grad
    return float(query_loss.detach())


def _sum_optional(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    if a is None:
        return b
    return a if b is None else a + b


ALPHA_GROUP = 1  # index of the alpha logits' parameter group in make_optimizer's Adam


def make_optimizer(supernet: Supernet, config: MetaTrainConfig) -> torch.optim.Adam:
    alphas = [p for n, p in supernet.named_parameters() if n in ALPHA_NAMES.values()]
    weights = [p for n, p in supernet.named_parameters() if n not in ALPHA_NAMES.values()]
    return torch.optim.Adam(
        [{"params": weights, "lr": config.meta_lr}, {"params": alphas, "lr": config.meta_lr_alpha}]
    )


def optimizer_tensors(optimizer: torch.optim.Adam, supernet: Supernet) -> dict[str, torch.Tensor]:
    """Flatten Adam's moments into named tensors for safetensors."""
    tensors = {}
    for name, parameter in supernet.named_parameters():
        state = optimizer.state.get(parameter)
        if state:
            tensors[f"adam/exp_avg/{name}"] = state["exp_avg"]
            tensors[f"adam/exp_avg_sq/{name}"] = state["exp_avg_sq"]
            tensors[f"adam/step/{name}"] = torch.as_tensor(state["step"], dtype=torch.float32).reshape(())
    return tensors


def restore_optimizer(optimizer: torch.optim.Adam, supernet: Supernet, tensors: dict[str, torch.Tensor]) -> None:
    for name, parameter in supernet.named_parameters():
        if f"adam/exp_avg/{name}" in tensors:
            optimizer.state[parameter] = {
                "step": tensors[f"adam/step/{name}"].clone(),
                "exp_avg": tensors[f"adam/exp_avg/{name}"].to(parameter.device).clone(),
                "exp_avg_sq": tensors[f"adam/exp_avg_sq/{name}"].to(parameter.device).clone(),
            }


# Config fields that only decide where a run stops. No schedule depends on them, so a finished
# run resumed with a larger meta_steps continues exactly as a longer run from the first step would.
RUN_LENGTH_FIELDS = ("meta_steps", "max_wall_minutes")


def is_same_config(recorded: dict, config: MetaTrainConfig) -> bool:
    """Return whether a checkpoint's recorded config equals `config`, apart from the run length.

    Fields added to MetaTrainConfig after the checkpoint was written take their defaults, so a run
    started before a new field existed still resumes.
    """
    run_length = {name: getattr(config, name) for name in RUN_LENGTH_FIELDS}
    try:
        return from_dict(MetaTrainConfig, {**recorded, **run_length}) == config
    except (ValueError, TypeError):  # ConfigError is a ValueError
        return False


def code_version() -> str:
    try:
        return subprocess.run(
            ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, check=True,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return archadapt.__version__


class MetaTrainer:
    """Runs the outer loop for one config and output directory, as one rank of `workers`.

    Every rank keeps the same prior and Adam state, but only rank 0 validates and writes checkpoints.
    """

    def __init__(
        self,
        config: MetaTrainConfig,
        output_dir: Path,
        device: torch.device | str = "cpu",
        bank: GlyphBank | None = None,
        workers: Workers = Workers(),
    ):
        check_meta_batch_size(config.meta_batch_size, workers.world_size)
        self.config = config
        self.output_dir = Path(output_dir)
        self.device = torch.device(device)
        self.workers = workers
        if bank is None:
            bank = load_or_build_glyph_bank(
                Path(config.glyph_cache_dir), font_dir=Path(config.font_dir),
                image_size=config.input_spec.height, max_classes_per_script=config.tasks.max_classes_per_script,
            )
        self.bank = bank
        tasks = config.tasks
        train_bank = bank.split("meta_train")
        self.train_sampler = EpisodeSampler(
            train_bank, tasks.min_way, min(tasks.max_way, train_bank.num_classes),
            tasks.min_shot, tasks.max_shot, tasks.query_per_class, augment=True,
        )
        val_bank = bank.split("meta_val")
        self.val_sampler = EpisodeSampler(val_bank, 2, min(20, val_bank.num_classes), 1, 10, tasks.query_per_class, augment=False)

        torch.manual_seed(config.seed)
        # With architecture "conv4" the supernet's place goes to MAML's network, whose frozen alpha
        # logits make the architecture terms of the loops zero, so that only its weights are learned.
        if config.architecture == "conv4":
            self.supernet = Conv4(config.search_space, config.input_spec, config.conv4_channels)
        else:
            self.supernet = Supernet(config.search_space, config.input_spec)
        if config.fixed_genotype is not None:
            logits = genotype_logits(config.search_space, Genotype.from_dict(config.fixed_genotype))
            with torch.no_grad():
                for cell_type, alpha in self.supernet.alphas().items():
                    alpha.copy_(logits[cell_type])
        self.supernet = self.supernet.to(self.device)
        self.prior = Prior.from_supernet(self.supernet, config.inner.prior_sigma)
        self.optimizer = make_optimizer(self.supernet, config)
        self.state = TrainingState()
        self.metrics: dict = {}

    def resume(self) -> bool:
        """Load the checkpoint in output_dir when it exists; return whether one was loaded."""
        source = find_latest_checkpoint(self.output_dir)
        if source is None:
            return False
        if source != self.output_dir:
            logger.warning(
                "%s has no checkpoint because a save was interrupted; resuming from the previous one in %s",
                self.output_dir, source,
            )
        checkpoint = load_checkpoint(source, self.device)
        if not is_same_config(checkpoint.config, self.config):
            raise ValueError(
                f"checkpoint in {self.output_dir} was made with another config (only meta_steps and "
                "max_wall_minutes may differ); "
                "pass the same config or choose another output directory"
            )
        if checkpoint.config.get("meta_steps") != self.config.meta_steps:
            logger.info(
                "continuing the run from its recorded meta_steps %s to meta_steps %d",
                checkpoint.config.get("meta_steps"), self.config.meta_steps,
            )
        with torch.no_grad():
            for name, parameter in self.supernet.named_parameters():
                parameter.copy_(checkpoint.prior.parameters[name])
        restore_optimizer(self.optimizer, self.supernet, load_extra_tensors(source))
        self.state = TrainingState(**checkpoint.state)
        self.metrics = checkpoint.metrics
        logger.info("resumed from %s at step %d", self.output_dir, self.state.step)
        return True

    def save(self) -> None:
        """Write the checkpoint to output_dir. Only rank 0 writes, and the other ranks return at once."""
        if not self.workers.is_main:
            return
        machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads"
        if self.workers.is_distributed:
            machine += f" per process, {self.workers.world_size} processes"
        checkpoint = Checkpoint(
            space=self.config.search_space,
            spec=self.config.input_spec,
            prior=self.prior,
            config=to_dict(self.config),
            provenance={
                "checkpoint_id": f"glyphs-{self.config.seed}-step{self.state.step}",
                "data": "glyphs rendered from Debian fonts-noto-core; script splits in meta_trainer/script_splits.json",
                "meta_train_classes": self.train_sampler.bank.num_classes,
                "code_version": code_version(),
                "torch_version": torch.__version__,
                "device": str(self.device),
                "machine": machine,
                "world_size": self.workers.world_size,
            },
            metrics=self.metrics,
            state={"step": self.state.step, "wall_seconds": self.state.wall_seconds, "tasks_seen": self.state.tasks_seen},
            architecture=self.config.architecture,
            conv4_channels=self.config.conv4_channels,
        )
        save_checkpoint(checkpoint, self.output_dir, optimizer_tensors(self.optimizer, self.supernet))
        logger.info("saved checkpoint %s at step %d", self.output_dir, self.state.step)

    def validate(self) -> dict:
        estimate = episode_accuracy(
            self.supernet, self.prior, self.val_sampler, self.config.inner,
            self.config.val_tasks, seed=10_000 + self.config.seed, device=self.device,
        )
        logger.info(
            "step %d meta_val accuracy %.3f +- %.3f over %d tasks",
            self.state.step, estimate.mean, estimate.ci95, estimate.tasks,
        )
        return {"step": self.state.step, **estimate.to_dict()}

    def accumulate_step(self, step: int, tasks: range, totals: list[torch.Tensor]) -> float:
        """Add the meta-gradients of `tasks` of outer step `step` to `totals` and return their summed query loss.

        Episodes and noise depend only on (seed, step, task), so a task gives the same gradient
        on any rank and after any resume.
        """
        config = self.config
        parameters = list(self.supernet.parameters())
        loss_sum = 0.0
        for task in tasks:
            rng = np.random.default_rng([config.seed, step, task])
            generator = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
            episode = self.train_sampler.sample(rng)
            self.optimizer.zero_grad(set_to_none=False)
            for parameter in parameters:
                if parameter.grad is None:
                    parameter.grad = torch.zeros_like(parameter)
            loss_sum += meta_gradient(self.supernet, self.prior, episode, config, generator, self.device)
            for total, parameter in zip(totals, parameters):
                total += parameter.grad
        return loss_sum

    def train(self) -> TrainingState:
        config = self.config
        parameters = list(self.supernet.parameters())
        tasks = self.workers.task_indices(config.meta_batch_size)
        self.workers.check_same_step(self.state.step, self.device)
        self.workers.broadcast_from_main([p.detach() for p in parameters])

        # The tasks' meta-gradients are summed in float64. A sum of a few float32 values is then
        # exact unless their magnitudes differ by a factor of about 2^29, so it does not depend on
        # the order of the tasks or on how they are split across ranks. In float32 the rounding
        # differed between 1 and 2 ranks. Adam's first steps move theta by about
        # meta_lr * sign(grad), so near-zero gradients turned that rounding into differences of up
        # to 1.2e-3 in theta after 4 steps, with the tiny config of tests/meta_train_runs.py.
        totals = [torch.zeros_like(p, dtype=torch.float64) for p in parameters]

        started = time.perf_counter()
        wall_before = self.state.wall_seconds
        recent_loss_sum, recent_tasks = 0.0, 0
        while self.state.step < config.meta_steps:
            for total in totals:
                total.zero_()
            loss = self.accumulate_step(self.state.step, tasks, totals)
            loss_sum = torch.tensor([loss], dtype=torch.float64, device=self.device)

            # Each task's gradient already carries the factor 1 / meta_batch_size, so the sum over
            # ranks is the mean over the whole meta-batch, as in a single process.
            self.workers.sum_across_ranks(totals + [loss_sum])
            for total, parameter in zip(totals, parameters):
                parameter.grad.copy_(total)
            warming_up = self.state.step < config.alpha_warmup_steps
            self.optimizer.param_groups[ALPHA_GROUP]["lr"] = 0.0 if warming_up else config.meta_lr_alpha
            self.optimizer.step()
            self.state.step += 1
            self.state.tasks_seen += config.meta_batch_size
            self.state.wall_seconds = wall_before + time.perf_counter() - started
            recent_loss_sum += float(loss_sum.item())
            recent_tasks += config.meta_batch_size

            if self.state.step % 10 == 0:
                if self.workers.is_main:
                    logger.info(
                        "step %d/%d query loss %.3f (mean of last %d tasks) %.0f s",
                        self.state.step, config.meta_steps, recent_loss_sum / recent_tasks,
                        recent_tasks, self.state.wall_seconds,
                    )
                recent_loss_sum, recent_tasks = 0.0, 0
            if self.state.step % config.val_interval == 0 and self.workers.is_main:
                self.metrics["meta_val"] = self.validate()
            out_of_time = config.max_wall_minutes > 0 and time.perf_counter() - started > 60 * config.max_wall_minutes
            if config.max_wall_minutes > 0:
                # Rank 0 decides for all ranks because their clocks differ, and a rank that stopped
                # alone would leave the others waiting in the all-reduce.
                out_of_time = self.workers.decision_of_main(out_of_time, self.device)
            if self.state.step % config.checkpoint_interval == 0 or out_of_time:
                self.save()
            if out_of_time:
                logger.info("stopping at step %d: max_wall_minutes %.1f reached", self.state.step, config.max_wall_minutes)
                break
        if self.state.step % config.checkpoint_interval != 0:
            self.save()
        return self.state
