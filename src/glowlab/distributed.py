"""Data-parallel training over several processes (``torchrun``), and its evaluation.

A training script uses these helpers in five places::

    from glowlab import distributed as dist_utils

    ctx = dist_utils.setup_distributed()          # 1. once, before building the model
    model = build_model(...)                      #    on ctx.device
    evaluate = dist_utils.wrap_model(model, ctx)  # 2. DDP around model.evaluate
    for epoch in range(epochs):
        idx = dist_utils.shard_indices(len(train), ctx.rank, ctx.world_size, seed, epoch)
        for batch in idx.split(per_rank_batch):   # 3. this rank's share of a global batch
            loss = -evaluate(x[batch]).log_prob.mean()  # call the wrapper: DDP syncs grads
            loss.backward(); optimizer.step(); optimizer.zero_grad()
            logged = dist_utils.all_reduce_mean(loss.detach())  # 4. global-batch mean
        if ctx.is_main:
            save_checkpoint(model)                # 5. rank 0 alone writes files
        dist_utils.barrier()
    test_bpd = dist_utils.gather_cat(per_example_bpd)  # evaluation: all ranks' results
    dist_utils.cleanup()

Launch with ``torchrun --nproc_per_node=N train.py``; run without ``torchrun`` and the same
code trains in one process (every helper is then a no-op or the identity).

:class:`glowlab.train.Trainer` (and so ``torchrun --nproc_per_node=N -m glowlab train ...``)
does all of this itself; see ``docs/training.md``.

Notes:

* The per-rank batch is the global batch divided by the world size; DDP averages the
  gradients, so with equal shards a step equals a one-process step on the global batch.
* ActNorm's data-dependent init all-reduces its statistics (see
  :class:`glowlab.transforms.ActNorm`), so every rank initialises to the statistics of the
  whole global batch, the same as one process would. DistributedDataParallel broadcasts
  rank 0's parameters when it wraps the model; ActNorm's init then runs in the first
  training forward pass on every rank at once.
* :class:`torch.nn.DataParallel` (one process, several GPUs) is not supported: its
  replicas are thrown away after each forward pass, so ActNorm's init would be lost, and
  each replica would initialise from its own slice of the batch.
* DDP only synchronises the gradients of what ran through the wrapper's ``forward``, and
  flow models have no ``forward`` (they have ``evaluate``, ``log_prob``, ...): hence
  :class:`Evaluate`, whose ``forward`` is ``model.evaluate``. Call the wrapper that
  :func:`wrap_model` returns for the training loss, and the bare model for anything else
  (sampling, logging); the bare model and its ``state_dict`` are what to checkpoint.
* The memory modes of :mod:`glowlab.memory` work under DDP: their gradients reach the
  parameters through autograd, which is where DDP's gradient hooks listen.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .models.base import FlowModel, FlowOutput

__all__ = [
    "DistributedContext",
    "Evaluate",
    "all_reduce_mean",
    "barrier",
    "broadcast_from_main",
    "cleanup",
    "gather_cat",
    "is_distributed",
    "setup_distributed",
    "shard_indices",
    "wrap_model",
]


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits: its ``rank`` of ``world_size``, and the device it trains on.

    ``is_main`` is true for rank 0, the one process that logs and writes checkpoints.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def is_distributed() -> bool:
    """Whether a process group is running (``torch.distributed`` is initialised)."""
    return dist.is_available() and dist.is_initialized()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def setup_distributed(backend: str | None = None, device: str | None = None) -> DistributedContext:
    """Join the process group that ``torchrun`` describes in the environment.

    Reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (``MASTER_ADDR``/``MASTER_PORT`` are read
    by :func:`torch.distributed.init_process_group`). With ``WORLD_SIZE`` unset or 1 nothing
    is initialised and a one-process context is returned.

    Args:
        backend: ``"nccl"`` on CUDA and ``"gloo"`` otherwise when ``None``.
        device: ``"cuda"`` or ``"cpu"``; CUDA when available when ``None``. On CUDA each
            of several processes uses the GPU ``cuda:LOCAL_RANK`` and makes it the current
            device; a single process keeps the current device.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= RANK < WORLD_SIZE, got RANK={rank}, WORLD_SIZE={world_size}")
    kind = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if kind not in ("cuda", "cpu"):
        raise ValueError(f"device must be 'cuda' or 'cpu', got {device!r}")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device='cuda' was asked for, but CUDA is not available")
        if world_size > 1:
            torch.cuda.set_device(local_rank)
        where = torch.device("cuda", torch.cuda.current_device())
    else:
        where = torch.device("cpu")
    if world_size > 1 and not is_distributed():
        if not dist.is_available():
            raise RuntimeError("this PyTorch build has no torch.distributed support")
        chosen = backend or ("nccl" if kind == "cuda" else "gloo")
        dist.init_process_group(chosen, rank=rank, world_size=world_size)
    return DistributedContext(rank, world_size, local_rank, where)


