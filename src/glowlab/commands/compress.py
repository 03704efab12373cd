"""``glowlab compress``: RealNVP's conceptual compression, keeping the coarsest latents."""

from __future__ import annotations

import argparse
import math

import torch

from ..imageio import (
    add_output_arguments,
    add_source_arguments,
    command_inputs,
    save_rows,
)
from ..latent import COMPRESSION_FRACTIONS, compress, keep_masks

HELP = "conceptual compression: keep the coarsest latents, resample the rest"
DESCRIPTION = (
    "RealNVP's conceptual compression (Dinh et al. 2017, appendix D). The latent dimensions "
    "are ranked from the top (coarsest) level down, within a level channel by channel; the "
    "first fraction is kept and the others are drawn from the prior at --temperature. The PNG "
    "has one column per image and one row per fraction (1 reproduces the input)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_source_arguments(parser)
    parser.add_argument("--count", type=int, default=8, help="number of images")
    parser.add_argument(
        "--fractions", type=float, nargs="+", default=list(COMPRESSION_FRACTIONS),
        help="fractions of the latent dimensions kept, one row each",
    )  # fmt: skip
    parser.add_argument(
        "--temperature", type=float, default=1.0, help="temperature of the resampled latents"
    )
    add_output_arguments(parser, "compress.png")


def run(args: argparse.Namespace) -> int:
    inputs = command_inputs(args)
    model, n_bits, y, x = inputs.model, inputs.n_bits, inputs.y, inputs.x
    generator = torch.Generator(device=x.device).manual_seed(args.seed)
    rows = compress(model, x, args.fractions, args.temperature, y, generator)
    path = save_rows(args.out, list(rows), n_bits, args.zoom)
    total = sum(math.prod(s) for s in model.latent_shapes)
    print(f"latent levels (finest first): {[tuple(s) for s in model.latent_shapes]}, {total} dims")
    for fraction in args.fractions:
        kept = [int(m.sum()) for m in keep_masks(model.latent_shapes, fraction)]
        print(f"  keep {fraction:>7.2%}: {sum(kept):>6} dims, per level {kept}")
    print(f"wrote {path}")
    return 0
