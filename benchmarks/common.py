"""What the benchmark scripts share: model configs, devices, precisions, timing, reporting.

Every script is run from the repository root as ``python benchmarks/<script>.py``; this
module is imported as ``common`` from the scripts' own directory.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import gc
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import glowlab
from glowlab.models.base import FlowModel
from glowlab.optim import FlatOptimizer
from glowlab.speed import (
    autocast,
    channels_last_input,
    compile_flow_steps,
    keep_freed_memory_for,
    tf32,
    to_channels_last,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20

#: Model configurations by name: the papers' Glow models and small ones for CPU runs.
MODEL_CONFIGS: dict[str, dict[str, Any]] = {
    "glow-cifar10": dict(
        image_shape=(3, 32, 32), levels=3, steps=32, hidden_channels=512, coupling="affine",
        permutation="conv1x1_lu", learn_top=True,
    ),
    "glow-mnist": dict(
        image_shape=(1, 28, 28), levels=2, steps=32, hidden_channels=512, coupling="affine",
        permutation="conv1x1_lu", learn_top=True,
    ),
    "small": dict(
        image_shape=(3, 32, 32), levels=3, steps=8, hidden_channels=64, coupling="affine",
        permutation="conv1x1_lu", learn_top=True,
    ),
    "small-mnist": dict(
        image_shape=(1, 28, 28), levels=2, steps=8, hidden_channels=64, coupling="affine",
        permutation="conv1x1_lu", learn_top=True,
    ),
}  # fmt: skip

PRECISIONS = ("fp32", "tf32", "bf16")
MEMORY_MODES = ("standard", "invertible", "checkpoint")


# -- command line ------------------------------------------------------------------------------
def base_parser(description: str) -> argparse.ArgumentParser:
    """A parser with the options every script takes: device, model, JSON output, threads."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument(
        "--model",
        default=None,
        choices=sorted(MODEL_CONFIGS),
        help="model config (default: 'small' on CPU, 'glow-cifar10' on CUDA)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--keep-freed-memory",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="glowlab.speed.keep_freed_memory: the C allocator keeps freed memory for reuse "
        "(default: on for CPU, as glowlab train does)",
    )
    return parser


def add_speed_options(
    parser: argparse.ArgumentParser, training: bool = True, cuda_graphs: bool = True
) -> None:
    """``--channels-last`` / ``--no-channels-last``, ``--compile``, for training
    ``--batch-folds`` / ``--no-batch-folds``, and ``--cuda-graphs`` (checked by
    :func:`parse`).

    The default layout is ``glowlab train``'s for training (channels-last on the CPU) and
    the plain one for sampling, which ``glowlab sample`` uses.
    """
    default = "on for CPU (as glowlab train does), off for CUDA" if training else "off"
    parser.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None if training else False,
        help=f"weights and inputs channels-last (NHWC); default: {default}",
    )
    parser.add_argument("--compile", action="store_true", help="glowlab.speed.compile_flow_steps")
    if training:
        parser.add_argument(
            "--batch-folds",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="compute the folded 1x1 weights of a level together (FlowSequential."
            "batch_folds); --no-batch-folds: each pair its own",
        )
    if cuda_graphs:
        parser.add_argument(
            "--cuda-graphs",
            action="store_true",
            help="record each timed call once as a CUDA graph and replay it "
            "(glowlab.speed.GraphedCall; CUDA only)",
        )


def use_channels_last(args: argparse.Namespace, device: torch.device) -> bool:
    """The layout ``--channels-last`` asks for, with ``glowlab train``'s default."""
    return args.channels_last if args.channels_last is not None else device.type == "cpu"


