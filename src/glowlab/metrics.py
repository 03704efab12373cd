"""Dequantization and bits per dimension."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["bits_per_dim", "bits_per_dim_from_log_prob", "dequantize", "quantize"]


def _check_bits(n_bits: int) -> None:
    if not isinstance(n_bits, int) or not 1 <= n_bits <= 8:
        raise ValueError(f"n_bits must be an integer from 1 to 8, got {n_bits!r}")


def dequantize(
    images: Tensor,
    n_bits: int = 8,
    noise: bool = True,
    dtype: torch.dtype | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """uint8 images -> floats in [-0.5, 0.5): ``(floor(img / 2**(8 - n)) + u) / 2**n - 0.5``.

    ``u ~ U[0, 1)`` with ``noise=True`` (uniform dequantization, for likelihoods); with
    ``noise=False`` ``u = 1/2``, the centre of each bin (for encoding images exactly).
    """
    _check_bits(n_bits)
    if images.dtype != torch.uint8:
        raise TypeError(f"dequantize expects uint8 images, got {images.dtype}")
    dtype = dtype or torch.get_default_dtype()
    bins = 2**n_bits
    k = torch.div(images, 2 ** (8 - n_bits), rounding_mode="floor").to(dtype)
    if not noise:
        return (k + 0.5) / bins - 0.5
    x = (k + torch.rand(k.shape, dtype=dtype, device=k.device, generator=generator)) / bins - 0.5
    # k + u rounds to k + 1 for u within half a unit of the last place of 1 (about one
    # value in 10^5 in float32): keep it below the next bin's edge, which is exact.
    edge = (k + 1) / bins - 0.5
    return torch.minimum(x, torch.nextafter(edge, edge.new_tensor(-math.inf)))


def quantize(x: Tensor, n_bits: int = 8) -> Tensor:
    """Floats in [-0.5, 0.5) -> uint8 images at 8 bits (the inverse of :func:`dequantize`).

    Each value goes to its ``n_bits`` bin, and the bin is written at its 8-bit position
    (``bin * 2**(8 - n)``), so a 5-bit image is displayed with the right brightness.
    """
    _check_bits(n_bits)
    bins = 2**n_bits
    # In float64, where x + 0.5 is exact for a float32 x just below a bin's upper edge.
    levels = torch.floor((x.detach().double() + 0.5) * bins).clamp(0, bins - 1)
    return (levels * 2 ** (8 - n_bits)).to(torch.uint8)


def bits_per_dim_from_log_prob(log_prob: Tensor, dims: int, n_bits: int = 8) -> Tensor:
    """Bits per dimension of the discrete images from the continuous density of ``x``.

    The model's ``log_prob`` is a density of ``x = (k + u) / 2**n - 1/2`` on cubes of side
    ``2**-n``, one per discrete image ``k``. Its probability mass on a cube is at least
    ``exp(log p(x) - D * log(2**n))`` on average over ``u ~ U[0, 1)^D`` (Jensen), so

        bits/dim = -(log p(x) - D * log(2**n)) / (D * log 2)

    is an upper bound on the discrete negative log-likelihood in bits per dimension, the
    figure the NICE, RealNVP and Glow papers report. ``D = C * H * W``.
    """
    _check_bits(n_bits)
    return -(log_prob - dims * n_bits * math.log(2)) / (dims * math.log(2))


def bits_per_dim(
    model: torch.nn.Module,
    images: Tensor,
    n_bits: int = 8,
    y: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Bits per dimension ``(B,)`` of uint8 images ``(B, C, H, W)`` under ``model``.

    Dequantizes with uniform noise (:func:`dequantize`), scales to [-0.5, 0.5), and returns
    ``-(log_prob - D * log(2**n_bits)) / (D * log 2)`` with ``D = C * H * W``.

    Derivation. Let ``k`` be an image reduced to ``n = n_bits`` bits and
    ``x = (k + u) / 2**n - 1/2`` with ``u ~ U[0, 1)^D``, so each ``k`` owns a cube of side
    ``2**-n`` (volume ``2**(-n D)``). The model is a density ``p`` on ``x``; the discrete
    model it induces is ``P(k) = integral of p over the cube of k``. Jensen's inequality over
    the uniform ``u`` gives ``log P(k) = log E_u[p(x) 2**(-n D)] >= E_u[log p(x)] - n D log 2``.
    So ``-(log p(x) - D log(2**n))`` is, in expectation, an upper bound on ``-log P(k)`` in
    nats; dividing by ``D log 2`` turns it into bits per dimension, the figure the NICE,
    RealNVP and Glow papers report. A uniform density on the cube (``log p = 0``) costs
    exactly ``n`` bits per dimension.

    Example:
        >>> import torch, glowlab
        >>> model = glowlab.Glow((1, 8, 8), levels=1, steps=1, hidden_channels=8)
        >>> images = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8)
        >>> glowlab.bits_per_dim(model, images).shape
        torch.Size([2])
    """
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise ValueError("bits_per_dim expects uint8 images of shape (B, C, H, W)")
    ref = next(iter(model.parameters()), None)
    dtype = ref.dtype if ref is not None else torch.get_default_dtype()
    device = ref.device if ref is not None else images.device
    x = dequantize(images.to(device), n_bits, noise=True, dtype=dtype, generator=generator)
    log_prob = model.log_prob(x, y)  # type: ignore[operator]
    return bits_per_dim_from_log_prob(log_prob, math.prod(images.shape[1:]), n_bits)
