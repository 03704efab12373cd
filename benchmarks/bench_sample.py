"""Sampling latency: the time to draw ``--n`` images (32) at temperature ``--temperature`` (0.7).

The model is in evaluation mode with its weights as initialised (sampling costs the same
whatever the weights); ActNorm is initialised on random images first. After ``--warmup``
untimed calls (which also fill the cached inverses of the 1x1 convolutions), the median,
10th and 90th percentile of ``--repeats`` calls are reported.

Examples:
    python benchmarks/bench_sample.py                     # CPU: small Glow
    python benchmarks/bench_sample.py --device cuda --model glow-cifar10 --precision tf32
    python benchmarks/bench_sample.py --device cuda --model glow-cifar10 --cuda-graphs

With ``--cuda-graphs`` the call is recorded once as a CUDA graph (``glowlab.speed.GraphedCall``)
and the replays are timed.
"""

from __future__ import annotations

import statistics

import torch
from common import (
    PRECISIONS,
    add_speed_options,
    apply_speed_options,
    base_parser,
    build_model,
    check_precision,
    parse,
    precision_context,
    random_images,
    report,
    speed_settings,
    time_calls,
)
from torch import Tensor

from glowlab.speed import GraphedCall


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32, help="images per call")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    add_speed_options(parser, training=False)
    args, device = parse(parser, argv)
    if (why := check_precision(args.precision, device)) is not None:
        parser.error(why)

    model = build_model(args.model, device)
    generator = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        model.log_prob(random_images(model.image_shape, 16, device, generator))
    model.eval()
    apply_speed_options(args, model, device)

    def sample() -> Tensor:
        with precision_context(args.precision, model):
            return model.sample(args.n, temperature=args.temperature)

    if args.cuda_graphs:  # recorded after the cached inverses are filled (the warmup)
        sample = GraphedCall(sample, device=device)  # type: ignore[assignment]

    times = sorted(time_calls(sample, device, args.warmup, args.repeats))
    ms = [1e3 * t for t in times]
    deciles = statistics.quantiles(ms, n=10) if len(ms) > 1 else [ms[0]] * 9
    rows = [{
        "n": args.n, "temperature": args.temperature, "precision": args.precision,
        "median_ms": statistics.median(ms), "p10_ms": deciles[0], "p90_ms": deciles[-1],
        "images_per_s": args.n / (statistics.median(ms) / 1e3),
    }]  # fmt: skip
    columns = ["n", "temperature", "precision", "median_ms", "p10_ms", "p90_ms", "images_per_s"]
    report(
        args,
        device,
        rows,
        columns,
        **speed_settings(args, device),
        repeats=args.repeats,
    )


if __name__ == "__main__":
    main()
