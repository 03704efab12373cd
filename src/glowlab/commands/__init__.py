"""Subcommands of the ``glowlab`` command line.

Each module here defines ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``; :mod:`glowlab.cli` lists them in ``COMMANDS``.
"""
