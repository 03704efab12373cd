"""The ``glowlab`` command line (also ``python -m glowlab``)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from . import __version__

__all__ = ["COMMANDS", "build_parser", "main"]

#: Subcommand name -> module under glowlab.commands, in the order ``--help`` lists them.
COMMANDS: dict[str, str] = {
    "demo": "demo",
    "train": "train",
    "eval": "evaluate",
    "sample": "sample",
    "reconstruct": "reconstruct",
    "interpolate": "interpolate",
    "manipulate": "manipulate",
    "compress": "compress",
    "restore": "restore",
    "ood": "ood",
    "toy": "toy",
}


#: Commands that run the Trainer, which follows ``train.keep_freed_memory``.
_OWN_MEMORY_SETTING = ("train", "demo")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # One clear line and exit code 2, with the usage on the line above.
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _load(module: str):  # type: ignore[no-untyped-def]
    return importlib.import_module(f"glowlab.commands.{module}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="glowlab",
        description="Flow-based generative models of images (NICE, RealNVP, Glow): train, "
        "evaluate exact bits/dim, sample and edit latents.",
    )
    parser.add_argument("--version", action="version", version=f"glowlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, module_name in COMMANDS.items():
        try:
            module = _load(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != f"glowlab.commands.{module_name}":
                raise
            continue
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    if args.command not in _OWN_MEMORY_SETTING:
        from . import speed

        # A command's process exits when it is done, so the memory kept costs nothing after;
        # on the CPU it spares each batch its page faults (docs/benchmarks.md).
        speed.keep_freed_memory()
    try:
        return int(args._run(args) or 0)
    except (ValueError, TypeError, OSError) as exc:
        if os.environ.get("GLOWLAB_DEBUG"):
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"glowlab {args.command}: error: {message}", file=sys.stderr)
        return 2
    except (FloatingPointError, ImportError) as exc:
        # An optimisation diverged (exit code 1) or an optional dependency is missing (2);
        # the message says where, or which.
        if os.environ.get("GLOWLAB_DEBUG"):
            raise
        print(f"glowlab {args.command}: error: {exc}", file=sys.stderr)
        return 1 if isinstance(exc, FloatingPointError) else 2
    except KeyboardInterrupt:
        print(f"glowlab {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
