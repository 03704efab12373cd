"""Side by side: glowlab and other Glow implementations, measured by one protocol.

The other implementations run from checkouts given with ``--peer KIND=PATH`` (the kinds,
their input conventions and their training recipes are described in ``peers.py``); their
code is imported unchanged and runs with PyTorch's default settings (float32, TF32
convolutions on CUDA), eagerly, as their own scripts run it. glowlab runs in
``--precision`` with its speed options: ``--channels-last``, ``--compile``, and
``--cuda-graphs``, which records its training step and its sampling as CUDA graphs. All
build the same architecture (``--model``, ``--steps`` to shorten it) on the same device
and are measured one after the other, in the same process:

``train``
    Time of a training step on a fixed batch of random 8-bit images (forward, bits/dim,
    backward, the recipe's optimizer step), synchronised after every step, per batch
    size: images/s. The implementations are timed in ``--rounds`` interleaved rounds (in
    each, the median of ``--repeats`` steps after ``--warmup``), so that a machine whose
    speed drifts slows them all alike; a row gives the median of its rounds and their
    range.
``memory``
    On CUDA, ``torch.cuda.max_memory_allocated`` over one training step after a first one
    (so the optimizer state exists), per batch size; glowlab in each of ``--memory-modes``.
    On a CPU, the bytes of the activations saved for the backward pass
    (``glowlab.memory.saved_activation_bytes``).
``sample``
    Latency of drawing ``--n`` images at ``--temperature``, in interleaved rounds as
    ``train``. glowlab samples in NCHW unless ``--channels-last`` is given, as
    ``glowlab sample`` and ``bench_sample.py`` do.
``learning``
    ``bench_learning.py``'s protocol for each implementation: the data in memory on the
    device, ActNorm's init as the recipe does it, one forward and backward pass that changes
    no weight (with ``--compile``, glowlab compiles there), then ``--seconds`` of training with the
    recipe's optimizer and learning-rate schedule at batch ``--learning-batch`` (the loss
    is read back every ``--sync-every`` steps, where the clock is checked), then bits/dim
    on the test set. Batches are drawn at random from the training set, with no
    augmentation for anyone (y0ast's script translates and flips CIFAR-10 by default).

Every figure is bits/dim of the 8-bit data or a time; a peer that cannot build or run a
setting gets a row that says why.

Examples:
    python benchmarks/bench_peers.py --peer rosinality=../glow-pytorch \\
        --peer y0ast=../Glow-PyTorch --model glow-cifar10 --steps 2 --batch-sizes 8
    python benchmarks/bench_peers.py --device cuda --peer rosinality=.peers/rosinality \\
        --peer y0ast=.peers/y0ast --questions train,memory,sample \\
        --batch-sizes 64,256 --json peers.json
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from bench_learning import (
    add_data_options,
    check_data_options,
    load_data,
    set_learning_rate,
    train_for,
)
from common import (
    MEMORY_MODES,
    MIB,
    MODEL_CONFIGS,
    PRECISIONS,
    add_speed_options,
    apply_speed_options,
    base_parser,
    check_precision,
    csv_list,
    environment,
    median_seconds,
    parse,
    peak_step_memory_gib,
    print_table,
    random_pixels,
    release,
    speed_settings,
    write_json,
)
from peers import PEER_KINDS, Contender, GlowlabContender, Unsupported
from torch import Tensor

from glowlab.memory import saved_activation_bytes

QUESTIONS = ("train", "memory", "sample", "learning")


def peer_option(text: str) -> tuple[str, Path]:
    """``--peer KIND=PATH`` -> ``(kind, path)``, checked."""
    kind, sep, path = text.partition("=")
    if not sep or kind not in PEER_KINDS:
        raise argparse.ArgumentTypeError(
            f"expected KIND=PATH with KIND one of {', '.join(PEER_KINDS)}, got {text!r}"
        )
    folder = Path(path).expanduser()
    if not (folder / "model.py").is_file():
        raise argparse.ArgumentTypeError(f"{folder} is not a {kind} checkout (no model.py)")
    return kind, folder


class Field:
    """Builds each contender in turn on a clean device, for one question at a time."""

    def __init__(self, args: argparse.Namespace, device: torch.device) -> None:
        self.args = args
        self.device = device
        self.config = {**MODEL_CONFIGS[args.model]}
        if args.steps is not None:
            self.config["steps"] = args.steps
        self.described: dict[str, dict[str, Any]] = {}

    def names(self) -> list[str]:
        names = ["glowlab", *(kind for kind, _ in self.args.peer)]
        return [name for name in names if name in (self.args.implementations or names)]

    def build(self, name: str, memory_mode: str | None = None, sampling: bool = False) -> Contender:
        release(self.device)
        torch.manual_seed(self.args.seed)
        # glowlab's layouts: channels-last for training on a CPU, NCHW for sampling (as
        # glowlab train and glowlab sample do), unless --channels-last says otherwise.
        speed = self.args
        if sampling:
            speed = argparse.Namespace(
                **{**vars(speed), "channels_last": bool(speed.channels_last)}
            )
        if name == "glowlab":
            contender: Contender = GlowlabContender(
                self.config, self.device, self.args.model, self.args.precision,
                memory_mode or self.args.memory_mode,
                lambda model: apply_speed_options(speed, model, self.device),
                warmup_steps=self.args.warmup_steps,
                cuda_graphs=self.args.cuda_graphs,
            )  # fmt: skip
        else:
            path = dict(self.args.peer)[name]
            contender = PEER_KINDS[name](self.config, self.device, path)
        self.described.setdefault(name, {
            "source": contender.source, "recipe": contender.recipe,
            "parameters": contender.parameter_count(),
        })  # fmt: skip
        return contender

    def each(self, memory_modes: tuple[str | None, ...] = (None,), sampling: bool = False):
        """``(name, mode, contender or the reason it is missing)`` for every contender."""
        for name in self.names():
            for mode in memory_modes if name == "glowlab" else (None,):
                try:
                    yield name, mode, self.build(name, mode, sampling)
                except (Unsupported, ImportError) as error:
                    yield name, mode, f"unavailable: {error}"


def seeded_pixels(shape: tuple[int, ...], n: int, device: torch.device, seed: int) -> Tensor:
    return random_pixels(shape, n, device, torch.Generator().manual_seed(seed))


def guarded(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``fn()``'s figures, or a note when it ran out of device memory."""
    try:
        return fn()
    except torch.cuda.OutOfMemoryError:
        return {"note": "out of memory"}


