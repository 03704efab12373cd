"""``glowlab train``: train a model from a preset, a config file and overrides."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import (
    PRESETS,
    TrainConfig,
    apply_overrides,
    config_fields,
    get_preset,
    load_config,
    model_parameters,
)
from ..models import MODELS

if TYPE_CHECKING:
    from ..train import Trainer

HELP = "train a model (presets, config files and NAME=VALUE overrides; resumable)"
DESCRIPTION = (
    "Train a flow by maximum likelihood. The config starts from --preset (or the defaults), "
    "then --config FILE, then the shortcut flags, then each --set NAME=VALUE in order. The "
    "resolved config is saved as OUT/config.json; OUT also gets log.jsonl, checkpoints/ "
    "(last and best), samples/ and, if TensorBoard is installed, tensorboard/. --resume "
    "continues the run in OUT from checkpoints/last.json exactly where it stopped. Under "
    "torchrun (torchrun --nproc_per_node=N -m glowlab train ...) the N processes train "
    "data-parallel on shares of the global train.batch_size; rank 0 writes OUT."
)

#: Shortcut flags and the config field each one sets.
SHORTCUTS = {
    "steps": "train.steps",
    "batch_size": "train.batch_size",
    "lr": "optim.lr",
    "data": "data.name",
    "data_dir": "data.data_dir",
    "device": "device",
    "seed": "seed",
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the line breaks of the description and epilog; shows defaults that are set."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_text = action.help or ""
        default = action.default
        if default in (None, False, [], argparse.SUPPRESS) or "%(default)" in help_text:
            return help_text
        return f"{help_text} (default: %(default)s)"


def use_help_formatter(parser: argparse.ArgumentParser, description: str) -> None:
    """Give a subcommand's parser :class:`HelpFormatter` and a wrapped description."""
    parser.formatter_class = HelpFormatter
    parser.description = textwrap.fill(description, 88)


def _epilog() -> str:
    lines = ["config fields (set with --set NAME=VALUE; values are JSON or plain strings):"]
    for name, kind, default, help_text in config_fields():
        if name == "model.options":
            continue
        lines.append(f"  {name:<26} {help_text} [{kind}; default {json.dumps(default)}]")
    lines.append("")
    lines.append("model options (set with --set model.KEY=VALUE; defaults are the model's):")
    for model in sorted(MODELS):
        params = model_parameters(model)
        described = ", ".join(f"{k}={v.default!r}" for k, v in params.items())
        lines.append(f"  {model}: {described}")
    lines.append("")
    lines.append("presets:")
    for name, preset in PRESETS.items():
        d, m = preset.data, preset.model
        options = " ".join(f"{k}={v}" for k, v in m.options.items())
        lines.append(
            f"  {name:<22} {d.name} {d.n_bits}-bit, {m.name} {options}, {preset.optim.name} "
            f"lr {preset.optim.lr:g}, batch {preset.train.batch_size}"
        )
    lines.append("")
    lines.append("examples:")
    lines.append(
        "  glowlab train --preset glow-mnist --set model.steps=8 --set train.batch_size=32"
    )
    lines.append("  glowlab train --preset glow-cifar10 --data-dir ~/data --out runs/c10")
    lines.append("  glowlab train --out runs/c10 --resume --set train.steps=500000")
    lines.append(
        "  glowlab train --preset glow-cifar10 --device cuda --set train.precision=bf16 "
        "--set train.compile=true"
    )
    lines.append(
        "  torchrun --nproc_per_node=2 -m glowlab train --preset glow-digits --device cpu "
        "--out runs/ddp"
    )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    use_help_formatter(parser, DESCRIPTION)
    parser.epilog = _epilog()
    parser.add_argument(
        "--preset", choices=list(PRESETS), metavar="NAME",
        help=f"starting config: {', '.join(PRESETS)}",
    )  # fmt: skip
    parser.add_argument(
        "--config", metavar="FILE", help="JSON config file (fields it omits keep their defaults)"
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE",
        help="override one config field, e.g. model.steps=8 or optim.betas=[0.9,0.99]; repeatable",
    )  # fmt: skip
    parser.add_argument("--out", metavar="DIR", help="run folder (default: runs/PRESET)")
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    parser.add_argument("--steps", type=int, help="shortcut for --set train.steps=N")
    parser.add_argument("--batch-size", type=int, help="shortcut for --set train.batch_size=N")
    parser.add_argument("--lr", type=float, help="shortcut for --set optim.lr=X")
    parser.add_argument("--data", metavar="NAME", help="shortcut for --set data.name=NAME")
    parser.add_argument("--data-dir", metavar="DIR", help="shortcut for --set data.data_dir=DIR")
    parser.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], help="shortcut for --set device=..."
    )
    parser.add_argument("--seed", type=int, help="shortcut for --set seed=N")
    parser.add_argument(
        "--threads", type=int, help="CPU threads for torch (default: torch's choice)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config as JSON and exit"
    )


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    """The config that ``args`` describe (for ``--resume``, the checkpoint's, overridden)."""
    overrides = []
    for flag, name in SHORTCUTS.items():
        value = getattr(args, flag, None)
        if value is not None:
            overrides.append(f"{name}={json.dumps(value)}")
    if getattr(args, "no_progress", False):
        overrides.append("train.progress=false")
    overrides += args.overrides
    if args.resume:
        if args.preset or args.config:
            raise ValueError(
                "--resume takes the config from the checkpoint; change fields with --set instead "
                "of --preset/--config"
            )
        config = load_config(_out_dir(args, None) / "checkpoints" / "last.json")
    elif args.config:
        config = load_config(args.config, base=get_preset(args.preset) if args.preset else None)
    else:
        config = get_preset(args.preset) if args.preset else TrainConfig()
    return apply_overrides(config, overrides)


def _out_dir(args: argparse.Namespace, config: TrainConfig | None) -> Path:
    if args.out:
        return Path(args.out)
    if args.resume:
        raise ValueError("--resume needs --out DIR, the run folder to continue")
    name = (config.preset if config is not None else None) or "run"
    return Path("runs") / name


def run(args: argparse.Namespace) -> int:
    config = resolve_config(args)
    if args.print_config:
        print(json.dumps(config.to_dict(), indent=2))
        return 0
    out = _out_dir(args, config)
    import torch

    from ..distributed import cleanup
    from ..train import Trainer  # imported here: --help stays fast

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)

    try:
        return _train(Trainer(config, out, resume=args.resume), out)
    finally:
        cleanup()  # under torchrun: leave the process group (nothing otherwise)


def _train(trainer: Trainer, out: Path) -> int:
    """Run ``trainer`` and report on rank 0 (the only process that prints)."""
    from ..train import TrainingError

    config, main = trainer.config, trainer.ctx.is_main
    processes = f" x {trainer.ctx.world_size} processes" if trainer.ctx.distributed else ""
    if main:
        print(
            f"training {config.model.name} ({trainer.num_parameters:,} parameters) on "
            f"{config.data.name} {trainer.image_shape} on {trainer.device}{processes}, "
            f"steps {trainer.state.step} -> {config.train.steps}; run folder {out}",
            file=sys.stderr,
        )
    try:
        result = trainer.fit()
    except TrainingError as exc:
        if main:
            print(f"glowlab train: error: {exc}", file=sys.stderr)
        return 1
    if not main:
        return 0
    print(
        f"test bits/dim: {result['test_bpd']:.4f} +- {result['test_bpd_sem']:.4f} (standard error)"
    )
    print(f"checkpoint: {result['checkpoint']}")
    print(f"samples: {result['samples']}")
    print(f"log: {out / 'log.jsonl'}")
    return 0
