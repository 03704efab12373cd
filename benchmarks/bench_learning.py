"""Learning speed: train for a fixed wall-clock time, then bits/dim on the full test set.

The protocol: the training set is loaded into memory (on the device) and ActNorm's
data-dependent init runs on ``--init-batch`` training images before the clock starts
(with ``--compile``, so does the compilation: one forward and backward pass that changes
no weight); the clock then counts training steps only (sampling a batch, dequantizing it,
forward, backward, the Trainer's Adamax update with a linear learning-rate warmup, which
skips a non-finite step on the device), not model building,
data loading or evaluation. The loop reads the loss back every ``--sync-every`` steps, so
the GPU is not stalled after each step; the clock stops at the first such read-back after
``--seconds``. The model is then put in evaluation mode and the bits/dim of every test
image is computed (uniform dequantization noise, fixed seed). This is a plain loop,
independent of ``glowlab.train``, so that the figure measures the model and its layers.
With ``--cuda-graphs`` the step (forward, backward and update) is recorded once as a CUDA
graph before the clock starts (``glowlab.speed.GraphedCall``; its warmup calls reject
their updates, so no weight moves), and the schedule sets the learning rate by filling a
tensor; sampling and dequantizing the batch stay outside the graph.

Data: ``--data-dir`` holds ``mnist/{train,test}.npz`` and ``cifar10/{train_0..4,test}.npz``
(arrays ``images`` uint8 NHWC and ``labels``).

Examples:
    python benchmarks/bench_learning.py --dataset mnist --seconds 60      # CPU, small model
    python benchmarks/bench_learning.py --device cuda --dataset cifar10 --seconds 200 \\
        --model glow-cifar10 --batch-size 64 --precision tf32 --json learning-cifar10.json
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import (
    MEMORY_MODES,
    MODEL_CONFIGS,
    PRECISIONS,
    REPO_ROOT,
    add_speed_options,
    apply_speed_options,
    base_parser,
    build_model,
    check_precision,
    guarded_step,
    parse,
    precision_context,
    report,
    speed_settings,
    synchronize,
)
from torch import Tensor

import glowlab
from glowlab.metrics import bits_per_dim_from_log_prob
from glowlab.optim import Adamax
from glowlab.speed import GraphedCall

DATASETS = {"mnist": ["train"], "cifar10": [f"train_{k}" for k in range(5)]}
IMAGE_SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}


def add_data_options(parser: argparse.ArgumentParser, default_dataset: str, seconds: str) -> None:
    """The options of the learning-speed protocol: data, training time, read-backs, test set."""
    parser.add_argument("--dataset", choices=sorted(DATASETS), default=default_dataset)
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=REPO_ROOT.parent / "shared" / "data",
        help="folder with mnist/ and cifar10/ (default: ../shared/data from the repository root)",
    )
    parser.add_argument("--seconds", type=float, default=None, help=seconds)
    parser.add_argument(
        "--sync-every",
        type=int,
        default=10,
        help="steps between loss read-backs (and clock checks)",
    )
    parser.add_argument("--eval-batch", type=int, default=500)
    parser.add_argument(
        "--test-limit",
        type=int,
        default=None,
        help="evaluate on the first N test images only (default: all)",
    )


def check_data_options(
    parser: argparse.ArgumentParser, args: argparse.Namespace, image_shape: tuple[int, ...]
) -> None:
    if args.sync_every < 1:
        parser.error("--sync-every must be at least 1")
    if args.seconds is not None and not args.seconds > 0:
        parser.error(f"--seconds must be > 0, got {args.seconds}")
    if IMAGE_SHAPES[args.dataset] != tuple(image_shape):
        parser.error(f"model {args.model} expects images {tuple(image_shape)}, {args.dataset} "
                     f"has {IMAGE_SHAPES[args.dataset]}")  # fmt: skip


def load_data(args: argparse.Namespace, device: torch.device) -> tuple[Tensor, Tensor]:
    """The training set and the (``--test-limit``) test set, uint8, on ``device``."""
    train = load_split(args.data_dir, args.dataset, "train").to(device)
    test = load_split(args.data_dir, args.dataset, "test").to(device)
    return train, test[: args.test_limit] if args.test_limit else test


def load_split(data_dir: Path, dataset: str, split: str) -> Tensor:
    """uint8 images ``(N, C, H, W)`` of ``dataset``'s ``split`` ("train" or "test")."""
    names = DATASETS[dataset] if split == "train" else ["test"]
    paths = [data_dir / dataset / f"{name}.npz" for name in names]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise SystemExit(f"dataset files not found: {', '.join(missing)}; pass --data-dir")
    arrays = [np.load(p)["images"] for p in paths]
    return torch.from_numpy(np.concatenate(arrays)).permute(0, 3, 1, 2).contiguous()


