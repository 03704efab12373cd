"""CelebA faces, aligned, centre-cropped to 148x148 and resized (64x64 by default).

CelebA is served from Google Drive behind a confirmation page, so it is not downloaded
automatically. Get these files from https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html
("Align&Cropped Images"):

* ``Img/img_align_celeba.zip``, unzipped to a folder ``img_align_celeba/`` of 202,599 jpgs;
* ``Eval/list_eval_partition.txt`` (one ``<file> <0|1|2>`` line per image: train/valid/test);
* ``Anno/list_attr_celeba.txt`` (the 40 binary attributes, as -1/1).

and put them in ``data_dir/celeba/`` (the ``Img/``, ``Eval/`` and ``Anno/`` sub-folders of the
Drive layout are also understood; so is ``data_dir/`` itself).

Decoding and resizing 200k jpgs takes minutes, so the result of each split and size is
cached as ``celeba_<split>_<size>px_crop<crop>.npz`` next to the list files. Later loads read
only the cache, and work even when the jpgs have been deleted. Delete the cache to rebuild it.

The 148x148 centre crop followed by a resize is the preprocessing of RealNVP and Glow.

References:
    Z. Liu, P. Luo, X. Wang, X. Tang, "Deep Learning Face Attributes in the Wild", ICCV 2015.
"""

from __future__ import annotations

import logging
import os
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ._imaging import center_crop_resize, decode_all, import_pillow, open_image
from .base import (
    DatasetNotFoundError,
    TensorImageDataset,
    check_image_size,
    check_split,
    nhwc_to_tensor,
    resolve_data_dir,
)
from .download import save_npz_atomic

__all__ = ["CelebA", "read_celeba_attributes", "read_celeba_partition"]

logger = logging.getLogger(__name__)

CELEBA_URL = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"
_PARTITION_FILE = "list_eval_partition.txt"
_ATTRIBUTE_FILE = "list_attr_celeba.txt"
_IMAGE_FOLDER = "img_align_celeba"
_SPLIT_CODES = {"train": 0, "valid": 1, "test": 2}


def read_celeba_partition(path: str | os.PathLike[str]) -> list[tuple[str, int]]:
    """Parse ``list_eval_partition.txt`` into ``(filename, partition)`` pairs, in file order.

    Partition 0 is train, 1 is valid, 2 is test.
    """
    pairs: list[tuple[str, int]] = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
                raise ValueError(
                    f"{path}, line {number}: expected '<file> <0|1|2>', got {line.strip()!r}"
                )
            pairs.append((fields[0], int(fields[1])))
    return pairs


def read_celeba_attributes(
    path: str | os.PathLike[str],
) -> tuple[tuple[str, ...], dict[str, np.ndarray]]:
    """Parse ``list_attr_celeba.txt``.

    The file's first line is the number of images, the second the attribute names, and each
    further line a filename followed by one -1/1 value per attribute.

    Returns:
        ``(names, rows)``: the attribute names and, per filename, a uint8 array of 0/1 values
        (1 where the file says 1).
    """
    with open(path, encoding="utf-8") as handle:
        lines = [line.split() for line in handle]
    lines = [fields for fields in lines if fields]
    if len(lines) < 2 or len(lines[0]) != 1 or not lines[0][0].isdigit():
        raise ValueError(
            f"{path} must start with a line holding the number of images, then a line of "
            f"attribute names"
        )
    names = tuple(lines[1])
    rows: dict[str, np.ndarray] = {}
    for number, fields in enumerate(lines[2:], start=3):
        if len(fields) != len(names) + 1:
            raise ValueError(
                f"{path}, row {number}: expected a filename and {len(names)} values, got "
                f"{len(fields)} fields"
            )
        values = np.array([int(v) for v in fields[1:]])
        if not np.isin(values, (-1, 0, 1)).all():
            raise ValueError(f"{path}, row {number}: attribute values must be -1 or 1")
        rows[fields[0]] = (values > 0).astype(np.uint8)
    if int(lines[0][0]) != len(rows):
        raise ValueError(
            f"{path} announces {lines[0][0]} images but lists {len(rows)}; the file is truncated"
        )
    return names, rows


