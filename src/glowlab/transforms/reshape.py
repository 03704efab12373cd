"""Volume-preserving reshapes: squeeze (space to channels) and flatten."""

from __future__ import annotations

from torch import Tensor

from .base import Transform, zero_logdet

__all__ = ["Flatten", "Squeeze", "squeeze2d", "unsqueeze2d"]


def _channels_last(x: Tensor) -> bool:
    """Whether ``x`` (B, C, H, W) is laid out channels-last: channels vary fastest.

    Also true of a channel slice of a channels-last tensor, and of a one-channel tensor
    made channels-last (its channel stride is 1, not H*W). The squeezes keep this layout,
    so that a channels-last model's flow runs channels-last from input to prior instead of
    converting at every convolution. Only the layout depends on it, never the values.
    """
    return x.stride(1) == 1 and x.stride(3) >= x.shape[1]


def squeeze2d(x: Tensor, factor: int = 2) -> Tensor:
    """``(B, C, H, W) -> (B, C*f*f, H/f, W/f)``: each f x f block becomes f*f channels.

    Output channel ``c * f*f + i * f + j`` holds input channel ``c`` at offset ``(i, j)``
    within each block. For one channel and f=2:

        >>> import torch
        >>> x = torch.arange(16.0).view(1, 1, 4, 4)
        >>> x[0, 0]
        tensor([[ 0.,  1.,  2.,  3.],
                [ 4.,  5.,  6.,  7.],
                [ 8.,  9., 10., 11.],
                [12., 13., 14., 15.]])
        >>> squeeze2d(x)[0, :, 0, 0]   # the top-left 2x2 block, row by row
        tensor([0., 1., 4., 5.])
        >>> squeeze2d(x)[0, 0]         # top-left corner of every block
        tensor([[ 0.,  2.],
                [ 8., 10.]])
    """
    b, c, h, w = x.shape
    if h % factor or w % factor:
        raise ValueError(f"squeeze needs H and W divisible by {factor}, got {h}x{w}")
    if _channels_last(x):  # the same copy, in (B, H, W, C) order: the layout is kept
        y = x.permute(0, 2, 3, 1).reshape(b, h // factor, factor, w // factor, factor, c)
        y = y.permute(0, 1, 3, 5, 2, 4).reshape(b, h // factor, w // factor, c * factor * factor)
        return y.permute(0, 3, 1, 2)
    x = x.reshape(b, c, h // factor, factor, w // factor, factor)
    x = x.permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, c * factor * factor, h // factor, w // factor)


def unsqueeze2d(z: Tensor, factor: int = 2) -> Tensor:
    """The inverse of :func:`squeeze2d`."""
    b, c, h, w = z.shape
    if c % (factor * factor):
        raise ValueError(f"unsqueeze needs channels divisible by {factor * factor}, got {c}")
    if _channels_last(z):
        y = z.permute(0, 2, 3, 1).reshape(b, h, w, c // (factor * factor), factor, factor)
        y = y.permute(0, 1, 4, 2, 5, 3).reshape(b, h * factor, w * factor, c // (factor * factor))
        return y.permute(0, 3, 1, 2)
    z = z.reshape(b, c // (factor * factor), factor, factor, h, w)
    z = z.permute(0, 1, 4, 2, 5, 3)
    return z.reshape(b, c // (factor * factor), h * factor, w * factor)


class Squeeze(Transform):
    """Space-to-channel reshape, see :func:`squeeze2d` for the channel order; logdet 0.

    References:
        Density estimation using Real NVP, Dinh et al., 2016, arXiv:1605.08803.
    """

    def __init__(self, factor: int = 2) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if x.dim() != 4:
            raise ValueError(f"Squeeze needs (B, C, H, W) input, got {tuple(x.shape)}")
        return squeeze2d(x, self.factor), zero_logdet(x)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if z.dim() != 4:
            raise ValueError(f"Squeeze.inverse needs (B, C, H, W) input, got {tuple(z.shape)}")
        return unsqueeze2d(z, self.factor), zero_logdet(z)

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


class Flatten(Transform):
    """``(B, C, H, W) -> (B, C*H*W)`` in row-major order; logdet 0 (NICE works on vectors)."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"Flatten expects (B, {self.shape}), got {tuple(x.shape)}")
        return x.reshape(x.shape[0], -1), zero_logdet(x)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return z.reshape(z.shape[0], *self.shape), zero_logdet(z)

    def extra_repr(self) -> str:
        return f"shape={self.shape}"