@dataclass
class Trained:
    """What :func:`train_for` did: ``steps`` steps in ``seconds`` of training, and each
    step's loss in order (NaN where the update was rejected)."""

    steps: int
    seconds: float
    losses: list[float]


def train_for(
    seconds: float,
    step: Callable[[int], Tensor],
    sync_every: int,
    device: torch.device,
    on_read_back: Callable[[int, float, list[float]], None] | None = None,
) -> Trained:
    """The protocol's clock: ``step(i)`` takes training step ``i`` (from 0) and returns its
    loss without reading it back; the losses are read back every ``sync_every`` steps (the
    steps are then done), and the clock stops at the first read-back after ``seconds``.

    ``on_read_back(steps, seconds, losses)`` sees each read-back's losses, on the clock.
    """
    pending: list[Tensor] = []
    losses: list[float] = []
    steps, trained = 0, 0.0
    synchronize(device)
    start = time.perf_counter()
    while trained < seconds:
        pending.append(step(steps))
        steps += 1
        if steps % sync_every:
            continue
        values = torch.stack(pending).tolist()  # a host synchronisation
        trained = time.perf_counter() - start
        pending.clear()
        losses += values
        if on_read_back is not None:
            on_read_back(steps, trained, values)
    return Trained(steps, trained, losses)


def set_learning_rate(group: dict[str, Any], rate: float) -> None:
    """Set a parameter group's learning rate. A tensor rate is filled in place: a recorded
    step (``--cuda-graphs``) reads it on the device."""
    if isinstance(group["lr"], Tensor):
        group["lr"].fill_(rate)
    else:
        group["lr"] = rate


