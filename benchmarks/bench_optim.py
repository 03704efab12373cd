"""Optimizer step time: torch.optim's Adamax against glowlab.optim's, guarded and not.

Times ``optimizer.step()`` alone on a model's parameters with random gradients (the
gradients are set before each timed call, outside the clock): ``torch.optim.Adamax`` with
its default multi-tensor path, ``glowlab.optim.Adamax`` unguarded (``step()``), and guarded
as the Trainer steps (``clip_grad_norm_()`` then ``step(valid=...)``, the update decided on
the device). On CUDA the clock includes a synchronisation after each call, so the figures
are the device time of one step; the host synchronisation that the guard saves inside a
training loop is not what this measures (see bench_train.py and docs/training.md).

Examples:
    python benchmarks/bench_optim.py                        # CPU: the small Glow
    python benchmarks/bench_optim.py --device cuda --model glow-cifar10 --json optim.json
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch
from common import base_parser, build_model, parse, report, time_calls

from glowlab.optim import Adamax


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per optimizer")
    parser.add_argument("--repeats", type=int, default=30, help="timed steps (median)")
    args, device = parse(parser, argv)
    model = build_model(args.model, device)
    params = list(model.parameters())
    grads = [torch.randn_like(p) for p in params]
    valid = torch.ones((), dtype=torch.bool, device=device)

    def stepper(optimizer: torch.optim.Optimizer, guarded: bool) -> Callable[[], None]:
        def step() -> None:
            if guarded:
                optimizer.clip_grad_norm_()  # type: ignore[attr-defined]
                optimizer.step(valid=valid)  # type: ignore[call-arg]
            else:
                optimizer.step()

        return step

    settings = [
        ("torch.optim.Adamax", lambda: torch.optim.Adamax(params, lr=1e-6), False),
        ("glowlab Adamax", lambda: Adamax(params, lr=1e-6), False),
        ("glowlab Adamax, guarded", lambda: Adamax(params, lr=1e-6), True),
    ]
    rows = []
    for name, make, guarded in settings:
        step = stepper(make(), guarded)
        times = []
        for i in range(args.warmup + args.repeats):
            for p, g in zip(params, grads, strict=True):
                p.grad = g.clone()  # outside the clock: time_calls synchronises first
            seconds = time_calls(step, device, warmup=0, repeats=1)[0]
            if i >= args.warmup:
                times.append(seconds)
        rows.append({"optimizer": name, "step_ms": 1e3 * statistics.median(times)})
        print(f"  {name:26s} {rows[-1]['step_ms']:8.3f} ms")
    n = sum(p.numel() for p in params)
    report(args, device, rows, ["optimizer", "step_ms"], tensors=len(params), parameters=n)


if __name__ == "__main__":
    main()
