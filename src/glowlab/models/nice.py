"""NICE: additive couplings on the flattened image and a diagonal scaling layer."""

from __future__ import annotations

from functools import partial
from typing import Literal

from ..nets import MLP
from ..priors import StandardLogistic, StandardNormal
from ..transforms import Coupling, Flatten, FlowSequential, Scaling, Transform
from .base import FlowModel, Level
from .glow import _check_positive

__all__ = ["NICE"]


class NICE(FlowModel):
    """NICE: ``couplings`` additive couplings with MLPs on alternating halves, then scaling.

    The image is flattened to a vector of ``D = C * H * W`` dimensions. Coupling ``i`` keeps
    the first half of the vector when ``i`` is even and the second half when it is odd. The
    prior is the standard logistic (the paper's choice) or a standard normal.

    Args:
        image_shape: ``(C, H, W)`` with an even ``C * H * W``.
        couplings: number of additive coupling layers (4 in the paper).
        hidden_features: width of each MLP (1000 in the paper).
        hidden_layers: hidden layers per MLP (5 in the paper).
        prior: ``"logistic"`` or ``"gaussian"``.

    References:
        NICE: Non-linear Independent Components Estimation, Dinh, Krueger & Bengio, 2014,
        arXiv:1410.8516.

    Example:
        >>> import torch, glowlab
        >>> model = glowlab.NICE((1, 4, 4), hidden_features=32, hidden_layers=2)
        >>> [tuple(z.shape) for z in model.encode(torch.rand(2, 1, 4, 4) - 0.5)]
        [(2, 16)]
    """

    name = "nice"

    def __init__(
        self,
        image_shape: tuple[int, int, int] = (1, 28, 28),
        couplings: int = 4,
        hidden_features: int = 1000,
        hidden_layers: int = 5,
        prior: Literal["logistic", "gaussian"] = "logistic",
    ) -> None:
        super().__init__(image_shape)
        _check_positive(
            couplings=couplings, hidden_features=hidden_features, hidden_layers=hidden_layers
        )
        if prior not in ("logistic", "gaussian"):
            raise ValueError(f"unknown prior {prior!r}; choose 'logistic' or 'gaussian'")
        d = self.dims
        if d % 2:
            raise ValueError(
                f"NICE splits the flattened image into halves and needs an even C*H*W, got {d}"
            )
        self.config = dict(
            image_shape=list(self.image_shape), couplings=couplings,
            hidden_features=hidden_features, hidden_layers=hidden_layers, prior=prior,
        )  # fmt: skip
        net = partial(MLP, hidden_features=hidden_features, hidden_layers=hidden_layers)
        self.pre = FlowSequential([Flatten(self.image_shape)])
        layers: list[Transform] = [
            Coupling(d, net, "additive", "channel", i % 2) for i in range(couplings)
        ]
        layers.append(Scaling(d))
        self.levels.append(Level(FlowSequential(layers)))
        self.base = StandardLogistic() if prior == "logistic" else StandardNormal()
        self.latent_shapes = [(d,)]