def speed_settings(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """The speed options a run used, for its report: compiled, CUDA graphs, layout."""
    return {
        "compiled": args.compile,
        "batch_folds": getattr(args, "batch_folds", True),
        "cuda_graphs": getattr(args, "cuda_graphs", False),
        "channels_last": use_channels_last(args, device),
        "keep_freed_memory": args.keep_freed_memory,
    }


def apply_speed_options(
    args: argparse.Namespace, model: FlowModel, device: torch.device
) -> Callable[[Tensor], Tensor]:
    """Apply ``--channels-last``, ``--batch-folds`` and ``--compile`` to ``model`` (after its
    ActNorm init).

    Returns the function that puts an input batch in the chosen layout.
    """
    channels_last = use_channels_last(args, device)
    for level in model.levels:
        level.flow.batch_folds = getattr(args, "batch_folds", True)
    if channels_last:
        to_channels_last(model)
    if args.compile:
        compile_flow_steps(model)
    return channels_last_input if channels_last else lambda x: x


def csv_list(
    kind: Callable[[str], Any], choices: Sequence[Any] | None = None, what: str = "value"
) -> Callable[[str], list[Any]]:
    """An argparse type for comma-separated values: ``"16,32"`` -> ``[16, 32]``; with
    ``choices``, a value outside them is a usage error naming ``what`` it is."""

    def parse(text: str) -> list[Any]:
        values = [kind(item) for item in text.split(",") if item]
        for value in values:
            if choices is not None and value not in choices:
                raise argparse.ArgumentTypeError(
                    f"unknown {what} {value!r}; choose from {', '.join(map(str, choices))}"
                )
        return values

    return parse


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for, but CUDA is not available")
    return device


def parse(
    parser: argparse.ArgumentParser,
    argv: list[str] | None,
    default_cpu_model: str | Callable[[argparse.Namespace], str] = "small",
) -> tuple[argparse.Namespace, torch.device]:
    """Parse ``argv`` and :func:`setup`; ``default_cpu_model`` may depend on the arguments.

    Refuses ``--cuda-graphs`` without a CUDA device (exit code 2).
    """
    args = parser.parse_args(argv)
    model = default_cpu_model(args) if callable(default_cpu_model) else default_cpu_model
    device = setup(args, model)
    if getattr(args, "cuda_graphs", False) and device.type != "cuda":
        parser.error("--cuda-graphs needs a CUDA device (--device cuda)")
    return args, device


def setup(args: argparse.Namespace, default_cpu_model: str = "small") -> torch.device:
    """Apply ``--threads``, ``--seed`` and ``--keep-freed-memory``; pick the device and the
    default model."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = resolve_device(args.device)
    # Recorded as whether the setting took effect (it needs glibc).
    args.keep_freed_memory = keep_freed_memory_for(device, args.keep_freed_memory)
    if args.model is None:
        args.model = default_cpu_model if device.type == "cpu" else "glow-cifar10"
    return device


# -- models and data ---------------------------------------------------------------------------
def build_model(name: str, device: torch.device, **overrides: Any) -> FlowModel:
    """A float32 Glow of config ``name`` with ``overrides``, built directly on ``device``."""
    config = {**MODEL_CONFIGS[name], **overrides}
    shape = tuple(config.pop("image_shape"))
    with torch.device(device):
        return glowlab.Glow(shape, **config)  # type: ignore[arg-type]


def random_pixels(
    shape: Sequence[int], batch: int, device: torch.device, generator: torch.Generator | None = None
) -> Tensor:
    """Random 8-bit images ``(batch, *shape)``, uint8, on ``device``."""
    pixels = torch.randint(0, 256, (batch, *shape), dtype=torch.uint8, generator=generator)
    return pixels.to(device)


def random_images(
    shape: Sequence[int], batch: int, device: torch.device, generator: torch.Generator | None = None
) -> Tensor:
    """Dequantized random 8-bit images ``(batch, *shape)`` in [-0.5, 0.5), float32."""
    pixels = random_pixels(shape, batch, torch.device("cpu"), generator)
    return glowlab.dequantize(pixels, dtype=torch.float32, generator=generator).to(device)


def guarded_step(
    optimizer: FlatOptimizer, backward: Callable[[Tensor], Tensor]
) -> Callable[..., Tensor]:
    """A training step as the Trainer takes it, for ``backward(x)``, which returns the loss
    after its backward pass: the gradients' norm clipped, then the update applied only if
    the loss and the gradients are finite (and ``valid``, a boolean tensor, when given),
    decided on the device without a host synchronisation.

    The step is ``step(x, valid=None)`` and returns the loss, or NaN where the update was
    rejected. It sets the gradients to ``None`` first, so a CUDA graph of it allocates them
    in its own pool.
    """

    def step(x: Tensor, valid: Tensor | None = None) -> Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = backward(x).detach()
        optimizer.clip_grad_norm_()
        finite = torch.isfinite(loss)
        applied = optimizer.step(valid=finite if valid is None else valid & finite)
        return torch.where(applied, loss, math.nan)

    return step


def peak_step_memory_gib(step: Callable[[], Any], device: torch.device) -> float:
    """Peak CUDA memory allocated during one call of ``step``, in GiB, after a first call
    (which creates the optimizer's state)."""
    step()
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**30


def release(device: torch.device) -> None:
    """Free what the last measurement left behind (a CUDA graph keeps its memory pool)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# -- precision ---------------------------------------------------------------------------------
def check_precision(precision: str, device: torch.device) -> str | None:
    """Why ``precision`` cannot run on ``device``, or ``None`` when it can."""
    if precision not in PRECISIONS:
        return f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}"
    if precision == "tf32" and device.type != "cuda":
        return "tf32 exists on CUDA only"
    return None


@contextmanager
def precision_context(precision: str, model: FlowModel) -> Iterator[None]:
    """fp32: plain float32 (TF32 off); tf32: TF32 matmuls and convolutions (CUDA);
    bf16: coupling networks under bfloat16 autocast, likelihood in float32
    (:func:`glowlab.speed.autocast`)."""
    with tf32(precision == "tf32"), autocast(model, torch.bfloat16, enabled=precision == "bf16"):
        yield


def matmul_tflops(precision: str, device: torch.device, size: int, repeats: int = 5) -> float:
    """Measured TFLOP/s of a ``size x size`` matmul in ``precision``: the ceiling to compare to."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    with tf32(precision == "tf32"):
        seconds = median_seconds(lambda: a @ b, device, warmup=2, repeats=repeats)
    return 2 * size**3 / seconds / 1e12


# -- timing ------------------------------------------------------------------------------------
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(
    fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int
) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def median_seconds(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> float:
    return statistics.median(time_calls(fn, device, warmup, repeats))


# -- reporting ---------------------------------------------------------------------------------
def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def hardware_description(device: torch.device) -> str:
    """One line: the GPU, or the CPU model with its usable cores and torch's thread count."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name}, {props.total_memory / 2**30:.0f} GiB"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu_model()}, {cores} cores usable, {torch.get_num_threads()} torch threads"


def environment(device: torch.device) -> dict[str, Any]:
    """Date, hardware and software versions, for the JSON output."""
    return {
        "date": _dt.date.today().isoformat(),
        "hardware": hardware_description(device),
        "device": str(device),
        "torch": torch.__version__,
        "glowlab": glowlab.__version__,
        "python": platform.python_version(),
    }


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """Print ``rows`` as an aligned text table (also valid Markdown)."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
        return "-" if value is None else str(value)

    table = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in table)) for i, c in enumerate(columns)]
    print("| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in table:
        print("| " + " | ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) + " |")


def report(
    args: argparse.Namespace,
    device: torch.device,
    rows: Sequence[dict[str, Any]],
    columns: Sequence[str],
    **extra: Any,
) -> None:
    """Print the environment and the table; write everything to ``--json`` if given."""
    env = environment(device)
    print(f"# {env['date']}  {env['hardware']}  torch {env['torch']}  model {args.model}")
    for key, value in extra.items():
        print(f"# {key}: {value}")
    print_table(rows, columns)
    write_json(args, {"environment": env, **extra, "results": rows})


def write_json(args: argparse.Namespace, payload: dict[str, Any]) -> None:
    """Write ``payload`` and the arguments to ``--json``, if it was given."""
    if args.json is not None:
        payload = {"environment": payload.get("environment"), "args": jsonable(vars(args)),
                   **payload}  # fmt: skip
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        print(f"# wrote {args.json}")


def jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in values.items()}
