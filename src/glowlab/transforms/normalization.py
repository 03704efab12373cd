"""Batch normalization as an invertible layer (RealNVP)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Transform, channel_view, check_channels, spatial_size

__all__ = ["BatchNormFlow"]


class BatchNormFlow(Transform):
    """``z = (x - mean) / sqrt(var + eps) * exp(log_gamma) + beta`` per channel.

    In training mode ``mean`` and ``var`` are the statistics of the current batch (and the
    running averages are updated); in evaluation mode they are the running averages, which
    makes the layer an ordinary per-example bijection. The log-determinant is
    ``H * W * sum(log_gamma - log(var + eps) / 2)``; in training mode the batch statistics are
    treated as constants, as in the paper. ``inverse`` always uses the running averages, so
    sample and decode in evaluation mode.

    References:
        Density estimation using Real NVP, Dinh, Sohl-Dickstein & Bengio, 2016,
        arXiv:1605.08803 (section 3.7).
    """

    def __init__(self, channels: int, momentum: float = 0.05, eps: float = 1e-4) -> None:
        super().__init__()
        self.channels = channels
        self.momentum = momentum
        self.eps = eps
        self.log_gamma = nn.Parameter(torch.zeros(channels))
        self.beta = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def _stats(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if not self.training:
            return self.running_mean, self.running_var
        dims = [0, *range(2, x.dim())]
        mean = x.mean(dims)
        var = x.var(dims, unbiased=False)
        with torch.no_grad():
            self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), self.momentum)
            self.running_var.lerp_(var.detach().to(self.running_var.dtype), self.momentum)
        return mean, var

    def _log_scale(self, var: Tensor) -> Tensor:
        return self.log_gamma - 0.5 * torch.log(var + self.eps)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_channels(x, self.channels, "BatchNormFlow")
        mean, var = self._stats(x)
        log_scale = self._log_scale(var)
        z = (x - channel_view(mean, x)) * channel_view(log_scale.exp(), x) + channel_view(
            self.beta, x
        )
        logdet = (spatial_size(x) * log_scale.sum()).to(x.dtype).expand(x.shape[0])
        return z, logdet

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_channels(z, self.channels, "BatchNormFlow")
        log_scale = self._log_scale(self.running_var)
        x = (z - channel_view(self.beta, z)) * channel_view((-log_scale).exp(), z)
        x = x + channel_view(self.running_mean, z)
        logdet = (-spatial_size(z) * log_scale.sum()).to(z.dtype).expand(z.shape[0])
        return x, logdet

    def extra_repr(self) -> str:
        return f"{self.channels}, momentum={self.momentum}, eps={self.eps}"
