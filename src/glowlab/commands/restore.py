"""``glowlab restore``: inpainting, denoising, colorization and 2x super-resolution."""

from __future__ import annotations

import argparse
import json
import math

import torch

from .._files import atomic_write
from ..imageio import (
    add_output_arguments,
    add_source_arguments,
    check_output,
    command_inputs,
    save_rows,
)
from ..restore import TASKS, center_mask, restore

HELP = (
    "restore degraded images (inpaint, denoise, colorize, super-resolution) with the flow as prior"
)
DESCRIPTION = (
    "Degrade clean images, then restore them by maximising log p(x) under the observation "
    "(gradient ascent with Adam from a trivial baseline that agrees with the observation). "
    "For each task the PNG has four rows: clean, observed, baseline, restored; MSE and PSNR "
    "against the clean images are printed for the baseline and for the restoration."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_source_arguments(parser)
    parser.add_argument("--task", choices=(*TASKS, "all"), default="all", help="restoration task")
    parser.add_argument("--count", type=int, default=8, help="number of images")
    parser.add_argument("--steps", type=int, default=300, help="optimisation steps")
    parser.add_argument("--lr", type=float, help="Adam learning rate (default: per task)")
    parser.add_argument(
        "--sigma", type=float, default=0.1, help="noise std for denoising ([-0.5, 0.5) scale)"
    )
    parser.add_argument(
        "--mask-size", type=float, default=0.5, help="side of the inpainted square / image side"
    )
    add_output_arguments(parser, "restore.png")
    parser.add_argument("--json", metavar="FILE", help="also write the metrics as JSON")


def _check_numbers(args: argparse.Namespace) -> None:
    """Fail on a bad --sigma, --mask-size, --steps or --lr before any task runs."""
    if not (math.isfinite(args.sigma) and args.sigma > 0):
        raise ValueError(f"--sigma must be a finite number > 0, got {args.sigma}")
    if not 0 < args.mask_size < 1:
        raise ValueError(f"--mask-size must be in (0, 1), got {args.mask_size}")
    if args.steps < 0:
        raise ValueError(f"--steps must be >= 0, got {args.steps}")
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        raise ValueError(f"--lr must be a finite number > 0, got {args.lr}")


def run(args: argparse.Namespace) -> int:
    _check_numbers(args)
    check_output(args.json, "JSON")
    inputs = command_inputs(args)
    model, n_bits, y, clean = inputs.model, inputs.n_bits, inputs.y, inputs.x
    tasks = (
        [t for t in TASKS if t != "colorize" or model.image_shape[0] == 3]
        if args.task == "all"
        else [args.task]
    )
    if args.task == "colorize" and model.image_shape[0] != 3:
        raise ValueError("colorization needs a model of RGB images; this one has 1 channel")
    generator = torch.Generator().manual_seed(args.seed)
    rows, metrics = [], {}
    print(f"{'task':<18}{'baseline MSE':>14}{'PSNR':>8}{'restored MSE':>14}{'PSNR':>8}")
    for task in tasks:
        result = restore(
            model, clean, task, args.steps, args.lr, args.sigma,
            center_mask(clean.shape, args.mask_size).to(clean), y, generator,
        )  # fmt: skip
        rows += [result.clean, result.observed.clamp(-0.5, 0.5), result.baseline, result.restored]
        metrics[task] = result.summary()
        m = metrics[task]
        print(
            f"{task:<18}{m['baseline_mse']:>14.5f}{m['baseline_psnr']:>8.2f}"
            f"{m['restored_mse']:>14.5f}{m['restored_psnr']:>8.2f}"
        )
    print(f"wrote {save_rows(args.out, rows, n_bits, args.zoom)}")
    if args.json:
        text = json.dumps(metrics, indent=2)
        atomic_write(args.json, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return 0
