"""Latent-space operations on standardized latents: interpolation."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from .models.base import FlowModel

__all__ = ["interpolate", "interpolate_latents", "slerp"]


def slerp(a: Tensor, b: Tensor, t: Tensor) -> Tensor:
    """Spherical interpolation between ``a`` and ``b`` (B, ...) at fractions ``t`` (T,).

    Returns (T, B, ...). Falls back to linear interpolation where the two are parallel.
    ``t = 0`` gives ``a`` and ``t = 1`` gives ``b`` exactly.
    """
    af, bf = a.flatten(1), b.flatten(1)
    cos = (af * bf).sum(1) / (af.norm(dim=1) * bf.norm(dim=1)).clamp_min(1e-12)
    omega = torch.arccos(cos.clamp(-1.0, 1.0))
    sin = torch.sin(omega)
    shape = (-1, a.shape[0], *([1] * (a.dim() - 1)))
    tt = t.view(-1, 1)
    parallel = sin.abs() < 1e-6
    safe_sin = torch.where(parallel, torch.ones_like(sin), sin)
    wa = torch.where(parallel, 1 - tt, torch.sin((1 - tt) * omega) / safe_sin)
    wb = torch.where(parallel, tt, torch.sin(tt * omega) / safe_sin)
    out = wa.view(shape) * a.unsqueeze(0) + wb.view(shape) * b.unsqueeze(0)
    # Exact endpoints, whatever rounding the trigonometry does.
    out[t == 0] = a
    out[t == 1] = b
    return out


def interpolate_latents(
    a: list[Tensor], b: list[Tensor], steps: int, method: Literal["linear", "slerp"] = "linear"
) -> list[Tensor]:
    """Interpolate two lists of latents (one tensor per level, each (B, ...)) in ``steps`` steps.

    Returns one tensor per level of shape (steps * B, ...), step-major.
    """
    if steps < 2:
        raise ValueError(f"interpolation needs steps >= 2, got {steps}")
    if method not in ("linear", "slerp"):
        raise ValueError(f"unknown interpolation method {method!r}; choose 'linear' or 'slerp'")
    t = torch.linspace(0, 1, steps, device=a[0].device, dtype=a[0].dtype)
    out = []
    for za, zb in zip(a, b, strict=True):
        if method == "slerp":
            path = slerp(za, zb, t)
        else:
            tt = t.view(-1, *([1] * za.dim()))
            path = (1 - tt) * za.unsqueeze(0) + tt * zb.unsqueeze(0)
            path[0], path[-1] = za, zb
        out.append(path.reshape(-1, *za.shape[1:]))
    return out


@torch.no_grad()
def interpolate(
    model: FlowModel,
    x_a: Tensor,
    x_b: Tensor,
    steps: int = 8,
    method: Literal["linear", "slerp"] = "linear",
    y_a: Tensor | None = None,
    y_b: Tensor | None = None,
) -> Tensor:
    """Images along the path between ``x_a`` and ``x_b`` in the standardized latents.

    ``x_a`` and ``x_b`` are float images (B, C, H, W) in [-0.5, 0.5); returns
    (steps, B, C, H, W) whose first and last entries decode ``encode(x_a)`` and
    ``encode(x_b)``, which reproduce the inputs up to floating-point error. For a
    class-conditional model the classes are kept from ``y_a`` (``y_b`` only encodes ``x_b``).
    """
    za = model.encode(x_a, y_a)
    zb = model.encode(x_b, y_b if y_b is not None else y_a)
    path = interpolate_latents(za, zb, steps, method)
    y = None if y_a is None else y_a.repeat(steps)
    return model.decode(path, y).view(steps, *x_a.shape)
