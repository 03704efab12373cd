"""Activation normalization (Glow)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .base import Transform, channel_view, check_channels, spatial_size

__all__ = ["ActNorm"]


class ActNorm(Transform):
    """Per-channel affine map ``z = (x - loc) * exp(log_scale)`` with data-dependent init.

    The first batch seen in training mode sets ``loc`` and ``log_scale`` so that the output
    has zero mean and unit variance per channel. Whether that happened is the buffer
    ``initialized``, so it travels with ``state_dict`` and a reloaded model never
    re-initializes. :meth:`reset_initialization` has the next training batch initialize it
    again (to fine-tune on other data, say); write no ``False`` into the buffer directly: a
    layer that has initialized does not read it again. Under ``torch.distributed`` the
    statistics are averaged over all ranks, so every replica starts from the same
    parameters.

    The log-determinant is ``H * W * sum(log_scale)`` for images (``sum(log_scale)`` for
    vectors). Works on ``(B, C)`` and ``(B, C, H, W)`` inputs.

    References:
        Glow: Generative Flow with Invertible 1x1 Convolutions, Kingma & Dhariwal, 2018,
        arXiv:1807.03039.

    Example:
        >>> layer = ActNorm(3)
        >>> z, logdet = layer(torch.randn(16, 3, 8, 8) * 5 + 2)
        >>> bool(layer.initialized)
        True
    """

    def __init__(self, channels: int, scale: float = 1.0, eps: float = 1e-6) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"ActNorm needs at least one channel, got channels={channels}")
        self.channels = channels
        self.scale = scale
        self.eps = eps
        self.loc = nn.Parameter(torch.zeros(channels))
        self.log_scale = nn.Parameter(torch.zeros(channels))
        self.register_buffer("initialized", torch.tensor(False))
        # Mirrors the buffer once it is known to be True, so that a training step does not
        # read a device tensor (a host synchronisation) on every call.
        self._known_initialized = False

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super()._load_from_state_dict(*args, **kwargs)
        self._known_initialized = False

    def reset_initialization(self) -> None:
        """Have the next batch seen in training mode set ``loc`` and ``log_scale`` again."""
        self.initialized.fill_(False)
        self._known_initialized = False

    def needs_init(self) -> bool:
        if not self._known_initialized:
            self._known_initialized = bool(self.initialized)
        return not self._known_initialized

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set the parameters from the statistics of ``x``: zero mean, std ``scale`` per channel."""
        dims = [0, *range(2, x.dim())]
        distributed = dist.is_available() and dist.is_initialized()
        # Two passes (the mean, then the centred squares) in float64: E[x^2] - E[x]^2 in
        # float32 loses the variance when |mean| >> std. Under torch.distributed both sums
        # cover the whole global batch, not one rank's shard.
        count = torch.full((1,), float(x.numel() // x.shape[1]), device=x.device)
        stats = torch.cat([count.double(), x.double().sum(dims)])
        if distributed:
            dist.all_reduce(stats)
        mean = stats[1:] / stats[0]
        centred = x.double() - mean.view(1, -1, *([1] * (x.dim() - 2)))
        square = (centred * centred).sum(dims)
        if distributed:
            dist.all_reduce(square)
        std = (square / stats[0]).sqrt()
        self.loc.copy_(mean.to(self.loc.dtype))
        self.log_scale.copy_(torch.log(self.scale / (std + self.eps)).to(self.log_scale.dtype))
        self.initialized.fill_(True)
        self._known_initialized = True

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_channels(x, self.channels, "ActNorm")
        if self.training and self.needs_init():
            self.initialize(x)
        z = (x - channel_view(self.loc, x)) * channel_view(self.log_scale.exp(), x)
        logdet = (spatial_size(x) * self.log_scale.sum()).expand(x.shape[0])
        return z, logdet.to(x.dtype)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_channels(z, self.channels, "ActNorm")
        x = z * channel_view((-self.log_scale).exp(), z) + channel_view(self.loc, z)
        logdet = (-spatial_size(z) * self.log_scale.sum()).expand(z.shape[0])
        return x, logdet.to(z.dtype)

    def extra_repr(self) -> str:
        return f"{self.channels}"
