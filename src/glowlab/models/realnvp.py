"""RealNVP: affine couplings with checkerboard and channel masks in a multi-scale flow."""

from __future__ import annotations

from functools import partial

from ..multiscale import Split
from ..nets import ResNet
from ..transforms import BatchNormFlow, Coupling, FlowSequential, Logit, Squeeze, Transform
from .base import FlowModel, Level
from .glow import _check_positive

__all__ = ["RealNVP"]


class RealNVP(FlowModel):
    """RealNVP's multi-scale architecture.

    The data first goes through the logit preprocessing ``logit(alpha + (1 - 2 alpha) x)``.
    Each scale but the last is 3 checkerboard affine couplings, a squeeze, 3 channel-wise
    affine couplings, and a split that factors out half of the channels with a standard
    normal prior; the last scale is 4 checkerboard couplings. Masks alternate between
    couplings. Scale and shift come from residual networks, the scale as
    ``exp(a * tanh(h))``. With ``batch_norm``, a batch-normalization layer follows every
    coupling (its log-determinant included).

    Args:
        image_shape: ``(C, H, W)``; H and W must be divisible by ``2**(levels - 1)``.
        levels: number of scales.
        hidden_channels: width of the residual networks.
        res_blocks: residual blocks per network.
        batch_norm: batch-normalization flow layers and batch norm inside the networks.
        alpha: the logit preprocessing constant (0.05 for CIFAR-10 in the paper).

    References:
        Density estimation using Real NVP, Dinh, Sohl-Dickstein & Bengio, 2016,
        arXiv:1605.08803.

    Example:
        >>> import torch, glowlab
        >>> model = glowlab.RealNVP((3, 8, 8), levels=2, hidden_channels=8, res_blocks=1)
        >>> [tuple(z.shape) for z in model.encode(torch.rand(2, 3, 8, 8) - 0.5)]
        [(2, 6, 4, 4), (2, 6, 4, 4)]
    """

    name = "realnvp"

    def __init__(
        self,
        image_shape: tuple[int, int, int] = (3, 32, 32),
        levels: int = 3,
        hidden_channels: int = 64,
        res_blocks: int = 8,
        batch_norm: bool = True,
        alpha: float = 0.05,
    ) -> None:
        super().__init__(image_shape)
        c, h, w = self.image_shape
        _check_positive(levels=levels, hidden_channels=hidden_channels, res_blocks=res_blocks)
        if h % 2 ** (levels - 1) or w % 2 ** (levels - 1):
            raise ValueError(
                f"RealNVP with levels={levels} squeezes {levels - 1} times and needs H and W "
                f"divisible by {2 ** (levels - 1)}, got {h}x{w}; use fewer levels"
            )
        self.config = dict(
            image_shape=list(self.image_shape), levels=levels, hidden_channels=hidden_channels,
            res_blocks=res_blocks, batch_norm=batch_norm, alpha=alpha,
        )  # fmt: skip
        net = partial(
            ResNet, hidden_channels=hidden_channels, blocks=res_blocks, batch_norm=batch_norm
        )
        self.pre = FlowSequential([Logit(alpha)])

        def couplings(channels: int, count: int, mask: str) -> list[Transform]:
            layers: list[Transform] = []
            for i in range(count):
                layers.append(Coupling(channels, net, "affine", mask, i % 2, "exp_tanh"))  # type: ignore[arg-type]
                if batch_norm:
                    layers.append(BatchNormFlow(channels))
            return layers

        for level in range(levels):
            if level == levels - 1:
                self.levels.append(Level(FlowSequential(couplings(c, 4, "checkerboard"))))
                break
            layers = couplings(c, 3, "checkerboard")
            layers.append(Squeeze())
            c, h, w = c * 4, h // 2, w // 2
            layers += couplings(c, 3, "channel")
            self.levels.append(Level(FlowSequential(layers), Split(c, prior="standard")))
            c = c // 2
            self.latent_shapes.append((c, h, w))
        self.latent_shapes.append((c, h, w))
