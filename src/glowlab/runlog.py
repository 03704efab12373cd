"""The training log: one JSON object per line, mirrored to TensorBoard when it is installed.

Every record has ``kind`` (``"train"``, ``"eval"`` or ``"event"``), ``step`` (training
steps taken so far) and ``time`` (seconds since the epoch). See ``docs/training.md`` for the
fields of each kind.

Every line is strict JSON: a value that is not finite (a NaN test bits/dim) is written as
``null``, since JSON has no NaN or Infinity; :func:`read_log` reads the numeric fields of
``train`` and ``eval`` records back as ``float("nan")``.
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

# The fields that hold a number in every record of a kind: null there was a non-finite value.
# (An eval record's `accuracy` is null for a model without classes, so it is not one.)
_NUMBERS = {
    "train": {"loss_bpd", "prior_bpd", "logdet_bpd", "dequant_bpd", "class_ce", "grad_norm",
              "lr", "images_per_s"},
    "eval": {"test_bpd", "test_bpd_sem", "prior_bpd", "logdet_bpd"},
}  # fmt: skip


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
        self._file.write(json.dumps(_finite(record), allow_nan=False) + "\n")
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
    """The records of a log file, skipping any line a crash left incomplete.

    A null in a numeric field of a ``train`` or ``eval`` record (a value that was not
    finite) is read as ``float("nan")``.
    """
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                for key in _NUMBERS.get(str(record.get("kind")), set()) & record.keys():
                    if record[key] is None:
                        record[key] = math.nan
            yield record


def _finite(value: Any) -> Any:
    """``value`` with every float that is not finite replaced by None (JSON's null)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value
