"""Fixed channel permutations: the reverse (RealNVP) and shuffle ablations of Glow."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Transform, check_channels, zero_logdet

__all__ = ["Reverse", "Shuffle"]


class Shuffle(Transform):
    """A fixed random permutation of the channels; volume preserving (logdet 0).

    The permutation is a buffer, so it is saved and restored with ``state_dict``.

    Example:
        >>> layer = Shuffle(4, seed=0)
        >>> x = torch.arange(4.0).view(1, 4)
        >>> torch.equal(layer.inverse(layer(x)[0])[0], x)
        True
    """

    def __init__(self, channels: int, seed: int | None = None) -> None:
        super().__init__()
        self.channels = channels
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        perm = torch.randperm(channels, generator=generator)
        self.register_buffer("perm", perm)
        self.register_buffer("inv_perm", torch.argsort(perm))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_channels(x, self.channels, "Shuffle")
        return x[:, self.perm], zero_logdet(x)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_channels(z, self.channels, "Shuffle")
        return z[:, self.inv_perm], zero_logdet(z)

    def extra_repr(self) -> str:
        return f"{self.channels}"


class Reverse(Transform):
    """Reverses the channel order; volume preserving (logdet 0).

    Example:
        >>> Reverse(3)(torch.tensor([[1.0, 2.0, 3.0]]))[0]
        tensor([[3., 2., 1.]])
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_channels(x, self.channels, "Reverse")
        return x.flip(1), zero_logdet(x)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_channels(z, self.channels, "Reverse")
        return z.flip(1), zero_logdet(z)

    def extra_repr(self) -> str:
        return f"{self.channels}"
