"""The dataset base class, the errors shared by every loader, and small image helpers.

Every dataset in :mod:`glowlab.data` yields ``(image, label)`` pairs where ``image`` is a
``torch.uint8`` tensor of shape ``(C, H, W)`` holding the raw 8-bit pixel values 0..255 and
``label`` is a 0-dimensional ``torch.int64`` tensor. The default collate function of
:class:`torch.utils.data.DataLoader` therefore turns a batch into a ``(B, C, H, W)`` uint8
tensor and a ``(B,)`` int64 tensor. Pixels stay at 8 bits here; scaling to floats, bit-depth
reduction and dequantization noise belong to the model's preprocessing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "ChecksumError",
    "DatasetNotFoundError",
    "TensorImageDataset",
    "default_data_dir",
    "reduce_bits",
]

DATA_DIR_ENV = "GLOWLAB_DATA_DIR"


class DatasetNotFoundError(FileNotFoundError):
    """The files a dataset needs are not on disk and were not (or could not be) downloaded.

    The message is a single line that names the missing files, the directory they belong in,
    and how to point glowlab at a copy that is already on disk (``--data-dir`` on the command
    line, ``data_dir=`` in Python).
    """


class ChecksumError(DatasetNotFoundError):
    """A dataset file is on disk (or was just downloaded) but its MD5 is not the published one.

    It derives from :class:`DatasetNotFoundError` because, for the caller, a corrupt or
    truncated file is as unusable as a missing one.
    """


def default_data_dir() -> Path:
    """Where datasets live when no ``data_dir`` is given.

    The environment variable ``GLOWLAB_DATA_DIR`` wins; otherwise ``~/.cache/glowlab``.
    """
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/glowlab").expanduser()


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> Path:
    """``data_dir`` as a :class:`~pathlib.Path`, or :func:`default_data_dir` when it is None."""
    if data_dir is None:
        return default_data_dir()
    if not isinstance(data_dir, (str, os.PathLike)):
        raise TypeError(
            f"data_dir must be a str or os.PathLike (or None for the default), "
            f"got {type(data_dir).__name__}"
        )
    return Path(data_dir).expanduser()


def reduce_bits(images: Tensor, n_bits: int) -> Tensor:
    """Keep the top ``n_bits`` bits of every 8-bit pixel: ``floor(x / 2**(8-n)) * 2**(8-n)``.

    The result stays on the 0..255 scale so it can be fed to the same preprocessing as full
    8-bit data; the model's dequantization then uses ``2**n_bits`` bins. Glow's 5-bit CelebA-HQ
    experiments use ``n_bits=5``.

    Args:
        images: a uint8 tensor of any shape.
        n_bits: how many of the most significant bits to keep, 1..8 (8 returns a copy).

    Returns:
        A new uint8 tensor of the same shape and device.

    Example:
        >>> reduce_bits(torch.tensor([0, 7, 8, 255], dtype=torch.uint8), 5)
        tensor([  0,   0,   8, 248], dtype=torch.uint8)
    """
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise TypeError(
            f"reduce_bits works on raw 8-bit pixels: images must be torch.uint8, got "
            f"{images.dtype}; call it before converting the images to floats"
        )
    if isinstance(n_bits, bool) or not isinstance(n_bits, int):
        raise TypeError(f"n_bits must be an int in 1..8, got {n_bits!r}")
    if not 1 <= n_bits <= 8:
        raise ValueError(f"n_bits must be in 1..8, got {n_bits}")
    mask = (0xFF << (8 - n_bits)) & 0xFF
    return images & mask


class TensorImageDataset(Dataset):
    """An image dataset held in memory as one uint8 tensor.

    Because the whole dataset is two tensors, a trainer can move a small dataset to the GPU
    in one call (``ds.images.cuda()``) and index batches there instead of using a
    :class:`~torch.utils.data.DataLoader`.

    Attributes:
        images: ``(N, C, H, W)`` uint8 tensor of raw pixel values 0..255.
        labels: ``(N,)`` int64 tensor of class indices in ``0..num_classes-1``; unlabelled
            datasets (CelebA, an image folder without class subfolders) use label 0 and a
            single class.
        classes: the class names, ``classes[label]`` names a label.
        split: the split name this dataset was loaded from, or None.

    Args:
        images: ``(N, C, H, W)`` uint8 tensor.
        labels: ``(N,)`` integer tensor, or None for all zeros.
        classes: class names; None gives ``("0", "1", ...)`` up to the largest label.
        split: optional split name, kept for ``repr`` and bookkeeping.

    Example:
        >>> ds = TensorImageDataset(torch.zeros(4, 1, 8, 8, dtype=torch.uint8))
        >>> image, label = ds[0]
        >>> image.shape, label.dtype, ds.num_classes
        (torch.Size([1, 8, 8]), torch.int64, 1)
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor | None = None,
        classes: Sequence[str] | None = None,
        split: str | None = None,
    ) -> None:
        if not isinstance(images, Tensor):
            raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(
                f"images must be a (N, C, H, W) uint8 tensor, got shape {tuple(images.shape)} "
                f"and dtype {images.dtype}"
            )
        n = images.shape[0]
        if labels is None:
            labels = torch.zeros(n, dtype=torch.int64)
        if not isinstance(labels, Tensor):
            raise TypeError(f"labels must be a torch.Tensor or None, got {type(labels).__name__}")
        if labels.shape != (n,):
            raise ValueError(
                f"labels must have shape ({n},) to match the images, got {tuple(labels.shape)}"
            )
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
        labels = labels.to(torch.int64)
        max_label = int(labels.max()) if n > 0 else 0
        if n > 0 and int(labels.min()) < 0:
            raise ValueError("labels must be non-negative class indices")
        if classes is None:
            classes = [str(i) for i in range(max_label + 1)]
        classes = tuple(str(c) for c in classes)
        if len(classes) == 0:
            raise ValueError("classes must name at least one class")
        if max_label >= len(classes):
            raise ValueError(
                f"label {max_label} is out of range for {len(classes)} classes; pass one class "
                f"name per label"
            )
        self.images = images
        self.labels = labels
        self.classes = classes
        self.split = split

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of every image."""
        c, h, w = self.images.shape[1:]
        return (int(c), int(h), int(w))

    @property
    def num_classes(self) -> int:
        """Number of classes, ``len(classes)``; 1 for unlabelled data."""
        return len(self.classes)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        """``(image, label)``: a ``(C, H, W)`` uint8 tensor and a 0-dim int64 tensor."""
        return self.images[index], self.labels[index]

    def __repr__(self) -> str:
        split = f"split={self.split!r}, " if self.split is not None else ""
        return (
            f"{type(self).__name__}({split}n={len(self)}, image_shape={self.image_shape}, "
            f"num_classes={self.num_classes})"
        )


# ---------------------------------------------------------------------------------------------
# Helpers shared by the loaders (not exported from glowlab.data).


def check_split(split: str, valid: Sequence[str], dataset: str) -> str:
    """Return ``split`` if it is one of ``valid``, else raise a ValueError listing them."""
    if not isinstance(split, str):
        raise TypeError(f"split must be a str, got {type(split).__name__}")
    if split not in valid:
        raise ValueError(
            f"unknown split {split!r} for {dataset}; valid splits are "
            + ", ".join(repr(s) for s in valid)
        )
    return split


def check_image_size(image_size: int | None, name: str = "image_size") -> int | None:
    """Validate an optional positive integer size."""
    if image_size is None:
        return None
    if isinstance(image_size, bool) or not isinstance(image_size, int):
        raise TypeError(f"{name} must be a positive int or None, got {image_size!r}")
    if image_size < 1:
        raise ValueError(f"{name} must be a positive int, got {image_size}")
    return image_size


def nhwc_to_tensor(images: np.ndarray) -> Tensor:
    """A uint8 NHWC (or NHW) numpy array as a contiguous ``(N, C, H, W)`` uint8 tensor."""
    if images.ndim == 3:
        images = images[..., None]
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def load_npz(
    paths: Sequence[Path], shape: tuple[int, int, int], dataset: str
) -> tuple[Tensor, Tensor]:
    """Load and concatenate ``.npz`` files holding uint8 NHWC ``images`` and integer ``labels``.

    This is the layout of the offline copies (``mnist/train.npz``, ``cifar10/train_0.npz``, ...).
    ``shape`` is the dataset's ``(C, H, W)``: every file must hold ``(N, H, W, C)`` images
    (``(N, H, W)`` when ``C`` is 1), so that a channels-first array or another dataset's file
    is refused instead of being read with the wrong layout.
    """
    channels, height, width = shape
    allowed = [(height, width, channels)] + ([(height, width)] if channels == 1 else [])
    images, labels = [], []
    for path in paths:
        with np.load(path, allow_pickle=False) as archive:
            if "images" not in archive or "labels" not in archive:
                raise ValueError(
                    f"{path} must hold arrays named 'images' and 'labels', found "
                    f"{sorted(archive.files)}"
                )
            x, y = archive["images"], archive["labels"]
        if x.dtype != np.uint8 or x.shape[1:] not in allowed:
            raise ValueError(
                f"{path}: 'images' must be a uint8 (N, {height}, {width}, {channels}) array "
                f"(N, height, width, channels) for {dataset}, got {x.dtype} {x.shape}"
            )
        if y.shape != (x.shape[0],):
            raise ValueError(f"{path}: 'labels' must have shape ({x.shape[0]},), got {y.shape}")
        if not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"{path}: 'labels' must hold integer class indices, got {y.dtype}")
        images.append(x)
        labels.append(y.astype(np.int64, copy=False))
    x = images[0] if len(images) == 1 else np.concatenate(images)
    y = labels[0] if len(labels) == 1 else np.concatenate(labels)
    return nhwc_to_tensor(x), torch.from_numpy(y)


def fit_image_size(images: Tensor, image_size: int | None, *, pad: bool, dataset: str) -> Tensor:
    """Bring square ``(N, C, S, S)`` uint8 images to ``image_size``.

    Smaller sizes are made by antialiased bilinear downsampling. Larger sizes are made by
    zero-padding equally on all sides (``pad=True``), which is how Glow brings 28x28 MNIST to
    32x32 so that it can be squeezed three times; the datasets whose background is not black
    pass ``pad=False`` and refuse to grow, because upsampling only adds interpolated pixels
    that a likelihood model would be rewarded for predicting.
    """
    if image_size is None:
        return images
    size = images.shape[-1]
    if image_size == size:
        return images
    if image_size > size:
        if not pad:
            raise ValueError(
                f"{dataset} images are {size}x{size}; image_size must be at most {size}, got "
                f"{image_size}"
            )
        before = (image_size - size) // 2
        after = image_size - size - before
        return F.pad(images, (before, after, before, after))
    out: list[Tensor] = []
    # Chunked so that the float copy of a large dataset never exists all at once.
    for chunk in images.split(4096):
        resized = F.interpolate(
            chunk.float(), size=(image_size, image_size), mode="bilinear", antialias=True
        )
        out.append(resized.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out)


class DownloadableDataset(TensorImageDataset):
    """What MNIST, Fashion-MNIST, CIFAR-10 and SVHN share: files under ``data_dir/<folder>/``.

    The constructor checks its arguments, reads the offline ``.npz`` copy of the split when
    there is one (:meth:`_offline_files`) and otherwise the official files, found on disk or
    downloaded (:meth:`_read_official`, which each dataset defines), then brings the images to
    ``image_size`` with :func:`fit_image_size`.

    Args:
        data_dir: folder holding ``<folder>/``; None means :func:`default_data_dir`.
        split: one of :attr:`splits`.
        download: fetch the official files if no copy is found.
        image_size: None keeps the native size; see :func:`fit_image_size`.
        verify: check the MD5 of the official files.
    """

    #: The dataset's name in messages, e.g. ``"CIFAR-10"``.
    display_name: ClassVar[str]
    #: The folder under ``data_dir`` that holds the files (and receives downloads).
    folder: ClassVar[str]
    class_names: ClassVar[tuple[str, ...]]
    splits: ClassVar[tuple[str, ...]]
    native_shape: ClassVar[tuple[int, int, int]]
    #: Whether a larger ``image_size`` zero-pads (the background is black) or is refused.
    zero_pad: ClassVar[bool] = False

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        split: str = "train",
        *,
        download: bool = False,
        image_size: int | None = None,
        verify: bool = True,
    ) -> None:
        check_split(split, self.splits, self.display_name)
        check_image_size(image_size)
        root = resolve_data_dir(data_dir)
        npz = self._offline_files(root / self.folder, split)
        if npz is not None:
            images, labels = load_npz(npz, self.native_shape, self.display_name)
        else:
            images, labels = self._read_official(root, split, download=download, verify=verify)
        images = fit_image_size(images, image_size, pad=self.zero_pad, dataset=self.display_name)
        super().__init__(images, labels, self.class_names, split)

    @classmethod
    def _offline_files(cls, folder: Path, split: str) -> list[Path] | None:
        """The offline ``.npz`` files of ``split``: ``folder/<split>.npz``, or None if absent."""
        path = folder / f"{split}.npz"
        return [path] if path.is_file() else None

    @classmethod
    def _read_official(
        cls, root: Path, split: str, *, download: bool, verify: bool
    ) -> tuple[Tensor, Tensor]:
        """``(images, labels)`` of ``split`` from the official files under ``root``."""
        raise NotImplementedError
