"""The multi-scale split: factor out half of the channels with their prior."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from .nets import ZeroConv2d

__all__ = ["Split"]

SplitPrior = Literal["learned", "standard"]


class Split(nn.Module):
    """Factor out half of the channels; returns the kept half and the standardized latent.

    ``forward(h) -> (h_kept, eps, logdet)``: ``h`` is split into ``(h_kept, z)`` along the
    channels. With ``prior="learned"`` (Glow's split2d) ``z ~ N(mean, std^2)`` where
    ``mean, log std`` come from a zero-initialised convolution of ``h_kept``; the returned
    ``eps = (z - mean) / std`` with ``logdet = -sum(log std)``. With ``prior="standard"``
    (RealNVP) ``eps = z`` and ``logdet = 0``. ``inverse(h_kept, eps)`` rebuilds ``h``.

    References:
        Density estimation using Real NVP, Dinh et al., 2016, arXiv:1605.08803 (section 3.6).
        Glow: Generative Flow with Invertible 1x1 Convolutions, Kingma & Dhariwal, 2018,
        arXiv:1807.03039.
    """

    def __init__(self, channels: int, prior: SplitPrior = "learned") -> None:
        super().__init__()
        if prior not in ("learned", "standard"):
            raise ValueError(f"unknown split prior {prior!r}; choose 'learned' or 'standard'")
        if channels < 2 or channels % 2:
            raise ValueError(f"Split needs an even number of channels, got {channels}")
        self.channels = channels
        self.prior = prior
        self.conv = ZeroConv2d(channels // 2, channels) if prior == "learned" else None

    def mean_log_std(self, kept: Tensor) -> tuple[Tensor, Tensor] | None:
        if self.conv is None:
            return None
        mean, log_std = self.conv(kept).chunk(2, dim=1)
        return mean, log_std

    def forward(self, h: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        kept, z = h.chunk(2, dim=1)
        stats = self.mean_log_std(kept)
        if stats is None:
            return kept, z, h.new_zeros(h.shape[0])
        mean, log_std = stats
        eps = (z - mean) * torch.exp(-log_std)
        return kept, eps, -log_std.flatten(1).sum(1)

    def inverse(
        self, kept: Tensor, eps: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        stats = self.mean_log_std(kept)
        if stats is None:
            return torch.cat([kept, eps], dim=1), kept.new_zeros(kept.shape[0])
        mean, log_std = stats
        z = mean + torch.exp(log_std) * eps
        return torch.cat([kept, z], dim=1), log_std.flatten(1).sum(1)

    def extra_repr(self) -> str:
        return f"{self.channels}, prior={self.prior}"
