"""CIFAR-10 from the official python batches or from the offline ``.npz`` copies.

Where the files are looked for, in order (``root`` is ``data_dir``):

1. ``root/cifar10/train_0.npz`` .. ``train_4.npz`` (= ``data_batch_1..5``) or ``train.npz``,
   and ``root/cifar10/test.npz``;
2. the extracted folder ``cifar-10-batches-py/`` in ``root/cifar10/`` or ``root/``;
3. the tarball ``cifar-10-python.tar.gz`` in ``root/cifar10/`` or ``root/``, read in place
   without extracting it. Downloads go to ``root/cifar10/``.

The batches are Python pickles. They are read with an unpickler that only accepts what
CIFAR batches contain (dicts, lists, bytes and numpy arrays), so a tampered file cannot run
code.

References:
    A. Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", Technical report,
    University of Toronto, 2009. https://www.cs.toronto.edu/~kriz/cifar.html
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import Tensor

from .base import ChecksumError, DatasetNotFoundError, DownloadableDataset
from .download import RemoteFile, md5sum, resolve_files

__all__ = ["CIFAR10", "read_cifar_batch"]

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

# URL and MD5s as published on https://www.cs.toronto.edu/~kriz/cifar.html (the tarball); the
# per-batch MD5s are those torchvision checks for the extracted folder.
CIFAR10_TARBALL = RemoteFile(
    filename="cifar-10-python.tar.gz",
    md5="c58f30108f718f92721af3b95e74349a",
    urls=("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
)
_BATCH_FOLDER = "cifar-10-batches-py"
_BATCH_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
_SPLIT_BATCHES = {
    "train": tuple(f"data_batch_{k}" for k in range(1, 6)),
    "test": ("test_batch",),
}


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles only the globals a CIFAR batch needs to rebuild its numpy array."""

    _ALLOWED = frozenset(
        {
            # Written by NumPy 1.x (the official files) and by NumPy 2.x respectively.
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            # Python 3 pickles bytes with protocol 2 through _codecs.encode.
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: a CIFAR batch holds only dicts, lists, "
                f"bytes and numpy arrays"
            )
        # NumPy 2 renamed numpy.core to numpy._core and warns on the old name; NumPy 1.x may
        # lack the new one, so fall back to the name the file was written with.
        try:
            return super().find_class(module.replace("numpy.core.", "numpy._core."), name)
        except (ImportError, AttributeError):
            return super().find_class(module, name)


def read_cifar_batch(file: str | os.PathLike[str] | IO[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 python batch (``data_batch_1`` ... ``test_batch``).

    A batch is a pickled dict whose ``data`` is an ``(N, 3072)`` uint8 array, each row the
    1024 red, then 1024 green, then 1024 blue pixels of a 32x32 image in row-major order, and
    whose ``labels`` is a list of N ints.

    Args:
        file: a path or an open binary file.

    Returns:
        ``(images, labels)``: an ``(N, 3, 32, 32)`` uint8 array and an ``(N,)`` int64 array.
    """
    if isinstance(file, (str, os.PathLike)):
        with open(file, "rb") as handle:
            return read_cifar_batch(handle)
    # The official batches were pickled by Python 2; encoding="bytes" keeps their str keys as
    # bytes instead of guessing a text encoding.
    batch = _BatchUnpickler(file, encoding="bytes").load()
    if not isinstance(batch, dict):
        raise ValueError(f"a CIFAR batch must unpickle to a dict, got {type(batch).__name__}")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise ValueError(f"a CIFAR-10 batch needs 'data' and 'labels', found {sorted(batch)}")
    data = np.asarray(batch["data"], dtype=np.uint8)
    labels = np.asarray(batch["labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (data.shape[0],):
        raise ValueError(
            f"a CIFAR-10 batch must hold (N, 3072) data and N labels, got data {data.shape} and "
            f"labels {labels.shape}"
        )
    return data.reshape(-1, 3, 32, 32), labels


def _read_batches_from_folder(
    folder: Path, names: Sequence[str], verify: bool
) -> tuple[Tensor, Tensor]:
    images, labels = [], []
    for name in names:
        path = folder / name
        if not path.is_file():
            raise DatasetNotFoundError(
                f"CIFAR-10: {path} is missing from the extracted folder; put the complete "
                f"{_BATCH_FOLDER}/ (or {CIFAR10_TARBALL.filename}) into {folder.parent}, or "
                f"point --data-dir (data_dir=) at a folder that already holds it"
            )
        if verify and md5sum(path) != _BATCH_MD5[name]:
            raise ChecksumError(
                f"CIFAR-10: {path} does not have the MD5 of the official {name} "
                f"({_BATCH_MD5[name]}); replace it with a good copy or pass verify=False"
            )
        x, y = read_cifar_batch(path)
        images.append(x)
        labels.append(y)
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def _read_batches_from_tarball(tarball: Path, names: Sequence[str]) -> tuple[Tensor, Tensor]:
    found: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    with tarfile.open(tarball, "r:gz") as archive:
        for member in archive:
            name = member.name.rsplit("/", 1)[-1]
            if member.isfile() and name in names:
                handle = archive.extractfile(member)
                if handle is None:  # pragma: no cover - isfile() members always extract
                    continue
                # Read the member fully first: unpickling straight from the gzip stream
                # makes many tiny reads, which is much slower.
                found[name] = read_cifar_batch(io.BytesIO(handle.read()))
    missing = [n for n in names if n not in found]
    if missing:
        raise ValueError(
            f"{tarball} has no member named {', '.join(missing)}; it is not the CIFAR-10 "
            f"python tarball"
        )
    images = np.concatenate([found[n][0] for n in names])
    labels = np.concatenate([found[n][1] for n in names])
    return torch.from_numpy(images), torch.from_numpy(labels)


def _npz_files(folder: Path, split: str) -> list[Path] | None:
    """The offline ``.npz`` files of ``split``, or None if there are none."""
    if split == "test":
        path = folder / "test.npz"
        return [path] if path.is_file() else None
    whole = folder / "train.npz"
    if whole.is_file():
        return [whole]
    shards = [folder / f"train_{k}.npz" for k in range(5)]
    present = [p.is_file() for p in shards]
    if not any(present):
        return None
    if not all(present):
        missing = [p.name for p, ok in zip(shards, present, strict=True) if not ok]
        raise DatasetNotFoundError(
            f"CIFAR-10: missing {', '.join(missing)} in {folder}; the offline train split needs "
            f"all of train_0.npz .. train_4.npz, or point --data-dir (data_dir=) at a folder "
            f"that holds them"
        )
    return shards


class CIFAR10(DownloadableDataset):
    """CIFAR-10: 50,000 train and 10,000 test 3x32x32 uint8 RGB images in 10 classes.

    Samples keep the official order (``data_batch_1`` .. ``data_batch_5``, then ``test_batch``).

    Args:
        data_dir: folder holding ``cifar10/`` (see the module docstring); None means
            :func:`~glowlab.data.default_data_dir`.
        split: ``"train"`` or ``"test"``.
        download: fetch the official tarball if no copy is found.
        image_size: None keeps 32x32; smaller sizes downsample with antialiasing.
        verify: check the MD5 of the tarball or the extracted batches.

    References:
        A. Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", 2009.

    Example:
        >>> ds = CIFAR10("shared/data", split="test")  # doctest: +SKIP
        >>> ds.classes[int(ds.labels[0])]  # doctest: +SKIP
        'cat'
    """

    display_name = "CIFAR-10"
    folder = "cifar10"
    class_names = CIFAR10_CLASSES
    splits = ("train", "test")
    native_shape = (3, 32, 32)

    @classmethod
    def _offline_files(cls, folder: Path, split: str) -> list[Path] | None:
        return _npz_files(folder, split)

    @classmethod
    def _read_official(
        cls, root: Path, split: str, *, download: bool, verify: bool
    ) -> tuple[Tensor, Tensor]:
        folder = root / cls.folder
        names = _SPLIT_BATCHES[split]
        batch_folder = next(
            (d / _BATCH_FOLDER for d in (folder, root) if (d / _BATCH_FOLDER).is_dir()), None
        )
        if batch_folder is not None:
            return _read_batches_from_folder(batch_folder, names, verify)
        (tarball,) = resolve_files(
            [CIFAR10_TARBALL],
            folder,
            dataset=f"CIFAR-10 {split} split",
            download=download,
            verify=verify,
            search=[root],
            hint=f" (or the extracted {_BATCH_FOLDER}/, or offline .npz copies)",
        )
        return _read_batches_from_tarball(tarball, names)
