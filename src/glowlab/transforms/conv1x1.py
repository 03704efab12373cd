"""Invertible 1x1 convolutions (Glow), plain and LU-decomposed."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Transform, check_channels, spatial_size

__all__ = ["InvConv1x1", "InvConv1x1LU"]


def _random_rotation(channels: int) -> Tensor:
    # QR of a Gaussian matrix gives a random orthogonal matrix: log|det W| = 0 at init.
    q, _ = torch.linalg.qr(torch.randn(channels, channels, dtype=torch.float64))
    return q


def _mix(x: Tensor, weight: Tensor) -> Tensor:
    """Apply ``weight`` (C_out, C_in) along the channel axis of (B, C) or (B, C, H, W)."""
    if x.dim() == 2:
        return F.linear(x, weight)
    if x.dim() == 4:
        return F.conv2d(x, weight.view(*weight.shape, 1, 1))
    raise ValueError(f"1x1 convolution expects (B, C) or (B, C, H, W) input, got {tuple(x.shape)}")


class _InverseCache:
    """Caches the inverse weight for sampling in evaluation mode.

    The cached value is used only without gradients, in evaluation mode, and while every
    parameter keeps its storage and its ``_version`` counter, which in-place updates bump
    (optimizer steps, ``load_state_dict``, EMA updates). Switching the layer between
    training and evaluation mode clears it. Writes through ``param.data`` bump no counter:
    after such a write in evaluation mode call ``clear_inverse_cache()``.
    """

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.value: Tensor | None = None

    def clear(self) -> None:
        self.key, self.value = None, None

    def get(self, params: list[Tensor], compute, training: bool) -> Tensor:  # type: ignore[no-untyped-def]
        if training or (torch.is_grad_enabled() and any(p.requires_grad for p in params)):
            return compute()
        key = tuple((id(p), p.data_ptr(), p._version, p.device, p.dtype) for p in params)
        if key != self.key or self.value is None:
            self.value = compute()
            self.key = key
        return self.value


class InvConv1x1(Transform):
    """Invertible 1x1 convolution ``z = W x`` with a full learned matrix ``W``.

    ``W`` starts as a random rotation. The log-determinant is ``H * W * log|det W|``,
    computed with ``slogdet`` (an LU factorisation), which does not overflow the way
    ``log(det W)`` can.

    References:
        Glow: Generative Flow with Invertible 1x1 Convolutions, Kingma & Dhariwal, 2018,
        arXiv:1807.03039.

    Example:
        >>> conv = InvConv1x1(4)
        >>> z, logdet = conv(torch.randn(2, 4, 5, 5))
        >>> z.shape
        torch.Size([2, 4, 5, 5])
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.weight = nn.Parameter(_random_rotation(channels).to(torch.get_default_dtype()))
        self._inverse_cache = _InverseCache()

    def _logabsdet(self, x: Tensor) -> Tensor:
        return spatial_size(x) * torch.linalg.slogdet(self.weight).logabsdet

    def inverse_weight(self) -> Tensor:
        return self._inverse_cache.get(
            [self.weight], lambda: torch.linalg.inv(self.weight), self.training
        )

    def clear_inverse_cache(self) -> None:
        """Forget the cached inverse (needed only after writing the weight through ``.data``)."""
        self._inverse_cache.clear()

    def train(self, mode: bool = True) -> InvConv1x1:
        self._inverse_cache.clear()
        return super().train(mode)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_channels(x, self.channels, "InvConv1x1")
        logdet = self._logabsdet(x).to(x.dtype).expand(x.shape[0])
        return _mix(x, self.weight), logdet

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_channels(z, self.channels, "InvConv1x1")
        logdet = (-self._logabsdet(z)).to(z.dtype).expand(z.shape[0])
        return _mix(z, self.inverse_weight()), logdet

    def extra_repr(self) -> str:
        return f"{self.channels}"


class InvConv1x1LU(Transform):
    """Invertible 1x1 convolution with ``W = P L (U + diag(sign(s) * exp(log|s|)))``.

    ``P`` is a fixed permutation, ``L`` unit lower triangular, ``U`` strictly upper
    triangular, ``sign(s)`` fixed and ``log|s|`` learned, so the log-determinant is the cheap
    and exact ``H * W * sum(log|s|)``. Initialised from the LU factors of a random rotation,
    so it computes the same function as :class:`InvConv1x1` with that rotation.

    References:
        Glow: Generative Flow with Invertible 1x1 Convolutions, Kingma & Dhariwal, 2018,
        arXiv:1807.03039.

    Example:
        >>> conv = InvConv1x1LU(4)
        >>> torch.allclose(conv.weight() @ conv.inverse_weight(), torch.eye(4), atol=1e-6)
        True
    """

    def __init__(self, channels: int, init_weight: Tensor | None = None) -> None:
        super().__init__()
        self.channels = channels
        w = _random_rotation(channels) if init_weight is None else init_weight.double()
        p, lower, upper = torch.linalg.lu(w)
        s = torch.diagonal(upper)
        dtype = torch.get_default_dtype()
        self.register_buffer("perm", p.to(dtype))
        self.register_buffer("sign_s", torch.sign(s).to(dtype))
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1).to(dtype))
        self.register_buffer("eye", torch.eye(channels, dtype=dtype))
        self.lower = nn.Parameter(torch.tril(lower, -1).to(dtype))
        self.upper = nn.Parameter(torch.triu(upper, 1).to(dtype))
        self.log_s = nn.Parameter(torch.log(torch.abs(s)).to(dtype))
        self._inverse_cache = _InverseCache()

    def _factors(self) -> tuple[Tensor, Tensor]:
        lower = self.lower * self.lower_mask + self.eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * self.log_s.exp())
        return lower, upper

    def weight(self) -> Tensor:
        lower, upper = self._factors()
        return self.perm @ lower @ upper

    def _compute_inverse(self) -> Tensor:
        lower, upper = self._factors()
        # W^-1 = U^-1 L^-1 P^T, by two triangular solves rather than a general inverse.
        lower_inv = torch.linalg.solve_triangular(lower, self.eye, upper=False, unitriangular=True)
        upper_inv = torch.linalg.solve_triangular(upper, self.eye, upper=True)
        return upper_inv @ lower_inv @ self.perm.T

    def inverse_weight(self) -> Tensor:
        params = [self.lower, self.upper, self.log_s]
        return self._inverse_cache.get(params, self._compute_inverse, self.training)

    def clear_inverse_cache(self) -> None:
        """Forget the cached inverse (needed only after writing weights through ``.data``)."""
        self._inverse_cache.clear()

    def train(self, mode: bool = True) -> InvConv1x1LU:
        self._inverse_cache.clear()
        return super().train(mode)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_channels(x, self.channels, "InvConv1x1LU")
        logdet = (spatial_size(x) * self.log_s.sum()).to(x.dtype).expand(x.shape[0])
        return _mix(x, self.weight()), logdet

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_channels(z, self.channels, "InvConv1x1LU")
        logdet = (-spatial_size(z) * self.log_s.sum()).to(z.dtype).expand(z.shape[0])
        return _mix(z, self.inverse_weight()), logdet

    def extra_repr(self) -> str:
        return f"{self.channels}"
