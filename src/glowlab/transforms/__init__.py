"""Invertible layers. Each follows the contract of :class:`~glowlab.transforms.base.Transform`."""

from .actnorm import ActNorm
from .base import FlowSequential, Transform
from .conv1x1 import InvConv1x1, InvConv1x1LU
from .coupling import AdditiveCoupling, AffineCoupling, Coupling, checkerboard_mask
from .normalization import BatchNormFlow
from .permutation import Reverse, Shuffle
from .preprocessing import Logit
from .reshape import Flatten, Squeeze, squeeze2d, unsqueeze2d
from .scaling import Scaling

__all__ = [
    "ActNorm",
    "AdditiveCoupling",
    "AffineCoupling",
    "BatchNormFlow",
    "Coupling",
    "Flatten",
    "FlowSequential",
    "InvConv1x1",
    "InvConv1x1LU",
    "Logit",
    "Reverse",
    "Scaling",
    "Shuffle",
    "Squeeze",
    "Transform",
    "checkerboard_mask",
    "squeeze2d",
    "unsqueeze2d",
]
