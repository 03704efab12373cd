"""``glowlab sample``: a PNG grid of samples from a checkpoint, at one or more temperatures."""

from __future__ import annotations

import argparse
import math

from ..config import PAPER_TEMPERATURES
from .train import use_help_formatter

HELP = "write a PNG grid of samples at one or more temperatures"
DESCRIPTION = (
    "Sample a checkpoint's model and write the images as a PNG grid. With one --temperature "
    "the grid holds --n samples; with several (or --sweep, the Glow paper's 0, .25, .5, .6, .7, "
    ".8, .9, 1) each row is one temperature and the columns keep the same latents, so a "
    "column shows one sample as the temperature rises. Uses the Polyak/EMA weights when the "
    "checkpoint has them."
)

SWEEP = PAPER_TEMPERATURES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    use_help_formatter(parser, DESCRIPTION)
    parser.add_argument(
        "checkpoint", metavar="CKPT", help="checkpoint manifest, weights file or run folder"
    )
    parser.add_argument(
        "--n", type=int, default=64, help="samples (per temperature row when several)"
    )
    parser.add_argument(
        "--temperature", type=float, nargs="+", default=[0.7], metavar="T",
        help="sampling temperature(s); several give one row each",
    )  # fmt: skip
    parser.add_argument(
        "--sweep", action="store_true", help="use the temperatures 0 .25 .5 .6 .7 .8 .9 1"
    )
    parser.add_argument("--out", default="samples.png", metavar="FILE.png", help="output PNG")
    parser.add_argument(
        "--class", dest="label", type=int, metavar="Y", help="class to sample (conditional models)"
    )
    parser.add_argument(
        "--n-bits", type=int, help="bit depth of the output (default: the training one)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the latents")
    parser.add_argument(
        "--raw", action="store_true", help="use the raw weights instead of the EMA weights"
    )
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="device")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..checkpoint import read_checkpoint
    from ..imageio import check_seed
    from ..images import make_grid, save_png
    from ..metrics import quantize
    from ..train import resolve_device, upscale

    temperatures = list(SWEEP) if args.sweep else list(args.temperature)
    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    check_seed(args.seed)
    if any(t < 0 or not math.isfinite(t) for t in temperatures):
        raise ValueError(f"temperatures must be finite and >= 0, got {temperatures}")
    if not str(args.out).lower().endswith(".png"):
        raise ValueError(f"--out must name a .png file, got {args.out}")
    device = resolve_device(args.device)
    checkpoint = read_checkpoint(args.checkpoint, map_location=device)
    model = checkpoint.build_model("raw" if args.raw else "ema").eval()
    data = (checkpoint.manifest.get("train_config") or {}).get("data") or {}
    n_bits = args.n_bits if args.n_bits is not None else data.get("n_bits", 8)
    y = None
    if args.label is not None:
        if not model.conditional or not 0 <= args.label < (model.num_classes or 0):
            raise ValueError(
                f"--class {args.label}: the model has "
                + (f"classes 0..{model.num_classes - 1}" if model.conditional else "no classes")
            )
        y = torch.full((args.n,), args.label, device=device)
    elif model.conditional:
        assert model.num_classes is not None
        y = torch.arange(args.n, device=device) % model.num_classes
    generator = torch.Generator(device).manual_seed(args.seed)
    with torch.no_grad():
        eps = model.sample_latents(args.n, 1.0, generator=generator)
        rows = [quantize(model.decode([t * e for e in eps], y), n_bits) for t in temperatures]
    images = upscale(torch.cat(rows))
    nrow = args.n if len(temperatures) > 1 else math.ceil(math.sqrt(args.n))
    path = save_png(args.out, make_grid(images, nrow=nrow))
    print(
        f"wrote {len(rows) * args.n} samples at temperature(s) "
        f"{', '.join(map(str, temperatures))} to {path}"
    )
    return 0
