"""``glowlab interpolate``: a strip of images along a path between images in latent space."""

from __future__ import annotations

import argparse

import torch

from ..imageio import (
    add_output_arguments,
    add_source_arguments,
    command_inputs,
    save_rows,
)
from ..latent import interpolate_path

HELP = "interpolate between two or more images in the latent space (linear or spherical)"
DESCRIPTION = (
    "Encode the chosen images (--indices) and decode the path through their standardized "
    "latents, --steps images per segment. Each row of the PNG is one method (linear, slerp); "
    "the path's endpoints and waypoints are the inputs reproduced exactly."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_source_arguments(parser)
    parser.add_argument(
        "--indices",
        type=int,
        nargs="+",
        default=[0, 1],
        help="images of the path, in order (2 or more)",
    )
    parser.add_argument(
        "--steps", type=int, default=8, help="images per segment, endpoints included"
    )
    parser.add_argument(
        "--method",
        choices=("linear", "slerp", "both"),
        default="both",
        help="interpolation in latent space",
    )
    add_output_arguments(parser, "interpolate.png")


def run(args: argparse.Namespace) -> int:
    if len(args.indices) < 2:
        raise ValueError("--indices needs at least two images")
    if min(args.indices) < 0:
        raise ValueError(f"--indices must be non-negative, got {min(args.indices)}")
    inputs = command_inputs(args, args.indices)
    model, n_bits, y, x = inputs.model, inputs.n_bits, inputs.y, inputs.x
    methods = ["linear", "slerp"] if args.method == "both" else [args.method]
    rows = [interpolate_path(model, x, args.steps, method, y) for method in methods]  # type: ignore[arg-type]
    path = save_rows(args.out, rows, n_bits, args.zoom)
    ends = torch.stack([rows[0][k * (args.steps - 1)] for k in range(len(x))])
    error = float((ends - x).abs().max())
    print(
        f"path through images {args.indices}: {rows[0].shape[0]} images per row "
        f"({', '.join(methods)})"
    )
    print(f"max |endpoint - input| = {error:.3e}")
    print(f"wrote {path}")
    return 0
