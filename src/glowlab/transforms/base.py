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

from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

__all__ = ["FlowSequential", "FoldedPairs", "FusedPair", "Rebuilt", "Transform", "zero_logdet"]


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


class FoldedPairs(NamedTuple):
    """Several folded pairs of one flow, their weights computed together.

    ``apply[k]`` maps the input of the k-th pair to its output, with ``weights[k]`` and
    ``biases[k]`` (the tensors it reads, for a caller that wants their gradients). Pair k's
    log-determinant is ``positions * per_position[k]`` for an input of ``positions`` pixels
    (``H * W``), the same for every example.
    """

    apply: list[Callable[[Tensor], Tensor]]
    per_position: Tensor
    weights: list[Tensor]
    biases: list[Tensor]


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

    def forward_fused(
        self, previous: Transform, x: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor] | None:
        """``self(previous(x))`` computed in one operation, or None where this layer cannot.

        :class:`FlowSequential` offers every pair of neighbours to the second layer; a layer
        that can fold its predecessor into itself (the 1x1 convolution folds an ActNorm)
        overrides this. The result must be the same function, log-determinant included.
        """
        return None

    def inverse_fused(
        self, previous: Transform, z: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor] | None:
        """``previous.inverse(self.inverse(z))`` in one operation, or None (see above)."""
        return None

    def fuses_with(self, previous: Transform) -> bool:
        """Whether :meth:`forward_fused` can fold ``previous`` (once it is ready to)."""
        return False

    def fold_pairs(self, pairs: Sequence[FusedPair], x: Tensor) -> FoldedPairs | None:
        """The forward functions of ``pairs`` (this layer is the second of the first pair),
        with all their weights computed in a few batched operations, or None.

        A deep flow computes each pair's folded weight from its parameters in a dozen
        small operations, forward and backward: most of the kernels of a training step,
        each one launched on its own. :class:`FlowSequential` offers its folded pairs here
        first; a layer that can compute the weights of its kind for all of them at once
        overrides this. ``x`` is the flow's input. The result must be the same function.
        """
        return None

    def unfold_pairs(self, pairs: Sequence[FusedPair]) -> list[Callable[[Tensor], Tensor]] | None:
        """The inverse functions of ``pairs``, their weights computed together without
        gradients (see :meth:`fold_pairs`), or None."""
        return None


class FusedPair(Transform):
    """Two neighbouring layers run as one where the second can fold the first in.

    What :meth:`FlowSequential.units` returns for such a pair, so that code that walks a flow
    layer by layer (the memory-saving backward pass) runs the folded operation too. Falls
    back to running the two layers in turn where the fold does not apply yet.
    """

    def __init__(self, first: Transform, second: Transform) -> None:
        super().__init__()
        self.first = first
        self.second = second

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        fused = self.second.forward_fused(self.first, x, context)
        if fused is not None:
            return fused
        h, logdet = self.first(x, context)
        z, ld = self.second(h, context)
        return z, logdet + ld

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        fused = self.second.inverse_fused(self.first, z, context)
        if fused is not None:
            return fused
        h, logdet = self.second.inverse(z, context)
        x, ld = self.first.inverse(h, context)
        return x, logdet + ld


class FlowSequential(Transform):
    """A composition of transforms; the log-determinants add up.

    Neighbours that can run as one operation do (see :meth:`Transform.forward_fused`): an
    ActNorm followed by a 1x1 convolution is one convolution with a bias. ``fuse=False``
    runs every layer on its own; the function is the same either way. Where the weights of
    several folded pairs are computed anew (training), they are computed together
    (:meth:`Transform.fold_pairs`); ``batch_folds=False`` has each pair compute its own.

    Example:
        >>> from glowlab.transforms import ActNorm, Reverse
        >>> flow = FlowSequential([ActNorm(4), Reverse(4)])
        >>> z, logdet = flow(torch.randn(2, 4, 3, 3))
        >>> logdet.shape
        torch.Size([2])
    """

    def __init__(
        self, transforms: Iterable[Transform], fuse: bool = True, batch_folds: bool = True
    ) -> None:
        super().__init__()
        self.transforms = nn.ModuleList(transforms)
        self.fuse = fuse
        self.batch_folds = batch_folds

    def __len__(self) -> int:
        return len(self.transforms)

    def units(self) -> list[Transform]:
        """The layers as :meth:`forward` runs them: a foldable pair as one :class:`FusedPair`.

        Built again only when ``fuse`` or the layers change, and kept outside the module tree
        (a plain tuple), so ``state_dict`` and ``modules()`` see only ``transforms``.
        """
        key = (self.fuse, tuple(map(id, self.transforms)))
        cached = self.__dict__.get("_units")
        if cached is None or cached[0] != key:
            layers, units, i = list(self.transforms), [], 0
            while i < len(layers):
                if self.fuse and i + 1 < len(layers) and layers[i + 1].fuses_with(layers[i]):
                    units.append(FusedPair(layers[i], layers[i + 1]))
                    i += 2
                else:
                    units.append(layers[i])
                    i += 1
            cached = (key, tuple(units))
            self.__dict__["_units"] = cached
        return list(cached[1])

    def __iter__(self):  # type: ignore[override]
        return iter(self.transforms)

    def folded_units(self, x: Tensor) -> tuple[list[Transform], FoldedPairs | None]:
        """:meth:`units`, and the forward functions of its folded pairs with their weights
        computed together (:meth:`Transform.fold_pairs`), or None where they are not
        (``batch_folds=False``, fewer than two pairs, or weights that are cached)."""
        units = self.units()
        pairs = [unit for unit in units if isinstance(unit, FusedPair)]
        if not self.batch_folds or len(pairs) < 2:
            return units, None
        return units, pairs[0].second.fold_pairs(pairs, x)

    def run_units(
        self, x: Tensor, run: Callable[[Transform, Tensor], tuple[Tensor, Tensor]]
    ) -> tuple[Tensor, Tensor]:
        """``x`` through the flow: ``run(unit, h)`` for each unit, except the folded pairs,
        whose weights are computed together where they can be (:meth:`folded_units`).

        What :meth:`forward` does with ``run = unit(h, context)``; the checkpointing
        memory mode (:mod:`glowlab.memory`) runs the other units its own way.
        """
        units, folded = self.folded_units(x)
        logdet = zero_logdet(x)
        positions: list[int] = []  # H*W of each folded pair's input
        for unit in units:
            if folded is not None and isinstance(unit, FusedPair):
                positions.append(spatial_size(x))
                x = folded.apply[len(positions) - 1](x)
            else:
                x, ld = run(unit, x)
                logdet = logdet + ld
        if folded is None:
            return x, logdet
        # The pairs' log-determinants, added once: one sum where the pairs see the same H*W
        # (always in a Glow level, whose layers keep C*H*W and whose pairs share C).
        if len(set(positions)) == 1:
            pairs_logdet = positions[0] * folded.per_position.sum()
        else:
            per_pair = folded.per_position.unbind(0)
            pairs_logdet = sum(n * ld for n, ld in zip(positions, per_pair, strict=True))
        return x, logdet + pairs_logdet.to(logdet.dtype)  # type: ignore[union-attr]

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.run_units(x, lambda unit, h: unit(h, context))

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        logdet = zero_logdet(z)
        for unit in reversed(self.units()):
            z, ld = unit.inverse(z, context)
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
