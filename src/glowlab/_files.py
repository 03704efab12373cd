"""Small helpers for writing files atomically."""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "create_temp"]


def create_temp(folder: Path, prefix: str, suffix: str) -> tuple[int, Path]:
    """Create a new file named ``prefix + random + suffix`` in ``folder``; ``(fd, path)``.

    ``fd`` is open for reading and writing. Unlike ``tempfile.mkstemp``, which keeps its
    files private (mode 0600), the file gets the mode a plain ``open`` gives it, ``0666 &
    ~umask``, so once it is renamed into place as a checkpoint, PNG or dataset file it has
    the usual permissions. The kernel applies the umask here: reading it would take
    ``os.umask``, which changes it for the whole process for a moment.
    """
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        path = folder / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            return os.open(path, flags, 0o666), path
        except FileExistsError:
            continue
    raise FileExistsError(f"found no unused name {prefix}...{suffix} in {folder}")


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Create ``path`` through ``write(tmp)`` on a temporary file in the same folder.

    The temporary file is flushed to disk and renamed over ``path``, and the folder entry is
    flushed too, so ``path`` is either the old file or the complete new one, never a mix.
    ``path`` gets the permissions :func:`create_temp` gives, even if ``write`` replaces the
    file it was given.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = create_temp(path.parent, f".{path.name}.", ".tmp")
    mode = stat.S_IMODE(os.fstat(fd).st_mode)
    os.close(fd)
    try:
        write(tmp)
        # A writer may replace the file it was given (safetensors' save_file does, as 0600).
        os.chmod(tmp, mode)
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
