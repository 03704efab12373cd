"""scikit-learn's 8x8 handwritten digits: a tiny dataset for fast experiments and demos.

The 1,797 images ship with scikit-learn (``pip install scikit-learn``, included in
``glowlab[demo]``), so nothing is downloaded. Pixel values 0..16 are mapped to 0..255 by
``floor(v * 255 / 16 + 0.5)`` (so 16 becomes 255 and 8 becomes 128).

The split is fixed and needs no seed: the first 1,437 images (in scikit-learn's order) are
``"train"`` and the last 360 (about 20%) are ``"test"``. The classes are interleaved in that
order, so each class has 33 to 37 test images.

References:
    E. Alpaydin, C. Kaynak, "Optical Recognition of Handwritten Digits", UCI Machine Learning
    Repository, 1998.
"""

from __future__ import annotations

import numpy as np
import torch

from .base import TensorImageDataset, check_image_size, check_split, fit_image_size

__all__ = ["DIGITS_TEST_SIZE", "Digits"]

DIGITS_TEST_SIZE = 360


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise ImportError(
            "the 8x8 digits dataset ships with scikit-learn: pip install scikit-learn "
            "(or pip install glowlab[demo])"
        ) from error
    bunch = load_digits()
    return np.asarray(bunch.images), np.asarray(bunch.target)


class Digits(TensorImageDataset):
    """The 8x8 handwritten digits of scikit-learn as 1x8x8 uint8 images, 10 classes.

    Args:
        split: ``"train"`` (first 1,437 images) or ``"test"`` (last 360).
        image_size: None keeps 8x8; larger sizes zero-pad equally on all sides, smaller sizes
            downsample with antialiasing.

    Example:
        >>> ds = Digits("test")
        >>> ds.images.shape, int(ds.images.max())
        (torch.Size([360, 1, 8, 8]), 255)
    """

    splits = ("train", "test")
    native_shape = (1, 8, 8)

    def __init__(self, split: str = "train", *, image_size: int | None = None) -> None:
        check_split(split, self.splits, "digits")
        check_image_size(image_size)
        values, targets = _load_digits()
        pixels = np.floor(values * (255.0 / 16.0) + 0.5).astype(np.uint8)
        cut = len(pixels) - DIGITS_TEST_SIZE
        part = slice(0, cut) if split == "train" else slice(cut, None)
        images = torch.from_numpy(np.ascontiguousarray(pixels[part, None]))
        labels = torch.from_numpy(targets[part].astype(np.int64))
        images = fit_image_size(images, image_size, pad=True, dataset="digits")
        super().__init__(images, labels, tuple(str(i) for i in range(10)), split)
