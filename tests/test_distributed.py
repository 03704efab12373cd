"""Two-process data-parallel training equals one process on the same global batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import Tensor

import glowlab
from glowlab.distributed import (
    DistributedContext,
    all_reduce_mean,
    barrier,
    cleanup,
    gather_cat,
    setup_distributed,
    shard_indices,
    wrap_model,
)
from glowlab.transforms import ActNorm
from ranks import set_rank_env, spawn_ranks

GLOBAL_BATCH = 8
STEPS = 3
MODES = ("standard", "invertible")


def _global_batch() -> Tensor:
    generator = torch.Generator().manual_seed(123)
    # Off-centre, scaled data so that ActNorm's init is far from the identity.
    return (torch.rand(GLOBAL_BATCH, 3, 8, 8, generator=generator) - 0.5) * 0.6 + 0.1


def _train(ctx: DistributedContext, mode: str) -> dict[str, object]:
    """Three SGD steps of a tiny Glow on this rank's share of a fixed global batch."""
    torch.manual_seed(0)
    model = glowlab.Glow((3, 8, 8), levels=2, steps=2, hidden_channels=8)
    model.set_memory_mode(mode)  # type: ignore[arg-type]
    rows = shard_indices(GLOBAL_BATCH, ctx.rank, ctx.world_size, seed=5)
    x = _global_batch()[rows]
    evaluate = wrap_model(model, ctx)
    # SGD, not Adam: Adam divides tiny gradients by their own size, which turns float64
    # rounding differences of the gradient all-reduce into visible parameter differences.
    optimizer = torch.optim.SGD(model.parameters(), lr=2e-3, momentum=0.9)
    losses, actnorm_init = [], []
    for step in range(STEPS):
        loss = -evaluate(x).log_prob.mean()
        if step == 0:
            actnorm_init = [
                torch.cat([m.loc, m.log_scale]).detach().clone()
                for m in model.modules()
                if isinstance(m, ActNorm)
            ]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(all_reduce_mean(loss.detach()))
    return {
        "losses": torch.stack(losses),
        "actnorm_init": actnorm_init,
        "state": {k: v.clone() for k, v in model.state_dict().items()},
    }


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    set_rank_env(rank, world_size, port)
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    ctx = setup_distributed(device="cpu")
    results: dict[str, object] = {mode: _train(ctx, mode) for mode in MODES}
    # Uneven evaluation shards: rank 0 holds 3 rows, rank 1 holds 2.
    part = torch.arange(3 - rank, dtype=torch.float64).unsqueeze(1) + 10 * rank
    results["gathered"] = gather_cat(part)
    if ctx.is_main:
        torch.save(results, Path(out_dir) / "results.pt")
    barrier()  # neither rank leaves the group while the other may still use it
    cleanup()


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with the gloo backend is not available")
    out_dir = tmp_path_factory.mktemp("ddp")
    spawn_ranks(_worker, 2, str(out_dir))
    return torch.load(out_dir / "results.pt")  # type: ignore[no-any-return]


@pytest.mark.parametrize("mode", MODES)
def test_ddp_training_equals_one_process(two_rank_results: dict, mode: str) -> None:
    single = _train(DistributedContext(0, 1, 0, torch.device("cpu")), mode)
    ddp = two_rank_results[mode]
    assert torch.allclose(ddp["losses"], single["losses"], rtol=1e-8)
    assert not torch.allclose(ddp["losses"][0], ddp["losses"][-1])  # it did train
    for key, value in single["state"].items():
        assert torch.allclose(ddp["state"][key], value, rtol=1e-8, atol=1e-10), key


def test_actnorm_init_under_two_ranks_uses_the_global_batch(two_rank_results: dict) -> None:
    single = _train(DistributedContext(0, 1, 0, torch.device("cpu")), "standard")
    ddp = two_rank_results["standard"]["actnorm_init"]
    assert len(ddp) == len(single["actnorm_init"]) == 4
    for got, expected in zip(ddp, single["actnorm_init"], strict=True):
        assert torch.allclose(got, expected, rtol=1e-10, atol=1e-12)
    # A per-rank init (the DataParallel failure) would differ from the global one.
    half = _global_batch()[shard_indices(GLOBAL_BATCH, 0, 2, seed=5)]
    first = ActNorm(12)
    first(glowlab.transforms.squeeze2d(half))
    assert not torch.allclose(torch.cat([first.loc, first.log_scale]), ddp[0], atol=1e-4)


def test_gather_cat_keeps_rank_order_and_uneven_sizes(two_rank_results: dict) -> None:
    expected = torch.tensor([[0.0], [1.0], [2.0], [10.0], [11.0]])
    assert torch.equal(two_rank_results["gathered"], expected)


def test_shard_indices_partition_each_global_batch() -> None:
    n, world, per_rank = 23, 3, 2
    shards = [shard_indices(n, r, world, seed=1, epoch=4) for r in range(world)]
    assert all(len(s) == n // world for s in shards)
    merged = torch.cat(shards)
    assert len(set(merged.tolist())) == len(merged)  # disjoint
    perm = torch.stack(shards, 1).flatten()  # interleave back: the permutation
    for i in range(n // world // per_rank):
        together = torch.cat([s[i * per_rank : (i + 1) * per_rank] for s in shards])
        global_batch = perm[i * per_rank * world : (i + 1) * per_rank * world]
        assert sorted(together.tolist()) == sorted(global_batch.tolist())
    assert not torch.equal(shard_indices(n, 0, world, 1, 4), shard_indices(n, 0, world, 1, 5))
    assert torch.equal(shard_indices(n, 0, world, 1, 4), shards[0])  # deterministic


def test_shard_indices_take_any_integer_seed() -> None:
    """A seed as large as time.time_ns() works, and a seed that fitted keeps its order."""
    big = shard_indices(10, 0, 2, seed=1_795_654_073_288_126_499)
    assert sorted(big.tolist()) == big.unique().tolist() and len(big) == 5
    expected = torch.randperm(10, generator=torch.Generator().manual_seed(-3 * 1_000_003 + 2))
    assert torch.equal(shard_indices(10, 1, 2, seed=-3, epoch=2), expected[1::2])


def test_shard_indices_padding_and_errors() -> None:
    shards = [shard_indices(10, r, 4, drop_last=False) for r in range(4)]
    assert all(len(s) == 3 for s in shards)
    assert set(torch.cat(shards).tolist()) == set(range(10))
    with pytest.raises(ValueError, match="rank"):
        shard_indices(10, 2, 2)


def test_single_process_helpers_are_identities(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    ctx = setup_distributed(device="cpu")
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.distributed) == (0, 1, True, False)
    t = torch.arange(4.0)
    assert all_reduce_mean(t) is t and gather_cat(t) is t
    barrier()
    cleanup()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="RANK"):
        setup_distributed(device="cpu")
