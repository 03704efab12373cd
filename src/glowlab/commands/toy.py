"""``glowlab toy``: fit a 2-D flow to a toy density and draw RealNVP's figure 1."""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch

from ..imageio import check_seed
from ..images import save_png
from ..toy import DENSITIES, ToyFlow, density_grid, sample_density, toy_figure, train_toy

HELP = "fit a 2-D flow to a toy density (moons, checkerboard, rings) and draw it"
DESCRIPTION = (
    "Train a ToyFlow (ActNorm, 2x2 invertible matrix and affine coupling per layer) on fresh "
    "samples of a 2-D density, then draw RealNVP's figure 1: data, latents, the grid warped "
    "both ways, and the learned density (top row inference x -> z, bottom row generation)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--density", choices=DENSITIES, default="moons", help="toy density")
    parser.add_argument("--steps", type=int, default=2000, help="training steps")
    parser.add_argument("--batch-size", type=int, default=256, help="points per step")
    parser.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate")
    parser.add_argument("--layers", type=int, default=8, help="flow layers")
    parser.add_argument("--hidden", type=int, default=64, help="width of the coupling MLPs")
    parser.add_argument("--points", type=int, default=2000, help="points drawn in the figure")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--out", default="toy.png", help="output PNG")


def run(args: argparse.Namespace) -> int:
    if args.steps < 1 or args.points < 1:
        raise ValueError("--steps and --points must be positive")
    check_seed(args.seed)
    torch.manual_seed(args.seed)
    flow = ToyFlow(layers=args.layers, hidden_features=args.hidden)
    flow = train_toy(args.density, args.steps, args.batch_size, args.lr, args.seed, flow)
    generator = torch.Generator().manual_seed(args.seed + 1)
    data = sample_density(args.density, args.points, generator)
    with torch.no_grad():
        nll = float(-flow.log_prob(data).mean())
    limit = 4.0
    log_p = density_grid(flow, limit, 400)
    mass = float(np.exp(log_p).sum() * (2 * limit / 400) ** 2)
    path = save_png(args.out, toy_figure(flow, data, generator=generator))
    print(
        f"{args.density}: {args.steps} steps, test NLL {nll:.3f} nats "
        f"({nll / math.log(2) / 2:.3f} bits/dim)"
    )
    print(f"probability mass of the model on [-{limit:g}, {limit:g}]^2: {mass:.4f}")
    print(f"wrote {path}")
    return 0
