"""Any folder of images, resized and centre-cropped to a square, held in memory.

Needs Pillow (``pip install glowlab[images]``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch

from ._imaging import ColorMode, decode_all, import_pillow, open_image, resize_shorter_side_crop
from .base import DatasetNotFoundError, TensorImageDataset, check_image_size, nhwc_to_tensor

__all__ = ["HELD_OUT_SPLITS", "IMAGE_EXTENSIONS", "ImageFolder", "class_folders", "list_images"]

#: Sub-folders that hold images kept out of training. When a whole folder is the training
#: split (it has no ``train/``), sub-folders with these names, in any case, are left out.
HELD_OUT_SPLITS = ("test", "val", "valid", "validation")

IMAGE_EXTENSIONS = (
    ".bmp",
    ".gif",
    ".jpeg",
    ".jpg",
    ".pgm",
    ".png",
    ".ppm",
    ".tif",
    ".tiff",
    ".webp",
)


def list_images(
    root: str | os.PathLike[str],
    extensions: Iterable[str] = IMAGE_EXTENSIONS,
    exclude: Iterable[str] = (),
) -> list[Path]:
    """All image files under ``root``, recursively, sorted by their path relative to ``root``.

    Extensions match case-insensitively. Hidden files and folders (names starting with ``.``,
    such as ``.ipynb_checkpoints``) are skipped, and so are the immediate sub-folders of
    ``root`` named in ``exclude`` (compared case-insensitively).
    """
    root = Path(root)
    suffixes = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
    excluded = {name.lower() for name in exclude}
    found = []
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if len(relative.parts) > 1 and relative.parts[0].lower() in excluded:
            continue
        if path.suffix.lower() in suffixes and path.is_file():
            found.append(path)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def class_folders(
    root: str | os.PathLike[str],
    extensions: Iterable[str] = IMAGE_EXTENSIONS,
    exclude: Iterable[str] = (),
) -> tuple[str, ...]:
    """The immediate sub-folders of ``root`` that hold images (at any depth), sorted by name.

    These are the classes :class:`ImageFolder` finds with ``class_subfolders=True``;
    ``extensions`` and ``exclude`` are those of :func:`list_images`.
    """
    root = Path(root)
    parts = [p.relative_to(root).parts for p in list_images(root, extensions, exclude)]
    return tuple(sorted({path[0] for path in parts if len(path) > 1}))


class ImageFolder(TensorImageDataset):
    """Every image under a folder, as ``image_size`` x ``image_size`` uint8 tensors.

    Each image is resized (bicubic) so that its shorter side is ``image_size`` and then the
    central square is cut out, so no image is distorted. Images are found recursively and kept
    in the order of their relative paths. All images are decoded into memory when the dataset
    is built, which takes ``N * C * image_size**2`` bytes. 16-bit grayscale images are scaled
    to 8 bits; images of 32-bit integer or floating-point pixels are refused.

    Labels: with ``class_subfolders=True`` each immediate sub-folder of ``root`` that contains
    images (at any depth) is a class, classes are sorted by name (or given as ``classes``),
    and an image's label is the index of its top-level sub-folder; otherwise every image has
    label 0 and the single class is named after ``root``.

    Attributes:
        files: the image paths, in dataset order.
        root: the folder that was read.

    Args:
        root: the folder to read.
        image_size: side of the square output images.
        mode: ``"RGB"`` for 3 channels or ``"L"`` for 1-channel grayscale; images are
            converted as needed (transparency is dropped).
        class_subfolders: take labels from the top-level sub-folders (see above).
        classes: with ``class_subfolders=True``, the class names in label order, which may
            include classes this folder has no images of; every sub-folder with images must
            be one of them. :func:`get_dataset` passes the training split's classes to the
            other splits, so that a label means the same class in every split. None takes
            the sub-folders of ``root``.
        extensions: file extensions to read.
        exclude: names of immediate sub-folders of ``root`` to leave out, compared
            case-insensitively (:func:`get_dataset` passes :data:`HELD_OUT_SPLITS` when the
            whole folder is the training split).
        num_workers: decoding threads; None picks up to 8.

    Example:
        >>> ds = ImageFolder("photos/", image_size=64)  # doctest: +SKIP
        >>> ds.images.shape  # doctest: +SKIP
        torch.Size([1234, 3, 64, 64])
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        image_size: int,
        *,
        mode: ColorMode = "RGB",
        class_subfolders: bool = False,
        classes: Sequence[str] | None = None,
        extensions: Iterable[str] = IMAGE_EXTENSIONS,
        exclude: Iterable[str] = (),
        num_workers: int | None = None,
    ) -> None:
        if image_size is None:
            raise ValueError("an image folder needs image_size: the side of the output squares")
        check_image_size(image_size)
        if mode not in ("RGB", "L"):
            raise ValueError(f"mode must be 'RGB' or 'L' (grayscale), got {mode!r}")
        if classes is not None:
            if not class_subfolders:
                raise ValueError("classes= names the class sub-folders: pass class_subfolders=True")
            classes = tuple(classes)
            if not all(isinstance(c, str) for c in classes) or len(set(classes)) != len(classes):
                raise ValueError(f"classes must be distinct folder names, got {classes!r}")
        root = Path(root).expanduser()
        if not root.is_dir():
            raise DatasetNotFoundError(
                f"image folder {root} does not exist; point --data-dir (data_dir=) at a folder "
                f"of images"
            )
        import_pillow()  # fail before walking a large tree if Pillow is missing
        extensions = tuple(extensions)
        exclude = tuple(exclude)
        files = list_images(root, extensions, exclude)
        if not files:
            left_out = {name.lower() for name in exclude}
            skipped = sorted(f"{p.name}/" for p in root.iterdir() if p.name.lower() in left_out)
            outside = f" outside {', '.join(skipped)}" if skipped else ""
            raise DatasetNotFoundError(
                f"no images ({', '.join(extensions)}) found under {root}{outside}; point "
                f"--data-dir (data_dir=) at a folder of images"
            )
        if class_subfolders:
            top = [p.relative_to(root).parts for p in files]
            loose = [p for p, parts in zip(files, top, strict=True) if len(parts) == 1]
            if loose:
                raise ValueError(
                    f"class_subfolders=True needs every image inside a class sub-folder of "
                    f"{root}, but {len(loose)} lie directly in it (first: {loose[0].name}); "
                    f"move them into a sub-folder or pass class_subfolders=False"
                )
            found = sorted({parts[0] for parts in top})
            if classes is None:
                classes = tuple(found)
            unknown = [name for name in found if name not in classes]
            if unknown:
                raise ValueError(
                    f"the class sub-folder {root / unknown[0]} is not one of the classes "
                    f"({', '.join(classes)}); rename it to one of them or remove it"
                )
            index = {name: i for i, name in enumerate(classes)}
            labels = torch.tensor([index[parts[0]] for parts in top], dtype=torch.int64)
        else:
            classes = (root.name or "images",)
            labels = torch.zeros(len(files), dtype=torch.int64)
        channels = 3 if mode == "RGB" else 1
        process = partial(_process_image, mode=mode, size=image_size)
        images = decode_all(files, process, (image_size, image_size, channels), num_workers)
        super().__init__(nhwc_to_tensor(images), labels, classes, None)
        self.files: tuple[Path, ...] = tuple(files)
        self.root = root


def _process_image(path: Path, *, mode: ColorMode, size: int) -> np.ndarray:
    return resize_shorter_side_crop(open_image(path, mode), size)
