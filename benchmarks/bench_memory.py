"""Training memory per batch size and memory mode, with the step time it costs.

On CUDA the figure is ``torch.cuda.max_memory_allocated`` over one training step (weights,
gradients, the state and gathered gradients of the Trainer's Adamax (``glowlab.optim``),
activations and backward temporaries). On a CPU there is no such
counter: the figure is then the bytes of the activations autograd saves for the backward
pass (``glowlab.memory.saved_activation_bytes``), labelled ``saved_activations_MiB``; it
leaves out the weights, gradients, optimizer state and temporaries. The step time is the
median of ``--repeats`` steps, and ``time_vs_standard`` divides it by the standard mode's
step time at the same batch size.

Examples:
    python benchmarks/bench_memory.py                     # CPU: small Glow, batch 16 and 32
    python benchmarks/bench_memory.py --device cuda --model glow-cifar10 \\
        --batch-sizes 64,128,256 --json memory.json
"""

from __future__ import annotations

import torch
from bench_train import bits_per_dim_loss, training_step
from common import (
    MEMORY_MODES,
    MIB,
    PRECISIONS,
    add_speed_options,
    apply_speed_options,
    base_parser,
    build_model,
    check_precision,
    csv_list,
    median_seconds,
    parse,
    peak_step_memory_gib,
    precision_context,
    random_images,
    report,
    speed_settings,
)

from glowlab.memory import saved_activation_bytes
from glowlab.optim import Adamax


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--batch-sizes",
        type=csv_list(int),
        default=None,
        help="default: 16,32 on CPU; 64,128,256 on CUDA",
    )
    parser.add_argument(
        "--memory-modes",
        type=csv_list(str, MEMORY_MODES, "memory mode"),
        default=list(MEMORY_MODES),
    )
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timed steps (0: no timing)")
    add_speed_options(parser, cuda_graphs=False)
    args, device = parse(parser, argv)
    cuda = device.type == "cuda"
    batch_sizes = args.batch_sizes or ([64, 128, 256] if cuda else [16, 32])
    if (why := check_precision(args.precision, device)) is not None:
        parser.error(why)

    model = build_model(args.model, device)
    optimizer = Adamax(model.parameters(), lr=1e-4)  # the Trainer's: its buffers count
    generator = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        model.log_prob(random_images(model.image_shape, batch_sizes[0], device, generator))
    layout = apply_speed_options(args, model, device)

    rows = []
    for batch in batch_sizes:
        x = layout(random_images(model.image_shape, batch, device, generator))
        standard_seconds = None
        for mode in args.memory_modes:
            model.set_memory_mode(mode)  # type: ignore[arg-type]
            step = training_step(model, optimizer, x, args.precision)
            row: dict[str, object] = {
                "batch": batch,
                "precision": args.precision,
                "memory_mode": mode,
            }
            if cuda:
                row["peak_allocated_GiB"] = peak_step_memory_gib(step, device)
            else:
                with precision_context(args.precision, model):
                    saved = saved_activation_bytes(
                        lambda x=x: bits_per_dim_loss(model, x), exclude=model
                    )
                row["saved_activations_MiB"] = saved / MIB
            if args.repeats > 0:
                seconds = median_seconds(step, device, args.warmup, args.repeats)
                row["step_ms"] = 1e3 * seconds
                if mode == "standard":
                    standard_seconds = seconds
                if standard_seconds is not None:
                    row["time_vs_standard"] = seconds / standard_seconds
            rows.append(row)
            print(f"  batch {batch:4d} {mode:10s} done")
        model.set_memory_mode("standard")

    memory = "peak_allocated_GiB" if cuda else "saved_activations_MiB"
    columns = ["batch", "precision", "memory_mode", memory, "step_ms", "time_vs_standard"]
    what = (
        "torch.cuda.max_memory_allocated over one training step"
        if cuda
        else "bytes of activations saved for backward (CPU proxy; excludes weights, grads, "
        "optimizer state and temporaries)"
    )
    report(
        args,
        device,
        rows,
        columns,
        memory_measure=what,
        **speed_settings(args, device),
    )


if __name__ == "__main__":
    main()
