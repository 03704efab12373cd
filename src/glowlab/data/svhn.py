"""SVHN (Street View House Numbers, cropped-digit format) from the official ``.mat`` files.

Where the files are looked for, in order (``root`` is ``data_dir``):

1. ``root/svhn/{train,test,extra}.npz`` (``images`` uint8 NHWC, ``labels`` int64);
2. ``train_32x32.mat``, ``test_32x32.mat`` or ``extra_32x32.mat`` in ``root/svhn/``, then
   ``root/``. Downloads go to ``root/svhn/``.

Reading the ``.mat`` files needs SciPy (``pip install glowlab[datasets]``).

References:
    Y. Netzer, T. Wang, A. Coates, A. Bissacco, B. Wu, A. Y. Ng, "Reading Digits in Natural
    Images with Unsupervised Feature Learning", NIPS Workshop on Deep Learning and
    Unsupervised Feature Learning, 2011. http://ufldl.stanford.edu/housenumbers/
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .base import DownloadableDataset
from .download import RemoteFile, resolve_files

__all__ = ["SVHN", "read_svhn_mat"]

_SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"
# MD5s of the files served at the URL above, as listed by torchvision's SVHN loader (the
# dataset page itself publishes none).
SVHN_FILES = {
    "train": RemoteFile(
        "train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373", (_SVHN_URL + "train_32x32.mat",)
    ),
    "test": RemoteFile(
        "test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3", (_SVHN_URL + "test_32x32.mat",)
    ),
    "extra": RemoteFile(
        "extra_32x32.mat", "a93ce644f1a588dc4d68dda5feec44a7", (_SVHN_URL + "extra_32x32.mat",)
    ),
}


def _loadmat() -> Callable[..., dict[str, Any]]:
    """``scipy.io.loadmat``, or an ImportError that says how to install SciPy."""
    try:
        from scipy.io import loadmat
    except ImportError as error:
        raise ImportError(
            "reading SVHN's .mat files needs SciPy: pip install glowlab[datasets]"
        ) from error
    return loadmat


def read_svhn_mat(path: str | os.PathLike[str]) -> tuple[Tensor, Tensor]:
    """Read one SVHN ``*_32x32.mat`` file.

    The file holds ``X``, a ``(32, 32, 3, N)`` uint8 array, and ``y``, an ``(N, 1)`` array of
    labels 1..10 where 10 stands for the digit 0. Labels are returned as the digit itself.

    Returns:
        ``(images, labels)``: an ``(N, 3, 32, 32)`` uint8 tensor and an ``(N,)`` int64 tensor.

    Raises:
        ImportError: SciPy is not installed.
    """
    contents = _loadmat()(Path(path), variable_names=("X", "y"))
    if "X" not in contents or "y" not in contents:
        raise ValueError(f"{path} must hold variables 'X' and 'y' (an SVHN *_32x32.mat file)")
    x, y = np.asarray(contents["X"]), np.asarray(contents["y"]).reshape(-1)
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != y.shape[0]:
        raise ValueError(
            f"{path}: 'X' must be (32, 32, 3, N) with N matching 'y', got {x.shape} and "
            f"{y.shape[0]} labels"
        )
    images = np.ascontiguousarray(x.astype(np.uint8, copy=False).transpose(3, 2, 0, 1))
    labels = y.astype(np.int64)
    labels[labels == 10] = 0
    return torch.from_numpy(images), torch.from_numpy(labels)


class SVHN(DownloadableDataset):
    """SVHN house-number digits: 3x32x32 uint8 RGB crops, 10 classes (label = digit).

    Splits are ``"train"`` (73,257 images), ``"test"`` (26,032) and ``"extra"`` (531,131).

    Args:
        data_dir: folder holding ``svhn/`` (see the module docstring); None means
            :func:`~glowlab.data.default_data_dir`.
        split: ``"train"``, ``"test"`` or ``"extra"``.
        download: fetch the ``.mat`` file from the official site if missing.
        image_size: None keeps 32x32; smaller sizes downsample with antialiasing.
        verify: check the MD5 of a ``.mat`` file already on disk.

    References:
        Y. Netzer et al., "Reading Digits in Natural Images with Unsupervised Feature
        Learning", 2011.
    """

    display_name = "SVHN"
    folder = "svhn"
    class_names = tuple(str(i) for i in range(10))
    splits = ("train", "test", "extra")
    native_shape = (3, 32, 32)

    @classmethod
    def _read_official(
        cls, root: Path, split: str, *, download: bool, verify: bool
    ) -> tuple[Tensor, Tensor]:
        _loadmat()  # fail before a long download if SciPy is missing
        (path,) = resolve_files(
            [SVHN_FILES[split]],
            root / cls.folder,
            dataset=f"SVHN {split} split",
            download=download,
            verify=verify,
            search=[root],
        )
        return read_svhn_mat(path)
