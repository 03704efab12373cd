"""The Trainer under two gloo processes equals one process with the same global batch.

Two CPU processes (as ``torchrun --nproc_per_node=2`` would start them) run the real
Trainer on a tiny Glow and the scikit-learn digits in float64: 3 steps, then a resume to
5. Their logged losses, ActNorm init and sharded test bits/dim must equal a one-process
run's, only rank 0 may write files, and the resumed run must continue the same losses.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

import glowlab.train
from conftest import train_losses
from glowlab.checkpoint import read_checkpoint
from glowlab.config import TrainConfig, apply_overrides, get_preset
from glowlab.data import get_dataset
from glowlab.distributed import barrier, cleanup
from glowlab.models import FlowModel
from glowlab.runlog import read_log
from glowlab.train import Trainer, evaluate_bits_per_dim
from glowlab.transforms import ActNorm
from ranks import set_rank_env, spawn_ranks

SETTINGS = [
    "model.levels=2",
    "model.steps=2",
    "model.hidden_channels=8",
    "data.max_train_images=96",
    "train.dtype=float64",
    "train.batch_size=16",  # the global batch: 8 images per process
    "train.init_batch_size=31",  # uneven shares (16 and 15): ActNorm counts the images
    "train.eval_batch_size=16",
    "train.max_eval_images=40",  # three test batches: two for rank 0, one for rank 1
    "train.log_every=1",
    "train.eval_every=2",
    "train.sample_every=0",
    "train.samples_per_row=2",
    "train.sample_temperatures=[0.5]",
    "train.checkpoint_every=2",
    "train.progress=false",
    "train.tensorboard=false",
    "optim.warmup_steps=2",
    "device=cpu",
]
FIRST, TOTAL = 3, 5


def _config(steps: int) -> TrainConfig:
    return apply_overrides(get_preset("glow-digits"), [*SETTINGS, f"train.steps={steps}"])


def _actnorm_parameters(model: FlowModel) -> list[torch.Tensor]:
    """Every ActNorm's (loc, log_scale), as set by the data-dependent init."""
    layers = [m for m in model.modules() if isinstance(m, ActNorm)]
    return [torch.cat([m.loc, m.log_scale]).detach().clone() for m in layers]


def _record_batches(model: FlowModel) -> list[tuple[bool, int, float]]:
    """Make ``model.evaluate`` note (training mode, batch size, sum of x) of every call."""
    calls: list[tuple[bool, int, float]] = []
    evaluate = model.evaluate

    def recorded(x: torch.Tensor, y: torch.Tensor | None = None) -> Any:
        calls.append((model.training, x.shape[0], float(x.double().sum())))
        return evaluate(x, y)

    model.evaluate = recorded  # type: ignore[method-assign]
    return calls


def _count_checkpoint_writes(calls: list[str]) -> None:
    write = glowlab.train.write_checkpoint

    def counted(path: Any, *args: Any, **kwargs: Any) -> Path:
        calls.append(str(path))
        return write(path, *args, **kwargs)

    glowlab.train.write_checkpoint = counted  # type: ignore[assignment]


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    set_rank_env(rank, world_size, port)
    torch.set_num_threads(1)
    calls: list[str] = []
    _count_checkpoint_writes(calls)
    run = Path(out_dir) / "run"
    trainer = Trainer(_config(FIRST), run)
    actnorm = _actnorm_parameters(trainer.model)
    batches = _record_batches(trainer.model)
    assert trainer.ema is not None  # evaluation uses the EMA weights
    evaluated = _record_batches(trainer.ema)
    first = trainer.fit()
    resumed = Trainer(_config(TOTAL), run, resume=True).fit()
    report = {
        "rank": rank,
        "world_size": trainer.ctx.world_size,
        "checkpoint_writes": len(calls),
        "batches": batches,
        "evaluated": [c[1] for c in evaluated],
        "first_bpd": first["test_bpd"],
        "resumed_bpd": resumed["test_bpd"],
    }
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(report))
    torch.save(actnorm, Path(out_dir) / f"actnorm{rank}.pt")
    barrier()  # neither process leaves the group while the other may still use it
    cleanup()


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with the gloo backend is not available")
    out_dir = tmp_path_factory.mktemp("ddp-trainer")
    spawn_ranks(_worker, 2, str(out_dir))
    return out_dir


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("one-process") / "run"
    trainer = Trainer(_config(TOTAL), run)
    actnorm = _actnorm_parameters(trainer.model)
    batches = _record_batches(trainer.model)
    result = trainer.fit()
    return {"run": run, "actnorm": actnorm, "test_bpd": result["test_bpd"], "batches": batches}


def test_two_processes_log_the_losses_of_one(two_processes: Path, one_process: dict) -> None:
    expected = train_losses(one_process["run"] / "log.jsonl")
    got = train_losses(two_processes / "run" / "log.jsonl")
    assert sorted(got) == sorted(expected) == list(range(1, TOTAL + 1))  # resumed at step 3
    for step, loss in expected.items():
        assert got[step] == pytest.approx(loss, rel=1e-10, abs=1e-10), step
    assert expected[1] != expected[TOTAL]  # it did train


