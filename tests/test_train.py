"""Training: configs and presets, an end-to-end run on real MNIST, exact resume after SIGKILL,
and the non-finite-loss guard with rollback."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import glowlab
from conftest import train_losses
from glowlab import cli
from glowlab.checkpoint import CheckpointError
from glowlab.config import (
    PRESETS,
    TrainConfig,
    apply_overrides,
    get_preset,
    load_config,
    save_config,
)
from glowlab.errors import UsageError
from glowlab.runlog import read_log
from glowlab.train import EvalResult, Trainer, TrainingError, _rng_state, _set_rng_state
from glowlab.transforms import BatchNormFlow

TINY = [
    "model.levels=2",
    "model.steps=2",
    "model.hidden_channels=16",
    "train.batch_size=32",
    "train.init_batch_size=64",
    "train.log_every=1",
    "train.eval_every=0",
    "train.sample_every=0",
    "train.max_eval_images=64",
    "train.samples_per_row=4",
    "train.progress=false",
    "train.tensorboard=false",
    "device=cpu",
]


def _digits(*overrides: str) -> TrainConfig:
    base = ["data.max_train_images=128", "optim.warmup_steps=5", *TINY, *overrides]
    return apply_overrides(get_preset("glow-digits"), base)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models train fastest on one thread, and far faster so when cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- configuration ---------------------------------------------------------------------
def test_presets_are_complete() -> None:
    required = {"glow-cifar10", "glow-cifar10-additive", "glow-mnist", "realnvp-cifar10"}
    assert required | {"nice-mnist", "glow-celeba64", "glow-digits"} <= set(PRESETS)
    c = PRESETS["glow-cifar10"]
    assert (c.model.name, c.data.name, c.data.n_bits, c.optim.name, c.optim.lr) == (
        "glow", "cifar10", 8, "adamax", 1e-3,
    )  # fmt: skip
    options = c.model.options
    assert (options["levels"], options["steps"], options["hidden_channels"]) == (3, 32, 512)
    assert (options["coupling"], options["permutation"], options["learn_top"]) == (
        "affine", "conv1x1_lu", True,
    )  # fmt: skip
    assert c.optim.warmup_steps > 0
    assert PRESETS["glow-cifar10-additive"].model.options["coupling"] == "additive"
    celeba = PRESETS["glow-celeba64"]
    assert (celeba.data.n_bits, celeba.model.options["coupling"]) == (5, "additive")
    for name, preset in PRESETS.items():
        assert TrainConfig.from_dict(preset.to_dict()) == preset, name


def test_overrides_reach_every_section() -> None:
    config = apply_overrides(
        get_preset("glow-cifar10"),
        ["model.steps=8", "train.batch_size=32", "optim.betas=[0.9, 0.99]", "seed=3",
         "model.coupling=additive", "data.random_shift=2", "optim.grad_clip=null"],
    )  # fmt: skip
    assert config.model.options["steps"] == 8 and config.model.options["coupling"] == "additive"
    assert config.train.batch_size == 32 and config.optim.betas == (0.9, 0.99)
    assert config.seed == 3 and config.data.random_shift == 2 and config.optim.grad_clip is None
    assert get_preset("glow-cifar10").model.options["steps"] == 32  # presets are not mutated
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.batch_size=abc", "train.batch_size must be an integer"),
        ("train.batch_size=0", "train.batch_size must be > 0"),
        ("model.widht=3", "model 'glow' has no option 'widht'"),
        ("optim.name=sgd", "optim.name must be one of adam, adamw, adamax"),
        ("nonsense=1", "unknown config field 'nonsense'"),
        ("train.steps", "must look like NAME=VALUE"),
        ("data.n_bits=9", "data.n_bits must be an integer from 1 to 8"),
        ("train.sample_temperatures=[]", "train.sample_temperatures must be a non-empty list"),
        ("train.sample_temperatures=[0.7, Infinity]", "sample_temperatures must be finite"),
        ("train.class_weight=Infinity", "train.class_weight must be finite and >= 0, got inf"),
        ("optim.lr=Infinity", "optim.lr must be finite and > 0, got inf"),
        ("optim.eps=Infinity", "optim.eps must be finite and > 0, got inf"),
        ("optim.weight_decay=Infinity", "optim.weight_decay must be finite and >= 0, got inf"),
        ("seed=-1", r"seed must be in \[0, 2\*\*63 - 1\], got -1"),
        ("seed=9223372036854775808", r"seed must be in \[0, 2\*\*63 - 1\]"),
        ("model.name=nice", None),
    ],
)
def test_bad_overrides_are_rejected(override: str, message: str | None) -> None:
    if message is None:  # switching models drops the options of the old one
        assert apply_overrides(get_preset("glow-mnist"), [override]).model.options == {}
        return
    with pytest.raises(UsageError, match=message):
        apply_overrides(get_preset("glow-mnist"), [override])


def test_config_file_round_trip(tmp_path: Path) -> None:
    config = _digits("seed=7")
    save_config(config, tmp_path / "c.json")
    assert load_config(tmp_path / "c.json") == config
    (tmp_path / "partial.json").write_text('{"preset": "glow-mnist", "train": {"steps": 5}}')
    partial = load_config(tmp_path / "partial.json")
    assert partial.train.steps == 5 and partial.model == get_preset("glow-mnist").model


def test_a_config_file_merges_the_model_options_it_holds(tmp_path: Path) -> None:
    """Like --set model.steps=4, a file with some options keeps the preset's others."""
    preset = get_preset("glow-digits")
    (tmp_path / "partial.json").write_text('{"model": {"options": {"steps": 4}}}')
    config = load_config(tmp_path / "partial.json", base=preset)
    assert config == apply_overrides(preset, ["model.steps=4"])
    assert config.model.options == {**preset.model.options, "steps": 4}
    (tmp_path / "other.json").write_text('{"model": {"name": "nice", "options": {"couplings": 2}}}')
    assert load_config(tmp_path / "other.json", base=preset).model.options == {"couplings": 2}
    # A manifest's options are those its run was built with, not merged with its preset's.
    run = dataclasses.replace(preset, model=dataclasses.replace(preset.model, options={}))
    manifest = {"train_config": run.to_dict()}
    (tmp_path / "last.json").write_text(json.dumps(manifest))
    assert load_config(tmp_path / "last.json").model.options == {}
    # Nor are a run's config.json's, with the preset given again (--preset P --config F).
    save_config(run, tmp_path / "config.json")
    assert load_config(tmp_path / "config.json", base=preset).model.options == {}


