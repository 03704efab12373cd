"""Helpers for tests that start several torch.distributed processes on this machine."""

from __future__ import annotations

import os
import socket


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
