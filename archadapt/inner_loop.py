"""The inner loop: adapt the task posterior from the prior by an unrolled optimizer.

phi^0 = theta and phi^{t+1} = phi^t - eta * grad_phi L(phi^t), where L is the negative ELBO on
a minibatch of the support set with fresh Gumbel (and weight) noise at every step. The weight
KL term, a quadratic pull towards theta_w, is applied by its exact proximal step. The same
function runs inside meta-training (where it may keep the graph for second-order gradients)
and at serving time (with a longer schedule and an annealed temperature).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from archadapt.config import InnerLoopConfig
from archadapt.errors import AdaptationCancelled
from archadapt.posterior import (
    TaskHead,
    Tensors,
    architecture_kl,
    embed,
    gaussian_kl,
    prototype_head,
    sample_weights,
)
from archadapt.precision import autocast
from archadapt.progress import ProgressThrottle, every_step
from archadapt.supernet import ALPHA_NAMES, Supernet

logger = logging.getLogger(__name__)


@dataclass
class Prior:
    """The meta-learned prior theta: supernet weights, alpha logits and per-tensor log sigma."""

    parameters: Tensors  # theta_w and theta_alpha, by supernet parameter name
    log_sigma: Tensors  # one scalar per weight tensor

    @property
    def weights(self) -> Tensors:
        return {n: t for n, t in self.parameters.items() if n not in ALPHA_NAMES.values()}

    @property
    def alphas(self) -> Tensors:
        return {n: self.parameters[n] for n in ALPHA_NAMES.values()}

    @classmethod
    def from_supernet(cls, supernet: Supernet, prior_sigma: float) -> "Prior":
        parameters = dict(supernet.named_parameters())
        log_sigma = {
            name: torch.full((), float(torch.log(torch.tensor(prior_sigma))), device=t.device)
            for name, t in parameters.items()
            if name not in ALPHA_NAMES.values()
        }
        return cls(parameters=parameters, log_sigma=log_sigma)


@dataclass
class StepReport:
    step: int
    total_steps: int
    loss: float
    nll: float
    temperature: float


@dataclass
class Posterior:
    """The adapted task posterior q(alpha, w | phi^T) and the task head."""

    parameters: Tensors  # phi_w and phi_alpha, by supernet parameter name
    head: TaskHead
    losses: list[float] = field(default_factory=list)

    @property
    def alphas(self) -> Tensors:
        return {cell_type: self.parameters[name] for cell_type, name in ALPHA_NAMES.items()}


def negative_elbo(
    supernet: Supernet,
    phi: Tensors,
    head: TaskHead,
    prior: Prior,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_support: int,
    config: InnerLoopConfig,
    temperature: float,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (nll, kl_alpha_term, kl_w_term), the minibatch estimate of -ELBO / |S| in parts.

    The loss is nll + kl_alpha_term + kl_w_term: the mean cross-entropy and the two KL terms,
    each weighted by its beta and divided by |S|.
    """
    parameters = phi
    if config.weight_sampling == "gaussian":
        weights = {n: t for n, t in phi.items() if n not in ALPHA_NAMES.values()}
        parameters = {**phi, **sample_weights(weights, prior.log_sigma, generator)}
    embeddings = embed(supernet, parameters, images, temperature, config.sampling, generator)
    nll = nn.functional.cross_entropy(head(embeddings), labels)

    theta = prior.parameters
    kl_alpha = architecture_kl(phi, {n: theta[n].detach() for n in ALPHA_NAMES.values()})
    phi_w = {n: t for n, t in phi.items() if n not in ALPHA_NAMES.values()}
    kl_w = gaussian_kl(phi_w, {n: theta[n].detach() for n in phi_w}, prior.log_sigma)
    return nll, config.beta_alpha * kl_alpha / num_support, config.beta_w * kl_w / num_support


def initial_head(
    supernet: Supernet,
    prior: Prior,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    config: InnerLoopConfig,
    generator: torch.Generator | None,
    keep_graph: bool,
) -> TaskHead:
    """Proto-MAML head from the support embeddings under the prior's most probable architecture."""
    with torch.set_grad_enabled(keep_graph):
        embeddings = embed(supernet, prior.parameters, images, config.temperature, "mode", generator)
    head = prototype_head(embeddings, labels, num_classes)
    if not keep_graph:
        head = TaskHead(head.weight.detach(), head.bias.detach())
    return head


