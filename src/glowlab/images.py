"""Image grids and PNG files, with no imaging library needed."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ._files import atomic_write

__all__ = ["make_grid", "save_png"]


def make_grid(images: Tensor, nrow: int = 8, padding: int = 2, pad_value: int = 255) -> Tensor:
    """Tile uint8 images ``(N, C, H, W)`` into one ``(C, H', W')`` image, ``nrow`` per row."""
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(
            f"make_grid expects uint8 images (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
        )
    if nrow < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    n, c, h, w = images.shape
    cols = min(nrow, n)
    rows = (n + cols - 1) // cols
    grid = torch.full(
        (c, rows * (h + padding) + padding, cols * (w + padding) + padding),
        pad_value,
        dtype=torch.uint8,
    )
    for i in range(n):
        r, k = divmod(i, cols)
        top, left = padding + r * (h + padding), padding + k * (w + padding)
        grid[:, top : top + h, left : left + w] = images[i].cpu()
    return grid


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def save_png(path: str | os.PathLike, image: Tensor | np.ndarray) -> Path:
    """Write a uint8 image ``(C, H, W)`` with C in {1, 3} (or ``(H, W)``) as an 8-bit PNG.

    The file is written to a temporary name and renamed, so it is never seen half-written.
    """
    array = image.detach().cpu().numpy() if isinstance(image, Tensor) else np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"save_png expects uint8 pixels, got {array.dtype}")
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[0] not in (1, 3):
        raise ValueError(f"save_png expects (C, H, W) with C = 1 or 3, got {array.shape}")
    c, h, w = array.shape
    rows = np.ascontiguousarray(array.transpose(1, 2, 0)).reshape(h, w * c)
    raw = b"".join(b"\x00" + rows[i].tobytes() for i in range(h))
    color_type = 0 if c == 1 else 2
    header = struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, 6))
    data += _chunk(b"IEND", b"")
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a file name for the PNG")
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))
