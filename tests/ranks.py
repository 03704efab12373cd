"""Helpers for tests that start several torch.distributed processes on this machine."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.multiprocessing as mp


def free_port() -> int:
    """A TCP port on localhost that is free now, for the process group's rendezvous."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def set_rank_env(rank: int, world_size: int, port: int) -> None:
    """The environment torchrun would give process ``rank`` of ``world_size``."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
    )
    if Path("/sys/class/net/lo").exists():
        # Keep gloo's connections on the loopback device rather than whatever interface
        # the host name resolves to.
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")


def spawn_ranks(worker: Callable[..., None], world_size: int, *args: Any) -> None:
    """Run ``worker(rank, world_size, port, *args)`` in ``world_size`` processes.

    A process that dies by a signal (gloo occasionally aborts one while its connection
    threads shut down) gets one more try on a fresh port; any other failure, or a second
    abort, fails the test.
    """
    for attempt in range(2):
        try:
            mp.spawn(worker, args=(world_size, free_port(), *args), nprocs=world_size, join=True)
            return
        except mp.ProcessExitedException as exc:
            if attempt == 1 or exc.signal_name is None:
                raise