@torch.no_grad()
def test_bits_per_dim(
    model: glowlab.Glow,
    images: Tensor,
    batch: int,
    n_bits: int,
    precision: str,
    seed: int,
    layout: Callable[[Tensor], Tensor] = lambda x: x,
) -> float:
    model.eval()
    generator = torch.Generator(images.device).manual_seed(seed)
    total = 0.0
    for start in range(0, images.shape[0], batch):
        chunk = images[start : start + batch]
        x = glowlab.dequantize(chunk, n_bits, dtype=torch.float32, generator=generator)
        with precision_context(precision, model):
            log_prob = model.log_prob(layout(x))
        total += float(bits_per_dim_from_log_prob(log_prob, model.dims, n_bits).double().sum())
    model.train()
    return total / images.shape[0]


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.splitlines()[0])
    add_data_options(parser, "mnist", "training time (default: 60 on CPU, 200 on CUDA)")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="default: 32 on CPU, 64 on CUDA"
    )
    parser.add_argument("--lr", type=float, default=1e-3, help="Adamax learning rate")
    parser.add_argument(
        "--warmup-steps",
        type=int,
        default=None,
        help="linear learning-rate warmup (default: 50 on CPU, 500 on CUDA)",
    )
    parser.add_argument("--n-bits", type=int, default=8)
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS)
    parser.add_argument("--memory-mode", default="standard", choices=MEMORY_MODES)
    parser.add_argument("--init-batch", type=int, default=256, help="images for ActNorm's init")
    add_speed_options(parser)
    args, device = parse(
        parser, argv, lambda args: "small-mnist" if args.dataset == "mnist" else "small"
    )
    if args.model == "glow-cifar10" and args.dataset == "mnist" and args.device == "auto":
        args.model = "glow-mnist"  # the CUDA default follows the dataset
    cuda = device.type == "cuda"
    seconds = args.seconds if args.seconds is not None else (200.0 if cuda else 60.0)
    batch = args.batch_size or (64 if cuda else 32)
    warmup_steps = args.warmup_steps if args.warmup_steps is not None else (500 if cuda else 50)
    if (why := check_precision(args.precision, device)) is not None:
        parser.error(why)
    check_data_options(parser, args, MODEL_CONFIGS[args.model]["image_shape"])

    train, test = load_data(args, device)

    model = build_model(args.model, device).set_memory_mode(args.memory_mode)
    generator = torch.Generator(device).manual_seed(args.seed)

    def batch_of(n: int) -> Tensor:
        idx = torch.randint(train.shape[0], (n,), device=device, generator=generator)
        return glowlab.dequantize(train[idx], args.n_bits, dtype=torch.float32, generator=generator)

    with torch.no_grad(), precision_context(args.precision, model):
        model.log_prob(batch_of(min(args.init_batch, train.shape[0])))  # ActNorm's init
    layout = apply_speed_options(args, model, device)
    # A graphed step reads its learning rate from a tensor, which the schedule fills in place.
    lr = torch.tensor(args.lr, device=device) if args.cuda_graphs else args.lr
    optimizer = Adamax(model.parameters(), lr=lr)
    offset = args.n_bits * math.log(2) * model.dims  # log-likelihood of the discretization

    def loss_of(x: Tensor) -> Tensor:
        log_prob = model.log_prob(layout(x))
        return -(log_prob.mean() - offset) / (model.dims * math.log(2))

    def backward(x: Tensor) -> Tensor:
        """The loss of ``x``, after its backward pass, both in ``--precision`` (the
        memory-saving modes run the coupling networks again in the backward pass)."""
        with precision_context(args.precision, model):
            loss = loss_of(x)
            loss.backward()
        return loss

    train_step = guarded_step(optimizer, backward)  # the loss, or NaN for a rejected update
    if args.compile:  # compile before the clock starts; no optimizer step, so no weight moves
        backward(batch_of(batch))
        optimizer.zero_grad(set_to_none=True)
    yes = torch.ones((), dtype=torch.bool, device=device)
    step: Callable[[Tensor, Tensor], Tensor] = train_step
    if args.cuda_graphs:  # recorded before the clock starts; the warmup calls reject
        step = GraphedCall(train_step, batch_of(batch), torch.zeros_like(yes))

    def numbered_step(i: int) -> Tensor:
        for group in optimizer.param_groups:
            set_learning_rate(group, args.lr * min(1.0, (i + 1) / max(warmup_steps, 1)))
        loss = step(batch_of(batch), yes)
        return loss.clone() if args.cuda_graphs else loss  # a graph's output is reused

    rejected = 0

    def read_back(steps: int, trained: float, values: list[float]) -> None:
        nonlocal rejected
        rejected += sum(not math.isfinite(v) for v in values)
        if rejected > steps // 2:
            raise SystemExit(f"{rejected} of the first {steps} steps were non-finite")
        if steps % 50 < args.sync_every:
            print(f"  step {steps:6d}  {trained:7.1f} s  train bits/dim {values[-1]:.3f}")

    run = train_for(seconds, numbered_step, args.sync_every, device, read_back)
    steps, trained = run.steps, run.seconds
    losses = [v for v in run.losses if math.isfinite(v)]

    eval_start = time.perf_counter()
    test_bpd = test_bits_per_dim(
        model, test, args.eval_batch, args.n_bits, args.precision, 1234, layout
    )
    eval_seconds = time.perf_counter() - eval_start
    rows = [{
        "dataset": args.dataset, "model": args.model, "precision": args.precision,
        "batch": batch, "train_seconds": trained, "steps": steps, "rejected_steps": rejected,
        "images": steps * batch,
        "train_bpd_last50": statistics.mean(losses[-50:]), "test_images": test.shape[0],
        "test_bpd": test_bpd, "eval_seconds": eval_seconds,
    }]  # fmt: skip
    columns = ["dataset", "model", "precision", "batch", "train_seconds", "steps",
               "rejected_steps", "images",
               "train_bpd_last50", "test_images", "test_bpd", "eval_seconds"]  # fmt: skip
    report(
        args,
        device,
        rows,
        columns,
        lr=args.lr,
        warmup_steps=warmup_steps,
        **speed_settings(args, device),
    )


if __name__ == "__main__":
    main()
