"""Coupling networks: the non-invertible functions inside coupling layers and priors.

A coupling layer takes a *factory* ``(in_channels, out_channels) -> nn.Module`` so that any
network can be plugged in; the classes here are the ones the papers use.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "MLP",
    "GlowNet",
    "NetFactory",
    "ResNet",
    "ZeroConv2d",
    "ZeroLinear",
]

NetFactory = Callable[[int, int], nn.Module]


class ZeroConv2d(nn.Module):
    """3x3 convolution initialised to zero, output scaled by a learned ``exp(3 * logs)``.

    Zero initialisation makes a coupling start as a fixed map (the identity for additive and
    exp-tanh couplings) and a learned prior start as a standard normal. The per-channel
    log-scale, multiplied by 3, lets the output grow quickly once training starts.

    References:
        Glow: Generative Flow with Invertible 1x1 Convolutions, Kingma & Dhariwal, 2018,
        arXiv:1807.03039.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.logs = nn.Parameter(torch.zeros(out_channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x) * torch.exp(self.logs * 3)


class ZeroLinear(nn.Module):
    """The vector counterpart of :class:`ZeroConv2d`."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.logs = nn.Parameter(torch.zeros(out_features))

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x) * torch.exp(self.logs * 3)


class GlowNet(nn.Module):
    """Glow's coupling network: 3x3 conv, ReLU, 1x1 conv, ReLU, zero-initialised 3x3 conv.

    Example:
        >>> net = GlowNet(6, 12, hidden_channels=32)
        >>> net(torch.randn(2, 6, 8, 8)).abs().max().item()
        0.0
    """

    def __init__(self, in_channels: int, out_channels: int, hidden_channels: int = 512) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, hidden_channels, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden_channels, hidden_channels, 1)
        self.out = ZeroConv2d(hidden_channels, out_channels)
        for conv in (self.conv1, self.conv2):
            nn.init.normal_(conv.weight, std=0.05)
            nn.init.zeros_(conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.conv1(x))
        h = F.relu(self.conv2(h))
        return self.out(h)


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int, batch_norm: bool) -> None:
        super().__init__()
        norm: Callable[[int], nn.Module] = nn.BatchNorm2d if batch_norm else nn.Identity
        self.norm1 = norm(channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = norm(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.relu(self.norm1(x)))
        h = self.conv2(F.relu(self.norm2(h)))
        return x + h


class ResNet(nn.Module):
    """RealNVP's residual scale/shift network (pre-activation residual blocks).

    References:
        Density estimation using Real NVP, Dinh, Sohl-Dickstein & Bengio, 2016,
        arXiv:1605.08803.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden_channels: int = 64,
        blocks: int = 4,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        self.inp = nn.Conv2d(in_channels, hidden_channels, 3, padding=1)
        self.blocks = nn.Sequential(
            *[_ResidualBlock(hidden_channels, batch_norm) for _ in range(blocks)]
        )
        self.norm = nn.BatchNorm2d(hidden_channels) if batch_norm else nn.Identity()
        self.out = ZeroConv2d(hidden_channels, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        h = self.blocks(self.inp(x))
        return self.out(F.relu(self.norm(h)))


class MLP(nn.Module):
    """Fully connected ReLU network with a zero-initialised output layer (NICE, 2D toys).

    References:
        NICE: Non-linear Independent Components Estimation, Dinh, Krueger & Bengio, 2014,
        arXiv:1410.8516.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_features: int = 1000,
        hidden_layers: int = 5,
    ) -> None:
        super().__init__()
        if hidden_layers < 1:
            raise ValueError(f"MLP needs hidden_layers >= 1, got {hidden_layers}")
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(hidden_layers):
            layers += [nn.Linear(width, hidden_features), nn.ReLU()]
            width = hidden_features
        self.hidden = nn.Sequential(*layers)
        self.out = ZeroLinear(width, out_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.hidden(x))