def _first_file(folders: list[Path], name: str) -> Path | None:
    return next((f / name for f in folders if (f / name).is_file()), None)


def _locate(bases: list[Path]) -> tuple[Path, Path | None, Path | None, Path | None]:
    """The first base folder holding any CelebA file, and the three files found there."""
    for base in bases:
        found = (
            _first_file([base, base / "Eval"], _PARTITION_FILE),
            _first_file([base, base / "Anno"], _ATTRIBUTE_FILE),
            _find_image_folder(base),
        )
        if any(f is not None for f in found):
            return (base, *found)
    return bases[0], None, None, None


def _find_image_folder(base: Path) -> Path | None:
    for candidate in (base / _IMAGE_FOLDER, base / "Img" / _IMAGE_FOLDER):
        # Unzipping img_align_celeba.zip into a folder of the same name nests it once more.
        if (candidate / _IMAGE_FOLDER).is_dir():
            return candidate / _IMAGE_FOLDER
        if candidate.is_dir():
            return candidate
    return None


class CelebA(TensorImageDataset):
    """CelebA aligned faces as 3 x ``image_size`` x ``image_size`` uint8 RGB images.

    Every image gets label 0 (a single class, ``"face"``); the 40 binary attributes are kept
    in :attr:`attributes` for attribute manipulation in latent space.

    Attributes:
        attributes: ``(N, 40)`` uint8 tensor of 0/1 values, one column per attribute.
        attribute_names: the 40 attribute names, in column order (``"Smiling"``, ...).
        filenames: the jpg name of each image, in dataset order (the official order).

    Args:
        data_dir: folder holding ``celeba/`` (see the module docstring); None means
            :func:`~glowlab.data.default_data_dir`.
        split: ``"train"`` (162,770 images), ``"valid"`` (19,867) or ``"test"`` (19,962).
        download: CelebA cannot be downloaded automatically; True raises the same
            explanation as missing files do, unless the data is already on disk.
        image_size: side of the output images; None means 64 (32 is the other usual size).
        crop: side of the centre square cut from each 178x218 image before resizing.
        num_workers: decoding threads for the first, uncached load; None picks up to 8.
        cache: write the processed arrays next to the data so later loads skip decoding.

    References:
        Z. Liu, P. Luo, X. Wang, X. Tang, "Deep Learning Face Attributes in the Wild",
        ICCV 2015.
    """

    splits = ("train", "valid", "test")

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        split: str = "train",
        *,
        download: bool = False,
        image_size: int | None = None,
        crop: int = 148,
        num_workers: int | None = None,
        cache: bool = True,
    ) -> None:
        del download  # nothing can be downloaded; missing files raise the instructions below
        check_split(split, self.splits, "CelebA")
        size = check_image_size(image_size) or 64
        check_image_size(crop, "crop")
        root = resolve_data_dir(data_dir)
        bases = [root / "celeba", root]
        cache_name = f"celeba_{split}_{size}px_crop{crop}.npz"
        cached = _first_file(bases, cache_name)
        if cached is not None:
            images, attributes, names, filenames = self._load_cache(cached)
        else:
            images, attributes, names, filenames, base = self._process(
                bases, split, size, crop, num_workers
            )
            if cache:
                self._write_cache(base / cache_name, images, attributes, names, filenames)
        super().__init__(nhwc_to_tensor(images), None, ("face",), split)
        self.attributes: Tensor = torch.from_numpy(attributes)
        self.attribute_names: tuple[str, ...] = names
        self.filenames: tuple[str, ...] = filenames

    def attribute(self, name: str) -> Tensor:
        """The ``(N,)`` uint8 0/1 column of one attribute, e.g. ``ds.attribute("Smiling")``."""
        if name not in self.attribute_names:
            raise ValueError(
                f"unknown CelebA attribute {name!r}; valid names are "
                + ", ".join(self.attribute_names)
            )
        return self.attributes[:, self.attribute_names.index(name)]

    @staticmethod
    def _load_cache(
        path: Path,
    ) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], tuple[str, ...]]:
        with np.load(path, allow_pickle=False) as archive:
            return (
                archive["images"],
                archive["attributes"],
                tuple(str(n) for n in archive["attribute_names"]),
                tuple(str(f) for f in archive["filenames"]),
            )

    @staticmethod
    def _write_cache(
        path: Path,
        images: np.ndarray,
        attributes: np.ndarray,
        names: tuple[str, ...],
        filenames: tuple[str, ...],
    ) -> None:
        try:
            save_npz_atomic(
                path,
                images=images,
                attributes=attributes,
                attribute_names=np.array(names),
                filenames=np.array(filenames),
            )
        except OSError as error:
            # A read-only dataset folder is legitimate; the only cost is decoding again.
            warnings.warn(
                f"could not write the CelebA cache {path} ({error}); the images will be "
                f"decoded again on the next load",
                stacklevel=3,
            )

    @staticmethod
    def _process(
        bases: list[Path], split: str, size: int, crop: int, num_workers: int | None
    ) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], tuple[str, ...], Path]:
        folder, partition, attribute_file, image_folder = _locate(bases)
        if partition is None or attribute_file is None or image_folder is None:
            missing = [
                name
                for name, found in (
                    (f"{_IMAGE_FOLDER}/", image_folder),
                    (_PARTITION_FILE, partition),
                    (_ATTRIBUTE_FILE, attribute_file),
                )
                if found is None
            ]
            raise DatasetNotFoundError(
                f"CelebA: missing {', '.join(missing)} in {folder}; CelebA cannot be downloaded "
                f"automatically (it is on Google Drive): get img_align_celeba.zip, "
                f"{_PARTITION_FILE} and {_ATTRIBUTE_FILE} from {CELEBA_URL} and put them in "
                f"{folder} so that {folder / _IMAGE_FOLDER / '000001.jpg'} exists, or point "
                f"--data-dir (data_dir=) at a folder that already holds them"
            )
        import_pillow()  # fail before parsing if Pillow is missing
        code = _SPLIT_CODES[split]
        filenames = tuple(f for f, p in read_celeba_partition(partition) if p == code)
        names, rows = read_celeba_attributes(attribute_file)
        unlisted = [f for f in filenames if f not in rows]
        if unlisted:
            raise ValueError(
                f"{attribute_file} has no attributes for {len(unlisted)} images of the "
                f"{split} split (first: {unlisted[0]}); the list files do not match"
            )
        on_disk = set(os.listdir(image_folder))
        absent = [f for f in filenames if f not in on_disk]
        if absent:
            raise DatasetNotFoundError(
                f"CelebA: {len(absent)} images of the {split} split are missing from "
                f"{image_folder} (first: {absent[0]}); unzip the complete img_align_celeba.zip "
                f"there, or point --data-dir (data_dir=) at a complete copy"
            )
        attributes = (
            np.stack([rows[f] for f in filenames])
            if filenames
            else np.zeros((0, len(names)), np.uint8)
        )
        logger.info("decoding %d CelebA images at %dx%d (done once)", len(filenames), size, size)
        process = partial(_process_face, crop=crop, size=size)
        paths = [image_folder / f for f in filenames]
        images = decode_all(paths, process, (size, size, 3), num_workers)
        return images, attributes, names, filenames, folder


def _process_face(path: Path, *, crop: int, size: int) -> np.ndarray:
    return center_crop_resize(open_image(path, "RGB"), crop, size)
