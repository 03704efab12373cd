"""Small helpers for writing files atomically."""

from __future__ import annotations

import os

__all__ = ["make_readable"]


def make_readable(fd_or_path: int | str | os.PathLike[str]) -> None:
    """Give a file from ``tempfile.mkstemp`` (mode 0600) the mode a plain ``open`` would.

    ``mkstemp`` keeps temporary files private; once such a file is renamed into place as a
    checkpoint, PNG or dataset file it should have the usual ``0666 & ~umask`` permissions.
    """
    umask = os.umask(0)
    os.umask(umask)
    mode = 0o666 & ~umask
    if isinstance(fd_or_path, int):
        os.fchmod(fd_or_path, mode)
    else:
        os.chmod(fd_or_path, mode)
