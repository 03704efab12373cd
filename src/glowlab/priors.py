"""Priors: the base distributions of the standardized latents, and the learned top priors.

A learned Gaussian prior ``N(z; mean, std^2)`` is written as the bijection
``eps = (z - mean) / std`` (log-determinant ``-sum(log std)``) followed by a standard normal
on ``eps``. That way every model maps an image to standardized latents ``eps`` and its
log-likelihood is ``log N(eps; 0, I)`` plus the sum of log-determinants, which is exactly
what the tests check by brute force.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ConditionalPrior",
    "GaussianPrior",
    "LearnedPrior",
    "StandardLogistic",
    "StandardNormal",
]

_LOG_2PI = math.log(2 * math.pi)


class StandardNormal(nn.Module):
    """``N(0, I)``; :meth:`sample` draws from ``N(0, T^2 I)`` for temperature ``T``."""

    def log_prob(self, eps: Tensor) -> Tensor:
        return -0.5 * (eps * eps + _LOG_2PI).flatten(1).sum(1)

    def sample(
        self,
        shape: tuple[int, ...],
        temperature: float = 1.0,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        return temperature * torch.randn(shape, device=device, dtype=dtype, generator=generator)


class StandardLogistic(nn.Module):
    """Standard logistic density ``-softplus(z) - softplus(-z)`` per dimension (NICE).

    Temperature scales the draws: ``T * logit(u)``, ``u ~ U(0, 1)``.
    """

    def log_prob(self, eps: Tensor) -> Tensor:
        return -(F.softplus(eps) + F.softplus(-eps)).flatten(1).sum(1)

    def sample(
        self,
        shape: tuple[int, ...],
        temperature: float = 1.0,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        u = torch.rand(shape, device=device, dtype=dtype, generator=generator)
        u = u.clamp(torch.finfo(u.dtype).tiny, 1 - torch.finfo(u.dtype).eps)
        return temperature * (torch.log(u) - torch.log1p(-u))


class GaussianPrior(nn.Module):
    """A diagonal Gaussian on ``z`` written as the standardization ``eps = (z - mean) / std``.

    Subclasses define :meth:`mean_log_std`. ``forward`` returns ``(eps, logdet)`` with
    ``logdet = -sum(log std)``; ``inverse`` returns ``(z, -logdet)``.
    """

    def mean_log_std(self, batch: int, context: Tensor | None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        mean, log_std = self.mean_log_std(z.shape[0], context)
        eps = (z - mean) * torch.exp(-log_std)
        logdet = -log_std.expand_as(z).flatten(1).sum(1)
        return eps, logdet

    def inverse(self, eps: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        mean, log_std = self.mean_log_std(eps.shape[0], context)
        z = mean + torch.exp(log_std) * eps
        logdet = log_std.expand_as(eps).flatten(1).sum(1)
        return z, logdet


class LearnedPrior(GaussianPrior):
    """Glow's learned top prior (``learn_top``): a per-channel mean and log-std, zero at init.

    References:
        Glow: Generative Flow with Invertible 1x1 Convolutions, Kingma & Dhariwal, 2018,
        arXiv:1807.03039.
    """

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = tuple(shape)
        channels = shape[0]
        self.params = nn.Parameter(torch.zeros(2 * channels, *([1] * (len(shape) - 1))))

    def mean_log_std(self, batch: int, context: Tensor | None) -> tuple[Tensor, Tensor]:
        mean, log_std = self.params.unsqueeze(0).chunk(2, dim=1)
        return mean, log_std


class ConditionalPrior(GaussianPrior):
    """Glow's class-conditional top prior (``ycond``): the class sets the mean and log-std.

    ``mean, log_std = h + W onehot(y)`` per channel, where ``h`` is the learned top prior
    (when ``learn_top``) and ``W`` is zero-initialised, so training starts from the
    unconditional prior.

    References:
        Glow: Generative Flow with Invertible 1x1 Convolutions, Kingma & Dhariwal, 2018,
        arXiv:1807.03039 (section 5, class-conditional prior).
    """

    def __init__(self, shape: tuple[int, ...], num_classes: int, learn_top: bool = True) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.num_classes = num_classes
        channels = shape[0]
        self.learn_top = learn_top
        if learn_top:
            self.params = nn.Parameter(torch.zeros(2 * channels))
        else:
            self.register_buffer("params", torch.zeros(2 * channels))
        self.embed = nn.Linear(num_classes, 2 * channels)
        nn.init.zeros_(self.embed.weight)
        nn.init.zeros_(self.embed.bias)

    def mean_log_std(self, batch: int, context: Tensor | None) -> tuple[Tensor, Tensor]:
        if context is None:
            raise ValueError("this prior is class-conditional: pass the class labels y")
        onehot = F.one_hot(context.long(), self.num_classes).to(self.params.dtype)
        h = self.params + self.embed(onehot)
        h = h.view(h.shape[0], -1, *([1] * (len(self.shape) - 1)))
        mean, log_std = h.chunk(2, dim=1)
        return mean, log_std