# -- the questions -----------------------------------------------------------------------------
# Memory and learning measure each contender inside a function of its own, so that nothing
# of it (model, optimizer, closures) is alive when the next one is built and measured. The
# timings keep all of them alive instead, to interleave them (``in_rounds``).
def ask(
    field: Field,
    measure: Callable[[Contender], list[dict[str, Any]]],
    row_keys: Callable[[str, str | None], list[dict[str, Any]]],
    memory_modes: tuple[str | None, ...] = (None,),
) -> list[dict[str, Any]]:
    """Rows of ``measure(contender)`` for each contender, or rows saying why it is missing."""
    rows = []
    for name, mode, contender in field.each(memory_modes):
        keys = row_keys(name, mode)
        if isinstance(contender, str):
            rows += [{**key, "note": contender} for key in keys]
        else:
            rows += [
                {**key, **figures} for key, figures in zip(keys, measure(contender), strict=True)
            ]
        del contender
        for row in rows[-len(keys) :]:
            print("  " + "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                   for k, v in row.items()))  # fmt: skip
    return rows


def in_rounds(
    field: Field,
    prepare: Callable[[Contender], list[Callable[[], Any]]],
    row_keys: Callable[[str, str | None], list[dict[str, Any]]],
    sampling: bool = False,
) -> list[dict[str, Any]]:
    """Time every contender's calls in ``--rounds`` interleaved rounds.

    All contenders are built first and stay alive; each round times each call (the median
    of ``--repeats`` after ``--warmup``) of each contender in turn, so that a machine whose
    speed drifts slows them all alike. A row's ``ms`` is the median of its rounds.
    """
    args, device = field.args, field.device
    entries: list[tuple[dict[str, Any], Callable[[], Any] | str]] = []
    for name, mode, contender in field.each(sampling=sampling):
        keys = row_keys(name, mode)
        if isinstance(contender, str):
            entries += [(key, contender) for key in keys]
            continue
        try:
            entries += list(zip(keys, prepare(contender), strict=True))
        except torch.cuda.OutOfMemoryError:
            entries += [(key, "out of memory") for key in keys]
        del contender
    rounds: list[list[float]] = [[] for _ in entries]
    for r in range(args.rounds):
        for i, (key, call) in enumerate(entries):
            if isinstance(call, str):
                continue
            try:
                rounds[i].append(median_seconds(call, device, args.warmup, args.repeats))
            except torch.cuda.OutOfMemoryError:
                entries[i] = (key, "out of memory")
        print(f"  round {r + 1} of {args.rounds} done")
    rows = []
    for (key, call), times in zip(entries, rounds, strict=True):
        if isinstance(call, str):
            rows.append({**key, "note": call})
            continue
        ms = [1e3 * t for t in times]
        rows.append({**key, "ms": statistics.median(ms), "min_round_ms": min(ms),
                     "max_round_ms": max(ms), "rounds_ms": ms})  # fmt: skip
    return rows


def question_train(field: Field) -> list[dict[str, Any]]:
    args, device = field.args, field.device

    def prepare(contender: Contender) -> list[Callable[[], Any]]:
        contender.initialize(seeded_pixels(contender.image_shape, args.batch_sizes[0], device, 0))
        step = contender.training_step(contender.optimizer())
        batches = [
            seeded_pixels(contender.image_shape, b, device, args.seed) for b in args.batch_sizes
        ]
        return [lambda pixels=pixels: step(pixels) for pixels in batches]

    def keys(name: str, mode: str | None) -> list[dict[str, Any]]:
        return [{"implementation": name, "batch": batch} for batch in args.batch_sizes]

    rows = in_rounds(field, prepare, keys)
    for row in rows:
        if "ms" in row:
            row["images_per_s"] = 1e3 * row["batch"] / row["ms"]
    return rows


def question_memory(field: Field) -> list[dict[str, Any]]:
    args, device = field.args, field.device

    def measure(contender: Contender) -> list[dict[str, Any]]:
        contender.initialize(seeded_pixels(contender.image_shape, args.batch_sizes[0], device, 0))
        return [guarded(lambda b=batch: train_memory(contender, b, args, device))
                for batch in args.batch_sizes]  # fmt: skip

    def keys(name: str, mode: str | None) -> list[dict[str, Any]]:
        return [{"implementation": name, "memory_mode": mode or "-", "batch": batch}
                for batch in args.batch_sizes]  # fmt: skip

    return ask(field, measure, keys, tuple(args.memory_modes))


def train_memory(
    contender: Contender, batch: int, args: argparse.Namespace, device: torch.device
) -> dict[str, Any]:
    pixels = seeded_pixels(contender.image_shape, batch, device, args.seed)
    if device.type != "cuda":
        saved = saved_activation_bytes(
            lambda: contender.bits_per_dim(pixels).mean(), exclude=contender.model
        )
        return {"saved_activations_MiB": saved / MIB}
    step = contender.training_step(contender.optimizer())
    # A recorded step (--cuda-graphs) allocates nothing when it replays: its activations
    # live in the graph's memory pool, which max_memory_allocated does not see then. The
    # eager step it records shows them.
    step = getattr(step, "step", step)
    return {"peak_allocated_GiB": peak_step_memory_gib(lambda: step(pixels), device)}


def question_sample(field: Field) -> list[dict[str, Any]]:
    args, device = field.args, field.device

    def prepare(contender: Contender) -> list[Callable[[], Any]]:
        contender.initialize(seeded_pixels(contender.image_shape, 16, device, 0))
        contender.model.eval()

        def draw() -> Tensor:
            return contender.sample(args.n, args.temperature)

        shape = tuple(draw().shape)
        if shape != (args.n, *contender.image_shape):
            raise RuntimeError(f"{contender.name} sampled a batch of shape {shape}")
        return [draw]

    def keys(name: str, mode: str | None) -> list[dict[str, Any]]:
        return [{"implementation": name, "n": args.n, "temperature": args.temperature}]

    return in_rounds(field, prepare, keys, sampling=True)


def question_learning(field: Field) -> list[dict[str, Any]]:
    args, device = field.args, field.device
    train, test = load_data(args, device)

    def measure(contender: Contender) -> list[dict[str, Any]]:
        return [guarded(lambda: learn(contender, field, train, test))]

    def keys(name: str, mode: str | None) -> list[dict[str, Any]]:
        return [{"implementation": name, "dataset": args.dataset, "batch": args.learning_batch}]

    return ask(field, measure, keys)


def learn(contender: Contender, field: Field, train: Tensor, test: Tensor) -> dict[str, Any]:
    """Train ``contender`` for ``--seconds`` (training time only), then test bits/dim."""
    args, device = field.args, field.device
    generator = torch.Generator(device).manual_seed(args.seed)

    def batch_of(n: int) -> Tensor:
        return train[torch.randint(train.shape[0], (n,), device=device, generator=generator)]

    contender.initialize(batch_of(contender.init_images or args.learning_batch))
    # One forward and backward pass before the clock starts, which changes no weight: with
    # --compile, glowlab's layers compile here, as in bench_learning.py.
    contender.backward(batch_of(args.learning_batch))
    contender.model.zero_grad(set_to_none=True)
    optimizer = contender.optimizer()
    base_lrs = [float(group["lr"]) for group in optimizer.param_groups]
    step = contender.training_step(optimizer)
    if hasattr(step, "warm"):  # --cuda-graphs: record the step before the clock starts
        step.warm(batch_of(args.learning_batch))

    def numbered_step(i: int) -> Tensor:
        for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
            set_learning_rate(
                group, contender.learning_rate(base, i, args.learning_batch, train.shape[0])
            )
        return step(batch_of(args.learning_batch))

    run = train_for(args.seconds, numbered_step, args.sync_every, device)
    steps, trained, losses = run.steps, run.seconds, run.losses
    finite = [v for v in losses if math.isfinite(v)]
    contender.model.eval()
    with torch.no_grad():
        torch.manual_seed(1234)
        bits = [
            contender.bits_per_dim(test[i : i + args.eval_batch]).double().sum()
            for i in range(0, test.shape[0], args.eval_batch)
        ]
    test_bpd = float(torch.stack(bits).sum()) / test.shape[0]
    return {
        "train_seconds": trained, "steps": steps, "images": steps * args.learning_batch,
        "nonfinite_losses": len(losses) - len(finite),
        "train_bpd_last50": statistics.mean(finite[-50:]) if finite else math.nan,
        "test_images": test.shape[0], "test_bpd": test_bpd,
    }  # fmt: skip


COLUMNS = {
    "train": ["implementation", "batch", "ms", "min_round_ms", "max_round_ms", "images_per_s",
              "note"],
    "memory": ["implementation", "memory_mode", "batch", "peak_allocated_GiB",
               "saved_activations_MiB", "note"],
    "sample": ["implementation", "n", "temperature", "ms", "min_round_ms", "max_round_ms", "note"],
    "learning": ["implementation", "dataset", "batch", "train_seconds", "steps", "images",
                 "nonfinite_losses", "train_bpd_last50", "test_bpd", "note"],
}  # fmt: skip
RUN = {
    "train": question_train,
    "memory": question_memory,
    "sample": question_sample,
    "learning": question_learning,
}


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--peer",
        type=peer_option,
        action="append",
        default=[],
        metavar="KIND=PATH",
        help=f"another implementation's checkout; KIND is one of {', '.join(PEER_KINDS)}",
    )
    parser.add_argument(
        "--implementations",
        type=csv_list(str),
        default=None,
        help="measure only these (glowlab and the --peer kinds; default: all of them)",
    )
    parser.add_argument(
        "--questions",
        type=csv_list(str, QUESTIONS, "question"),
        default=["train", "memory", "sample"],
        help=f"any of {', '.join(QUESTIONS)}",
    )
    parser.add_argument("--steps", type=int, default=None, help="flow steps per level (K)")
    parser.add_argument(
        "--batch-sizes", type=csv_list(int), default=None, help="default: 8 on CPU, 64,256 on CUDA"
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="glowlab's precision (default: tf32 on CUDA, fp32 on CPU); the peers run in "
        "torch's defaults",
    )
    parser.add_argument("--memory-mode", default="standard", choices=MEMORY_MODES,
                        help="glowlab's memory mode for train, sample and learning")  # fmt: skip
    parser.add_argument(
        "--memory-modes",
        type=csv_list(str, MEMORY_MODES, "memory mode"),
        default=["standard", "invertible"],
        help="glowlab's memory modes in the memory question",
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per setting and round")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per setting and round")
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds of train and sample timings"
    )
    parser.add_argument("--n", type=int, default=32, help="images per sampling call")
    parser.add_argument("--temperature", type=float, default=0.7)
    add_data_options(
        parser, "cifar10", "training time per implementation (default: 60 on CPU, 200 on CUDA)"
    )
    parser.add_argument(
        "--learning-batch", type=int, default=None, help="default: 16 on CPU, 64 on CUDA"
    )
    parser.add_argument(
        "--warmup-steps",
        type=int,
        default=None,
        help="glowlab's learning-rate warmup (default: 50 on CPU, 500 on CUDA)",
    )
    add_speed_options(parser)
    args, device = parse(parser, argv)
    cuda = device.type == "cuda"
    kinds = [kind for kind, _ in args.peer]
    if len(set(kinds)) != len(kinds):
        parser.error("each --peer KIND may be given once")
    for name in args.implementations or []:
        if name not in ("glowlab", *kinds):
            parser.error(f"--implementations {name}: not glowlab or a --peer kind given")
    args.precision = args.precision or ("tf32" if cuda else "fp32")
    if (why := check_precision(args.precision, device)) is not None:
        parser.error(why)
    args.batch_sizes = args.batch_sizes or ([64, 256] if cuda else [8])
    args.seconds = args.seconds if args.seconds is not None else (200.0 if cuda else 60.0)
    args.learning_batch = args.learning_batch or (64 if cuda else 16)
    if args.warmup_steps is None:
        args.warmup_steps = 500 if cuda else 50
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be at least 1")
    if "learning" in args.questions:
        check_data_options(parser, args, MODEL_CONFIGS[args.model]["image_shape"])
    if args.rounds < 1 or args.repeats < 1:
        parser.error("--rounds and --repeats must be at least 1")

    field = Field(args, device)
    env = environment(device)
    results = {}
    for question in args.questions:
        results[question] = RUN[question](field)
    print(f"# {env['date']}  {env['hardware']}  torch {env['torch']}  model {args.model}"
          f" (K={field.config['steps']})")  # fmt: skip
    for name, info in field.described.items():
        print(f"# {name}: {info['source']}; {info['recipe']}; {info['parameters']} parameters")
    for question, rows in results.items():
        print(f"\n## {question}")
        print_table(rows, [c for c in COLUMNS[question] if any(c in r for r in rows)])
    write_json(args, {
        "environment": env, "model_config": field.config, "implementations": field.described,
        **speed_settings(args, device), "results": results,
    })  # fmt: skip


if __name__ == "__main__":
    main()
