"""Restoration with a flow as the prior: inpainting, denoising, colorization, super-resolution.

A trained flow gives the exact log-density ``log p(x)`` of an image and its gradient. Each
task here observes a degraded image and returns a maximum a posteriori estimate: it
maximises ``log p(x)`` by gradient ascent (Adam) over the images that agree with the
observation, starting from a trivial estimate that already agrees with it (the baseline):

========================  ==============================  ===================================
task                      observation, kept exactly       baseline (the starting point)
========================  ==============================  ===================================
``inpaint``               the pixels where ``mask == 1``  unknown pixels set to the mean of
                                                          the known ones, per channel
``denoise``               ``x + sigma * noise``, a        the noisy image; the objective adds
                          Gaussian likelihood             ``|x - y|^2 / (2 sigma^2)``
``colorize``              luminance ``0.299 R + 0.587 G   the gray image in all three
                          + 0.114 B``                     channels
``super_resolve``         the 2x2 average pool            nearest-neighbour upsampling
========================  ==============================  ===================================

The constraints are built into the parametrisation: only the unknown pixels are variables
in inpainting; colorization moves along the two colour directions that leave the luminance
unchanged; super-resolution adds a residual with zero mean over every 2x2 block. The
density is evaluated on the image clipped to [-0.5, 0.5), so the observation is kept exactly
except where that clipping is needed.

References:
    Glow: Generative Flow with Invertible 1x1 Convolutions, Kingma & Dhariwal, 2018,
    arXiv:1807.03039 (the flow prior).
    Invertible generative models for inverse problems: mitigating representation error and
    dataset bias, Asim, Daniels, Leong, Ahmed & Hand, 2020, arXiv:1905.11672 (flows as
    priors for inpainting, denoising and super-resolution).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .imageio import LUMA, luminance
from .models.base import FlowModel

__all__ = [
    "TASKS",
    "Restoration",
    "center_mask",
    "colorize",
    "degrade",
    "denoise",
    "inpaint",
    "mse",
    "psnr",
    "restore",
    "super_resolve",
]

Task = Literal["inpaint", "denoise", "colorize", "super-resolution"]
TASKS: tuple[str, ...] = ("inpaint", "denoise", "colorize", "super-resolution")

_MARGIN = 1e-3  # keeps the density's input strictly inside [-0.5, 0.5)


def mse(x: Tensor, reference: Tensor) -> Tensor:
    """Mean squared error per image ``(B,)`` in the [-0.5, 0.5) domain (range 1)."""
    return ((x - reference) ** 2).flatten(1).mean(1)


def psnr(x: Tensor, reference: Tensor) -> Tensor:
    """Peak signal-to-noise ratio per image ``(B,)`` in dB, for a signal range of 1."""
    return -10 * torch.log10(mse(x, reference).clamp_min(1e-12))


def center_mask(shape: tuple[int, ...], fraction: float = 0.5) -> Tensor:
    """A ``(1, 1, H, W)`` mask that is 0 (unknown) on a centred square of side ``fraction * H``."""
    h, w = shape[-2:]
    if not 0 < fraction < 1:
        raise ValueError(f"the masked fraction of the side must be in (0, 1), got {fraction}")
    mh, mw = max(1, round(h * fraction)), max(1, round(w * fraction))
    mask = torch.ones(1, 1, h, w)
    top, left = (h - mh) // 2, (w - mw) // 2
    mask[..., top : top + mh, left : left + mw] = 0
    return mask


def _log_density(model: FlowModel, x: Tensor, y: Tensor | None) -> Tensor:
    return model.log_prob(x.clamp(-0.5 + _MARGIN, 0.5 - _MARGIN), y)


def _maximise(
    model: FlowModel,
    start: Tensor,
    build: Callable[[Tensor], Tensor],
    penalty: Callable[[Tensor], Tensor] | None,
    steps: int,
    lr: float,
    y: Tensor | None,
) -> Tensor:
    """Adam on ``params`` (from ``start``) to maximise ``log p(build(params)) - penalty``."""
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"the learning rate must be a finite number > 0, got {lr}")
    was_training = model.training
    model.eval()
    requires = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    params = start.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([params], lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1))
    dims = math.prod(model.image_shape)
    finite = torch.ones((), dtype=torch.bool, device=params.device)
    try:
        with torch.enable_grad():
            for _ in range(steps):
                x = build(params)
                loss = -_log_density(model, x, y)
                if penalty is not None:
                    loss = loss + penalty(x)
                loss = loss.sum() / dims
                finite &= torch.isfinite(loss.detach())  # read once, after the loop
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
        if not bool(finite):
            raise FloatingPointError(
                "the restoration objective became non-finite; lower the learning rate"
            )
    finally:
        for p, r in zip(model.parameters(), requires, strict=True):
            p.requires_grad_(r)
        model.train(was_training)
    with torch.no_grad():
        return build(params).detach()


def _check(model: FlowModel, x: Tensor, what: str, channels: int | None = None) -> Tensor:
    """Validate ``x`` and return it in the model's dtype and on its device."""
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() != 4:
        raise TypeError(f"{what} expects float images (B, C, H, W) in [-0.5, 0.5)")
    if channels is not None and model.image_shape[0] != channels:
        raise ValueError(
            f"{what} needs a model of {channels}-channel images, this one has "
            f"{model.image_shape[0]}"
        )
    return x.to(model._reference())


