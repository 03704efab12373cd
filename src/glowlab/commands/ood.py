"""``glowlab ood``: per-image bits/dim, histograms and AUROC of out-of-distribution scores."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from .._files import atomic_write
from ..data import canonical_name
from ..imageio import (
    add_source_arguments,
    check_output,
    check_png_output,
    check_source_arguments,
    images_for,
    load_model,
    training_data,
)
from ..images import save_png
from ..models import FlowModel
from ..ood import SCORES, noise_images, ood_scores
from ..plot import histogram_figure

HELP = "out-of-distribution scores (likelihood, typicality, input complexity) and their AUROC"
DESCRIPTION = (
    "Score the in-distribution test images (--in) and each outlier set (--outliers; 'noise' "
    "is uniform 8-bit noise) by bits/dim, by typicality |bits/dim - H| with H the mean on "
    "--reference images (Nalisnick et al. 2019b), and by input complexity bits/dim - PNG "
    "bits/dim (Serra et al. 2020), and print each score's AUROC (1: outliers always score "
    "higher, 0.5: chance, below 0.5: the score ranks outliers as more in-distribution). "
    "Every set is brought to the model's shape with --fit: by default (auto) the dataset the "
    "checkpoint was trained on is read as in training and the others are padded (pad: MNIST "
    "centred at 32x32 and replicated to RGB). The PNG stacks one histogram per score: the "
    "in-distribution set in "
    "blue, then the outlier sets in orange, green, red and purple, in the order given."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # Outliers such as MNIST rarely have the model's shape.
    add_source_arguments(parser, images=False, otherwise="pad")
    parser.add_argument(
        "--in", dest="inliers", required=True, help="in-distribution test images, e.g. cifar10:test"
    )
    parser.add_argument(
        "--outliers",
        nargs="+",
        default=["noise"],
        help="outlier image sources, e.g. mnist:test noise",
    )
    parser.add_argument(
        "--reference",
        help="held-in images for the typicality entropy (default: the training split of --in "
        "when --in is a dataset; required otherwise)",
    )
    parser.add_argument("--count", type=int, default=1000, help="images per set")
    parser.add_argument(
        "--typicality-batch", type=int, default=1, help="inputs per typicality test (M)"
    )
    parser.add_argument("--batch-size", type=int, default=200, help="images per forward pass")
    parser.add_argument(
        "--plot", default="ood.png", metavar="FILE.png", help="output PNG of the histograms"
    )
    parser.add_argument(
        "--json", metavar="FILE", help="also write the AUROCs and per-image scores as JSON"
    )


def _images(
    source: str, model: FlowModel, args: argparse.Namespace, trained: dict[str, Any]
) -> torch.Tensor:
    if source == "noise":
        generator = torch.Generator().manual_seed(args.seed)
        return noise_images(args.count, tuple(model.image_shape), generator)
    return images_for(model, source, args.data_dir, args.fit, args.count, trained, "pad").images


def run(args: argparse.Namespace) -> int:
    check_source_arguments(args)
    check_png_output(args.plot, "--plot")
    check_output(args.json, "JSON")
    torch.manual_seed(args.seed)
    model, n_bits = load_model(args.checkpoint, args.device, args.n_bits)
    trained = training_data(args.checkpoint)
    inliers = _images(args.inliers, model, args, trained)
    reference_source = args.reference or _training_split(args.inliers)
    reference = _images(reference_source, model, args, trained)
    outliers = {name: _images(name, model, args, trained) for name in args.outliers}
    result = ood_scores(
        model, inliers, outliers, reference, args.inliers, n_bits, args.batch_size,
        args.typicality_batch,
        torch.Generator(device=model._reference().device).manual_seed(args.seed),
    )  # fmt: skip
    for name, bpd in result.bpd.items():
        print(f"{name:<24} bits/dim mean {float(bpd.mean()):.3f}  std {float(bpd.std()):.3f}")
    print(f"typicality entropy H from {reference_source}: {result.entropy:.3f} bits/dim")
    print("AUROC (outliers vs in-distribution):")
    print(result.table())
    panels = [histogram_figure([v.numpy() for v in result.scores[s].values()]) for s in SCORES]
    save_png(args.plot, torch.cat(panels, dim=1))
    print(f"wrote {args.plot} (rows: {', '.join(SCORES)})")
    if args.json:
        data = {
            "in": args.inliers,
            "entropy": result.entropy,
            "auroc": result.aurocs,
            "scores": {
                s: {n: v.tolist() for n, v in values.items()} for s, values in result.scores.items()
            },
        }
        atomic_write(args.json, lambda tmp: tmp.write_text(json.dumps(data), encoding="utf-8"))
    return 0


def _training_split(source: str) -> str:
    """``NAME:train`` for a dataset source ``NAME[:SPLIT]``; other sources need --reference."""
    name = canonical_name(source.partition(":")[0])
    if name is None or Path(source).exists():
        raise ValueError(
            f"--in {source} is not a dataset, so there is no training split to estimate the "
            "typicality entropy from; pass --reference with held-in images"
        )
    return f"{name}:train"