def run_inner_loop(
    supernet: Supernet,
    prior: Prior,
    support_images: torch.Tensor,
    support_labels: torch.Tensor,
    num_classes: int,
    config: InnerLoopConfig,
    *,
    generator: torch.Generator | None = None,
    create_graph: bool = False,
    on_step: Callable[[StepReport], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    throttle: ProgressThrottle | None = None,
    alpha_penalty: Callable[[Tensors], torch.Tensor] | None = None,
) -> Posterior:
    """Adapt the posterior to the support set and return q(. | phi^T) with its task head.

    With create_graph=True the result stays a differentiable function of the prior (for
    second-order meta-gradients); otherwise every step starts from detached tensors, which
    keeps memory flat. `should_stop` is checked before every step and raises
    AdaptationCancelled when it returns True. `on_step` gets the steps that `throttle` lets
    through (every step without one); the losses of the others stay on the device until the end.
    `alpha_penalty`, called with the alpha logits by cell type, adds a term to the loss, such as
    the cost of a budget (see cost_model.py).
    """
    throttle = throttle or every_step()
    num_support = support_images.shape[0]
    head = initial_head(
        supernet, prior, support_images, support_labels, num_classes, config, generator, create_graph
    )
    if create_graph:
        # phi^0 is a clone of theta because the head is a function of theta. The step's gradient
        # with respect to phi^0 then leaves out the path through the head, so the steps match
        # those without create_graph, while d phi^0 / d theta is still the identity.
        phi = {n: t.clone() for n, t in prior.parameters.items()}
        head_weight, head_bias = head.weight, head.bias
    else:
        phi = {n: t.detach().clone().requires_grad_(True) for n, t in prior.parameters.items()}
        head_weight = head.weight.clone().requires_grad_(True)
        head_bias = head.bias.clone().requires_grad_(True)

    losses = []
    names = list(phi)
    for step in range(config.inner_steps):
        if should_stop is not None and should_stop():
            raise AdaptationCancelled(f"adaptation cancelled before inner step {step}")

        batch = _minibatch(num_support, config.batch_size, generator, support_images.device)
        temperature = config.temperature_at(step)
        head = TaskHead(head_weight, head_bias)
        with autocast(config.precision, support_images.device):
            nll, kl_alpha_term, kl_w_term = negative_elbo(
                supernet, phi, head, prior, support_images[batch], support_labels[batch],
                num_support, config, temperature, generator,
            )
            penalty = 0.0 if alpha_penalty is None else alpha_penalty({t: phi[n] for t, n in ALPHA_NAMES.items()})
        loss = nll + kl_alpha_term + penalty + kl_w_term

        # The weight KL is quadratic, so it gets an exact proximal step below instead of a
        # gradient step: with a small support set its curvature beta_w / (sigma^2 |S|) times
        # inner_lr can exceed 2, where a plain gradient step would diverge.
        tensors = [phi[n] for n in names] + [head_weight, head_bias]
        grads = torch.autograd.grad(nll + kl_alpha_term + penalty, tensors, create_graph=create_graph, allow_unused=True)
        grads = [torch.zeros_like(t) if g is None else g for t, g in zip(tensors, grads)]
        scale = _clip_scale(grads, config.grad_clip)

        updated = []
        for name, tensor, grad in zip(names + ["head.weight", "head.bias"], tensors, grads):
            if name in ALPHA_NAMES.values():
                new = tensor - config.inner_lr_alpha * scale * grad
            elif name in prior.log_sigma:
                curvature = config.beta_w * torch.exp(-2.0 * prior.log_sigma[name]) / num_support
                pull = config.inner_lr * curvature
                new = (tensor - config.inner_lr * scale * grad + pull * prior.parameters[name]) / (1.0 + pull)
            else:
                new = tensor - config.inner_lr * scale * grad
            if not create_graph:
                new = new.detach().requires_grad_(True)
            updated.append(new)
        phi = dict(zip(names, updated[: len(names)]))
        head_weight, head_bias = updated[len(names)], updated[len(names) + 1]

        # float() waits for the device, so only the steps that report convert their loss.
        losses.append(loss.detach())
        if on_step is not None and throttle.due(step + 1, config.inner_steps):
            on_step(StepReport(step + 1, config.inner_steps, float(losses[-1]), float(nll.detach()), temperature))

    losses = torch.stack(losses).tolist() if losses else []
    return Posterior(parameters=phi, head=TaskHead(head_weight, head_bias), losses=losses)


def _minibatch(size: int, batch_size: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    if batch_size >= size:
        return torch.arange(size, device=device)
    # non_blocking: a blocking copy to a GPU would wait for the work already queued there.
    return torch.randperm(size, generator=generator)[:batch_size].to(device, non_blocking=True)


def _clip_scale(grads: list[torch.Tensor], max_norm: float) -> torch.Tensor | float:
    """Factor that brings the global gradient norm down to max_norm (1.0 when it is below)."""
    if max_norm <= 0:
        return 1.0
    norm = torch.sqrt(sum((g.detach() ** 2).sum() for g in grads))
    return torch.clamp(max_norm / (norm + 1e-6), max=1.0)
