"""MNIST and Fashion-MNIST, read from the idx files or from the offline ``.npz`` copies.

Where the files are looked for, in order (``root`` is ``data_dir``):

1. ``root/<name>/{train,test}.npz`` (``images`` uint8 NHWC, ``labels`` int64);
2. the gzipped idx files, e.g. ``train-images-idx3-ubyte.gz``, or their decompressed
   versions, in ``root/<name>/``, then (MNIST only) ``root/`` itself, then the torchvision
   layout ``root/MNIST/raw/`` (``root/FashionMNIST/raw/``).

``<name>`` is ``mnist`` or ``fashion-mnist``; downloads go to ``root/<name>/``. The two
datasets' files have the same names, so Fashion-MNIST's are never looked for in ``root/``
itself, and a folder other than ``root/<name>/`` whose ``.gz`` files do not have the
published MD5s is passed over (with ``verify=False`` it is used as it is).

References:
    Y. LeCun, L. Bottou, Y. Bengio, P. Haffner, "Gradient-based learning applied to document
    recognition", Proc. IEEE 86(11), 1998. http://yann.lecun.com/exdb/mnist/

    H. Xiao, K. Rasul, R. Vollgraf, "Fashion-MNIST: a Novel Image Dataset for Benchmarking
    Machine Learning Algorithms", 2017, arXiv:1708.07747.
"""

from __future__ import annotations

import gzip
import math
import os
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from .base import DownloadableDataset
from .download import RemoteFile, resolve_files

__all__ = ["MNIST", "FashionMNIST", "read_idx"]

