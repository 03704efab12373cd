"""One entry point to every dataset by name: :func:`get_dataset`, plus metadata and downloads.

Names are case-insensitive and ``_`` may stand for ``-`` (``"Fashion_MNIST"`` works).

==================  ==================  ==================  =====================================
name                splits              image_shape         classes
==================  ==================  ==================  =====================================
``mnist``           train, test         (1, 28, 28)         10 digits
``fashion-mnist``   train, test         (1, 28, 28)         10 clothing types
``cifar10``         train, test         (3, 32, 32)         10 object classes
``svhn``            train, test, extra  (3, 32, 32)         10 digits
``celeba``          train, valid, test  (3, 64, 64)         1 (40 attributes kept separately)
``folder``          see get_dataset     (C, S, S)           1, or one per sub-folder
``digits``          train, test         (1, 8, 8)           10 digits
==================  ==================  ==================  =====================================
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from .base import (
    DatasetNotFoundError,
    TensorImageDataset,
    check_image_size,
    check_split,
    resolve_data_dir,
)
from .celeba import CELEBA_URL, CelebA
from .cifar import CIFAR10, CIFAR10_TARBALL
from .digits import Digits
from .download import RemoteFile, resolve_files
from .folder import HELD_OUT_SPLITS, IMAGE_EXTENSIONS, ImageFolder, class_folders
from .mnist import MNIST, FashionMNIST
from .svhn import SVHN, SVHN_FILES

__all__ = [
    "DatasetInfo",
    "canonical_name",
    "dataset_info",
    "dataset_names",
    "dataset_splits",
    "download_dataset",
    "get_dataset",
]


@dataclass(frozen=True)
class _Spec:
    splits: tuple[str, ...]
    # None where the shape is only known once the data is read (an image folder).
    image_shape: tuple[int, int, int] | None
    num_classes: int | None
    # How image_size changes the shape: "pad" grows by zero-padding, "shrink" only shrinks,
    # "any" sets the output size directly (resizing from the source files).
    sizing: str


_SPECS: dict[str, _Spec] = {
    "mnist": _Spec(("train", "test"), (1, 28, 28), 10, "pad"),
    "fashion-mnist": _Spec(("train", "test"), (1, 28, 28), 10, "pad"),
    "cifar10": _Spec(("train", "test"), (3, 32, 32), 10, "shrink"),
    "svhn": _Spec(("train", "test", "extra"), (3, 32, 32), 10, "shrink"),
    "celeba": _Spec(("train", "valid", "test"), (3, 64, 64), 1, "any"),
    "folder": _Spec(("train",), None, None, "any"),
    "digits": _Spec(("train", "test"), (1, 8, 8), 10, "pad"),
}

_ALIASES = {"fashionmnist": "fashion-mnist", "cifar-10": "cifar10"}


class DatasetInfo(NamedTuple):
    """What a dataset yields, known without reading it.

    Attributes:
        image_shape: ``(C, H, W)``, or None when only the data can tell (an image folder).
        num_classes: the number of labels, or None when only the data can tell.
    """

    image_shape: tuple[int, int, int] | None
    num_classes: int | None


def dataset_names() -> tuple[str, ...]:
    """The names :func:`get_dataset` accepts, in canonical spelling."""
    return tuple(_SPECS)


def _canonical(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"dataset name must be a str, got {type(name).__name__}")
    key = name.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in _SPECS:
        raise ValueError(
            f"unknown dataset {name!r}; valid names are " + ", ".join(map(repr, _SPECS))
        )
    return key


def canonical_name(name: str) -> str | None:
    """The registry's name for ``name`` (case, ``_`` for ``-`` and aliases resolved), or None.

    Example:
        >>> canonical_name("CIFAR_10"), canonical_name("not-a-dataset")
        ('cifar10', None)
    """
    try:
        return _canonical(name)
    except ValueError:
        return None


def dataset_splits(name: str) -> tuple[str, ...]:
    """The split names of a dataset (an image folder accepts ``"train"`` or any sub-folder)."""
    return _SPECS[_canonical(name)].splits


def dataset_info(name: str, image_size: int | None = None) -> DatasetInfo:
    """Image shape and number of classes of a dataset, without loading it.

    Args:
        name: one of :func:`dataset_names`.
        image_size: the same ``image_size`` that would be passed to :func:`get_dataset`.

    Returns:
        A :class:`DatasetInfo`, which unpacks as ``(image_shape, num_classes)``. For
        ``"folder"`` both are None: the channels, classes and (without ``image_size``) the size
        are only known once the folder has been read.

    Example:
        >>> dataset_info("mnist", image_size=32)
        DatasetInfo(image_shape=(1, 32, 32), num_classes=10)
    """
    key = _canonical(name)
    spec = _SPECS[key]
    check_image_size(image_size)
    if spec.image_shape is None:
        return DatasetInfo(None, spec.num_classes)
    channels, native, _ = spec.image_shape
    size = native if image_size is None else image_size
    if spec.sizing == "shrink" and size > native:
        raise ValueError(
            f"{key} images are {native}x{native}; image_size must be at most {native}, got {size}"
        )
    return DatasetInfo((channels, size, size), spec.num_classes)


def get_dataset(
    name: str,
    split: str = "train",
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
    image_size: int | None = None,
    **kwargs: Any,
) -> TensorImageDataset:
    """Load a dataset by name as an in-memory :class:`TensorImageDataset`.

    Args:
        name: one of :func:`dataset_names`: ``"mnist"``, ``"fashion-mnist"``, ``"cifar10"``,
            ``"svhn"``, ``"celeba"``, ``"folder"``, ``"digits"``.
        split: a split of that dataset (see :func:`dataset_splits`). For ``"folder"``, a
            sub-folder of ``data_dir`` named like the split is used if it exists (so a folder
            with ``train/`` and ``test/`` works); otherwise only ``"train"`` is accepted and
            means the whole folder, less its sub-folders named ``test``, ``val``, ``valid``
            or ``validation`` (in any case), which hold the images kept out of training.
            Training needs a ``test`` split, so a folder to train on must have ``test/``.
            With ``class_subfolders=True`` every split takes its class list from the
            training split, so a label means the same class in each.
        data_dir: where the files are. For the named datasets this is the folder that holds
            ``mnist/``, ``cifar10/``, ... (None: ``$GLOWLAB_DATA_DIR``, else
            ``~/.cache/glowlab``); for ``"folder"`` it is the image folder itself and is
            required; ``"digits"`` ignores it.
        download: fetch missing files of MNIST, Fashion-MNIST, CIFAR-10 or SVHN from the
            official sites. Ignored by ``"folder"`` and ``"digits"``; CelebA must be fetched
            by hand (the error says how).
        image_size: output side length; see each dataset class for what it does. Required
            for ``"folder"``; defaults to 64 for ``"celeba"``.
        **kwargs: passed to the dataset class (``verify=False``; ``mode="L"`` and
            ``class_subfolders=True`` for folders; ``crop`` for CelebA; ...).

    Raises:
        ValueError: unknown name or split (the message lists the valid ones).
        DatasetNotFoundError: the files are not on disk and were not downloaded.

    Example:
        >>> train = get_dataset("digits", "train")
        >>> train.image_shape, train.num_classes
        ((1, 8, 8), 10)
    """
    key = _canonical(name)
    spec = _SPECS[key]
    if key == "digits":
        return Digits(split, image_size=image_size, **kwargs)
    if key == "folder":
        if data_dir is None:
            raise ValueError(
                "the 'folder' dataset needs data_dir (--data-dir): the folder of images to read"
            )
        if not isinstance(split, str):
            raise TypeError(f"split must be a str, got {type(split).__name__}")
        return _image_folder_split(Path(data_dir).expanduser(), split, image_size, kwargs)
    check_split(split, spec.splits, key)
    loader = {
        "mnist": MNIST,
        "fashion-mnist": FashionMNIST,
        "cifar10": CIFAR10,
        "svhn": SVHN,
        "celeba": CelebA,
    }[key]
    return loader(data_dir, split, download=download, image_size=image_size, **kwargs)


def _image_folder_split(
    root: Path, split: str, image_size: int | None, kwargs: dict[str, Any]
) -> ImageFolder:
    """The ``split`` of the image folder ``root``: its sub-folder ``split``, or for ``"train"``
    without a ``train/`` sub-folder, the whole folder but its held-out sub-folders."""
    if not root.is_dir():
        raise DatasetNotFoundError(
            f"image folder {root} does not exist; point --data-dir (data_dir=) at a folder of "
            f"images"
        )
    # The held-out splits stay out of training even when they lie inside the folder.
    train, train_exclude = (
        (root / "train", ()) if (root / "train").is_dir() else (root, HELD_OUT_SPLITS)
    )
    if split == "train":
        folder, exclude = train, train_exclude
    elif (root / split).is_dir():
        folder, exclude = root / split, ()
    elif split.lower() in HELD_OUT_SPLITS:
        # Said as what to do on disk: `glowlab train` always loads the 'test' split, so a
        # user of the command line cannot choose 'train' instead.
        raise ValueError(
            f"the image folder {root} has no {split!r} split: move the images to hold out for "
            f"it into {root / split}/ (the 'train' split is then {root / 'train'}/ if that "
            f"exists, else the rest of the folder)"
        )
    else:
        raise ValueError(
            f"unknown split {split!r} for the image folder {root}: there is no sub-folder "
            f"named {split!r}; use 'train' for the whole folder"
        )
    if kwargs.get("class_subfolders") and kwargs.get("classes") is None and folder != train:
        # Every split numbers its classes as the training split does, so that a label means
        # the same class in each, even in a split that lacks some of them.
        extensions = kwargs.get("extensions", IMAGE_EXTENSIONS)
        classes = class_folders(train, extensions, train_exclude)
        unknown = [c for c in class_folders(folder, extensions) if c not in classes]
        if unknown:
            raise ValueError(
                f"the class sub-folder {folder / unknown[0]} of the {split!r} split is not one "
                f"of the training split's classes ({', '.join(classes) or 'none'}, in {train}); "
                f"with class_subfolders=True every split must use the training split's classes"
            )
        kwargs = {**kwargs, "classes": classes}
    return ImageFolder(folder, image_size, exclude=exclude, **kwargs)  # type: ignore[arg-type]


def download_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    splits: tuple[str, ...] | None = None,
) -> Path:
    """Download (or verify) the official files of a public dataset.

    Files already present with the right MD5 are kept. MNIST and Fashion-MNIST go to
    ``data_dir/mnist/`` and ``data_dir/fashion-mnist/``, CIFAR-10's tarball to
    ``data_dir/cifar10/``, SVHN's ``.mat`` files to ``data_dir/svhn/``.

    Args:
        name: ``"mnist"``, ``"fashion-mnist"``, ``"cifar10"`` or ``"svhn"``.
        data_dir: None means ``$GLOWLAB_DATA_DIR``, else ``~/.cache/glowlab``.
        splits: which splits to fetch; None fetches all, except SVHN's 1.3 GB ``"extra"``.

    Returns:
        The folder the files are in.

    Raises:
        ValueError: the dataset cannot be downloaded (CelebA, an image folder, digits).
        DatasetNotFoundError: a server could not be reached.
        ChecksumError: a server sent a file with the wrong MD5.
    """
    key = _canonical(name)
    root = resolve_data_dir(data_dir)
    if key == "celeba":
        raise ValueError(
            f"CelebA cannot be downloaded automatically (it is on Google Drive): get "
            f"img_align_celeba.zip, list_eval_partition.txt and list_attr_celeba.txt from "
            f"{CELEBA_URL} and unzip them into {root / 'celeba'}"
        )
    if key in ("folder", "digits"):
        raise ValueError(
            f"there is nothing to download for {key!r}: "
            + ("it reads your own images" if key == "folder" else "it ships with scikit-learn")
        )
    spec = _SPECS[key]
    if splits is None:
        splits = tuple(s for s in spec.splits if not (key == "svhn" and s == "extra"))
    for split in splits:
        check_split(split, spec.splits, key)
    files: list[RemoteFile]
    if key == "cifar10":
        files = [CIFAR10_TARBALL]
    elif key == "svhn":
        files = [SVHN_FILES[s] for s in splits]
    else:
        loader = MNIST if key == "mnist" else FashionMNIST
        files = [f for s in splits for f in loader.remote_files[s]]
    folder = root / key
    resolve_files(files, folder, dataset=key, download=True, verify=True)
    return folder
