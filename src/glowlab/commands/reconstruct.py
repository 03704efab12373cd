"""``glowlab reconstruct``: show images and ``decode(encode(x))``, report the round-trip error."""

from __future__ import annotations

import argparse

from ..data import reduce_bits
from ..imageio import (
    add_output_arguments,
    add_source_arguments,
    command_inputs,
    save_rows,
)
from ..latent import reconstruct
from ..metrics import quantize

HELP = "encode and decode images; show both and report the round-trip error"
DESCRIPTION = (
    "Encode images to their standardized latents and decode them again. The PNG shows the "
    "inputs (top row) and the reconstructions (bottom row); the largest absolute pixel error "
    "is printed next to one grey level (1/2**n_bits in the [-0.5, 0.5) domain). A flow is a "
    "bijection, so the error is floating-point rounding only."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_source_arguments(parser)
    parser.add_argument("--count", type=int, default=8, help="number of images")
    add_output_arguments(parser, "reconstruct.png")


def run(args: argparse.Namespace) -> int:
    inputs = command_inputs(args)
    model, n_bits, y, x = inputs.model, inputs.n_bits, inputs.y, inputs.x
    image_set = inputs.images
    x_hat, error = reconstruct(model, x, y)
    original = reduce_bits(image_set.images, n_bits).to(x_hat.device)
    exact = bool((quantize(x_hat, n_bits) == original).all())
    path = save_rows(args.out, [x, x_hat], n_bits, args.zoom)
    grey = 1 / 2**n_bits
    print(f"images: {len(image_set)} from {args.images}, model dtype {x.dtype}")
    print(
        f"max |x - decode(encode(x))| = {error:.3e} ({error / grey:.2e} grey levels of {grey:.3e})"
    )
    print(f"8-bit images reproduced exactly: {'yes' if exact else 'no'}")
    print(f"wrote {path}")
    return 0
