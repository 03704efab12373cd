"""``glowlab manipulate``: move images along an attribute direction in latent space."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..imageio import (
    ImageSet,
    add_output_arguments,
    add_source_arguments,
    check_output,
    command_inputs,
    fit_image_set,
    is_training_dataset,
    labels_for,
    load_images,
    read_attribute_table,
    save_rows,
    source_settings,
    to_model_input,
)
from ..latent import attribute_direction, load_direction, manipulate, save_direction
from ..models import FlowModel

HELP = "edit images along an attribute direction (mean latent with minus without)"
DESCRIPTION = (
    "Compute a direction in the standardized latents as the mean latent of images with an "
    "attribute minus the mean latent of images without it (Glow, section 5), or load one "
    "with --direction, and decode encode(x) + alpha * direction for every --alphas value. "
    "The labelled images (--from, default IMAGES) are split by class (--positive, and "
    "--negative or every other class), by a folder per attribute value (class names), or by "
    "a binary attribute (--attribute NAME, from CelebA's own table or an --attributes CSV "
    "whose rows match the images by file name or by position). A class-conditional model "
    "encodes the labelled images as class --label, or with their own labels when --from is "
    "the dataset the model was trained on. Each PNG row is one image, each column one alpha; "
    "alpha 0 reproduces the input."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_source_arguments(parser)
    parser.add_argument("--count", type=int, default=4, help="number of images to edit")
    parser.add_argument(
        "--alphas", type=float, nargs="+", default=[-2.0, -1.0, 0.0, 1.0, 2.0],
        help="scales of the direction, one column each",
    )  # fmt: skip
    parser.add_argument(
        "--direction", metavar="FILE", help="load a saved direction instead of computing one"
    )
    parser.add_argument(
        "--from", dest="source", metavar="DATA", help="labelled images for the direction"
    )
    parser.add_argument("--positive", help="class (index or name) with the attribute")
    parser.add_argument("--negative", help="class without it (default: every other class)")
    parser.add_argument(
        "--attributes", metavar="CSV", help="binary attribute table (CelebA list_attr or CSV)"
    )
    parser.add_argument("--attribute", help="attribute name in the table (e.g. Smiling)")
    parser.add_argument(
        "--max-images",
        type=int,
        default=2000,
        help="labelled images used at most on each side (with and without the attribute)",
    )
    parser.add_argument(
        "--save-direction", metavar="FILE", help="write the direction (.safetensors or .pt)"
    )
    add_output_arguments(parser, "manipulate.png")


def _class_index(image_set: ImageSet, spec: str) -> int:
    if image_set.classes and spec in image_set.classes:
        return image_set.classes.index(spec)
    try:
        return int(spec)
    except ValueError:
        known = ", ".join(image_set.classes or [])
        raise ValueError(
            f"unknown class {spec!r}" + (f"; classes are {known}" if known else "")
        ) from None


def _attribute_mask(image_set: ImageSet, args: argparse.Namespace) -> tuple[torch.Tensor, str]:
    """Boolean (N,) with the attribute, and a description."""
    if args.attributes is None:
        if image_set.attributes is None or image_set.attribute_names is None:
            raise ValueError("--attribute needs an --attributes table (these images have none)")
        if args.attribute not in image_set.attribute_names:
            raise ValueError(
                f"unknown attribute {args.attribute!r}; "
                f"known: {', '.join(image_set.attribute_names)}"
            )
        return image_set.attributes[
            :, image_set.attribute_names.index(args.attribute)
        ], args.attribute
    names, rows, values = read_attribute_table(args.attributes)
    if args.attribute not in names:
        raise ValueError(
            f"unknown attribute {args.attribute!r} in {args.attributes}; known: {', '.join(names)}"
        )
    column = values[:, names.index(args.attribute)]
    lookup = {row: i for i, row in enumerate(rows)}
    lookup.update({Path(row).name: i for i, row in enumerate(rows)})
    matched = [lookup.get(n, lookup.get(Path(n).name)) for n in image_set.names]
    if all(m is not None for m in matched):
        mask = column[np.array(matched, dtype=np.int64)]
    elif any(m is not None for m in matched):
        missing = next(n for n, m in zip(image_set.names, matched, strict=True) if m is None)
        raise ValueError(
            f"{args.attributes} names some images but not {missing!r}; give every image a row"
        )
    elif len(rows) == len(image_set):
        mask = column  # no names match: the rows are in image order
    else:
        raise ValueError(
            f"{args.attributes} has {len(rows)} rows and its names do not match the "
            f"{len(image_set)} images"
        )
    return torch.from_numpy(np.ascontiguousarray(mask)), args.attribute


def _split(image_set: ImageSet, args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor, str]:
    if args.attribute is not None:
        mask, name = _attribute_mask(image_set, args)
        return mask, ~mask, name
    if args.positive is None:
        raise ValueError(
            "say which images have the attribute: --positive CLASS or --attribute NAME "
            "(or --direction FILE)"
        )
    if image_set.labels is None:
        raise ValueError(
            "--positive needs labelled images (a dataset, an .npz with labels or class folders)"
        )
    pos = _class_index(image_set, args.positive)
    positive = image_set.labels == pos
    if args.negative is None:
        return positive, ~positive, f"class {args.positive} vs rest"
    negative = image_set.labels == _class_index(image_set, args.negative)
    return positive, negative, f"class {args.positive} vs class {args.negative}"


def _direction_labels(
    model: FlowModel,
    image_set: ImageSet,
    source: str,
    label: int | None,
    trained: dict[str, Any],
) -> torch.Tensor | None:
    """The classes a class-conditional model encodes the labelled images with.

    ``--label`` when given. Otherwise the images' own labels, but only when they come from
    the dataset the model was trained on: elsewhere (class folders, an attribute table, an
    .npz, another dataset) they define the attribute and are not the model's classes.
    """
    if model.num_classes is None:
        return None
    if label is None and not is_training_dataset(source, trained):
        raise ValueError(
            f"the model is class-conditional and the labels of {source} are not its "
            "classes; pass --label K to encode the labelled images as class K"
        )
    return labels_for(model, image_set, label)


def run(args: argparse.Namespace) -> int:
    if args.max_images < 1:
        raise ValueError(f"--max-images must be >= 1, got {args.max_images}")
    if not all(math.isfinite(a) for a in args.alphas):
        raise ValueError(f"--alphas must be finite numbers, got {args.alphas}")
    check_output(args.save_direction, "direction")
    inputs = command_inputs(args)
    model, n_bits, y, x = inputs.model, inputs.n_bits, inputs.y, inputs.x
    if args.direction is not None:
        direction = load_direction(args.direction)
    else:
        source = args.source or args.images
        fit, data_dir, image_size = source_settings(source, args.fit, args.data_dir, inputs.trained)
        labelled = load_images(source, data_dir, image_size=image_size)
        positive, negative, name = _split(labelled, args)
        positive, negative = positive.bool(), negative.bool()
        for what, mask in (("with", positive), ("without", negative)):
            if not bool(mask.any()):
                raise ValueError(f"no labelled images {what} the attribute ({name})")
        # Only the images used are converted to the model's shape, not the whole source.
        pos_set, neg_set = (
            fit_image_set(
                model,
                labelled.subset(torch.nonzero(m).ravel()[: args.max_images]),
                source,
                fit,
            )
            for m in (positive, negative)
        )
        direction = attribute_direction(
            model,
            to_model_input(model, pos_set.images, n_bits),
            to_model_input(model, neg_set.images, n_bits),
            _direction_labels(model, pos_set, source, args.label, inputs.trained),
            _direction_labels(model, neg_set, source, args.label, inputs.trained),
            metadata={"attribute": name, "source": str(args.source or args.images)},
        )
        print(
            f"direction {name}: {len(pos_set)} images with, {len(neg_set)} without, "
            f"norm {direction.norm():.2f}"
        )
    if args.save_direction:
        print(f"saved the direction to {save_direction(direction, args.save_direction)}")
    edited = manipulate(model, x, direction, args.alphas, y)  # (A, B, C, H, W)
    rows = [edited[:, i] for i in range(x.shape[0])]
    zero = [i for i, a in enumerate(args.alphas) if a == 0]
    if zero:
        error = float((edited[zero[0]] - x).abs().max())
        print(f"alpha = 0: max |output - input| = {error:.3e}")
    print(f"wrote {save_rows(args.out, rows, n_bits, args.zoom)}")
    return 0
