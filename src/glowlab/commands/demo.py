"""``glowlab demo``: train a small Glow on real digits on the CPU, then sample and interpolate."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..config import PAPER_TEMPERATURES
from .train import use_help_formatter

HELP = (
    "train a small Glow on scikit-learn's 8x8 digits (CPU, ~1-2 min), then sample and interpolate"
)
DESCRIPTION = (
    "The quickest end-to-end check: train a small Glow (preset glow-digits) on the 1,437 "
    "training images of scikit-learn's 8x8 handwritten digits, which ship with scikit-learn "
    "so nothing is downloaded, report bits/dim on the 360 test images, and write a grid of "
    "samples at the Glow paper's temperatures (one row each: 0, .25, .5, .6, .7, .8, .9, 1) "
    "and a strip of latent interpolations between test digits as PNG files. Needs no GPU and "
    "no network; takes one to two minutes on two CPU cores."
)

TEMPERATURES = PAPER_TEMPERATURES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    use_help_formatter(parser, DESCRIPTION)
    parser.add_argument(
        "--out", default="glowlab-demo", metavar="DIR",
        help="output folder (a numbered sibling is used if it already holds a run)",
    )  # fmt: skip
    parser.add_argument("--steps", type=int, help="training steps (default: the preset's)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="device")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="CPU threads; tiny convolutions run fastest on one, above all on shared cores",
    )  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _free_folder(path: Path) -> Path:
    candidate, k = path, 2
    while (candidate / "checkpoints" / "last.json").exists():
        candidate, k = path.with_name(f"{path.name}-{k}"), k + 1
    return candidate


def run(args: argparse.Namespace) -> int:
    import torch

    from ..imageio import check_seed

    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    check_seed(args.seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace) -> int:
    import torch

    from ..config import apply_overrides, get_preset
    from ..images import make_grid, save_png
    from ..latent import interpolate
    from ..metrics import dequantize, quantize
    from ..train import Trainer, TrainingError, sample_grid, upscale

    overrides = [
        f"seed={args.seed}",
        f"device={args.device}",
        f"train.sample_temperatures={list(TEMPERATURES)}",
    ]
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    if args.no_progress:
        overrides.append("train.progress=false")
    config = apply_overrides(get_preset("glow-digits"), overrides)
    out = _free_folder(Path(args.out)).absolute()
    start = time.perf_counter()
    trainer = Trainer(config, out)  # without scikit-learn, glowlab.cli reports the ImportError
    print(
        f"training Glow ({trainer.num_parameters:,} parameters) on {len(trainer.train_images)} "
        f"8x8 digits for {config.train.steps} steps on {trainer.device}...",
        file=sys.stderr,
    )
    try:
        result = trainer.fit()
    except TrainingError as exc:
        print(f"glowlab demo: error: {exc}", file=sys.stderr)
        return 1
    model = trainer.eval_model.eval()
    samples = save_png(out / "samples.png", sample_grid(model, TEMPERATURES, 10, seed=args.seed))
    # Interpolations between pairs of test digits, encoded at the centres of their pixel bins.
    pairs, steps = 6, 10
    images = trainer.test_images[: 2 * pairs].to(trainer.device)
    x = dequantize(images, config.data.n_bits, noise=False, dtype=trainer.dtype)
    with torch.no_grad():
        path = interpolate(model, x[:pairs], x[pairs:], steps=steps)  # (steps, pairs, C, H, W)
    strip = quantize(path.transpose(0, 1).reshape(-1, *x.shape[1:]), config.data.n_bits)
    interpolation = save_png(out / "interpolation.png", make_grid(upscale(strip), nrow=steps))
    minutes = (time.perf_counter() - start) / 60
    n_test = result["evaluation"].n_images
    print(
        f"test bits/dim: {result['test_bpd']:.3f} +- {result['test_bpd_sem']:.3f} "
        f"(standard error, {n_test} test digits, EMA weights)"
    )
    print(f"samples (rows: temperature {', '.join(map(str, TEMPERATURES))}): {samples}")
    print(f"interpolations (rows: pairs of test digits): {interpolation}")
    print(f"checkpoint: {result['checkpoint']}  (glowlab sample {out} --sweep --out more.png)")
    print(f"log: {out / 'log.jsonl'}; finished in {minutes:.1f} min")
    return 0