# idx type codes (third byte of the magic number) and the numpy types they stand for; the
# multi-byte types are big-endian.
_IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an idx file (the MNIST format), gzipped or not.

    The header is two zero bytes, a type code, the number of dimensions ``d``, and then ``d``
    big-endian uint32 sizes; the data follows in C order. Gzip is detected from the file's
    first bytes, not its name, so renamed files still load.

    Returns:
        An array of the stored shape and type (uint8 for MNIST), in native byte order.

    Raises:
        ValueError: the file is not a valid idx file, or is truncated.
    """
    path = Path(path)
    with open(path, "rb") as handle:
        head = handle.read(2)
    opener = gzip.open if head == b"\x1f\x8b" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise ValueError(
            f"{path} is not an idx file: it must start with two zero bytes and a type code "
            f"in {sorted(_IDX_TYPES)}, got {data[:4].hex()}"
        )
    dtype = _IDX_TYPES[data[2]]
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path} is truncated: the header needs {header} bytes")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(
            f"{path} holds {len(data)} bytes but its header {shape} implies {expected}; the "
            f"file is truncated or corrupt"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    # frombuffer gives a read-only view of `data`; the copy owns its memory and is writable.
    return array.astype(dtype.newbyteorder("="), copy=True)


def _idx_files(urls: tuple[str, ...], md5: dict[str, str]) -> dict[str, list[RemoteFile]]:
    """The image and label RemoteFiles of each split."""

    def remote(name: str) -> RemoteFile:
        filename = f"{name}.gz"
        return RemoteFile(
            filename=filename,
            md5=md5[filename],
            urls=tuple(base + filename for base in urls),
            alternatives=(name, name.replace("-idx", ".idx")),
        )

    return {
        "train": [remote("train-images-idx3-ubyte"), remote("train-labels-idx1-ubyte")],
        "test": [remote("t10k-images-idx3-ubyte"), remote("t10k-labels-idx1-ubyte")],
    }


class _IdxDataset(DownloadableDataset):
    """Shared loader of the two idx-format datasets; see the module docstring for the layout."""

    torchvision_folder: ClassVar[str]
    #: Whether the files may also lie directly in ``data_dir``. Only one of the two datasets
    #: may look there, since their files have the same names.
    in_data_dir: ClassVar[bool]
    remote_files: ClassVar[dict[str, list[RemoteFile]]]
    splits: ClassVar[tuple[str, ...]] = ("train", "test")
    native_shape: ClassVar[tuple[int, int, int]] = (1, 28, 28)
    zero_pad = True

    @classmethod
    def _read_official(
        cls, root: Path, split: str, *, download: bool, verify: bool
    ) -> tuple[Tensor, Tensor]:
        image_path, label_path = resolve_files(
            cls.remote_files[split],
            root / cls.folder,
            dataset=f"{cls.display_name} {split} split",
            download=download,
            verify=verify,
            search=([root] if cls.in_data_dir else []) + [root / cls.torchvision_folder / "raw"],
            hint=f" (or the offline copy {split}.npz)",
        )
        raw_images, raw_labels = read_idx(image_path), read_idx(label_path)
        if raw_images.ndim != 3 or raw_labels.ndim != 1:
            raise ValueError(
                f"{image_path} must hold (N, H, W) images and {label_path} (N,) labels, got "
                f"{raw_images.shape} and {raw_labels.shape}"
            )
        if raw_images.shape[0] != raw_labels.shape[0]:
            raise ValueError(
                f"{image_path} holds {raw_images.shape[0]} images but {label_path} holds "
                f"{raw_labels.shape[0]} labels; the two files are from different splits"
            )
        images = torch.from_numpy(raw_images.astype(np.uint8, copy=False)[:, None])
        return images, torch.from_numpy(raw_labels.astype(np.int64))


# MD5s as published on http://yann.lecun.com/exdb/mnist/ (also used by torchvision). The
# PyTorch team's S3 copy is a byte-identical mirror for when the original site refuses.
_MNIST_URLS = (
    "http://yann.lecun.com/exdb/mnist/",
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
)
_MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}

# MD5s as published in the README of github.com/zalandoresearch/fashion-mnist, which also
# serves the files under data/fashion/.
_FASHION_URLS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)
_FASHION_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}


class MNIST(_IdxDataset):
    """MNIST handwritten digits: 60,000 train and 10,000 test 1x28x28 uint8 images, 10 classes.

    Args:
        data_dir: folder holding ``mnist/`` (see the module docstring); None means
            :func:`~glowlab.data.default_data_dir`.
        split: ``"train"`` or ``"test"``.
        download: fetch the idx files from the official site (or its mirror) if missing.
        image_size: None keeps 28x28; larger sizes zero-pad equally on all sides (32 is the
            size Glow trains on), smaller sizes downsample with antialiasing.
        verify: check the MD5 of ``.gz`` files already on disk.

    References:
        Y. LeCun, L. Bottou, Y. Bengio, P. Haffner, "Gradient-based learning applied to
        document recognition", Proc. IEEE 86(11), 1998.

    Example:
        >>> ds = MNIST("shared/data", split="test")  # doctest: +SKIP
        >>> ds.images.shape, int(ds.labels[0])  # doctest: +SKIP
        (torch.Size([10000, 1, 28, 28]), 7)
    """

    display_name = "MNIST"
    folder = "mnist"
    torchvision_folder = "MNIST"
    in_data_dir = True
    remote_files = _idx_files(_MNIST_URLS, _MNIST_MD5)
    class_names = tuple(str(i) for i in range(10))


class FashionMNIST(_IdxDataset):
    """Fashion-MNIST: Zalando article images in MNIST's format (1x28x28, 10 classes).

    Arguments are those of :class:`MNIST`; files live in ``data_dir/fashion-mnist/`` (or
    torchvision's ``data_dir/FashionMNIST/raw/``), never directly in ``data_dir``, where they
    could not be told from MNIST's files of the same names.

    References:
        H. Xiao, K. Rasul, R. Vollgraf, "Fashion-MNIST: a Novel Image Dataset for Benchmarking
        Machine Learning Algorithms", 2017, arXiv:1708.07747.
    """

    display_name = "Fashion-MNIST"
    folder = "fashion-mnist"
    torchvision_folder = "FashionMNIST"
    in_data_dir = False
    remote_files = _idx_files(_FASHION_URLS, _FASHION_MD5)
    class_names = (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    )