def inpaint(
    model: FlowModel,
    observed: Tensor,
    mask: Tensor,
    steps: int = 300,
    lr: float = 0.01,
    y: Tensor | None = None,
) -> Tensor:
    """Fill the pixels where ``mask == 0`` by maximising ``log p(x)``; known pixels stay fixed.

    ``observed`` (B, C, H, W) holds the known pixels (the rest is ignored); ``mask``
    broadcasts to it, 1 where a pixel is known. Starts from :func:`mean_fill`.
    """
    observed = _check(model, observed, "inpaint")
    mask = mask.to(observed).expand_as(observed)
    known = observed * mask
    return _maximise(
        model, mean_fill(observed, mask), lambda u: known + (1 - mask) * u, None, steps, lr, y
    )


def mean_fill(observed: Tensor, mask: Tensor) -> Tensor:
    """Inpainting baseline: each unknown pixel gets the mean of its channel's known pixels."""
    mask = mask.to(observed).expand_as(observed)
    mean = (observed * mask).sum((2, 3), keepdim=True) / mask.sum((2, 3), keepdim=True).clamp_min(1)
    return observed * mask + (1 - mask) * mean


def denoise(
    model: FlowModel,
    noisy: Tensor,
    sigma: float,
    steps: int = 300,
    lr: float = 0.005,
    y: Tensor | None = None,
) -> Tensor:
    """MAP denoising: maximise ``log p(x) - |x - noisy|^2 / (2 sigma^2)``, from ``noisy``."""
    noisy = _check(model, noisy, "denoise")
    _check_sigma(sigma)

    def likelihood(x: Tensor) -> Tensor:
        return ((x - noisy) ** 2).flatten(1).sum(1) / (2 * sigma**2)

    return _maximise(model, noisy, lambda x: x, likelihood, steps, lr, y)


def _check_sigma(sigma: float) -> None:
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"the noise level sigma must be a finite number > 0, got {sigma}")


def _chroma_basis(like: Tensor) -> tuple[Tensor, Tensor]:
    """Two orthonormal RGB directions ``u, v`` with zero luminance: ``LUMA . u = LUMA . v = 0``."""
    w = torch.tensor(LUMA, dtype=torch.float64)
    u = torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64)
    u = u - (u @ w) / (w @ w) * w
    u = u / u.norm()
    v = torch.linalg.cross(w, u)
    v = v / v.norm()
    return u.to(like).view(1, 3, 1, 1), v.to(like).view(1, 3, 1, 1)


def colorize(
    model: FlowModel,
    gray: Tensor,
    steps: int = 300,
    lr: float = 0.01,
    y: Tensor | None = None,
) -> Tensor:
    """Colour a luminance image ``(B, 1, H, W)`` by maximising ``log p(x)`` at fixed luminance.

    ``x = gray + a u + b v`` where ``u, v`` span the colours of zero luminance (the luma
    weights sum to 1, so ``gray`` in all channels has luminance ``gray``); only ``a, b`` per
    pixel are optimised. Starts from the gray image (``a = b = 0``).
    """
    gray = _check(model, gray, "colorize", channels=3)
    if gray.shape[1] != 1:
        raise ValueError(
            f"colorize expects a one-channel luminance image, got {gray.shape[1]} channels"
        )
    u, v = _chroma_basis(gray)
    start = torch.zeros(gray.shape[0], 2, *gray.shape[2:], dtype=gray.dtype, device=gray.device)
    return _maximise(
        model, start, lambda ab: gray + ab[:, :1] * u + ab[:, 1:] * v, None, steps, lr, y
    )


