"""Operations per training step: how many kernels an eager step launches.

Counts the ATen operations that one training step dispatches (forward, backward, and the
Trainer's guarded Adamax update), with PyTorch's Python dispatch mode:

* ``batch_ops``: operations on tensors of the batch (a tensor argument whose first
  dimension is the batch size): the convolutions, the couplings' element-wise work, the
  per-example log-determinants;
* ``small_ops``: operations on small tensors only: parameters, the folded 1x1 weights,
  the optimizer's update, scalars;
* ``views``: views and other operations that return an alias (no kernel).

On a GPU each counted operation other than a view launches at least one kernel, and in
eager mode each launch costs a few microseconds of host time whatever its size: a small
operation costs as much as a large one. A CUDA graph replays the same kernels (the launch
cost goes, the kernels' own time stays). The count depends on the model, not on the
device or the batch size; the default batch is 5 so that no parameter shape is taken for
a batch. ``--per-pair`` adds the rows of each folded (ActNorm, 1x1 convolution) pair
computing its own weights (``FlowSequential.batch_folds=False``) instead of all of a
level's at once.

Examples:
    python benchmarks/bench_ops.py --model glow-cifar10 --per-pair
    python benchmarks/bench_ops.py --model small --memory-modes standard,invertible
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from bench_train import training_step
from common import (
    MEMORY_MODES,
    base_parser,
    build_model,
    csv_list,
    parse,
    random_images,
    report,
)
from torch.utils._python_dispatch import TorchDispatchMode

from glowlab.optim import Adamax


class _CountOps(TorchDispatchMode):
    """Counts the operations dispatched inside the block, by kind (see the module doc)."""

    def __init__(self, batch: int) -> None:
        super().__init__()
        self.batch = batch
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        if _returns_alias(func):
            kind = "views"
        elif any(t.dim() >= 1 and t.shape[0] == self.batch for t in tensors):
            kind = "batch_ops"
        else:
            kind = "small_ops"
        self.counts[kind] += 1
        return out


def _returns_alias(func: Any) -> bool:
    """Whether ``func`` returns a view of an input (an alias it does not write to)."""
    return any(
        ret.alias_info is not None and not ret.alias_info.is_write for ret in func._schema.returns
    )


def count_step(step: Any, batch: int) -> Counter[str]:
    """The operations of one call of ``step``, by kind."""
    counter = _CountOps(batch)
    with counter:
        step()
    return counter.counts


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=5, help="images per step")
    parser.add_argument(
        "--memory-modes",
        type=csv_list(str, MEMORY_MODES, "memory mode"),
        default=["standard"],
        help="comma-separated",
    )
    parser.add_argument(
        "--per-pair",
        action="store_true",
        help="also count with each folded pair computing its own weights",
    )
    args, device = parse(parser, argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")

    model = build_model(args.model, device)
    model.train()
    optimizer = Adamax(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(args.seed)
    x = random_images(model.image_shape, args.batch_size, device, generator)
    with torch.no_grad():
        model.log_prob(x)  # ActNorm's data-dependent init, outside the count
    flows = [level.flow for level in model.levels]
    rows = []
    for batch_folds in [True, False] if args.per_pair else [True]:
        for flow in flows:
            flow.batch_folds = batch_folds
        for mode in args.memory_modes:
            model.set_memory_mode(mode)  # type: ignore[arg-type]
            step = training_step(model, optimizer, x, "fp32")
            step()  # the optimizer's state and flat buffers exist from here on
            counts = count_step(step, args.batch_size)
            rows.append({
                "memory_mode": mode, "folds": "batched" if batch_folds else "per pair",
                "ops": counts["batch_ops"] + counts["small_ops"],
                "batch_ops": counts["batch_ops"], "small_ops": counts["small_ops"],
                "views": counts["views"],
            })  # fmt: skip
    columns = ["memory_mode", "folds", "ops", "batch_ops", "small_ops", "views"]
    report(args, device, rows, columns, batch_size=args.batch_size)


if __name__ == "__main__":
    main()