def test_actnorm_init_and_sharded_evaluation_match(two_processes: Path, one_process: dict) -> None:
    for rank in (0, 1):  # every process initialised from the whole init batch
        actnorm = torch.load(two_processes / f"actnorm{rank}.pt")
        assert len(actnorm) == len(one_process["actnorm"]) == 4
        for got, expected in zip(actnorm, one_process["actnorm"], strict=True):
            assert torch.allclose(got, expected, rtol=1e-10, atol=1e-12)
    reports = [json.loads((two_processes / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in reports] == [2, 2]
    # Both processes report the gathered figure, equal to the one-process evaluation.
    for report in reports:
        assert report["resumed_bpd"] == pytest.approx(one_process["test_bpd"], rel=1e-10)
    assert reports[0]["first_bpd"] == reports[1]["first_bpd"]


def test_each_process_takes_its_share(two_processes: Path, one_process: dict) -> None:
    reports = [json.loads((two_processes / f"rank{r}.json").read_text()) for r in (0, 1)]
    single = one_process["batches"]
    train = [[c for c in r["batches"] if c[0]] for r in reports]
    assert [len(t) for t in train] == [FIRST, FIRST]
    for step, reference in enumerate(c for c in single if c[0]):
        if step == FIRST:
            break
        assert [t[step][1] for t in train] == [8, 8] and reference[1] == 16
        # The two shares hold the one-process batch: the same images and the same noise.
        assert train[0][step][2] + train[1][step][2] == pytest.approx(reference[2], rel=1e-12)
    # Test batches are dealt out: 16 + 8 images to rank 0, 16 to rank 1, per evaluation.
    evaluations = 2  # at step 2 and at the end of the first run
    assert reports[0]["evaluated"] == [16, 8] * evaluations
    assert reports[1]["evaluated"] == [16] * evaluations


def test_only_rank_zero_writes(two_processes: Path) -> None:
    reports = {r: json.loads((two_processes / f"rank{r}.json").read_text()) for r in (0, 1)}
    assert reports[0]["checkpoint_writes"] > 0 and reports[1]["checkpoint_writes"] == 0
    records = list(read_log(two_processes / "run" / "log.jsonl"))
    first_steps = [r for r in records if r["kind"] == "train" and r["step"] == 1]
    assert len(first_steps) == 1  # one writer: no duplicated records
    events = [r["message"] for r in records if r["kind"] == "event"]
    assert sum(m.startswith("resumed from") for m in events) == 1
    assert (two_processes / "run" / "checkpoints" / "best.json").is_file()
    assert (two_processes / "run" / "samples" / f"step-{TOTAL:07d}.png").is_file()


BATCH_NORM = [  # after SETTINGS: RealNVP with batch_norm=true, its default
    "model.name=realnvp",
    "model.res_blocks=1",
    "train.steps=3",
]


def _batch_norm_config() -> TrainConfig:
    return apply_overrides(get_preset("glow-digits"), [*SETTINGS, *BATCH_NORM])


def _batch_norm_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    set_rank_env(rank, world_size, port)
    torch.set_num_threads(1)
    trainer = Trainer(_batch_norm_config(), Path(out_dir) / "run")
    result = trainer.fit()
    stats = {
        name: {k: v for k, v in model.state_dict().items() if "running" in k}
        for name, model in (("model", trainer.model), ("ema", trainer.eval_model))
    }
    torch.save({"stats": stats, "bpd": result["test_bpd"]}, Path(out_dir) / f"bn{rank}.pt")
    barrier()
    cleanup()


def test_evaluation_uses_rank_zeros_batch_norm_statistics(tmp_path: Path) -> None:
    """Each process updates batch norm's running statistics with its own share; evaluation
    and checkpoints must see rank 0's, so that the logged test bits/dim is the checkpoint's."""
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with the gloo backend is not available")
    spawn_ranks(_batch_norm_worker, 2, str(tmp_path))
    ranks = [torch.load(tmp_path / f"bn{rank}.pt") for rank in (0, 1)]
    for name in ("model", "ema"):
        mine, theirs = ranks[0]["stats"][name], ranks[1]["stats"][name]
        assert mine and mine.keys() == theirs.keys()
        for key, value in mine.items():
            assert torch.equal(value, theirs[key]), (name, key)
    # The saved checkpoint, evaluated in one process with the same noise, gives the figure.
    config = _batch_norm_config()
    model = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.json").build_model("ema")
    one = evaluate_bits_per_dim(
        model.double(),
        get_dataset("digits", "test").images,
        n_bits=config.data.n_bits,
        batch_size=config.train.eval_batch_size,
        max_images=config.train.max_eval_images,
        seed=config.seed,
    )
    assert ranks[0]["bpd"] == ranks[1]["bpd"] == pytest.approx(one.bpd, rel=1e-12)
