"""NICE's diagonal scaling layer."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Transform

__all__ = ["Scaling"]


class Scaling(Transform):
    """``z = x * exp(s)`` with one learned log-scale per dimension; logdet ``sum(s)``.

    The last layer of NICE: it lets the otherwise volume-preserving additive flow weight
    the importance of each latent dimension.

    References:
        NICE: Non-linear Independent Components Estimation, Dinh, Krueger & Bengio, 2014,
        arXiv:1410.8516 (section 3.3).
    """

    def __init__(self, shape: int | tuple[int, ...]) -> None:
        super().__init__()
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self.log_scale = nn.Parameter(torch.zeros(shape))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if x.shape[1:] != self.log_scale.shape:
            raise ValueError(
                f"Scaling expects (B, {tuple(self.log_scale.shape)}), got {tuple(x.shape)}"
            )
        logdet = self.log_scale.sum().to(x.dtype).expand(x.shape[0])
        return x * self.log_scale.exp(), logdet

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        logdet = (-self.log_scale.sum()).to(z.dtype).expand(z.shape[0])
        return z * (-self.log_scale).exp(), logdet
