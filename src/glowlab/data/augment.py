"""Batch augmentations that run on whatever device the images are on.

Both functions work on a whole ``(B, C, H, W)`` batch at once, with one independent random
draw per image, and accept uint8 or floating-point images, so a trainer can augment batches
that already live on the GPU.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

__all__ = ["random_flip", "random_shift", "shift_images"]

Padding = Literal["edge", "reflect", "zeros"]
_PADDINGS = ("edge", "reflect", "zeros")


def _check_batch(images: Tensor) -> tuple[int, int, int, int]:
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(
            f"images must be a (B, C, H, W) batch, got shape {tuple(images.shape)}; for a "
            f"single image pass images[None]"
        )
    b, c, h, w = images.shape
    return int(b), int(c), int(h), int(w)


def _source_index(index: Tensor, size: int, padding: Padding) -> Tensor:
    """Map source coordinates that may fall outside ``0..size-1`` back inside."""
    if padding == "reflect":
        if size == 1:
            return torch.zeros_like(index)
        # Mirror without repeating the edge pixel (numpy's "reflect"): the pattern
        # 0, 1, .., size-1, size-2, .., 1 repeats with period 2 * (size - 1).
        period = 2 * (size - 1)
        index = index.remainder(period)
        return torch.where(index >= size, period - index, index)
    # "edge" repeats the border pixel; "zeros" clamps too and masks the outside afterwards.
    return index.clamp(0, size - 1)


def shift_images(images: Tensor, dx: Tensor, dy: Tensor, padding: Padding = "edge") -> Tensor:
    """Translate each image of a batch by its own whole number of pixels.

    ``out[b, :, i, j] = images[b, :, i - dy[b], j - dx[b]]``: positive ``dx`` moves the content
    right and positive ``dy`` moves it down. Pixels that come from outside the image are
    filled according to ``padding``:

    * ``"edge"``: the nearest border pixel (Keras' ``fill_mode="nearest"``);
    * ``"reflect"``: the mirror image about the border pixel, without repeating it;
    * ``"zeros"``: zero.

    Args:
        images: ``(B, C, H, W)`` tensor, any dtype and device.
        dx, dy: ``(B,)`` integer tensors of horizontal and vertical shifts.
        padding: how to fill the uncovered border.

    Returns:
        A new tensor of the same shape, dtype and device.
    """
    b, c, h, w = _check_batch(images)
    if padding not in _PADDINGS:
        raise ValueError(
            f"padding must be one of {', '.join(map(repr, _PADDINGS))}, got {padding!r}"
        )
    for name, shift in (("dx", dx), ("dy", dy)):
        if not isinstance(shift, Tensor) or shift.shape != (b,):
            raise ValueError(f"{name} must be a ({b},) tensor with one shift per image")
        if shift.is_floating_point() or shift.is_complex() or shift.dtype == torch.bool:
            raise TypeError(f"{name} must hold whole pixel shifts (an integer tensor)")
    device = images.device
    dx, dy = dx.to(device=device, dtype=torch.int64), dy.to(device=device, dtype=torch.int64)
    rows = torch.arange(h, device=device)[None, :] - dy[:, None]  # (B, H)
    cols = torch.arange(w, device=device)[None, :] - dx[:, None]  # (B, W)
    # Two gathers (rows, then columns) with expanded, zero-copy indices keep the NCHW layout
    # and work for every dtype; one advanced-indexing call would move the channels last.
    out = images.gather(2, _source_index(rows, h, padding)[:, None, :, None].expand(b, c, h, w))
    out = out.gather(3, _source_index(cols, w, padding)[:, None, None, :].expand(b, c, h, w))
    if padding == "zeros":
        inside_rows = (rows >= 0) & (rows < h)
        inside_cols = (cols >= 0) & (cols < w)
        inside = inside_rows[:, None, :, None] & inside_cols[:, None, None, :]
        out = torch.where(inside, out, torch.zeros((), dtype=out.dtype, device=device))
    return out


def random_shift(
    images: Tensor,
    max_shift: int,
    generator: torch.Generator | None = None,
    padding: Padding = "edge",
) -> Tensor:
    """Glow's CIFAR-10 augmentation: translate each image by a random whole-pixel offset.

    Each image gets its own ``dx`` and ``dy``, drawn independently and uniformly from
    ``-max_shift..max_shift``. The default ``"edge"`` padding repeats the border pixels,
    which is what the Keras ``ImageDataGenerator`` used by the Glow code does by default
    (``fill_mode="nearest"``); see :func:`shift_images` for the other modes.

    Args:
        images: ``(B, C, H, W)`` uint8 or float tensor, on any device.
        max_shift: the largest shift in pixels, in each direction (0 returns a copy).
        generator: optional random generator; the shifts are drawn on its device and then
            moved to the images' device.
        padding: ``"edge"``, ``"reflect"`` or ``"zeros"``.

    Returns:
        A new tensor of the same shape, dtype and device.

    References:
        D. P. Kingma, P. Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions",
        NeurIPS 2018, arXiv:1807.03039.

    Example:
        >>> x = torch.arange(16.0).reshape(1, 1, 4, 4)
        >>> random_shift(x, 0).equal(x)
        True
    """
    b, _, _, _ = _check_batch(images)
    if isinstance(max_shift, bool) or not isinstance(max_shift, int):
        raise TypeError(f"max_shift must be a non-negative int, got {max_shift!r}")
    if max_shift < 0:
        raise ValueError(f"max_shift must be non-negative, got {max_shift}")
    device = generator.device if generator is not None else images.device
    shifts = torch.randint(-max_shift, max_shift + 1, (2, b), generator=generator, device=device)
    return shift_images(images, shifts[0], shifts[1], padding)


def random_flip(images: Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> Tensor:
    """Mirror each image left-right, independently, with probability ``p``.

    Args:
        images: ``(B, C, H, W)`` tensor of any dtype, on any device.
        p: probability that an image is flipped, in ``[0, 1]``.
        generator: optional random generator; the coin flips are drawn on its device.

    Returns:
        A new tensor of the same shape, dtype and device.
    """
    b, _, _, _ = _check_batch(images)
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
    device = generator.device if generator is not None else images.device
    flip = torch.rand(b, generator=generator, device=device, dtype=torch.float32) < p
    return torch.where(flip.to(images.device)[:, None, None, None], images.flip(-1), images)