def super_resolve(
    model: FlowModel,
    low: Tensor,
    steps: int = 300,
    lr: float = 0.01,
    y: Tensor | None = None,
) -> Tensor:
    """2x super-resolution: maximise ``log p(x)`` subject to ``avg_pool2d(x, 2) == low``.

    ``x = upsample_nearest(low) + r - upsample_nearest(avg_pool2d(r, 2))``: the residual has
    zero mean over every 2x2 block, so the constraint holds exactly. Starts from nearest
    upsampling (``r = 0``).
    """
    low = _check(model, low, "super_resolve")
    c, h, w = model.image_shape
    if tuple(low.shape[1:]) != (c, h // 2, w // 2) or h % 2 or w % 2:
        raise ValueError(
            f"super_resolve expects low-resolution images of shape (B, {c}, {h // 2}, {w // 2}) "
            f"for this model, got {tuple(low.shape)}"
        )
    base = upsample(low)

    def build(r: Tensor) -> Tensor:
        return base + r - upsample(F.avg_pool2d(r, 2))

    return _maximise(model, torch.zeros_like(base), build, None, steps, lr, y)


def upsample(low: Tensor) -> Tensor:
    """Nearest-neighbour 2x upsampling, the super-resolution baseline."""
    return low.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)


@dataclass
class Restoration:
    """Result of :func:`restore`: images ``(B, C, H, W)`` and metrics against the clean images.

    ``observed`` is the degraded input shown at full size (the masked image with the hole at
    0, the noisy image, the gray image, the upsampled low-resolution image).
    """

    task: Task
    clean: Tensor
    observed: Tensor
    baseline: Tensor
    restored: Tensor

    @property
    def baseline_mse(self) -> Tensor:
        return mse(self.baseline.clamp(-0.5, 0.5), self.clean)

    @property
    def restored_mse(self) -> Tensor:
        return mse(self.restored.clamp(-0.5, 0.5), self.clean)

    @property
    def baseline_psnr(self) -> Tensor:
        return psnr(self.baseline.clamp(-0.5, 0.5), self.clean)

    @property
    def restored_psnr(self) -> Tensor:
        return psnr(self.restored.clamp(-0.5, 0.5), self.clean)

    def summary(self) -> dict[str, float]:
        """Mean MSE and PSNR of the baseline and of the restoration over the batch."""
        return {
            "baseline_mse": float(self.baseline_mse.mean()),
            "baseline_psnr": float(self.baseline_psnr.mean()),
            "restored_mse": float(self.restored_mse.mean()),
            "restored_psnr": float(self.restored_psnr.mean()),
        }


def degrade(
    clean: Tensor,
    task: Task,
    sigma: float = 0.1,
    mask: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The observation of ``clean`` for ``task``: masked, noisy, luminance or 2x2-average-pooled."""
    if task == "inpaint":
        mask = center_mask(clean.shape) if mask is None else mask
        return clean * mask.to(clean)
    if task == "denoise":
        noise = torch.randn(clean.shape, generator=generator, dtype=clean.dtype).to(clean.device)
        return clean + sigma * noise
    if task == "colorize":
        if clean.shape[1] != 3:
            raise ValueError("colorization needs RGB images (a model of 3-channel images)")
        return luminance(clean)
    if task == "super-resolution":
        return F.avg_pool2d(clean, 2)
    raise ValueError(f"unknown restoration task {task!r}; choose one of {', '.join(TASKS)}")


def restore(
    model: FlowModel,
    clean: Tensor,
    task: Task,
    steps: int = 300,
    lr: float | None = None,
    sigma: float = 0.1,
    mask: Tensor | None = None,
    y: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Restoration:
    """Degrade ``clean`` for ``task`` (one of :data:`TASKS`), restore it and keep the baseline.

    Compare ``restored_psnr`` with ``baseline_psnr`` to see what the flow prior adds.
    """
    if task not in TASKS:
        raise ValueError(f"unknown restoration task {task!r}; choose one of {', '.join(TASKS)}")
    model._check_x(clean, "restore")
    if task == "denoise":
        _check_sigma(sigma)
    clean = clean.to(model._reference())
    observation = degrade(clean, task, sigma, mask, generator)
    if task == "inpaint":
        mask = (center_mask(clean.shape) if mask is None else mask).to(clean)
        baseline = mean_fill(observation, mask)
        restored = inpaint(model, observation, mask, steps, 0.01 if lr is None else lr, y)
        shown = observation
    elif task == "denoise":
        baseline = observation
        restored = denoise(model, observation, sigma, steps, 0.005 if lr is None else lr, y)
        shown = observation
    elif task == "colorize":
        baseline = observation.expand(-1, 3, -1, -1)
        restored = colorize(model, observation, steps, 0.01 if lr is None else lr, y)
        shown = baseline
    else:
        baseline = upsample(observation)
        restored = super_resolve(model, observation, steps, 0.01 if lr is None else lr, y)
        shown = baseline
    return Restoration(task, clean, shown, baseline, restored)
