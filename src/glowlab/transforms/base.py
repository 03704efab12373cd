"""The contract every invertible layer follows.

Direction and sign convention
-----------------------------
``forward`` maps data to latent, ``x -> z``, and returns ``log|det dz/dx|`` per example.
``inverse`` maps latent to data, ``z -> x``, and returns ``log|det dx/dz|`` per example,
which is the negative of the forward log-determinant at the matching point. Both
log-determinants are ``(B,)`` tensors on the input's device and dtype, never ``None`` or a
Python number, so that they can be summed along a flow without special cases.

``context`` is optional conditioning information (for example class labels). Layers that do
not use it accept and ignore it, so that a whole flow can pass it along uniformly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

import torch
from torch import Tensor, nn

__all__ = ["FlowSequential", "Rebuilt", "Transform", "zero_logdet"]


def zero_logdet(x: Tensor) -> Tensor:
    """A ``(B,)`` tensor of zeros on ``x``'s device and dtype."""
    return x.new_zeros(x.shape[0])


class Rebuilt(NamedTuple):
    """A layer's input rebuilt from its output, with the forward graph recomputed.

    ``x`` is the input (detached); ``leaves`` are tensors that require grad and together
    make up ``x``; ``z`` and ``logdet`` are the forward outputs computed from the leaves;
    ``combine(*leaf_grads)`` turns the leaves' gradients into the gradient of ``x``.
    """

    x: Tensor
    leaves: tuple[Tensor, ...]
    z: Tensor
    logdet: Tensor
    combine: Callable[..., Tensor]


class Transform(nn.Module):
    """Base class of an invertible layer ``f: x -> z`` with a tractable Jacobian.

    Subclasses implement :meth:`forward` and :meth:`inverse`; see the module docstring for
    the sign convention of the returned log-determinants.
    """

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def rebuild(self, z: Tensor, context: Tensor | None = None) -> Rebuilt:
        """The input of output ``z`` and the forward graph from it (call with grad enabled).

        What the memory-saving backward pass (:mod:`glowlab.memory`) needs from each layer:
        by default the layer is inverted without gradients and run forward again; layers
        that can do both at once override this.
        """
        with torch.no_grad():
            x, _ = self.inverse(z, context)
        x = x.detach().requires_grad_(True)
        out, logdet = self(x, context)
        return Rebuilt(x.detach(), (x,), out, logdet, lambda g: g)


class FlowSequential(Transform):
    """A composition of transforms; the log-determinants add up.

    Example:
        >>> from glowlab.transforms import ActNorm, Reverse
        >>> flow = FlowSequential([ActNorm(4), Reverse(4)])
        >>> z, logdet = flow(torch.randn(2, 4, 3, 3))
        >>> logdet.shape
        torch.Size([2])
    """

    def __init__(self, transforms: Iterable[Transform]) -> None:
        super().__init__()
        self.transforms = nn.ModuleList(transforms)

    def __len__(self) -> int:
        return len(self.transforms)

    def __iter__(self):  # type: ignore[override]
        return iter(self.transforms)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        logdet = zero_logdet(x)
        for transform in self.transforms:
            x, ld = transform(x, context)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        logdet = zero_logdet(z)
        for transform in reversed(self.transforms):
            z, ld = transform.inverse(z, context)
            logdet = logdet + ld
        return z, logdet


def spatial_size(x: Tensor) -> int:
    """Positions that share one per-channel parameter: ``H*W`` for images, 1 for vectors."""
    size = 1
    for n in x.shape[2:]:
        size *= n
    return size


def channel_view(param: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-channel ``(C,)`` parameter so that it broadcasts against ``x`` (B, C, ...)."""
    return param.view(1, -1, *([1] * (x.dim() - 2)))


def check_channels(x: Tensor, channels: int, name: str) -> None:
    if x.dim() < 2 or x.shape[1] != channels:
        raise ValueError(
            f"{name} expects input of shape (B, {channels}, ...), got {tuple(x.shape)}"
        )