class Evaluate(nn.Module):
    """A module whose ``forward(x, y=None)`` is ``model.evaluate(x, y)`` (a :class:`FlowOutput`).

    Flow models expose ``evaluate`` rather than ``forward``; this gives DistributedDataParallel
    a ``forward`` to wrap. Its ``state_dict`` keys start with ``model.``: checkpoint
    ``wrapper.model`` (or the model you passed in), not the wrapper.
    """

    def __init__(self, model: FlowModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, y: Tensor | None = None) -> FlowOutput:
        return self.model.evaluate(x, y)


def wrap_model(model: FlowModel, ctx: DistributedContext, **ddp_options: object) -> nn.Module:
    """A module ``(x, y=None) -> FlowOutput`` that trains ``model``, synchronised across ranks.

    :class:`Evaluate` around ``model``, inside DistributedDataParallel when a process group
    is running; without one, just :class:`Evaluate`, so the training loop is the same code.
    Build the model on ``ctx.device`` first. ``ddp_options`` go to
    :class:`torch.nn.parallel.DistributedDataParallel`.
    """
    module = Evaluate(model)
    if not ctx.distributed or not is_distributed():
        return module
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=device_ids, **ddp_options)  # type: ignore[arg-type]


def shard_indices(
    n: int, rank: int, world_size: int, seed: int = 0, epoch: int = 0, drop_last: bool = True
) -> Tensor:
    """This rank's share of a random permutation of ``range(n)``, new for every epoch.

    Every rank computes the same permutation (from ``seed`` and ``epoch``) and takes every
    ``world_size``-th element starting at ``rank``. So the ranks' ``i``-th batches of size
    ``b`` together hold exactly positions ``i*b*W`` to ``(i+1)*b*W - 1`` of the permutation:
    the ``i``-th global batch of one process with batch ``b*W`` and the same seed.

    All ranks get the same number of indices (DDP hangs otherwise): with ``drop_last`` the
    last ``n % world_size`` positions are dropped, without it the permutation is padded by
    wrapping around to its start (some examples are then seen twice).

    Example:
        >>> shard_indices(10, rank=1, world_size=2, seed=0, epoch=0).shape
        torch.Size([5])
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    # Reduced to the generator's 64 bits, so any integer seed works (time.time_ns(), a
    # hash); torch takes a seed modulo 2**64 already, so the seeds that fitted keep their order.
    generator = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(epoch)) % 2**64)
    perm = torch.randperm(n, generator=generator)
    if drop_last:
        perm = perm[: n - n % world_size]
    elif n % world_size:
        if n == 0:
            return perm
        extra = world_size - n % world_size
        perm = torch.cat([perm, perm.repeat(extra // n + 1)[:extra]])
    return perm[rank::world_size]


def all_reduce_mean(tensor: Tensor) -> Tensor:
    """The mean of ``tensor`` over all ranks (a new tensor); ``tensor`` when not distributed."""
    if not is_distributed():
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out)
    return out / dist.get_world_size()


def gather_cat(tensor: Tensor) -> Tensor:
    """Every rank's ``tensor`` concatenated along dim 0, in rank order, on every rank.

    The ranks may hold different numbers of rows (the last evaluation shard is often
    shorter); the other dimensions must agree. Not differentiable.
    """
    if not is_distributed():
        return tensor
    world = dist.get_world_size()
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    counts = [int(s.item()) for s in sizes]
    longest = max(counts)
    padded = tensor.detach().new_zeros((longest, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor.detach()
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:count] for part, count in zip(parts, counts, strict=True)])


def broadcast_from_main(tensors: list[Tensor]) -> None:
    """Overwrite each of ``tensors`` with rank 0's, in place (no-op when not distributed)."""
    if not is_distributed():
        return
    for tensor in tensors:
        dist.broadcast(tensor, src=0)


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group (no-op when not distributed)."""
    if is_distributed():
        dist.destroy_process_group()
