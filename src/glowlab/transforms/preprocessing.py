"""RealNVP's logit preprocessing as a layer whose log-determinant enters the likelihood."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Transform

__all__ = ["Logit"]


class Logit(Transform):
    """``z = logit(alpha + (1 - 2 alpha) p)`` with ``p = x + 1/2`` for ``x`` in [-1/2, 1/2).

    Maps the bounded data domain to the real line; ``alpha`` keeps the logit away from the
    infinities at 0 and 1. The log-determinant is
    ``sum(log(1 - 2 alpha) - log(q) - log(1 - q))`` with ``q = alpha + (1 - 2 alpha) p``.

    References:
        Density estimation using Real NVP, Dinh, Sohl-Dickstein & Bengio, 2016,
        arXiv:1605.08803 (section 4.1).

    Example:
        >>> layer = Logit(alpha=0.05)
        >>> z, _ = layer(torch.zeros(1, 3))
        >>> z
        tensor([[0., 0., 0.]])
    """

    def __init__(self, alpha: float = 0.05) -> None:
        super().__init__()
        if not 0.0 < alpha < 0.5:
            raise ValueError(f"Logit needs 0 < alpha < 0.5, got {alpha}")
        self.alpha = alpha

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        q = self.alpha + (1 - 2 * self.alpha) * (x + 0.5)
        z = torch.log(q) - torch.log1p(-q)
        # log q + log(1 - q) = -softplus(-z) - softplus(z), which stays finite in float32.
        elementwise = math.log(1 - 2 * self.alpha) + F.softplus(-z) + F.softplus(z)
        return z, elementwise.flatten(1).sum(1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        q = torch.sigmoid(z)
        x = (q - self.alpha) / (1 - 2 * self.alpha) - 0.5
        elementwise = math.log(1 - 2 * self.alpha) + F.softplus(-z) + F.softplus(z)
        return x, -elementwise.flatten(1).sum(1)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"
