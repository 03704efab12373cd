"""Coupling layers: additive (NICE) and affine (RealNVP, Glow), channel or checkerboard mask."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nets import NetFactory
from .base import Rebuilt, Transform, check_channels, zero_logdet

__all__ = ["AdditiveCoupling", "AffineCoupling", "Coupling", "checkerboard_mask"]

CouplingKind = Literal["additive", "affine"]
MaskKind = Literal["channel", "checkerboard"]
ScaleKind = Literal["sigmoid", "exp_tanh"]

_KINDS = ("additive", "affine")
_MASKS = ("channel", "checkerboard")
_SCALES = ("sigmoid", "exp_tanh")


def checkerboard_mask(height: int, width: int, parity: int, like: Tensor) -> Tensor:
    """A (1, 1, H, W) mask that is 1 where ``(i + j) % 2 == parity`` (the conditioning cells).

    Example:
        >>> checkerboard_mask(2, 3, 0, torch.empty(0))[0, 0]
        tensor([[1., 0., 1.],
                [0., 1., 0.]])
    """
    i = torch.arange(height, device=like.device).view(-1, 1)
    j = torch.arange(width, device=like.device).view(1, -1)
    return ((i + j) % 2 == parity).to(like.dtype).view(1, 1, height, width)


def _check_option(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(map(repr, allowed))}")


class Coupling(Transform):
    """Coupling layer: one part of the input is transformed conditioned on the other.

    With ``mask="channel"`` the channels are split into halves ``(x_a, x_b)``; with
    ``parity=0`` ``x_a`` is kept and ``x_b`` transformed, ``parity=1`` swaps the roles. With
    ``mask="checkerboard"`` the kept cells are those where ``(i + j) % 2 == parity``.

    * ``kind="additive"``: ``z_b = x_b + t(x_a)``, log-determinant 0 (NICE).
    * ``kind="affine"``: ``z_b = x_b * s(x_a) + t(x_a)``, log-determinant ``sum(log s)``,
      with ``scale="sigmoid"``: ``s = sigmoid(h + 2)`` (Glow) or ``scale="exp_tanh"``:
      ``s = exp(a * tanh(h))`` with a learned per-channel ``a`` (RealNVP).

    ``net_factory(in_channels, out_channels)`` builds the network that computes ``t`` (and
    the raw scale ``h``) from the kept part. With the zero-initialised output layers of
    :mod:`glowlab.nets`, ``t = 0`` and ``h = 0`` at initialisation: additive and exp-tanh
    couplings start as the identity, Glow's sigmoid coupling as the constant scale
    ``sigmoid(2) ~ 0.88``.

    Works on vectors ``(B, D)`` with the channel mask and on images ``(B, C, H, W)`` with
    either mask.

    References:
        NICE: Non-linear Independent Components Estimation, Dinh et al., 2014, arXiv:1410.8516.
        Density estimation using Real NVP, Dinh et al., 2016, arXiv:1605.08803.
        Glow: Generative Flow with Invertible 1x1 Convolutions, Kingma & Dhariwal, 2018,
        arXiv:1807.03039.

    Example:
        >>> from glowlab.nets import GlowNet
        >>> layer = Coupling(4, lambda i, o: GlowNet(i, o, 16), kind="affine")
        >>> z, logdet = layer(torch.randn(2, 4, 8, 8))
        >>> z.shape, logdet.shape
        (torch.Size([2, 4, 8, 8]), torch.Size([2]))
    """

    def __init__(
        self,
        channels: int,
        net_factory: NetFactory,
        kind: CouplingKind = "affine",
        mask: MaskKind = "channel",
        parity: int = 0,
        scale: ScaleKind = "sigmoid",
    ) -> None:
        super().__init__()
        _check_option("coupling kind", kind, _KINDS)
        _check_option("coupling mask", mask, _MASKS)
        _check_option("coupling scale", scale, _SCALES)
        if parity not in (0, 1):
            raise ValueError(f"coupling parity must be 0 or 1, got {parity}")
        if mask == "channel" and (channels < 2 or channels % 2):
            raise ValueError(
                f"a channel-mask coupling splits the channels into halves and needs an even "
                f"number of channels, got {channels}; squeeze first or use mask='checkerboard'"
            )
        self.channels = channels
        self.kind = kind
        self.mask = mask
        self.parity = parity
        self.scale = scale
        half = channels // 2
        n_in = half if mask == "channel" else channels
        n_out = half if mask == "channel" else channels
        self.net = net_factory(n_in, n_out * (2 if kind == "affine" else 1))
        if kind == "affine" and scale == "exp_tanh":
            self.tanh_scale = nn.Parameter(torch.ones(n_out, *([1] * 2)))

    # -- the scale and shift -------------------------------------------------------------
    def _shift_logscale(self, h: Tensor) -> tuple[Tensor, Tensor | None]:
        if self.kind == "additive":
            return h, None
        shift, raw = h.chunk(2, dim=1)
        if self.scale == "sigmoid":
            return shift, F.logsigmoid(raw + 2.0)
        a = self.tanh_scale if raw.dim() == 4 else self.tanh_scale.view(1, -1)
        return shift, a * torch.tanh(raw)

    # -- channel mask ----------------------------------------------------------------------
    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        a, b = x.chunk(2, dim=1)
        return (a, b) if self.parity == 0 else (b, a)

    def _merge(self, kept: Tensor, changed: Tensor) -> Tensor:
        return torch.cat((kept, changed) if self.parity == 0 else (changed, kept), dim=1)

    def _couple(self, x: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        check_channels(x, self.channels, "Coupling")
        if self.mask == "checkerboard":
            return self._apply_checkerboard(x, inverse)
        kept, other = self._split(x)
        shift, log_s = self._shift_logscale(self.net(kept))
        if log_s is None:
            out = other - shift if inverse else other + shift
            return self._merge(kept, out), zero_logdet(x)
        if inverse:
            out = (other - shift) * torch.exp(-log_s)
        else:
            out = other * torch.exp(log_s) + shift
        logdet = log_s.flatten(1).sum(1)
        return self._merge(kept, out), -logdet if inverse else logdet

    # -- checkerboard mask -----------------------------------------------------------------
    def _apply_checkerboard(self, x: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        if x.dim() != 4:
            raise ValueError(
                f"a checkerboard coupling needs (B, C, H, W) input, got {tuple(x.shape)}"
            )
        mask = checkerboard_mask(x.shape[2], x.shape[3], self.parity, x)
        keep = x * mask
        shift, log_s = self._shift_logscale(self.net(keep))
        shift = shift * (1 - mask)
        if log_s is None:
            return (x - shift if inverse else x + shift), zero_logdet(x)
        log_s = log_s * (1 - mask)
        if inverse:
            out = keep + (1 - mask) * ((x - shift) * torch.exp(-log_s))
        else:
            out = keep + (1 - mask) * (x * torch.exp(log_s) + shift)
        logdet = log_s.flatten(1).sum(1)
        return out, -logdet if inverse else logdet

    def rebuild(self, z: Tensor, context: Tensor | None = None) -> Rebuilt:
        """The input of ``z`` and the forward graph from it, in one network evaluation.

        A coupling's kept part is the same in input and output, so the network that inverts
        the layer is the network of the forward pass: evaluating it once, with gradients,
        serves both (the generic :meth:`Transform.rebuild` would evaluate it twice).
        """
        check_channels(z, self.channels, "Coupling")
        if self.mask == "checkerboard":
            return self._rebuild_checkerboard(z)
        kept_z, other_z = self._split(z)
        kept = kept_z.detach().requires_grad_(True)
        shift, log_s = self._shift_logscale(self.net(kept))
        with torch.no_grad():
            other_x = other_z - shift if log_s is None else (other_z - shift) * torch.exp(-log_s)
        other = other_x.detach().requires_grad_(True)
        if log_s is None:
            out, logdet = other + shift, zero_logdet(z)
        else:
            out, logdet = other * torch.exp(log_s) + shift, log_s.flatten(1).sum(1)
        x = self._merge(kept.detach(), other_x)
        return Rebuilt(x, (kept, other), self._merge(kept, out), logdet, self._merge)

    def _rebuild_checkerboard(self, z: Tensor) -> Rebuilt:
        mask = checkerboard_mask(z.shape[2], z.shape[3], self.parity, z)
        keep = (z * mask).detach().requires_grad_(True)
        shift, log_s = self._shift_logscale(self.net(keep))
        shift = shift * (1 - mask)
        if log_s is not None:
            log_s = log_s * (1 - mask)
        with torch.no_grad():
            changed = z - shift if log_s is None else (z - shift) * torch.exp(-log_s)
            x = keep + (1 - mask) * changed
        full = x.detach().requires_grad_(True)
        if log_s is None:
            out, logdet = keep + (1 - mask) * full + shift, zero_logdet(z)
        else:
            out = keep + (1 - mask) * (full * torch.exp(log_s) + shift)
            logdet = log_s.flatten(1).sum(1)
        # ``keep`` stands for x * mask and ``full`` for x on the other cells.
        return Rebuilt(x, (keep, full), out, logdet, lambda g_keep, g_full: g_keep * mask + g_full)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._couple(x, inverse=False)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._couple(z, inverse=True)

    def extra_repr(self) -> str:
        return f"{self.channels}, kind={self.kind}, mask={self.mask}, parity={self.parity}"


class AdditiveCoupling(Coupling):
    """Additive coupling ``z_b = x_b + t(x_a)`` (NICE); see :class:`Coupling`."""

    def __init__(
        self, channels: int, net_factory: NetFactory, mask: MaskKind = "channel", parity: int = 0
    ) -> None:
        super().__init__(channels, net_factory, kind="additive", mask=mask, parity=parity)


class AffineCoupling(Coupling):
    """Affine coupling ``z_b = x_b * s(x_a) + t(x_a)`` (RealNVP, Glow); see :class:`Coupling`."""

    def __init__(
        self,
        channels: int,
        net_factory: NetFactory,
        mask: MaskKind = "channel",
        parity: int = 0,
        scale: ScaleKind = "sigmoid",
    ) -> None:
        super().__init__(
            channels, net_factory, kind="affine", mask=mask, parity=parity, scale=scale
        )
