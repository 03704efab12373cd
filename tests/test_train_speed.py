"""The Trainer's fast paths (precision, compile, channels-last, memory modes) keep its losses."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import glowlab
import glowlab.speed
import glowlab.train
from glowlab import cli
from glowlab.config import TrainConfig, apply_overrides, get_preset
from glowlab.data import get_dataset
from glowlab.distributed import DistributedContext
from glowlab.errors import UsageError
from glowlab.runlog import read_log
from glowlab.train import Trainer, evaluate_bits_per_dim

TINY = [
    "model.levels=2",
    "model.steps=2",
    "model.hidden_channels=16",
    "data.max_train_images=128",
    "optim.warmup_steps=2",
    "train.batch_size=32",
    "train.init_batch_size=64",
    "train.log_every=1",
    "train.eval_every=0",
    "train.sample_every=0",
    "train.max_eval_images=64",
    "train.samples_per_row=2",
    "train.sample_temperatures=[0.7]",
    "train.progress=false",
    "train.tensorboard=false",
    "device=cpu",
]


@pytest.fixture(autouse=True)
def _float32() -> None:
    torch.set_default_dtype(torch.float32)  # the autouse fixture restores float64 afterwards


def _config(*overrides: str) -> TrainConfig:
    return apply_overrides(get_preset("glow-digits"), [*TINY, *overrides])


def _fit(run: Path, *overrides: str) -> tuple[list[float], float]:
    """The logged per-step losses and the final test bits/dim of a run."""
    result = Trainer(_config(*overrides), run).fit()
    losses = [r["loss_bpd"] for r in read_log(run / "log.jsonl") if r["kind"] == "train"]
    return losses, result["test_bpd"]


def test_bf16_training_keeps_the_float32_likelihood(tmp_path: Path) -> None:
    steps = ["train.steps=8", "optim.lr=5e-3"]  # long enough for the networks to matter
    losses, bpd = _fit(tmp_path / "bf16", *steps, "train.precision=bf16")
    reference, _ = _fit(tmp_path / "fp32", *steps)
    assert losses != reference  # the coupling networks really ran in bfloat16
    assert losses == pytest.approx(reference, abs=0.01)
    # The same weights, loaded as a plain model and evaluated in float32 throughout.
    model = glowlab.load(tmp_path / "bf16")
    weights = [t for t in model.state_dict().values() if t.is_floating_point()]
    assert weights and all(t.dtype == torch.float32 for t in weights)
    test = get_dataset("digits", "test")
    fp32 = evaluate_bits_per_dim(model, test.images, n_bits=8, max_images=64, seed=0)
    assert bpd != fp32.bpd and abs(bpd - fp32.bpd) < 0.01


def test_compiled_training_matches_eager(tmp_path: Path) -> None:
    # aot_eager traces every flow step through dynamo and AOT autograd without a compiler.
    compiled = ["train.compile=true", "train.compile_backend=aot_eager"]
    trainer = Trainer(_config("train.steps=2", *compiled), tmp_path / "compiled")
    layers = [layer for level in trainer.model.levels for layer in level.flow]
    assert all(layer._compiled_call_impl is not None for layer in layers)  # really compiled
    result = trainer.fit()
    log = read_log(tmp_path / "compiled" / "log.jsonl")
    losses, bpd = [r["loss_bpd"] for r in log if r["kind"] == "train"], result["test_bpd"]
    reference, reference_bpd = _fit(tmp_path / "eager", "train.steps=2")
    assert losses == pytest.approx(reference, rel=1e-5)
    assert bpd == pytest.approx(reference_bpd, rel=1e-5)
    assert (tmp_path / "compiled" / "samples" / "step-0000002.png").is_file()


def test_channels_last_and_memory_modes_compose(tmp_path: Path) -> None:
    nchw = ["train.steps=3", "train.precision=bf16", "train.channels_last=false"]
    reference, reference_bpd = _fit(tmp_path / "plain", *nchw)
    for mode in ("invertible", "checkpoint"):
        options = ["train.channels_last=true", f"train.memory_mode={mode}"]
        losses, bpd = _fit(tmp_path / mode, "train.steps=3", "train.precision=bf16", *options)
        assert losses == pytest.approx(reference, rel=1e-5), mode
        assert bpd == pytest.approx(reference_bpd, rel=1e-5), mode


def test_channels_last_keeps_the_losses(tmp_path: Path) -> None:
    losses, bpd = _fit(tmp_path / "nhwc", "train.steps=3", "train.channels_last=true")
    reference, reference_bpd = _fit(tmp_path / "nchw", "train.steps=3", "train.channels_last=false")
    assert losses == pytest.approx(reference, rel=1e-5)
    assert bpd == pytest.approx(reference_bpd, rel=1e-5)


def _stored_channels_last(trainer: Trainer) -> bool:
    convs = [p for p in trainer.model.parameters() if p.dim() == 4 and p.shape[-1] > 1]
    return all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)


def test_channels_last_is_the_cpu_default(tmp_path: Path) -> None:
    assert _config().train.channels_last is None
    default = Trainer(_config(), tmp_path / "default")
    assert default.channels_last and _stored_channels_last(default)
    assert default._next_batch()[0].is_contiguous(memory_format=torch.channels_last)
    off = Trainer(_config("train.channels_last=false"), tmp_path / "off")
    assert not off.channels_last and not _stored_channels_last(off)


@pytest.mark.parametrize(("setting", "calls"), [(None, 1), ("true", 1), ("false", 0)])
def test_keep_freed_memory_is_the_cpu_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setting: str | None, calls: int
) -> None:
    called: list[None] = []
    monkeypatch.setattr(glowlab.speed, "keep_freed_memory", lambda: called.append(None))
    overrides = [] if setting is None else [f"train.keep_freed_memory={setting}"]
    Trainer(_config(*overrides), tmp_path)
    assert len(called) == calls


def test_tf32_needs_cuda(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"train.precision=tf32 needs a CUDA device"):
        Trainer(_config("train.precision=tf32"), tmp_path)
    assert not (tmp_path / "config.json").exists()  # rejected before writing anything


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["train.compile=true", "train.compile_backend=aot_eagre"],
            r"train.compile_backend='aot_eagre' is not a torch.compile backend; choose one of "
            r"aot_eager, .*inductor",
        ),
        (
            ["model.name=realnvp", "model.res_blocks=1", "train.memory_mode=invertible"],
            r"train.memory_mode=invertible cannot train a model with BatchNormFlow layers.*"
            r"use train.memory_mode=checkpoint, or model.batch_norm=false",
        ),
    ],
)
def test_options_this_run_cannot_use_fail_before_writing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], overrides: list[str], message: str
) -> None:
    """Refused before the run folder holds anything, so the corrected command can use it."""
    with pytest.raises(ValueError, match=message):
        Trainer(_config(*overrides), tmp_path / "run")
    assert not (tmp_path / "run" / "config.json").exists()
    sets = [arg for item in [*TINY, *overrides] for arg in ("--set", item)]
    command = ["train", "--preset", "glow-digits", "--out", str(tmp_path / "run"), *sets]
    assert cli.main(command) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(message, err)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_batch_norm_trains_in_the_checkpoint_memory_mode(tmp_path: Path) -> None:
    realnvp = ["model.name=realnvp", "model.res_blocks=1", "train.steps=2"]
    losses, _ = _fit(tmp_path / "checkpoint", *realnvp, "train.memory_mode=checkpoint")
    reference, _ = _fit(tmp_path / "standard", *realnvp)
    assert losses == pytest.approx(reference, rel=1e-5)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.precision=bf16", "train.dtype=float64"], r"precision=bf16 needs train.dtype"),
        (["train.precision=tf32", "train.dtype=float64"], r"precision=tf32 needs train.dtype"),
        (["train.precision=fp16"], r"train.precision must be one of fp32, tf32, bf16"),
        (["train.compile_backend= "], r"train.compile_backend must be a backend name"),
        (["train.compile=yes"], r"train.compile must be true or false"),
    ],
)
def test_incompatible_options_are_rejected(overrides: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        _config(*overrides)


def test_global_batch_must_split_evenly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    three = DistributedContext(0, 3, 0, torch.device("cpu"))
    monkeypatch.setattr(glowlab.train, "_process_context", lambda device: three)
    with pytest.raises(ValueError, match=r"batch over all 3 processes.*multiple"):
        Trainer(_config("train.batch_size=32"), tmp_path)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("memory_mode", ["standard", "invertible", "checkpoint"])
def test_a_cuda_training_step_does_not_synchronise(tmp_path: Path, memory_mode: str) -> None:
    """CUDA raises on any host synchronisation inside the steps (the data is on the GPU)."""
    config = _config(
        "device=cuda", "optim.grad_clip=1.0", f"train.memory_mode={memory_mode}", "train.steps=4"
    )
    trainer = Trainer(config, tmp_path)
    trainer.train_step()  # the first step makes the optimizer's buffers
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        applied = [trainer.train_step()["applied"] for _ in range(3)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(bool(a) for a in applied)
