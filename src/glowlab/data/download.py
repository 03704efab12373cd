"""Finding dataset files on disk, checking them, and downloading the public ones.

A download goes to a temporary file in the target directory, its MD5 is checked against the
published value, and only then is it renamed into place (an atomic rename on the same file
system), so an interrupted or corrupted download never leaves a file that looks complete.

Tests replace :func:`urlopen` in this module to serve bytes without a network.
"""

from __future__ import annotations

import hashlib
import http.client
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.request import urlopen

import numpy as np

from .._files import atomic_write, create_temp
from .base import ChecksumError, DatasetNotFoundError

__all__ = ["RemoteFile", "download_url", "md5sum", "resolve_files"]

_CHUNK = 1 << 20


@dataclass(frozen=True)
class RemoteFile:
    """One file of a public dataset.

    Attributes:
        filename: the file's name on disk (and at the end of each URL).
        md5: the MD5 published for the file, lowercase hex.
        urls: where to fetch it, tried in order (official site first, then mirrors).
        alternatives: other names the same content may have on disk (for example the
            decompressed idx file); they are accepted without a checksum because no MD5 is
            published for them.
    """

    filename: str
    md5: str
    urls: tuple[str, ...]
    alternatives: tuple[str, ...] = ()


def md5sum(path: str | os.PathLike[str]) -> str:
    """The lowercase hex MD5 of a file, read in 1 MiB chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_url(
    urls: str | Sequence[str],
    destination: str | os.PathLike[str],
    md5: str | None = None,
    *,
    timeout: float = 60.0,
) -> Path:
    """Download the first URL that works to ``destination``, checking its MD5.

    Args:
        urls: one URL or several mirrors, tried in order.
        destination: the final path; its directory is created if needed.
        md5: the expected MD5; a mismatch tries the next mirror and finally raises.
        timeout: seconds to wait for the server before trying the next mirror.

    Returns:
        ``destination`` as a Path.

    Raises:
        ChecksumError: every server that answered sent bytes with the wrong MD5.
        DatasetNotFoundError: no server could be reached (for example, no network).
    """
    if isinstance(urls, str):
        urls = (urls,)
    if not urls:
        raise ValueError("urls must name at least one URL to download from")
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    bad_checksum = False
    for url in urls:
        fd, tmp = create_temp(destination.parent, f".{destination.name}.", ".part")
        try:
            digest = hashlib.md5(usedforsecurity=False)
            with os.fdopen(fd, "wb") as out, urlopen(url, timeout=timeout) as response:
                for chunk in iter(lambda r=response: r.read(_CHUNK), b""):
                    digest.update(chunk)
                    out.write(chunk)
            got = digest.hexdigest()
            if md5 is not None and got != md5.lower():
                bad_checksum = True
                failures.append(f"{url} sent data with MD5 {got}, expected {md5}")
                continue
            os.replace(tmp, destination)
            return destination
        # OSError covers URLError, HTTPError, timeouts and refused connections; HTTPException
        # covers a connection dropped mid-file (IncompleteRead).
        except (OSError, http.client.HTTPException) as error:
            failures.append(f"{url}: {error}")
        finally:
            tmp.unlink(missing_ok=True)
    reasons = "; ".join(failures)
    if bad_checksum:
        raise ChecksumError(
            f"downloaded {destination.name} does not match its published checksum ({reasons}); "
            f"try again later, or put a good copy of {destination.name} into "
            f"{destination.parent} yourself"
        )
    raise DatasetNotFoundError(
        f"could not download {destination.name} ({reasons}); without network access, put "
        f"{destination.name} into {destination.parent} by hand, or point --data-dir "
        f"(data_dir=) at a folder that already holds it"
    )


def missing_files_message(
    dataset: str, missing: Sequence[str], directory: Path, extra: str = ""
) -> str:
    """The one-line message for files that are not on disk."""
    return (
        f"{dataset}: missing {', '.join(missing)} in {directory}; pass download=True to "
        f"fetch {'it' if len(missing) == 1 else 'them'}, put "
        f"{'it' if len(missing) == 1 else 'them'} into {directory} by hand{extra}, or point "
        f"--data-dir (data_dir=) at a folder that already holds the files"
    )


def resolve_files(
    files: Sequence[RemoteFile],
    directory: Path,
    *,
    dataset: str,
    download: bool,
    verify: bool = True,
    search: Sequence[Path] = (),
    hint: str = "",
) -> list[Path]:
    """Locate ``files`` on disk, downloading the missing ones if asked; return their paths.

    Each file is looked for in ``directory`` and then in each folder of ``search``, under its
    own name and then under its ``alternatives``. When ``verify`` is true, files found under
    their own names are checked against their MD5s: in ``directory`` a mismatch means a
    corrupt file, while a folder of ``search`` that holds a file with the wrong MD5 is passed
    over as a whole, because the files there may be another dataset's with the same names
    (MNIST's and Fashion-MNIST's are). Downloads always go into ``directory``.

    Args:
        files: the files needed.
        directory: where the files belong and where downloads go.
        dataset: the dataset's display name, for messages.
        download: fetch missing (or corrupt) files instead of raising.
        verify: check the MD5 of files already on disk.
        search: more folders to look in before giving up.
        hint: text added to the missing-files message (for example, an offline alternative).

    Raises:
        DatasetNotFoundError: a file is missing and ``download`` is false, or it could not be
            downloaded.
        ChecksumError: a file in ``directory`` has the wrong MD5 and ``download`` is false.
    """
    folders = [directory, *search]
    # Why each search folder that was looked at must not be used (None: it may be).
    passed_over: dict[Path, str | None] = {}
    paths: list[Path | None] = []
    for remote in files:
        found: Path | None = None
        for folder in folders:
            candidates = [folder / remote.filename] + [folder / a for a in remote.alternatives]
            found = next((p for p in candidates if p.is_file()), None)
            if found is not None and verify and folder != directory:
                if folder not in passed_over:
                    passed_over[folder] = _checksum_mismatch(folder, files)
                if passed_over[folder] is not None:
                    found = None
            if found is not None:
                break
        if verify and found == directory / remote.filename:
            got = md5sum(found)
            if got != remote.md5:
                if not download:
                    raise ChecksumError(
                        f"{dataset}: {found} has MD5 {got} but the published MD5 is "
                        f"{remote.md5}; the file is corrupt or incomplete: delete it and pass "
                        f"download=True to fetch it again, replace it with a good copy, or pass "
                        f"verify=False if this copy is known to hold the same data"
                    )
                found = None
        paths.append(found)
    missing = [remote for remote, path in zip(files, paths, strict=True) if path is None]
    if missing and not download:
        names = [remote.filename for remote in missing]
        message = missing_files_message(dataset, names, directory, hint)
        reasons = [reason for reason in passed_over.values() if reason is not None]
        if reasons:
            message += (
                f" ({'; '.join(reasons)}: another dataset's file or a corrupt copy, so "
                f"{'it was' if len(reasons) == 1 else 'they were'} not used; verify=False "
                f"accepts {'it' if len(reasons) == 1 else 'them'})"
            )
        raise DatasetNotFoundError(message)
    for i, remote in enumerate(files):
        if paths[i] is None:
            paths[i] = download_url(remote.urls, directory / remote.filename, remote.md5)
    return [p for p in paths if p is not None]


def _checksum_mismatch(folder: Path, files: Sequence[RemoteFile]) -> str | None:
    """Which of ``files`` in ``folder`` has the wrong MD5, as a phrase, or None if none has."""
    for remote in files:
        path = folder / remote.filename
        if path.is_file():
            got = md5sum(path)
            if got != remote.md5:
                return f"{path} has MD5 {got}, not the published {remote.md5}"
    return None


def save_npz_atomic(path: Path, **arrays: object) -> None:
    """Write a compressed ``.npz`` through a temporary file and an atomic rename.

    Readers therefore never see a half-written cache, even if processing is interrupted.
    """

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as out:  # a file object: given a name, numpy would add ".npz"
            np.savez_compressed(out, **arrays)

    atomic_write(path, write)
