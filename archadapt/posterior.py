"""The architecture and weight posterior: KL terms, the Proto-MAML head and the task loss.

p(alpha | theta_alpha) = prod over edges of Categorical(softmax(theta_alpha[e])) and
p(w | theta_w) = Normal(theta_w, sigma^2) with one sigma per weight tensor. The task posterior
q(alpha, w | phi) has the same form, so both KL terms have closed forms.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from archadapt.search_space import SearchSpace
from archadapt.supernet import ALPHA_NAMES, SamplingMode, Supernet, without_none

Tensors = dict[str, torch.Tensor]


def categorical_kl(phi_alpha: torch.Tensor, theta_alpha: torch.Tensor) -> torch.Tensor:
    """KL(q || p) summed over edges, for logits of shape (E, K): sum_k q_k (log q_k - log p_k)."""
    log_q = torch.log_softmax(phi_alpha, dim=-1)
    log_p = torch.log_softmax(theta_alpha, dim=-1)
    return (log_q.exp() * (log_q - log_p)).sum()


def gaussian_kl(phi_w: Tensors, theta_w: Tensors, log_sigma: Tensors) -> torch.Tensor:
    """KL between Gaussians of equal scale: sum over tensors of ||phi - theta||^2 / (2 sigma^2).

    With a shared scale the log-determinant terms cancel, so this is the exact KL.
    """
    total = torch.zeros(())
    for name, phi in phi_w.items():
        sigma_squared = torch.exp(2.0 * log_sigma[name])
        total = total + ((phi - theta_w[name]) ** 2).sum() / (2.0 * sigma_squared)
    return total


def architecture_kl(phi: Tensors, theta: Tensors) -> torch.Tensor:
    return sum(categorical_kl(phi[name], theta[name]) for name in ALPHA_NAMES.values())


def op_probs(alpha: torch.Tensor, space: SearchSpace | None = None) -> torch.Tensor:
    """Primitive probabilities per edge, softmax(alpha) of shape (E, K).

    Pass the search space when it may set `sample_none: false`. In such a space `none` gets
    probability 0 and the other primitives are renormalised, which is the distribution that
    sampling draws from.
    """
    if space is not None and not space.sample_none:
        alpha = without_none(alpha, space)
    return torch.softmax(alpha, dim=-1)


@dataclass
class TaskHead:
    """The linear classifier of one task: logits = embeddings @ weight.T + bias."""

    weight: torch.Tensor  # (classes, embedding_dim)
    bias: torch.Tensor  # (classes,)

    def __call__(self, embeddings: torch.Tensor) -> torch.Tensor:
        return embeddings @ self.weight.t() + self.bias


def prototype_head(embeddings: torch.Tensor, labels: torch.Tensor, num_classes: int) -> TaskHead:
    """Proto-MAML initialization: row c is 2 * mu_c and bias c is -||mu_c||^2.

    mu_c is the mean support embedding of class c, so the initial logits equal the negative
    squared distance to each prototype up to a term shared by all classes.
    """
    one_hot = nn.functional.one_hot(labels, num_classes).to(embeddings.dtype)  # (N, classes)
    counts = one_hot.sum(dim=0).clamp_min(1.0)  # (classes,)
    prototypes = (one_hot.t() @ embeddings) / counts[:, None]  # (classes, D)
    return TaskHead(weight=2.0 * prototypes, bias=-(prototypes**2).sum(dim=1))


def embed(
    supernet: Supernet,
    parameters: Tensors,
    images: torch.Tensor,
    temperature: float,
    mode: SamplingMode,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Embed images with the supernet under the given parameters (B, embedding_dim)."""
    return functional_call(
        supernet,
        parameters,
        (images,),
        {"temperature": temperature, "mode": mode, "generator": generator},
        strict=False,
    )


def sample_weights(phi_w: Tensors, log_sigma: Tensors, generator: torch.Generator | None) -> Tensors:
    """Draw w = phi_w + sigma * eps by the reparameterization trick."""
    sampled = {}
    for name, phi in phi_w.items():
        noise = torch.randn(phi.shape, generator=generator).to(phi.device, non_blocking=True)
        sampled[name] = phi + torch.exp(log_sigma[name]) * noise
    return sampled
