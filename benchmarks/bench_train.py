"""Training throughput: images/s per batch size, precision and memory mode.

One training step is forward, backward and an Adamax update on random 8-bit images, by
default the Trainer's (``glowlab.optim.Adamax``: the update is applied only if the loss and
the gradients are finite, decided on the device); ``--optimizer torch`` times
``torch.optim.Adamax``'s unconditional update instead. The
achieved TFLOP/s is the FLOP count of one standard fp32 step (matmuls and convolutions, by
``torch.utils.flop_counter.FlopCounterMode``) divided by the measured step time, so the
memory-saving modes, which recompute, are charged only for the model's useful work. The
ceiling is a large square matmul timed by this script in the same precision.

Examples:
    python benchmarks/bench_train.py                      # CPU: small Glow, batch 16 and 32
    python benchmarks/bench_train.py --device cuda --model glow-cifar10 \\
        --batch-sizes 64,128,256,512 --precisions fp32,tf32,bf16 --json train.json

With ``--cuda-graphs`` each setting's step is recorded once as a CUDA graph
(``glowlab.speed.GraphedCall``, after three steps of warmup) and the replays are timed: the
CPU then launches one graph per step instead of every kernel.

The same settings in a full training run are ``glowlab train`` options
(``train.precision``, ``train.compile``, ``train.channels_last``, ``train.memory_mode``);
see ``docs/benchmarks.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from common import (
    MEMORY_MODES,
    add_speed_options,
    apply_speed_options,
    base_parser,
    build_model,
    check_precision,
    csv_list,
    guarded_step,
    matmul_tflops,
    median_seconds,
    parse,
    precision_context,
    random_images,
    release,
    report,
    speed_settings,
)
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from glowlab.models.base import FlowModel
from glowlab.optim import Adamax, FlatOptimizer
from glowlab.speed import GraphedCall


def bits_per_dim_loss(model: FlowModel, x: Tensor) -> Tensor:
    """Mean negative log-likelihood in bits per dimension (the 8-bit dequantization offset
    is a constant and left out)."""
    return -model.log_prob(x).mean() / (model.dims * math.log(2))


def training_step(
    model: FlowModel, optimizer: torch.optim.Optimizer, x: Tensor, precision: str
) -> Callable[[], Tensor | None]:
    def backward(x: Tensor) -> Tensor:
        # The backward pass too: it runs convolutions (TF32 or not), and the memory-saving
        # modes run the coupling networks again there (in bfloat16 for bf16).
        with precision_context(precision, model):
            loss = bits_per_dim_loss(model, x)
            loss.backward()
        return loss

    if isinstance(optimizer, FlatOptimizer):  # the Trainer's step
        guarded = guarded_step(optimizer, backward)
        return lambda: guarded(x)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        backward(x)
        optimizer.step()

    return step


def step_flops(model: FlowModel, x: Tensor) -> int:
    """FLOPs of one standard fp32 forward and backward pass on ``x``."""
    model.set_memory_mode("standard")
    with FlopCounterMode(display=False) as counter:
        bits_per_dim_loss(model, x).backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--batch-sizes",
        type=csv_list(int),
        default=None,
        help="default: 16,32 on CPU; 64,128,256,512 on CUDA",
    )
    parser.add_argument(
        "--precisions",
        type=csv_list(str),
        default=None,
        help="fp32, tf32 (CUDA), bf16; default: fp32 on CPU, all three on CUDA",
    )
    parser.add_argument(
        "--memory-modes",
        type=csv_list(str, MEMORY_MODES, "memory mode"),
        default=list(MEMORY_MODES),
    )
    parser.add_argument(
        "--optimizer",
        choices=["glowlab", "torch"],
        default="glowlab",
        help="glowlab: the Trainer's guarded Adamax (default); torch: torch.optim.Adamax",
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per setting")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per setting (median)")
    parser.add_argument(
        "--matmul-size",
        type=int,
        default=None,
        help="side of the ceiling matmul (default 1024 on CPU, 8192 on CUDA)",
    )
    add_speed_options(parser)
    args, device = parse(parser, argv)
    cuda = device.type == "cuda"
    batch_sizes = args.batch_sizes or ([64, 128, 256, 512] if cuda else [16, 32])
    precisions = args.precisions or (["fp32", "tf32", "bf16"] if cuda else ["fp32"])
    matmul_size = args.matmul_size or (8192 if cuda else 1024)
    for precision in precisions:
        if (why := check_precision(precision, device)) is not None:
            parser.error(why)

    model = build_model(args.model, device)
    model.train()
    if args.optimizer == "glowlab":
        optimizer: torch.optim.Optimizer = Adamax(model.parameters(), lr=1e-4)
    else:  # torch.optim refuses to be recorded in a CUDA graph unless it is capturable
        optimizer = torch.optim.Adamax(model.parameters(), lr=1e-4, capturable=args.cuda_graphs)
    generator = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        model.log_prob(random_images(model.image_shape, batch_sizes[0], device, generator))
    layout = apply_speed_options(args, model, device)
    ceilings = {p: matmul_tflops(p, device, matmul_size) for p in precisions}

    rows = []
    for batch in batch_sizes:
        x = layout(random_images(model.image_shape, batch, device, generator))
        flops = step_flops(model, x)
        for precision in precisions:
            for mode in args.memory_modes:
                model.set_memory_mode(mode)  # type: ignore[arg-type]
                step = training_step(model, optimizer, x, precision)
                if args.cuda_graphs:
                    step = GraphedCall(step, device=device)
                seconds = median_seconds(step, device, args.warmup, args.repeats)
                del step
                release(device)  # a CUDA graph's memory pool, before the next setting
                tflops = flops / seconds / 1e12
                rows.append({
                    "batch": batch, "precision": precision, "memory_mode": mode,
                    "step_ms": 1e3 * seconds, "images_per_s": batch / seconds,
                    "gflop_per_step": flops / 1e9, "tflop_per_s": tflops,
                    "matmul_ceiling_tflop_per_s": ceilings[precision],
                    "fraction_of_ceiling": tflops / ceilings[precision],
                })  # fmt: skip
                print(f"  batch {batch:4d} {precision:5s} {mode:10s} {batch / seconds:9.1f} img/s")
        model.set_memory_mode("standard")

    columns = ["batch", "precision", "memory_mode", "step_ms", "images_per_s", "gflop_per_step",
               "tflop_per_s", "matmul_ceiling_tflop_per_s", "fraction_of_ceiling"]  # fmt: skip
    report(
        args,
        device,
        rows,
        columns,
        **speed_settings(args, device),
        matmul_size=matmul_size,
    )


if __name__ == "__main__":
    main()
