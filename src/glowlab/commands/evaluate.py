"""``glowlab eval``: test bits/dim of a checkpoint, with its standard error."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .train import use_help_formatter

HELP = "test bits/dim of a checkpoint (mean and standard error over the test split)"
DESCRIPTION = (
    "Evaluate a checkpoint's negative log-likelihood in bits per dimension on a whole test "
    "split: each image's bits/dim is averaged over --draws uniform dequantization draws, and "
    "the mean over images is reported with its standard error (std / sqrt(N)). The dataset, "
    "image size and bit depth default to those the checkpoint was trained with. CKPT is a "
    "checkpoint manifest (.json), its weights file, or a run folder (uses "
    "checkpoints/last.json). Uses the Polyak/EMA weights when the checkpoint has them."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    use_help_formatter(parser, DESCRIPTION)
    parser.add_argument(
        "checkpoint", metavar="CKPT", help="checkpoint manifest, weights file or run folder"
    )
    parser.add_argument(
        "--data", metavar="NAME", help="dataset (default: the one it was trained on)"
    )
    parser.add_argument("--data-dir", metavar="DIR", help="folder holding the dataset files")
    parser.add_argument("--split", default="test", help="dataset split to evaluate")
    parser.add_argument(
        "--image-size", type=int, help="resize/pad images (default: the training size)"
    )
    parser.add_argument(
        "--n-bits", type=int, help="bit depth (default: the training bit depth, else 8)"
    )
    parser.add_argument(
        "--draws", type=int, default=1, help="dequantization draws averaged per image"
    )
    parser.add_argument("--batch-size", type=int, default=500, help="evaluation batch size")
    parser.add_argument("--max-images", type=int, help="evaluate only the first N images")
    parser.add_argument(
        "--raw", action="store_true", help="use the raw weights instead of the EMA weights"
    )
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="device")
    parser.add_argument("--seed", type=int, default=0, help="seed of the dequantization noise")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")


def data_settings(manifest: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Dataset name, folder, image size and bit depth: flags first, then the training config."""
    from ..data import canonical_name

    data = (manifest.get("train_config") or {}).get("data") or {}
    recorded = data.get("name")
    name = args.data or recorded
    if name is None:
        raise ValueError("this checkpoint does not record its dataset; pass --data NAME")
    # Dataset names are case-insensitive ("MNIST" is "mnist"); an unknown one is kept as
    # given, for get_dataset to name in its error.
    name = canonical_name(name) or name
    same = isinstance(recorded, str) and name == (canonical_name(recorded) or recorded)
    return {
        "name": name,
        "data_dir": args.data_dir
        if args.data_dir is not None
        else data.get("data_dir")
        if same
        else None,
        "image_size": args.image_size
        if args.image_size is not None
        else data.get("image_size")
        if same
        else None,
        "n_bits": args.n_bits if args.n_bits is not None else data.get("n_bits", 8),
    }


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import read_checkpoint
    from ..data import get_dataset
    from ..imageio import check_seed
    from ..train import evaluate_bits_per_dim, resolve_device

    for flag in ("draws", "batch_size", "max_images"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    check_seed(args.seed)
    device = resolve_device(args.device)
    checkpoint = read_checkpoint(args.checkpoint, map_location=device)
    model = checkpoint.build_model("raw" if args.raw else "ema").eval()
    settings = data_settings(checkpoint.manifest, args)
    if settings["image_size"] is None and settings["name"] != "folder":
        from ..data import dataset_info

        native = dataset_info(settings["name"]).image_shape
        if native is not None and native[1:] != model.image_shape[1:]:
            settings["image_size"] = model.image_shape[1]
    dataset = get_dataset(
        settings["name"],
        args.split,
        data_dir=settings["data_dir"],
        image_size=settings["image_size"],
    )
    result = evaluate_bits_per_dim(
        model,
        dataset.images,
        dataset.labels if model.conditional else None,
        n_bits=settings["n_bits"],
        batch_size=args.batch_size,
        max_images=args.max_images,
        draws=args.draws,
        seed=args.seed,
    )
    if args.json:
        print(json.dumps({"checkpoint": str(checkpoint.path), "data": settings["name"],
                          "split": args.split, **result.__dict__}))  # fmt: skip
        return 0
    weights = "raw" if args.raw or checkpoint.ema is None else "EMA"
    print(
        f"{settings['name']} {args.split}: {result.bpd:.4f} +- {result.sem:.4f} bits/dim "
        f"(standard error; {result.n_images} images, {result.draws} draw(s), "
        f"{settings['n_bits']}-bit, {weights} weights)"
    )
    print(f"  prior term {result.prior_bpd:.4f} + logdet term {result.logdet_bpd:.4f} "
          f"+ dequantization {settings['n_bits']}")  # fmt: skip
    if result.accuracy is not None:
        print(f"  classifier accuracy {result.accuracy:.4f}")
    return 0
