"""Image datasets for flow models, batch augmentations and bit-depth reduction.

Every dataset yields ``(image, label)`` with ``image`` a ``(C, H, W)`` uint8 tensor of raw
pixel values 0..255 and ``label`` a 0-dimensional int64 tensor, and keeps all of its data in
``.images`` (``(N, C, H, W)`` uint8) and ``.labels`` (``(N,)`` int64), so a small dataset can be
moved to the GPU whole.

Example:
    >>> from glowlab.data import get_dataset, random_shift
    >>> train = get_dataset("digits", "train")
    >>> batch = random_shift(train.images[:16], max_shift=1)
    >>> batch.shape, batch.dtype
    (torch.Size([16, 1, 8, 8]), torch.uint8)

Offline copies: a ``data_dir`` laid out as ``mnist/{train,test}.npz``,
``cifar10/train_{0..4}.npz`` and ``cifar10/test.npz`` (uint8 NHWC ``images``, int64
``labels``) is read directly; see each dataset module for the raw formats it also reads.
"""

from .augment import random_flip, random_shift, shift_images
from .base import (
    ChecksumError,
    DatasetNotFoundError,
    TensorImageDataset,
    default_data_dir,
    reduce_bits,
)
from .celeba import CelebA, read_celeba_attributes, read_celeba_partition
from .cifar import CIFAR10, CIFAR10_CLASSES, read_cifar_batch
from .digits import Digits
from .download import RemoteFile, download_url, md5sum
from .folder import IMAGE_EXTENSIONS, ImageFolder, list_images
from .mnist import MNIST, FashionMNIST, read_idx
from .registry import (
    DatasetInfo,
    canonical_name,
    dataset_info,
    dataset_names,
    dataset_splits,
    download_dataset,
    get_dataset,
)
from .svhn import SVHN, read_svhn_mat

__all__ = [
    "CIFAR10",
    "CIFAR10_CLASSES",
    "IMAGE_EXTENSIONS",
    "MNIST",
    "SVHN",
    "CelebA",
    "ChecksumError",
    "DatasetInfo",
    "DatasetNotFoundError",
    "Digits",
    "FashionMNIST",
    "ImageFolder",
    "RemoteFile",
    "TensorImageDataset",
    "canonical_name",
    "dataset_info",
    "dataset_names",
    "dataset_splits",
    "default_data_dir",
    "download_dataset",
    "download_url",
    "get_dataset",
    "list_images",
    "md5sum",
    "random_flip",
    "random_shift",
    "read_celeba_attributes",
    "read_celeba_partition",
    "read_cifar_batch",
    "read_idx",
    "read_svhn_mat",
    "reduce_bits",
    "shift_images",
]
