"""Small helpers for writing files atomically."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "make_readable"]


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


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Create ``path`` through ``write(tmp)`` on a temporary file in the same folder.

    The temporary file is flushed to disk and renamed over ``path``, and the folder entry is
    flushed too, so ``path`` is either the old file or the complete new one, never a mix.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        make_readable(tmp)  # after write(): a writer may replace the file it was given
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
