"""Glow: actnorm, invertible 1x1 convolution and affine coupling in a multi-scale flow."""

from __future__ import annotations

from functools import partial
from typing import Literal

from torch import nn

from ..multiscale import Split
from ..nets import GlowNet
from ..priors import ConditionalPrior, LearnedPrior
from ..transforms import (
    ActNorm,
    Coupling,
    FlowSequential,
    InvConv1x1,
    InvConv1x1LU,
    Reverse,
    Shuffle,
    Squeeze,
    Transform,
)
from .base import FlowModel, Level

__all__ = ["Glow"]

CouplingKind = Literal["affine", "additive"]
Permutation = Literal["conv1x1_lu", "conv1x1", "shuffle", "reverse"]
ScaleKind = Literal["sigmoid", "exp_tanh"]

_PERMUTATIONS = ("conv1x1_lu", "conv1x1", "shuffle", "reverse")


def _permutation(kind: str, channels: int) -> Transform:
    if kind == "conv1x1_lu":
        return InvConv1x1LU(channels)
    if kind == "conv1x1":
        return InvConv1x1(channels)
    if kind == "shuffle":
        return Shuffle(channels)
    return Reverse(channels)


class Glow(FlowModel):
    """Glow: ``levels`` x [squeeze, ``steps`` x (actnorm, permutation, coupling), split].

    The last level has no split; its output goes to the top prior, learned (``learn_top``)
    or class-conditional (``num_classes``, with a linear classifier on the top latent for
    the auxiliary loss). Split priors are learned from the kept half (``split_prior``).

    Args:
        image_shape: ``(C, H, W)``; H and W must be divisible by ``2**levels``.
        levels: number of scales L.
        steps: flow steps K per level.
        hidden_channels: width of the coupling networks.
        coupling: ``"affine"`` or ``"additive"``.
        permutation: ``"conv1x1_lu"``, ``"conv1x1"``, ``"shuffle"`` or ``"reverse"``.
        learn_top: learn the mean and log-std of the top prior.
        num_classes: make the top prior class-conditional (Glow's ``ycond``).
        split_prior: ``"learned"`` (Glow) or ``"standard"`` normal for factored-out latents.
        scale: affine coupling scale function, ``"sigmoid"`` (Glow) or ``"exp_tanh"``.
        actnorm_scale: target standard deviation of ActNorm's data-dependent init.

    References:
        Glow: Generative Flow with Invertible 1x1 Convolutions, Kingma & Dhariwal, 2018,
        arXiv:1807.03039.

    Example:
        >>> import torch, glowlab
        >>> model = glowlab.Glow((3, 8, 8), levels=2, steps=2, hidden_channels=16)
        >>> x = torch.rand(4, 3, 8, 8) - 0.5
        >>> model.log_prob(x).shape
        torch.Size([4])
        >>> [tuple(z.shape) for z in model.encode(x)]
        [(4, 6, 4, 4), (4, 24, 2, 2)]
    """

    name = "glow"

    def __init__(
        self,
        image_shape: tuple[int, int, int] = (3, 32, 32),
        levels: int = 3,
        steps: int = 32,
        hidden_channels: int = 512,
        coupling: CouplingKind = "affine",
        permutation: Permutation = "conv1x1_lu",
        learn_top: bool = True,
        num_classes: int | None = None,
        split_prior: Literal["learned", "standard"] = "learned",
        scale: ScaleKind = "sigmoid",
        actnorm_scale: float = 1.0,
    ) -> None:
        super().__init__(image_shape, num_classes)
        c, h, w = self.image_shape
        _check_positive(levels=levels, steps=steps, hidden_channels=hidden_channels)
        if coupling not in ("affine", "additive"):
            raise ValueError(f"unknown coupling {coupling!r}; choose 'affine' or 'additive'")
        if permutation not in _PERMUTATIONS:
            choices = ", ".join(map(repr, _PERMUTATIONS))
            raise ValueError(f"unknown permutation {permutation!r}; choose one of {choices}")
        if split_prior not in ("learned", "standard"):
            raise ValueError(f"unknown split prior {split_prior!r}; choose 'learned' or 'standard'")
        if scale not in ("sigmoid", "exp_tanh"):
            raise ValueError(f"unknown coupling scale {scale!r}; choose 'sigmoid' or 'exp_tanh'")
        if h % 2**levels or w % 2**levels:
            raise ValueError(
                f"Glow with levels={levels} squeezes {levels} times and needs H and W divisible by "
                f"{2**levels}, got {h}x{w}; use fewer levels or resize the images"
            )
        self.config = dict(
            image_shape=list(self.image_shape), levels=levels, steps=steps,
            hidden_channels=hidden_channels, coupling=coupling, permutation=permutation,
            learn_top=learn_top, num_classes=num_classes, split_prior=split_prior, scale=scale,
            actnorm_scale=actnorm_scale,
        )  # fmt: skip
        net = partial(GlowNet, hidden_channels=hidden_channels)
        for level in range(levels):
            c, h, w = c * 4, h // 2, w // 2
            layers: list[Transform] = [Squeeze()]
            for _ in range(steps):
                layers += [
                    ActNorm(c, scale=actnorm_scale),
                    _permutation(permutation, c),
                    Coupling(c, net, kind=coupling, mask="channel", scale=scale),
                ]
            split = None
            if level < levels - 1:
                split = Split(c, prior=split_prior)
                self.latent_shapes.append((c // 2, h, w))
                c = c // 2
            self.levels.append(Level(FlowSequential(layers), split))
        self.latent_shapes.append((c, h, w))
        if num_classes is not None:
            self.top = ConditionalPrior((c, h, w), num_classes, learn_top=learn_top)
            self.classifier = nn.Linear(c, num_classes)
        elif learn_top:
            self.top = LearnedPrior((c, h, w))


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
