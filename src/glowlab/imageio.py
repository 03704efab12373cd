"""Read the images a command works on, and fit them to a model's image shape.

An image source (the ``IMAGES`` argument of the latent-space commands) is one of:

* ``NAME:SPLIT`` (or just ``NAME`` for the test split): a dataset of :mod:`glowlab.data`,
  e.g. ``mnist:test``, ``cifar10:train``, ``digits:test``; ``--data-dir`` says where the
  files are;
* ``FILE.npz``: an array ``images`` (uint8, ``(N, H, W, C)``, ``(N, C, H, W)`` or
  ``(N, H, W)``) and optionally ``labels`` (``(N,)`` integers);
* an image file (``.png``, ``.jpg``, ...) or a folder of them, read with Pillow. A folder
  whose images sit in sub-folders gets one class per sub-folder (sorted names), so a folder
  per attribute value is a labelled dataset. Images must all have the same size.

The commands bring the images to the model's shape as ``--fit`` says. Its default, ``auto``,
reads the dataset the checkpoint was trained on as in training (MNIST padded to 32x32 for a
``glow-mnist`` model, say) and leaves other images as they are.

Example:
    >>> import torch
    >>> fit_images(torch.zeros(2, 1, 28, 28, dtype=torch.uint8), (3, 32, 32), "pad").shape
    torch.Size([2, 3, 32, 32])
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .data._imaging import to_8_bits
from .images import make_grid, save_png
from .metrics import dequantize, quantize
from .models.base import FlowModel

__all__ = [
    "LUMA",
    "FitMode",
    "ImageSet",
    "SourceFit",
    "add_output_arguments",
    "add_source_arguments",
    "check_image_shape",
    "check_output",
    "check_png_output",
    "check_seed",
    "check_source_arguments",
    "dataset_name",
    "fit_images",
    "images_for",
    "is_training_dataset",
    "labels_for",
    "load_images",
    "load_model",
    "luminance",
    "read_attribute_table",
    "save_rows",
    "source_settings",
    "to_gray",
    "to_model_input",
    "training_data",
]

FitMode = Literal["none", "pad", "resize"]
#: ``--fit``: a :data:`FitMode`, or ``"auto"`` (see :func:`source_settings`).
SourceFit = Literal["auto", "none", "pad", "resize"]

_IMAGE_SUFFIXES = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".gif",
    ".ppm",
    ".pgm",
    ".tif",
    ".tiff",
    ".webp",
)

# ITU-R BT.601 luma weights, the grayscale conversion of Pillow's "L" mode.
LUMA = (0.299, 0.587, 0.114)


@dataclass
class ImageSet:
    """uint8 images ``(N, C, H, W)``, their labels ``(N,)`` (or None), names and class names."""

    images: Tensor
    labels: Tensor | None
    names: list[str]
    classes: list[str] | None = None
    #: Binary attributes ``(N, A)`` (CelebA's), with their names; None when there are none.
    attributes: Tensor | None = None
    attribute_names: list[str] | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, index: Tensor | slice) -> ImageSet:
        """The images at ``index`` (a slice, an index tensor or a boolean mask)."""
        idx = torch.arange(len(self))[index]
        labels = None if self.labels is None else self.labels[idx]
        attributes = None if self.attributes is None else self.attributes[idx]
        names = [self.names[i] for i in idx.tolist()]
        return ImageSet(
            self.images[idx], labels, names, self.classes, attributes, self.attribute_names
        )


def load_images(
    source: str | os.PathLike[str],
    data_dir: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    image_size: int | None = None,
) -> ImageSet:
    """Read an image source (see the module docstring); keep the first ``limit`` images.

    ``image_size`` is passed to :func:`glowlab.data.get_dataset` when the source is a
    dataset (None: its native size); files keep their size.
    """
    text = str(source)
    path = Path(text).expanduser()
    if path.suffix.lower() == ".npz":
        result = _load_npz(path)
    elif path.is_dir() or path.suffix.lower() in _IMAGE_SUFFIXES:
        result = _load_files(path)
    elif path.exists():
        raise ValueError(
            f"cannot read images from {path}: use a .npz file, image files or a folder"
        )
    else:
        result = _load_dataset(text, data_dir, image_size)
    if limit is not None:
        if limit < 1:
            raise ValueError(f"the number of images must be positive, got {limit}")
        result = result.subset(slice(0, limit))
    if len(result) == 0:
        raise ValueError(f"no images in {source}")
    return result


def dataset_name(source: str | os.PathLike[str]) -> str | None:
    """The canonical dataset name of a ``NAME[:SPLIT]`` source; None for files and folders."""
    from .data import canonical_name

    path = Path(str(source)).expanduser()
    suffix = path.suffix.lower()
    if suffix == ".npz" or suffix in _IMAGE_SUFFIXES or path.exists():
        return None
    return canonical_name(str(source).partition(":")[0])


def _load_dataset(
    spec: str, data_dir: str | os.PathLike[str] | None, image_size: int | None = None
) -> ImageSet:
    from .data import canonical_name, dataset_names, get_dataset

    given, _, split = spec.partition(":")
    name = canonical_name(given)
    if name is None:
        raise FileNotFoundError(
            f"{spec!r} is neither a file nor a folder nor a dataset; datasets are "
            f"{', '.join(dataset_names())} (as NAME or NAME:SPLIT)"
        )
    dataset = get_dataset(name, split or "test", data_dir=data_dir, image_size=image_size)
    names = list(getattr(dataset, "filenames", None) or []) or [
        f"{name}:{split or 'test'}[{i}]" for i in range(len(dataset.images))
    ]
    classes = list(getattr(dataset, "classes", None) or []) or None
    attributes = getattr(dataset, "attributes", None)
    attribute_names = getattr(dataset, "attribute_names", None)
    return ImageSet(
        dataset.images,
        dataset.labels,
        names,
        classes,
        None if attributes is None else attributes.bool(),
        None if attribute_names is None else list(attribute_names),
    )


def _load_npz(path: Path) -> ImageSet:
    if not path.is_file():
        raise FileNotFoundError(f"image file {path} does not exist")
    try:
        archive = np.load(path)
    except (ValueError, EOFError, zipfile.BadZipFile):  # numpy takes other files for pickles
        raise ValueError(f"{path} is not an .npz archive (np.savez writes one)") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(
            f"{path} holds a single array (.npy), not an .npz archive; "
            "write one with np.savez(path, images=..., labels=...)"
        )
    with archive as data:
        if "images" not in data:
            raise ValueError(f"{path} has no array named 'images' (found {', '.join(data.files)})")
        try:
            images = np.asarray(data["images"])
            labels = np.asarray(data["labels"]) if "labels" in data else None
        except ValueError:  # an array of Python objects, which would need unpickling
            raise ValueError(
                f"{path} holds Python objects; store 'images' as uint8 and 'labels' as integers"
            ) from None
    if images.dtype != np.uint8:
        raise ValueError(f"{path}: 'images' must be uint8 pixels 0..255, got {images.dtype}")
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4 and images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
        images = images.transpose(0, 3, 1, 2)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(
            f"{path}: 'images' must be (N, H, W, C) or (N, C, H, W) with C 1 or 3, "
            f"got {images.shape}"
        )
    label_tensor = None
    if labels is not None:
        if labels.shape != (images.shape[0],):
            raise ValueError(
                f"{path}: 'labels' must have shape ({images.shape[0]},), got {labels.shape}"
            )
        if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
            raise ValueError(f"{path}: 'labels' must be integers (or booleans), got {labels.dtype}")
        label_tensor = torch.from_numpy(labels.astype(np.int64))
    names = [f"{path.name}[{i}]" for i in range(images.shape[0])]
    return ImageSet(torch.from_numpy(np.ascontiguousarray(images)), label_tensor, names)


def _load_files(path: Path) -> ImageSet:
    try:
        from PIL import Image
    except ImportError:
        raise ValueError(
            f"reading {path} needs Pillow (pip install glowlab[images]); or pass a .npz file"
        ) from None
    if path.is_dir():
        files = sorted(
            p for p in path.rglob("*")
            if p.suffix.lower() in _IMAGE_SUFFIXES
            and not any(s.startswith(".") for s in p.relative_to(path).parts)
        )  # fmt: skip
        if not files:
            raise ValueError(f"no image files in the folder {path}")
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"image file {path} does not exist")
    arrays = []
    for file in files:
        try:
            with Image.open(file) as opened:
                image = to_8_bits(opened, Image)  # 16-bit grayscale, which convert() clips
                gray = image.mode in ("1", "L", "LA")
                arrays.append(np.asarray(image.convert("L" if gray else "RGB")))
        except (OSError, ValueError) as exc:
            raise ValueError(f"could not read the image {file}: {exc}") from None
    channels = 3 if any(a.ndim == 3 for a in arrays) else 1
    arrays = [
        np.repeat(a[..., None], 3, 2) if (a.ndim == 2 and channels == 3) else a for a in arrays
    ]
    sizes = {a.shape[:2] for a in arrays}
    if len(sizes) > 1:
        raise ValueError(
            f"the images in {path} have different sizes {sorted(sizes)}; resize them first"
        )
    stacked = np.stack([a if a.ndim == 3 else a[..., None] for a in arrays]).transpose(0, 3, 1, 2)
    names = [str(f.relative_to(path) if path.is_dir() else f.name) for f in files]
    labels, classes = None, None
    if path.is_dir():
        parents = [f.parent.relative_to(path).as_posix() for f in files]
        if all(p != "." for p in parents):
            classes = sorted(set(parents))
            labels = torch.tensor([classes.index(p) for p in parents])
    return ImageSet(torch.from_numpy(np.ascontiguousarray(stacked)), labels, names, classes)


def luminance(images: Tensor) -> Tensor:
    """Float RGB images ``(N, 3, H, W)`` -> their :data:`LUMA` luminance ``(N, 1, H, W)``.

    Computed in the images' dtype and on their device; see :func:`to_gray` for uint8 images.
    """
    weights = torch.tensor(LUMA, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images * weights).sum(1, keepdim=True)


def to_gray(images: Tensor) -> Tensor:
    """RGB images ``(N, 3, H, W)`` (uint8 or float) -> luminance ``(N, 1, H, W)``, same dtype."""
    # Summed in float64 whatever the dtype, so that a uint8 result rounds the exact luminance.
    gray = luminance(images.double())
    return (
        gray.round().clamp(0, 255).to(torch.uint8)
        if images.dtype == torch.uint8
        else gray.to(images.dtype)
    )


def fit_images(images: Tensor, shape: tuple[int, int, int], mode: FitMode = "pad") -> Tensor:
    """Convert uint8 images ``(N, C, H, W)`` to ``shape = (C', H', W')``.

    Channels: gray is replicated to RGB, RGB becomes luminance for a gray model. Size:
    ``"pad"`` centres the image on a black canvas (cropping the centre when it is larger),
    as Glow and Nalisnick et al. do with MNIST at 32x32; ``"resize"`` uses bilinear
    interpolation with antialiasing; ``"none"`` leaves the size alone.
    """
    if mode not in ("none", "pad", "resize"):
        raise ValueError(f"unknown fit mode {mode!r}; choose 'none', 'pad' or 'resize'")
    c, h, w = shape
    if images.shape[1] != c:
        if images.shape[1] == 1 and c == 3:
            images = images.expand(-1, 3, -1, -1)
        elif images.shape[1] == 3 and c == 1:
            images = to_gray(images)
        else:
            raise ValueError(f"cannot convert {images.shape[1]}-channel images to {c} channels")
    if mode == "none" or tuple(images.shape[2:]) == (h, w):
        return images.contiguous()
    if mode == "resize":
        out = F.interpolate(
            images.double(), size=(h, w), mode="bilinear", antialias=True, align_corners=False
        )
        return out.round().clamp(0, 255).to(torch.uint8)
    out = torch.zeros(images.shape[0], c, h, w, dtype=torch.uint8)
    ih, iw = images.shape[2:]
    sh, sw = max((ih - h) // 2, 0), max((iw - w) // 2, 0)
    th, tw = max((h - ih) // 2, 0), max((w - iw) // 2, 0)
    ch, cw = min(h, ih), min(w, iw)
    out[:, :, th : th + ch, tw : tw + cw] = images[:, :, sh : sh + ch, sw : sw + cw]
    return out


def check_image_shape(images: Tensor, shape: tuple[int, ...], source: str = "the images") -> None:
    """Raise a one-line ValueError when the images do not have the model's shape."""
    got = tuple(images.shape[1:])
    if got != tuple(shape):
        raise ValueError(
            f"{source} are {'x'.join(map(str, got))} (CxHxW) but the model takes "
            f"{'x'.join(map(str, shape))}; pass --fit pad or --fit resize to convert them"
        )


def read_attribute_table(path: str | os.PathLike[str]) -> tuple[list[str], list[str], np.ndarray]:
    """Read binary attributes: ``(attribute_names, row_names, values (rows, attributes) bool)``.

    Two formats: CelebA's ``list_attr_celeba.txt`` (a count line, a line of names, then
    ``filename v1 v2 ...`` with values -1/1), and a CSV file whose header is a key column
    followed by attribute names, with values 0/1, -1/1 or true/false. Rows are matched to
    images by file name (or the image's name), or by position when no name matches and the
    table has one row per image.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"attribute file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    first = text.lstrip().split("\n", 1)[0].strip()
    if first.isdigit():
        from .data import read_celeba_attributes

        names, rows = read_celeba_attributes(path)
        keys = list(rows)
        return list(names), keys, np.stack([rows[k] for k in keys]).astype(bool)
    reader = list(csv.reader(line for line in text.splitlines() if line.strip()))
    if len(reader) < 2 or len(reader[0]) < 2:
        raise ValueError(f"{path}: expected a header 'key,attribute,...' and at least one row")
    header = [h.strip() for h in reader[0]]
    values = []
    for number, row in enumerate(reader[1:], start=2):
        if len(row) != len(header):
            raise ValueError(
                f"{path}, line {number}: expected {len(header)} fields, got {len(row)}"
            )
        values.append([_truth(v, path, number) for v in row[1:]])
    return header[1:], [r[0].strip() for r in reader[1:]], np.array(values, dtype=bool)


def _truth(value: str, path: Path, line: int) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes"):
        return True
    if v in ("0", "-1", "false", "no"):
        return False
    raise ValueError(
        f"{path}, line {line}: attribute values must be 0/1, -1/1 or true/false, got {value!r}"
    )


# -- helpers shared by the latent-space commands -------------------------------------------
def add_source_arguments(
    parser: argparse.ArgumentParser, images: bool = True, otherwise: FitMode = "none"
) -> None:
    """The checkpoint and image-source arguments every latent-space command takes.

    ``otherwise`` is what ``--fit auto`` does to a source that is not the checkpoint's
    training dataset (see :func:`source_settings`); it only changes the help text.
    """
    parser.add_argument(
        "checkpoint",
        metavar="CKPT",
        help="checkpoint: a .json manifest, weights file or run folder",
    )
    if images:
        parser.add_argument(
            "images",
            metavar="IMAGES",
            help="images: a dataset NAME or NAME:SPLIT (e.g. mnist:test), an .npz file with "
            "'images' (and 'labels'), an image file, or a folder of images",
        )
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        help="folder holding the dataset files (None: for the dataset the checkpoint was "
        "trained on, the folder its run recorded)",
    )
    parser.add_argument(
        "--fit",
        choices=("auto", "none", "pad", "resize"),
        default="auto",
        help="convert images to the model's shape: pad/crop the centre or resize (and "
        "gray<->RGB); auto reads the dataset the checkpoint was trained on as in training and "
        + ("pads other images" if otherwise == "pad" else "leaves other images as they are"),
    )
    parser.add_argument(
        "--n-bits",
        type=int,
        help="bit depth of the model's input (None: the one the checkpoint was trained at, else 8)",
    )
    parser.add_argument(
        "--device", default="cpu", help="device: cpu, cuda, cuda:N or auto (CUDA if available)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed")


def add_output_arguments(parser: argparse.ArgumentParser, out: str) -> None:
    """``--label``, ``--out`` and ``--zoom``: the options of every command that writes a PNG of
    model images."""
    parser.add_argument("--label", type=int, help="class of every image (class-conditional models)")
    parser.add_argument("--out", default=out, metavar="FILE.png", help="output PNG")
    parser.add_argument("--zoom", type=int, default=1, help="pixel repetition factor in the PNG")


def training_data(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``data`` section of the training config a checkpoint records; ``{}`` without one.

    ``path`` is what :func:`glowlab.checkpoint.find_checkpoint` accepts. Training writes the
    config into the manifest; a weights file read alone and a bare model saved with
    :func:`glowlab.save` record none.
    """
    from .checkpoint import find_checkpoint

    manifest = find_checkpoint(path)
    if manifest.suffix != ".json":
        return {}
    try:
        data = json.loads(manifest.read_text())["train_config"]["data"]
    except (KeyError, TypeError, ValueError):  # ValueError: not JSON
        return {}
    return dict(data) if isinstance(data, dict) else {}


def check_output(path: str | os.PathLike[str] | None, what: str) -> None:
    """Fail before any work when ``path`` cannot be written as a file (``what``: "PNG", ...).

    Missing folders are fine (they are created when the file is written); a path that is a
    folder, or under a file, is not. None (an output not asked for) passes.
    """
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a file name for the {what}")
    folder = next((p for p in path.parents if p.exists()), None)
    if folder is not None and not folder.is_dir():
        raise NotADirectoryError(f"cannot write {path}: {folder} is a file, not a folder")


def check_png_output(path: str | os.PathLike[str], option: str) -> None:
    """:func:`check_output` for a PNG, whose name must end in ``.png`` (``option``: "--out")."""
    check_output(path, "PNG")
    if not str(path).lower().endswith(".png"):
        raise ValueError(f"{option} must name a .png file, got {path}")


def check_seed(seed: int) -> None:
    """Refuse a ``--seed`` outside the range every command takes
    (:func:`glowlab.config.check_seed`)."""
    from .config import check_seed as check

    check(seed, "--seed")


def check_source_arguments(args: argparse.Namespace) -> None:
    """Check the options of :func:`add_source_arguments` before any work is done.

    ``args.device`` becomes the device it names (``auto``: CUDA when available).
    """
    from .train import resolve_device

    check_seed(args.seed)
    n_bits = getattr(args, "n_bits", None)
    if n_bits is not None and not 1 <= n_bits <= 8:
        raise ValueError(f"--n-bits must be in [1, 8], got {n_bits}")
    args.device = str(resolve_device(args.device))


def load_model(
    path: str | os.PathLike[str], device: str = "cpu", n_bits: int | None = None
) -> tuple[FlowModel, int]:
    """The model of a checkpoint and its bit depth: ``n_bits`` when given, else the one it
    was trained at (8 when the checkpoint does not record it)."""
    from .checkpoint import load

    model = load(path, map_location=device)
    if n_bits is None:
        try:
            n_bits = int(training_data(path).get("n_bits", 8))
        except (TypeError, ValueError):
            n_bits = 8
    return model, n_bits


def is_training_dataset(source: str, trained: dict[str, Any]) -> bool:
    """Whether ``source`` is a split of the dataset ``trained`` (see :func:`training_data`)."""
    from .data import canonical_name

    name = dataset_name(source)
    recorded = trained.get("name")
    return name is not None and isinstance(recorded, str) and canonical_name(recorded) == name


def source_settings(
    source: str,
    fit: SourceFit,
    data_dir: str | None,
    trained: dict[str, Any],
    otherwise: FitMode = "none",
) -> tuple[FitMode, str | None, int | None]:
    """``(fit, data_dir, image_size)`` to read ``source`` with, for :func:`load_images`.

    The dataset the checkpoint was trained on (``trained``, the data section of its training
    config, see :func:`training_data`) is read from the recorded folder unless ``data_dir``
    is given, like ``glowlab eval`` does, and with ``fit="auto"`` at the recorded image size,
    as in training. ``"auto"`` fits any other source with ``otherwise``; the other modes
    apply to every source as they are.

    Example:
        >>> source_settings("MNIST:test", "auto", None, {"name": "mnist", "image_size": 32})
        ('none', None, 32)
        >>> source_settings("digits:test", "auto", None, {"name": "mnist", "image_size": 32})
        ('none', None, None)
    """
    if not is_training_dataset(source, trained):
        return otherwise if fit == "auto" else fit, data_dir, None
    folder = trained.get("data_dir") if data_dir is None else data_dir
    if fit != "auto":
        return fit, folder, None
    return "none", folder, trained.get("image_size")


def images_for(
    model: FlowModel,
    source: str,
    data_dir: str | None,
    fit: SourceFit,
    limit: int | None = None,
    trained: dict[str, Any] | None = None,
    otherwise: FitMode = "none",
) -> ImageSet:
    """Read ``source`` and convert (``fit``) or check its images against the model's shape.

    ``trained`` and ``otherwise`` are for ``fit="auto"``; see :func:`source_settings`.
    """
    fit, data_dir, image_size = source_settings(source, fit, data_dir, trained or {}, otherwise)
    return fit_image_set(model, load_images(source, data_dir, limit, image_size), source, fit)


def fit_image_set(model: FlowModel, image_set: ImageSet, source: str, fit: FitMode) -> ImageSet:
    """Convert (``fit``) or check ``image_set``'s images against the model's shape, in place."""
    images = (
        fit_images(image_set.images, model.image_shape, fit) if fit != "none" else image_set.images
    )
    check_image_shape(images, model.image_shape, f"the images of {source}")
    image_set.images = images
    return image_set


def labels_for(model: FlowModel, image_set: ImageSet, label: int | None) -> Tensor | None:
    """Class labels for a class-conditional model: ``label`` for all, else the source's labels."""
    if model.num_classes is None:
        if label is not None:
            raise ValueError(
                "--label is for class-conditional models; this checkpoint has no classes"
            )
        return None
    if label is not None:
        if not 0 <= label < model.num_classes:
            raise ValueError(f"--label must be in [0, {model.num_classes - 1}], got {label}")
        return torch.full((len(image_set),), label, dtype=torch.long)
    if image_set.labels is None:
        raise ValueError(
            "this model is class-conditional and the images have no labels; pass --label K"
        )
    if int(image_set.labels.max()) >= model.num_classes or int(image_set.labels.min()) < 0:
        raise ValueError(
            f"the image labels are outside [0, {model.num_classes - 1}]; pass --label K"
        )
    return image_set.labels.long()


@dataclass
class CommandInputs:
    """What a latent-space command starts from: the model and the images it works on."""

    model: FlowModel
    n_bits: int
    images: ImageSet
    y: Tensor | None
    x: Tensor
    #: The data section of the checkpoint's training config ({} when it records none).
    trained: dict[str, Any]


def command_inputs(args: argparse.Namespace, indices: Sequence[int] | None = None) -> CommandInputs:
    """Load ``args.checkpoint`` and ``args.count`` images of ``args.images`` for a command.

    With ``indices`` (``--indices``, non-negative), the images at those positions of the
    source, in that order, instead. Seeds torch with ``args.seed``; ``x`` is the model's float
    input, ``y`` the labels of a class-conditional model (``args.label`` for all images, else
    the source's labels). The options are checked first (``args.out`` and ``args.zoom`` too),
    so a bad one fails before any work.
    """
    check_source_arguments(args)
    check_png_output(args.out, "--out")
    if args.zoom < 1:
        raise ValueError(f"--zoom must be >= 1, got {args.zoom}")
    torch.manual_seed(args.seed)
    model, n_bits = load_model(args.checkpoint, args.device, args.n_bits)
    trained = training_data(args.checkpoint)
    count = args.count if indices is None else max(indices) + 1
    image_set = images_for(model, args.images, args.data_dir, args.fit, count, trained)
    if indices is not None:
        if max(indices) >= len(image_set):
            raise ValueError(f"--indices must be in [0, {len(image_set) - 1}] for {args.images}")
        image_set = image_set.subset(torch.tensor(indices))
    y = labels_for(model, image_set, args.label)
    return CommandInputs(
        model, n_bits, image_set, y, to_model_input(model, image_set.images, n_bits), trained
    )


def to_model_input(model: FlowModel, images: Tensor, n_bits: int) -> Tensor:
    """uint8 images -> the model's float input at the centres of their bins (no noise)."""
    ref = model._reference()
    return dequantize(images, n_bits, noise=False, dtype=ref.dtype).to(ref.device)


def save_rows(
    path: str | os.PathLike[str],
    rows: list[Tensor],
    n_bits: int = 8,
    zoom: int = 1,
    padding: int = 2,
) -> Path:
    """Save float image rows (each ``(N, C, H, W)`` in [-0.5, 0.5)) as one PNG grid.

    Rows may have different lengths; short rows are padded with white. ``zoom`` repeats
    every pixel ``zoom`` x ``zoom`` times so that small images can be seen.
    """
    if not rows:
        raise ValueError("nothing to save")
    if zoom < 1:
        raise ValueError(f"zoom must be a positive integer, got {zoom}")
    width = max(r.shape[0] for r in rows)
    tiles = []
    for row in rows:
        q = quantize(row.detach().cpu(), n_bits)
        if q.shape[1] == 1 and any(r.shape[1] == 3 for r in rows):
            q = q.expand(-1, 3, -1, -1)
        if row.shape[0] < width:
            blank = torch.full((width - row.shape[0], *q.shape[1:]), 255, dtype=torch.uint8)
            q = torch.cat([q, blank])
        tiles.append(q)
    grid_images = torch.cat(tiles)
    if zoom > 1:
        grid_images = grid_images.repeat_interleave(zoom, 2).repeat_interleave(zoom, 3)
    return save_png(path, make_grid(grid_images, nrow=width, padding=padding))
