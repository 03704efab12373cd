"""The training log: one JSON object per line, mirrored to TensorBoard when it is installed.

Every record has ``kind`` (``"train"``, ``"eval"`` or ``"event"``), ``step`` (training
steps taken so far) and ``time`` (seconds since the epoch). See ``docs/training.md`` for the
fields of each kind.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["RunLog", "read_log"]


class RunLog:
    """Appends records to ``path`` (JSONL) and, optionally, to a TensorBoard folder.

    Each line is flushed as it is written, so a killed run loses at most the line being
    written; a partial last line left by a crash is closed off when the log is reopened.
    """

    def __init__(self, path: str | os.PathLike[str], tensorboard_dir: str | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and self.path.stat().st_size > 0:
            with open(self.path, "rb") as handle:
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":
                    with open(self.path, "a") as append:
                        append.write("\n")
        self._file = open(self.path, "a", encoding="utf-8")
        self._writer = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # optional dependency
                pass
            else:
                self._writer = SummaryWriter(tensorboard_dir)

    def write(self, kind: str, step: int, **fields: Any) -> dict[str, Any]:
        """Write one record and return it."""
        record = {"kind": kind, "step": step, "time": round(time.time(), 3), **fields}
        self._file.write(json.dumps(record, allow_nan=True) + "\n")
        self._file.flush()
        if self._writer is not None:
            for key, value in fields.items():
                if (
                    isinstance(value, (int, float))
                    and not isinstance(value, bool)
                    and math.isfinite(value)
                ):
                    self._writer.add_scalar(f"{kind}/{key}", value, step)
                elif kind == "event" and key == "message":
                    self._writer.add_text("events", str(value), step)
        return record

    def event(self, step: int, message: str, **fields: Any) -> dict[str, Any]:
        """Write a human-readable event (a rejected step, a rollback, a resume)."""
        return self.write("event", step, message=message, **fields)

    def close(self) -> None:
        self._file.close()
        if self._writer is not None:
            self._writer.close()


def read_log(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """The records of a log file, skipping any line a crash left incomplete."""
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue
