"""The command line: complete --help, one-line errors with exit code 2, and real runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import glowlab
from glowlab import cli


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models train fastest on one thread, and far faster so when cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


COMMANDS = ["demo", "train", "eval", "sample"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: glowlab {command}")
    expected = {
        "demo": ["--out", "--steps", "temperatures", "--device"],
        "train": ["--preset", "--set NAME=VALUE", "--resume", "--config", "glow-cifar10",
                  "train.batch_size", "optim.warmup_steps", "model options", "glow:", "nice:"],
        "eval": ["CKPT", "--data", "--draws", "standard error", "--raw"],
        "sample": ["CKPT", "--n", "--temperature", "--sweep", "--out"],
    }[command]  # fmt: skip
    for fragment in expected:
        assert fragment in text, fragment


def test_train_help_lists_every_config_field(capsys) -> None:
    from glowlab.config import config_fields

    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = capsys.readouterr().out
    for name, *_ in config_fields():
        if name != "model.options":
            assert f"  {name} " in text, name


def test_python_m_glowlab_help() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "glowlab", "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    for command in COMMANDS:
        assert command in done.stdout


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--preset", "nope"], "invalid choice: 'nope'"),
        (["train", "--set", "train.batch_size=x"], "train.batch_size must be an integer"),
        (["train", "--set", "model.bogus=1"], "model 'glow' has no option 'bogus'"),
        (["train", "--resume"], "--resume needs --out DIR"),
        (
            ["train", "--resume", "--out", "NOWHERE", "--preset", "glow-mnist"],
            "--resume takes the config",
        ),
        (["train", "--resume", "--out", "NOWHERE"], "does not exist"),
        (["train", "--config", "NOWHERE.json"], "does not exist"),
        (["train", "--steps", "many"], "invalid int value"),
        (["eval", "NOWHERE.json"], "does not exist"),
        (["eval"], "the following arguments are required: CKPT"),
        (["sample", "NOWHERE.json", "--n", "0"], "--n must be >= 1"),
        (["sample", "NOWHERE.json", "--temperature", "-1"], "temperatures must be finite and >= 0"),
        (["sample", "NOWHERE.json", "--out", "x.jpg"], "--out must name a .png file"),
        (["demo", "--steps", "0"], "--steps must be >= 1"),
        (["demo", "--device", "tpu"], "invalid choice: 'tpu'"),
        (["demo", "--seed", str(10**23)], "--seed must be in [0, 2**63 - 1], got 1000"),
        (["sample", "NOWHERE.json", "--seed", "-1"], "--seed must be in [0, 2**63 - 1], got -1"),
        (["eval", "NOWHERE.json", "--seed", str(2**63)], "--seed must be in [0, 2**63 - 1]"),
        (["toy", "--seed", str(2**64)], "--seed must be in [0, 2**63 - 1]"),
    ],
)
def test_errors_are_one_line_with_exit_code_2(argv: list[str], message: str, capsys) -> None:
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse errors
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1]
    assert err[-1].startswith(f"glowlab {argv[0]}: error:")
    # The error is one line; argparse's own errors print the usage block above it.
    assert sum("error:" in line for line in err) == 1
    assert len(err) == 1 or err[0].startswith("usage:")


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (FloatingPointError("the objective became non-finite; lower the learning rate"), 1),
        (ImportError("this needs Pillow: pip install 'glowlab[images]'"), 2),
    ],
)
def test_diverged_fits_exit_1_and_missing_extras_exit_2(
    error: Exception, code: int, monkeypatch, capsys
) -> None:
    import glowlab.commands.sample as sample

    def fail(args) -> int:
        raise error

    monkeypatch.setattr(sample, "run", fail)
    monkeypatch.delenv("GLOWLAB_DEBUG", raising=False)
    assert cli.main(["sample", "CKPT"]) == code
    assert capsys.readouterr().err == f"glowlab sample: error: {error}\n"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A tiny digits run trained through the command line."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    out = tmp_path_factory.mktemp("cli") / "run"
    argv = ["train", "--preset", "glow-digits", "--out", str(out), "--steps", "3",
            "--device", "cpu",
            "--no-progress"]  # fmt: skip
    sets = ["model.steps=1", "model.hidden_channels=8", "data.max_train_images=64",
            "train.batch_size=16", "train.init_batch_size=32", "train.max_eval_images=40",
            "train.tensorboard=false"]  # fmt: skip
    try:
        assert cli.main(argv + [arg for s in sets for arg in ("--set", s)]) == 0
    finally:
        torch.set_default_dtype(previous)
    return out


def test_train_eval_sample_commands(run_dir: Path, tmp_path: Path, capsys) -> None:
    capsys.readouterr()
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"]["options"]["hidden_channels"] == 8 and config["train"]["steps"] == 3
    assert cli.main(["eval", str(run_dir), "--draws", "2", "--max-images", "40"]) == 0
    out = capsys.readouterr().out
    assert "digits test:" in out and "bits/dim" in out and "40 images, 2 draw(s)" in out
    assert cli.main(["eval", str(run_dir / "checkpoints" / "best.json"), "--raw", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_images"] == 360
    png = tmp_path / "s.png"
    assert (
        cli.main(
            ["sample", str(run_dir), "--n", "6", "--temperature", "0.5", "0.9", "--out", str(png)]
        )
        == 0
    )
    assert "12 samples" in capsys.readouterr().out and png.read_bytes().startswith(b"\x89PNG")
    print_config = [
        "train",
        "--out",
        str(run_dir),
        "--resume",
        "--set",
        "train.steps=9",
        "--print-config",
    ]
    assert cli.main(print_config) == 0
    assert json.loads(capsys.readouterr().out)["train"]["steps"] == 9


def test_commands_keep_freed_memory_but_train_follows_its_config(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    called: list[None] = []
    monkeypatch.setattr(glowlab.speed, "keep_freed_memory", lambda: called.append(None))
    assert cli.main(["sample", str(run_dir), "--n", "2", "--out", str(tmp_path / "s.png")]) == 0
    assert len(called) == 1
    train = ["train", "--out", str(run_dir), "--resume", "--set", "train.keep_freed_memory=false"]
    assert cli.main([*train, "--print-config"]) == 0
    assert len(called) == 1  # the Trainer decides, from train.keep_freed_memory


def test_fresh_run_refuses_an_existing_run_folder(run_dir: Path, capsys) -> None:
    assert cli.main(["train", "--preset", "glow-digits", "--out", str(run_dir)]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_corrupt_checkpoint_is_one_line(run_dir: Path, tmp_path: Path, capsys) -> None:
    manifest = json.loads((run_dir / "checkpoints" / "last.json").read_text())
    weights = run_dir / "checkpoints" / manifest["weights"]["file"]
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "last.json").write_text(json.dumps(manifest))
    (broken / weights.name).write_bytes(weights.read_bytes()[:100])
    capsys.readouterr()
    assert cli.main(["sample", str(broken / "last.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "truncated or corrupt" in err[0]


def test_eval_data_names_are_case_insensitive(
    shared_data: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A run trained on MNIST in shared_data, padded to 32x32; the default data folder is empty.
    monkeypatch.setenv("GLOWLAB_DATA_DIR", str(tmp_path / "empty"))
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        model = glowlab.Glow((1, 32, 32), levels=2, steps=1, hidden_channels=4)
    finally:
        torch.set_default_dtype(previous)
    manifest = glowlab.save(model, tmp_path / "mnist")
    entries = json.loads(manifest.read_text())
    entries["train_config"] = {
        "data": {"name": "mnist", "data_dir": str(shared_data), "image_size": 32, "n_bits": 8}
    }
    manifest.write_text(json.dumps(entries))
    capsys.readouterr()
    for name in ("mnist", "MNIST", "Mnist"):
        assert cli.main(["eval", str(manifest), "--data", name, "--max-images", "4"]) == 0
        assert capsys.readouterr().out.startswith("mnist test: ")


def test_demo_runs_end_to_end(tmp_path: Path, capsys) -> None:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        assert (
            cli.main(["demo", "--out", str(tmp_path / "demo"), "--steps", "3", "--no-progress"])
            == 0
        )
    finally:
        torch.set_default_dtype(previous)
    out = capsys.readouterr().out
    assert "test bits/dim:" in out
    for name in ("samples.png", "interpolation.png"):
        assert (tmp_path / "demo" / name).read_bytes().startswith(b"\x89PNG")
        assert str(tmp_path / "demo" / name) in out
    assert isinstance(glowlab.load(tmp_path / "demo"), glowlab.Glow)
