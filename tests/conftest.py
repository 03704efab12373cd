from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from glowlab.runlog import read_log

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("GLOWLAB_SHARED_DATA", ROOT.parent / "shared" / "data"))


# The tests run small models, for which one thread is fastest, and CI has two cores.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_and_float64():
    """Seeded float64 by default: the exactness checks need it, and it makes failures repeatable."""
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture
def shared_data() -> Path:
    """The offline MNIST/CIFAR-10 copies; tests that need them skip cleanly without them."""
    if not (SHARED_DATA / "mnist" / "train.npz").exists():
        pytest.skip(f"offline datasets not found at {SHARED_DATA} (set GLOWLAB_SHARED_DATA)")
    return SHARED_DATA


def train_losses(log: Path) -> dict[int, float]:
    """The logged training loss of each step of a run's log (a resumed run's record wins)."""
    return {r["step"]: r["loss_bpd"] for r in read_log(log) if r["kind"] == "train"}
