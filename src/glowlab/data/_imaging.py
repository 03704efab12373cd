"""Decoding image files with Pillow, in parallel threads (used by CelebA and image folders)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import numpy as np

ColorMode = Literal["RGB", "L"]


def import_pillow() -> ModuleType:
    """``PIL.Image``, or an ImportError that says how to install Pillow."""
    try:
        from PIL import Image
    except ImportError as error:
        raise ImportError(
            "reading image files needs Pillow: pip install glowlab[images]"
        ) from error
    return Image


def _bicubic(image_module: ModuleType) -> Any:
    # Pillow 9.1 moved the filter constants into Image.Resampling.
    return getattr(image_module, "Resampling", image_module).BICUBIC


# Pillow's modes for 16-bit grayscale. PNG and PGM files of 16 bits are opened in one of
# these, or in "I" (32-bit integers) by some Pillow versions, always with values 0..65535.
_16_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
_16_BIT_FORMATS = ("PNG", "PPM")


def open_image(path: Path, mode: ColorMode) -> Any:
    """Open ``path`` as a fully decoded Pillow image in ``mode``.

    16-bit grayscale images are scaled to 8 bits (``round(v / 257)``); images of 32-bit
    integer or floating-point pixels, whose range is not known, are refused.
    """
    image_module = import_pillow()
    try:
        with image_module.open(path) as image:
            return to_8_bits(image, image_module).convert(mode)
    except (OSError, ValueError) as error:
        # Pillow's messages rarely name the file, and one bad file in thousands is hard to find.
        raise ValueError(f"could not read the image {path}: {error}") from error


def to_8_bits(image: Any, image_module: ModuleType) -> Any:
    """``image`` with 16-bit grayscale scaled to 8 bits; ValueError for pixels of no known
    range (32-bit integers, floats). Other images are returned as they are."""
    # Pillow's convert() clips wide values at 255 instead of rescaling them, so a 16-bit
    # image would come out almost white.
    if image.mode in _16_BIT_MODES or (image.mode == "I" and image.format in _16_BIT_FORMATS):
        wide = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
        return image_module.fromarray(((wide + 128) // 257).astype(np.uint8))
    if image.mode in ("I", "F") or image.mode.startswith("I;"):
        kind = "floating-point" if image.mode == "F" else "wide integer"
        raise ValueError(
            f"its pixels are {kind} values (Pillow mode {image.mode!r}) with no known range; "
            f"save it with 8 or 16 bits per channel"
        )
    return image


def center_crop_resize(image: Any, crop: int, size: int) -> np.ndarray:
    """Cut the central ``crop`` x ``crop`` square, then resize it to ``size`` x ``size``.

    Returns an ``(H, W, C)`` uint8 array (``C`` is 1 for grayscale).
    """
    width, height = image.size
    if width < crop or height < crop:
        raise ValueError(
            f"an image of {width}x{height} pixels is smaller than the {crop}x{crop} centre crop; "
            f"pass a smaller crop"
        )
    left, top = (width - crop) // 2, (height - crop) // 2
    square = image.crop((left, top, left + crop, top + crop))
    if crop != size:
        square = square.resize((size, size), _bicubic(import_pillow()))
    return _as_hwc(square)


def resize_shorter_side_crop(image: Any, size: int) -> np.ndarray:
    """Resize so the shorter side is ``size``, then cut the central ``size`` x ``size`` square.

    Returns an ``(H, W, C)`` uint8 array (``C`` is 1 for grayscale).
    """
    width, height = image.size
    scale = size / min(width, height)
    new_width = max(size, round(width * scale))
    new_height = max(size, round(height * scale))
    if (new_width, new_height) != (width, height):
        image = image.resize((new_width, new_height), _bicubic(import_pillow()))
    left, top = (new_width - size) // 2, (new_height - size) // 2
    return _as_hwc(image.crop((left, top, left + size, top + size)))


def _as_hwc(image: Any) -> np.ndarray:
    array = np.asarray(image, dtype=np.uint8)
    return array[..., None] if array.ndim == 2 else array


def decode_all(
    paths: Sequence[Path],
    process: Callable[[Path], np.ndarray],
    shape: tuple[int, int, int],
    num_workers: int | None = None,
) -> np.ndarray:
    """Apply ``process`` to every path and stack the ``(H, W, C)`` results into an NHWC array.

    Pillow releases the GIL while it decodes and resizes, so threads give a real speed-up
    without the start-up cost and pickling of worker processes.
    """
    if num_workers is None:
        num_workers = min(8, os.cpu_count() or 1)
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be a non-negative int or None, got {num_workers!r}")
    out = np.empty((len(paths), *shape), dtype=np.uint8)

    def work(i: int) -> None:
        array = process(paths[i])
        if array.shape != shape:
            raise ValueError(f"{paths[i]} gave an array of shape {array.shape}, expected {shape}")
        out[i] = array

    if num_workers <= 1 or len(paths) < 2:
        for i in range(len(paths)):
            work(i)
    else:
        with ThreadPoolExecutor(max_workers=num_workers) as pool:
            # list() re-raises the first exception from the workers.
            list(pool.map(work, range(len(paths)), chunksize=64))
    return out