def test_an_unusable_run_folder_fails_before_the_data_is_loaded(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    import glowlab.data

    loaded: list[str] = []
    get_dataset = glowlab.data.get_dataset

    def counted(name, *args, **kwargs):
        loaded.append(name)
        return get_dataset(name, *args, **kwargs)

    monkeypatch.setattr(glowlab.data, "get_dataset", counted)
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "run"  # below a file: it cannot be created
    with pytest.raises(OSError, match="cannot write the run folder"):
        Trainer(_digits(), out)
    assert loaded == []
    capsys.readouterr()
    assert cli.main(["train", "--preset", "glow-digits", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write the run folder" in err
    assert loaded == []


def test_data_order_depends_only_on_seed_and_epoch(tmp_path: Path) -> None:
    torch.set_default_dtype(torch.float32)
    a = Trainer(_digits(), tmp_path / "a")
    b = Trainer(_digits(), tmp_path / "b")
    assert torch.equal(a._epoch_order(3), b._epoch_order(3))
    assert not torch.equal(a._epoch_order(3), a._epoch_order(4))


# -- end to end on real MNIST ----------------------------------------------------------------
def test_train_eval_sample_on_mnist(shared_data: Path, tmp_path: Path, capsys) -> None:
    torch.set_default_dtype(torch.float32)
    config = apply_overrides(
        get_preset("glow-mnist"),
        [*TINY, f"data.data_dir={shared_data}", "data.image_size=null",
         "data.max_train_images=256", "train.steps=12", "optim.warmup_steps=4",
         "train.eval_every=6", "train.sample_every=6", "train.log_every=4"],
    )  # fmt: skip
    run = tmp_path / "run"
    result = Trainer(config, run).fit()
    assert result["step"] == 12
    assert 0 < result["test_bpd"] < 8 and 0 < result["test_bpd_sem"] < 0.5
    records = list(read_log(run / "log.jsonl"))
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [4, 8, 12]
    for r in train:  # the three terms add up to the loss
        assert r["prior_bpd"] + r["logdet_bpd"] + r["dequant_bpd"] == pytest.approx(r["loss_bpd"])
        assert {"grad_norm", "lr", "images_per_s", "epoch"} <= set(r)
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [6, 12] and evals[-1]["n_images"] == 64
    assert (run / "samples" / "step-0000006.png").is_file()
    assert json.loads((run / "config.json").read_text()) == config.to_dict()

    model = glowlab.load(run)
    assert model.image_shape == (1, 28, 28)
    from glowlab.data import get_dataset

    test = get_dataset("mnist", "test", data_dir=shared_data)
    bpd = glowlab.bits_per_dim(model, test.images[:64]).mean().item()
    assert bpd == pytest.approx(result["test_bpd"], abs=0.05)

    capsys.readouterr()
    assert cli.main(["eval", str(run), "--max-images", "64", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n_images"] == 64 and report["bpd"] == pytest.approx(result["test_bpd"], abs=0.05)
    out = tmp_path / "grid.png"
    assert cli.main(["sample", str(run), "--n", "4", "--sweep", "--out", str(out)]) == 0
    assert out.read_bytes().startswith(b"\x89PNG")


def test_class_conditional_training(tmp_path: Path) -> None:
    torch.set_default_dtype(torch.float32)
    config = _digits("model.num_classes=10", "train.steps=4", "train.class_weight=0.5")
    trainer = Trainer(config, tmp_path)
    result = trainer.fit()
    records = [r for r in read_log(tmp_path / "log.jsonl") if r["kind"] == "train"]
    assert all(r["class_ce"] > 0 for r in records)
    assert result["evaluation"].accuracy is not None
    assert glowlab.load(tmp_path).num_classes == 10


# -- exact resume after SIGKILL -----------------------------------------------------------------
def _train_command(out: Path, steps: int, *extra: str) -> list[str]:
    sets = ["data.max_train_images=128", "optim.warmup_steps=5", *TINY, "train.checkpoint_every=5",
            "train.keep_best=false", f"train.steps={steps}"]  # fmt: skip
    command = [
        sys.executable,
        "-m",
        "glowlab",
        "train",
        "--preset",
        "glow-digits",
        "--out",
        str(out),
    ]
    return command + [arg for s in sets for arg in ("--set", s)] + list(extra)


def test_resume_after_sigkill_reproduces_the_losses(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    reference = tmp_path / "reference"
    subprocess.run(_train_command(reference, 25), env=env, check=True, capture_output=True)

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        _train_command(killed, 10_000),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    manifest = killed / "checkpoints" / "last.json"
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if manifest.is_file() and json.loads(manifest.read_text())["train_state"]["step"] >= 5:
                break
            time.sleep(0.005)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    stopped_at = json.loads(manifest.read_text())["train_state"]["step"]
    assert 5 <= stopped_at < 25

    resume = [sys.executable, "-m", "glowlab", "train", "--out", str(killed), "--resume",
              "--set", "train.steps=25", "--no-progress"]  # fmt: skip
    subprocess.run(resume, env=env, check=True, capture_output=True)
    expected, got = train_losses(reference / "log.jsonl"), train_losses(killed / "log.jsonl")
    assert sorted(got) == sorted(expected) == list(range(1, 26))
    assert got == expected  # exact equality, step by step
    events = [r["message"] for r in read_log(killed / "log.jsonl") if r["kind"] == "event"]
    assert any(m.startswith("resumed from") and f"step {stopped_at}" in m for m in events)


def test_a_resume_continues_the_log_interval(tmp_path: Path) -> None:
    """A checkpoint between two train records carries the interval's sums: the first record
    after a resume averages the same steps as the uninterrupted run's."""
    torch.set_default_dtype(torch.float32)
    config = _digits("train.steps=12", "train.log_every=4", "train.checkpoint_every=6")
    Trainer(config, tmp_path / "reference").fit()

    class Killed(Exception):
        pass

    trainer = Trainer(config, tmp_path / "killed")
    save = trainer.save_checkpoint

    def save_and_stop(name: str = "last") -> Path:
        path = save(name)
        if trainer.state.step == 6:
            raise Killed
        return path

    trainer.save_checkpoint = save_and_stop  # type: ignore[method-assign]
    with pytest.raises(Killed):
        trainer.fit()
    trainer.log.close()
    last = json.loads((tmp_path / "killed" / "checkpoints" / "last.json").read_text())
    assert last["train_state"]["log_count"] == 2  # steps 5 and 6
    Trainer(config, tmp_path / "killed", resume=True).fit()
    expected = train_losses(tmp_path / "reference" / "log.jsonl")
    assert train_losses(tmp_path / "killed" / "log.jsonl") == expected
    assert sorted(expected) == [4, 8, 12]


def test_resume_refuses_another_model(tmp_path: Path, capsys) -> None:
    torch.set_default_dtype(torch.float32)
    Trainer(_digits("train.steps=1"), tmp_path).fit()
    config_file = (tmp_path / "config.json").read_text()
    with pytest.raises(CheckpointError, match=r"config differs.*model"):
        Trainer(_digits("model.hidden_channels=8"), tmp_path, resume=True)
    assert (tmp_path / "config.json").read_text() == config_file  # checked before writing
    # Another optimizer class would get this one's state and fail at its first step.
    message = "config differs (optim.name: 'adamax' in the checkpoint, 'adam' now)"
    with pytest.raises(CheckpointError, match=re.escape(message)):
        Trainer(_digits("optim.name=adam"), tmp_path, resume=True)
    assert (tmp_path / "config.json").read_text() == config_file
    capsys.readouterr()
    resume = ["train", "--out", str(tmp_path), "--resume", "--set", "optim.name=adam"]
    assert cli.main([*resume, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    with pytest.raises(ValueError, match="already holds a run"):
        Trainer(_digits(), tmp_path)
    with pytest.raises(FileNotFoundError, match="cannot resume"):
        Trainer(_digits(), tmp_path / "empty", resume=True)


def test_two_runs_cannot_share_a_run_folder(tmp_path: Path, monkeypatch, capsys) -> None:
    """A Trainer claims its folder until fit ends; a fresh run checks for a run again once it
    holds the claim, since another may have started (and ended) there since its first check."""
    torch.set_default_dtype(torch.float32)
    first = Trainer(_digits("train.steps=1"), tmp_path / "run")
    with pytest.raises(ValueError, match="is in use by another run"):
        Trainer(_digits("train.steps=2"), tmp_path / "run", resume=True)
    capsys.readouterr()
    resume = ["train", "--out", str(tmp_path / "run"), "--resume", "--no-progress"]
    assert cli.main(resume) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is in use by another run" in err
    first.fit()
    Trainer(_digits("train.steps=2"), tmp_path / "run", resume=True).fit()  # released

    import glowlab.data

    get_dataset = glowlab.data.get_dataset
    raced: list[bool] = []

    def another_run_meanwhile(*args, **kwargs):
        if not raced:  # while this run loads its data, another starts and ends in the folder
            raced.append(True)
            Trainer(_digits("train.steps=1"), tmp_path / "race").fit()
        return get_dataset(*args, **kwargs)

    monkeypatch.setattr(glowlab.data, "get_dataset", another_run_meanwhile)
    with pytest.raises(ValueError, match="already holds a run"):
        Trainer(_digits("seed=5"), tmp_path / "race")
    assert raced  # and the other run's files are as it left them:
    assert json.loads((tmp_path / "race" / "config.json").read_text())["seed"] != 5


def test_resume_notes_changes_that_break_exact_resume(tmp_path: Path) -> None:
    torch.set_default_dtype(torch.float32)
    Trainer(_digits("train.steps=1"), tmp_path).fit()
    Trainer(_digits("train.batch_size=16", "data.max_train_images=96"), tmp_path, resume=True)
    events = [r["message"] for r in read_log(tmp_path / "log.jsonl") if r["kind"] == "event"]
    notes = [m for m in events if "not exactly as the uninterrupted run" in m]
    assert len(notes) == 2
    assert "train.batch_size: 32 in the checkpoint, 16 now" in notes[0]
    assert "data.max_train_images: 128 in the checkpoint, 96 now" in notes[1]


def test_resume_takes_the_optimizer_settings_from_the_config(tmp_path: Path) -> None:
    """load_state_dict restores the saved groups' betas, eps and weight decay: the config's
    values must replace them, or config.json would describe settings that are not used."""
    torch.set_default_dtype(torch.float32)
    Trainer(_digits("train.steps=1"), tmp_path).fit()
    same = Trainer(_digits("train.steps=2"), tmp_path, resume=True).optimizer.param_groups[0]
    assert same["betas"] == (0.9, 0.999)
    changed = ["optim.betas=[0.5, 0.6]", "optim.eps=0.1", "optim.weight_decay=0.5"]
    trainer = Trainer(_digits("train.steps=2", *changed), tmp_path, resume=True)
    group = trainer.optimizer.param_groups[0]
    assert (group["betas"], group["eps"], group["weight_decay"]) == ((0.5, 0.6), 0.1, 0.5)
    events = [r["message"] for r in read_log(tmp_path / "log.jsonl") if r["kind"] == "event"]
    notes = [m for m in events if m.startswith("resuming with optim.")]
    assert notes == [
        "resuming with optim.betas: (0.9, 0.999) in the checkpoint, (0.5, 0.6) now: "
        "the optimizer uses the new value",
        "resuming with optim.eps: 1e-08 in the checkpoint, 0.1 now: the optimizer uses the "
        "new value",
        "resuming with optim.weight_decay: 0.0 in the checkpoint, 0.5 now: the optimizer uses "
        "the new value",
    ]


def test_resumed_ema_follows_the_config(tmp_path: Path) -> None:
    torch.set_default_dtype(torch.float32)
    Trainer(_digits("train.steps=1"), tmp_path / "ema").fit()  # the preset keeps an EMA
    off = Trainer(_digits("train.steps=1", "optim.ema_decay=null"), tmp_path / "ema", resume=True)
    assert off.ema is None and off.eval_model is off.model
    Trainer(_digits("train.steps=1", "optim.ema_decay=null"), tmp_path / "plain").fit()
    on = Trainer(_digits("train.steps=1"), tmp_path / "plain", resume=True)
    assert on.ema is not None and on.eval_model is on.ema
    for a, b in zip(on.ema.state_dict().values(), on.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # the average starts from the restored weights
    for run, expected in (("ema", "EMA weights are dropped"), ("plain", "has no EMA weights")):
        events = [r.get("message") for r in read_log(tmp_path / run / "log.jsonl")]
        assert any(expected in str(m) for m in events), run


@pytest.mark.parametrize("failing", ["evaluate", "save_samples"])
def test_the_final_checkpoint_is_saved_before_evaluation_and_samples(
    tmp_path: Path, failing: str
) -> None:
    torch.set_default_dtype(torch.float32)
    trainer = Trainer(_digits("train.steps=2"), tmp_path)

    def fail(*args, **kwargs):
        raise OSError("disk full")

    setattr(trainer, failing, fail)
    with pytest.raises(OSError, match="disk full"):
        trainer.fit()
    last = json.loads((tmp_path / "checkpoints" / "last.json").read_text())
    assert last["train_state"]["step"] == 2  # the end of training is kept


def test_resume_keeps_the_best_of_the_final_evaluation(tmp_path: Path) -> None:
    torch.set_default_dtype(torch.float32)
    result = Trainer(_digits("train.steps=1"), tmp_path).fit()
    best = json.loads((tmp_path / "checkpoints" / "best.json").read_text())
    assert best["train_state"]["best_bpd"] == result["test_bpd"]
    # `last` was written before the final evaluation found that figure.
    resumed = Trainer(_digits("train.steps=2"), tmp_path, resume=True)
    assert resumed.state.best_bpd == result["test_bpd"]


def test_best_checkpoint_needs_a_finite_figure_and_survives_a_rollback(tmp_path: Path) -> None:
    torch.set_default_dtype(torch.float32)
    trainer = Trainer(_digits("train.steps=4"), tmp_path)
    figures = iter([math.nan, 5.0, math.inf])
    trainer.evaluate = lambda: EvalResult(next(figures), 0.0, 0.0, 0.0, 1, 1)  # type: ignore[method-assign]
    best = tmp_path / "checkpoints" / "best.json"
    trainer._evaluate_and_log(final=False)
    assert trainer.state.best_bpd is None and not best.is_file()
    trainer._evaluate_and_log(final=False)
    assert trainer.state.best_bpd == 5.0 and best.is_file()
    trainer._evaluate_and_log(final=False)
    assert trainer.state.best_bpd == 5.0
    # `last` (step 0) was written before `best`: a rollback must not forget it.
    trainer._rollback(failures=2)
    assert trainer.state.rollbacks == 1 and trainer.state.best_bpd == 5.0


def test_the_log_is_strict_json_when_a_figure_is_not_finite(tmp_path: Path) -> None:
    """JSON has no NaN: a non-finite figure is written as null and read back as NaN."""
    torch.set_default_dtype(torch.float32)
    trainer = Trainer(_digits("train.steps=1"), tmp_path)
    figures = iter([(math.nan, math.inf)])
    trainer.evaluate = lambda: EvalResult(*next(figures), -math.inf, 1.0, 1, 1)  # type: ignore[method-assign]
    trainer._evaluate_and_log(final=False)
    trainer.log.close()

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    raw = [json.loads(line, parse_constant=refuse) for line in lines]
    assert [r["test_bpd"] for r in raw if r["kind"] == "eval"] == [None]
    (record,) = [r for r in read_log(tmp_path / "log.jsonl") if r["kind"] == "eval"]
    assert all(math.isnan(record[k]) for k in ("test_bpd", "test_bpd_sem", "prior_bpd"))
    assert record["logdet_bpd"] == 1.0 and record["accuracy"] is None


def test_cuda_rng_states_restore_on_the_devices_there_are(monkeypatch) -> None:
    generator = torch.Generator()
    state = _rng_state(generator)
    state["cuda"] = [torch.full((16,), i, dtype=torch.uint8) for i in range(4)]  # 4 GPUs
    state["generator"] = torch.zeros(16, dtype=torch.uint8)  # a CUDA generator's state
    restored: list[list[torch.Tensor]] = []
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _set_rng_state(state, generator)  # CPU only: the CUDA states are not needed
    assert restored == []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    _set_rng_state(state, generator)
    assert len(restored) == 1 and [int(s[0]) for s in restored[0]] == [0, 1]


# -- the non-finite guard -------------------------------------------------------------------------
def _poison(trainer: Trainer, bad_calls: set[int] | None) -> list[int]:
    """Make the training loss NaN on the given training-mode calls (all of them for None)."""
    calls: list[int] = []
    evaluate = trainer.model.evaluate

    def poisoned(x, y=None):
        out = evaluate(x, y)
        if trainer.model.training:
            calls.append(len(calls) + 1)
            if bad_calls is None or calls[-1] in bad_calls:
                out.prior_log_prob = out.prior_log_prob * math.nan
        return out

    trainer.model.evaluate = poisoned  # type: ignore[method-assign]
    return calls


def test_a_non_finite_step_is_rejected_without_an_update(tmp_path: Path) -> None:
    torch.set_default_dtype(torch.float32)
    trainer = Trainer(_digits("train.steps=3"), tmp_path)
    _poison(trainer, {1})
    before = [p.detach().clone() for p in trainer.model.parameters()]
    ema_before = [p.clone() for p in trainer.ema.parameters()]
    assert not bool(trainer.train_step()["applied"])
    assert trainer.state.step == 1  # the step counts, with no update
    for p, q in zip(trainer.model.parameters(), before, strict=True):
        assert torch.equal(p, q)
    for p, q in zip(trainer.ema.parameters(), ema_before, strict=True):
        assert torch.equal(p, q)
    state = trainer.optimizer.state[trainer.params[0]]
    assert float(state["step"]) == 0 and not state["exp_avg"].any()
    assert trainer._running_stats == []  # Glow: nothing to save around a step
    assert bool(trainer.train_step()["applied"])
    assert trainer.state.step == 2 and float(state["step"]) == 1


def test_a_huge_finite_gradient_is_rejected_and_leaves_no_trace(tmp_path: Path) -> None:
    """A gradient of 1e21 overflows the float32 norm: the step is rejected, and the inf it
    puts in Adam's candidate second moment must not reach the weights at the next step."""
    torch.set_default_dtype(torch.float32)
    config = _digits("train.steps=3", "optim.name=adam", "optim.grad_clip=null")  # no clip
    trainer = Trainer(config, tmp_path)
    clip = trainer.optimizer.clip_grad_norm_
    calls = []

    def spiked(max_norm=None):
        calls.append(1)
        if len(calls) == 1:
            trainer.params[0].grad.view(-1)[0] = 1e21
        return clip(max_norm)

    trainer.optimizer.clip_grad_norm_ = spiked  # type: ignore[method-assign]
    assert [bool(trainer.train_step()["applied"]) for _ in range(2)] == [False, True]
    for model in (trainer.model, trainer.ema):
        assert all(torch.isfinite(p).all() for p in model.parameters())


def test_training_steps_read_nothing_back_between_log_intervals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The non-finite guard, the EMA and the logged sums stay on the device: no tensor
    becomes a Python value inside a step (on a GPU each would wait for the step to end)."""
    torch.set_default_dtype(torch.float32)
    trainer = Trainer(_digits("train.steps=4", "optim.grad_clip=1.0"), tmp_path)
    _poison(trainer, {2})
    trainer.train_step()  # the first step makes the optimizer's buffers

    def forbidden(*args, **kwargs):
        raise AssertionError("a host read-back inside a training step")

    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    applied = [trainer.train_step()["applied"] for _ in range(3)]
    monkeypatch.undo()
    assert [bool(a) for a in applied] == [False, True, True]


def test_a_rejected_step_keeps_the_batch_norm_statistics(tmp_path: Path) -> None:
    """Training-mode batch norm updates its running statistics in the forward pass, before
    the step is found non-finite: they are put back, or eval and the EMA would turn NaN."""
    torch.set_default_dtype(torch.float32)
    realnvp = ["model.name=realnvp", "model.levels=2", "model.hidden_channels=8"]
    trainer = Trainer(_digits(*realnvp, "model.res_blocks=1", "train.steps=3"), tmp_path)
    norms = [m for m in trainer.model.modules() if isinstance(m, BatchNormFlow | nn.BatchNorm2d)]
    assert {type(m) for m in norms} == {BatchNormFlow, nn.BatchNorm2d}
    stats = [b for m in norms for b in m.buffers(recurse=False)]
    trainer.train_step()
    before = [b.clone() for b in stats]
    next_batch = trainer._next_batch

    def non_finite_batch():
        x, y = next_batch()
        x = x.clone()
        x[0, 0, 0, 0] = math.nan
        return x, y

    trainer._next_batch = non_finite_batch  # type: ignore[method-assign]
    assert not bool(trainer.train_step()["applied"])
    for buffer, saved in zip(stats, before, strict=True):
        assert torch.equal(buffer, saved)
    trainer._next_batch = next_batch  # type: ignore[method-assign]
    assert bool(trainer.train_step()["applied"])  # the EMA copies the statistics
    assert math.isfinite(trainer.evaluate().bpd)


def test_repeated_failures_roll_back_with_a_lower_learning_rate(tmp_path: Path) -> None:
    torch.set_default_dtype(torch.float32)
    config = _digits("train.steps=8", "train.checkpoint_every=2", "train.nan_patience=2")
    trainer = Trainer(config, tmp_path)
    # Step 3 is a lone failure; steps 5 and 6 are two in a row, found at the check after
    # step 6 (a checkpoint boundary), which rolls back to the checkpoint of step 4.
    _poison(trainer, {3, 5, 6})
    result = trainer.fit()
    assert result["step"] == 8 and trainer.state.rollbacks == 1 and trainer.state.lr_scale == 0.5
    assert trainer.state.rejected == 3
    events = [r for r in read_log(tmp_path / "log.jsonl") if r["kind"] == "event"]
    rejected = [r for r in events if r["message"].startswith("rejected step")]
    assert [r["step"] for r in rejected] == [3, 5, 6]
    assert "no update" in rejected[0]["message"] and "(2 in a row)" in rejected[2]["message"]
    rollback = [r["message"] for r in events if r["message"].startswith("rolled back")]
    assert len(rollback) == 1
    assert (
        "rolled back from step 6 to the checkpoint at step 4" in rollback[0]
        and "learning rate scaled by 0.5" in rollback[0]
    )
    train = [r for r in read_log(tmp_path / "log.jsonl") if r["kind"] == "train"]
    assert train[-1]["lr"] == pytest.approx(0.5 * config.optim.lr)


def test_a_run_of_failures_across_two_checks_rolls_back(tmp_path: Path) -> None:
    """The accept flags are read every log_every steps: four failures in a row, two before
    the check at step 4 and two after it, are one run, found at the check after step 8."""
    torch.set_default_dtype(torch.float32)
    config = _digits(
        "train.steps=8", "train.log_every=4", "train.checkpoint_every=4", "train.nan_patience=4"
    )
    trainer = Trainer(config, tmp_path)
    _poison(trainer, {3, 4, 5, 6})
    trainer.fit()
    assert trainer.state.rollbacks == 1 and trainer.state.rejected == 4
    events = [r for r in read_log(tmp_path / "log.jsonl") if r["kind"] == "event"]
    rejected = [r for r in events if r["message"].startswith("rejected step")]
    assert [r["step"] for r in rejected] == [3, 4, 5, 6]
    assert "(4 in a row)" in rejected[-1]["message"]
    rollback = [r["message"] for r in events if r["message"].startswith("rolled back")]
    assert len(rollback) == 1 and "from step 8 to the checkpoint at step 4" in rollback[0]


def test_a_resume_continues_a_run_of_failures(tmp_path: Path) -> None:
    """A checkpoint written inside a run of rejections carries the count: the resumed run
    rolls back where the uninterrupted one does."""
    torch.set_default_dtype(torch.float32)
    sets = ["train.log_every=2", "train.checkpoint_every=4", "train.nan_patience=4"]

    def poisoned(steps: int, resume: bool) -> Trainer:
        trainer = Trainer(_digits(f"train.steps={steps}", *sets), tmp_path, resume=resume)
        evaluate = trainer.model.evaluate

        def step_poisoned(x, y=None):  # steps 3 to 6 fail, whichever process runs them
            out = evaluate(x, y)
            if trainer.model.training and 3 <= trainer.state.step + 1 <= 6:
                out.prior_log_prob = out.prior_log_prob * math.nan
            return out

        trainer.model.evaluate = step_poisoned  # type: ignore[method-assign]
        return trainer

    poisoned(4, resume=False).fit()  # stops after the checkpoint of step 4, two in a row
    last = json.loads((tmp_path / "checkpoints" / "last.json").read_text())
    assert last["train_state"]["rejected_in_a_row"] == 2
    trainer = poisoned(8, resume=True)
    trainer.fit()
    assert trainer.state.rollbacks == 1 and trainer.state.lr_scale == 0.5
    assert trainer.state.rejected_in_a_row == 0
    events = [r["message"] for r in read_log(tmp_path / "log.jsonl") if r["kind"] == "event"]
    assert "rejected step 6: non-finite loss or gradient (4 in a row); no update" in events
    assert any(m.startswith("rolled back from step 6 to the checkpoint at step 4") for m in events)


def test_persistent_failures_stop_with_a_clear_error(tmp_path: Path) -> None:
    torch.set_default_dtype(torch.float32)
    config = _digits("train.steps=5", "train.nan_patience=2", "train.max_rollbacks=2")
    trainer = Trainer(config, tmp_path)
    _poison(trainer, None)
    with pytest.raises(TrainingError, match=r"training diverged.*after 2 rollbacks"):
        trainer.fit()
    events = [r for r in read_log(tmp_path / "log.jsonl") if r["kind"] == "event"]
    assert sum("rollback" in r for r in events) == 2 and events[-1].get("stopped")
