"""Every benchmark script runs end to end on the CPU with tiny settings and writes its JSON.

These check that the scripts work, not their figures (docs/benchmarks.md has those). The
CUDA branches cannot run here; they differ only in the device and the peak-memory counter.
"""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))


@pytest.fixture(autouse=True)
def _float32() -> None:
    torch.set_default_dtype(torch.float32)  # the autouse fixture restores float64 afterwards


def _run(script: str, tmp_path: Path, *args: str) -> dict:
    out = tmp_path / f"{script}.json"
    importlib.import_module(script).main([*args, "--device", "cpu", "--json", str(out)])
    return json.loads(out.read_text())


def test_bench_train(tmp_path: Path) -> None:
    result = _run(
        "bench_train", tmp_path, "--model", "small-mnist", "--batch-sizes", "2",
        "--memory-modes", "standard,invertible", "--warmup", "0", "--repeats", "1",
        "--matmul-size", "64",
    )  # fmt: skip
    rows = result["results"]
    assert [r["memory_mode"] for r in rows] == ["standard", "invertible"]
    assert all(r["images_per_s"] > 0 and r["gflop_per_step"] > 0 for r in rows)
    assert result["channels_last"] is True  # glowlab train's CPU default


def test_bench_train_bf16_in_the_recomputing_memory_modes(tmp_path: Path) -> None:
    """The backward pass runs in the step's precision: checkpoint mode's recomputation
    must see the bfloat16 networks of the forward pass, or its check fails."""
    result = _run(
        "bench_train", tmp_path, "--model", "small-mnist", "--batch-sizes", "2",
        "--precisions", "bf16", "--memory-modes", "invertible,checkpoint", "--warmup", "0",
        "--repeats", "1", "--matmul-size", "64",
    )  # fmt: skip
    assert all(r["images_per_s"] > 0 for r in result["results"])


def test_bench_ops(tmp_path: Path) -> None:
    result = _run(
        "bench_ops", tmp_path, "--model", "small-mnist", "--per-pair",
        "--memory-modes", "standard,checkpoint",
    )  # fmt: skip
    rows = {(r["memory_mode"], r["folds"]): r for r in result["results"]}
    batched, per_pair = rows["standard", "batched"], rows["standard", "per pair"]
    assert 0 < batched["batch_ops"] <= per_pair["batch_ops"]
    # Two levels of 8 folded pairs: each pair's dozens of small operations become a few
    # batched ones per level.
    assert batched["small_ops"] < per_pair["small_ops"] - 16 * 20
    assert batched["ops"] == batched["batch_ops"] + batched["small_ops"] and batched["views"] > 0
    checkpoint = rows["checkpoint", "batched"]
    assert checkpoint["ops"] > batched["ops"]  # it recomputes the couplings
    # ... but not the folded pairs' weights, which it computes together too.
    assert checkpoint["small_ops"] < rows["checkpoint", "per pair"]["small_ops"] - 16 * 20


def test_bench_memory(tmp_path: Path) -> None:
    result = _run(
        "bench_memory", tmp_path, "--model", "small-mnist", "--batch-sizes", "2",
        "--repeats", "0", "--no-channels-last",
    )  # fmt: skip
    saved = {r["memory_mode"]: r["saved_activations_MiB"] for r in result["results"]}
    assert saved["invertible"] < saved["checkpoint"] < saved["standard"]


def test_bench_sample(tmp_path: Path) -> None:
    result = _run("bench_sample", tmp_path, "--model", "small-mnist", "--n", "2", "--repeats", "2")
    assert result["results"][0]["median_ms"] > 0
    assert result["channels_last"] is False


def test_bench_optim(tmp_path: Path) -> None:
    result = _run(
        "bench_optim", tmp_path, "--model", "small-mnist", "--warmup", "0", "--repeats", "2"
    )
    names = [r["optimizer"] for r in result["results"]]
    assert names == ["torch.optim.Adamax", "glowlab Adamax", "glowlab Adamax, guarded"]
    assert all(r["step_ms"] > 0 for r in result["results"]) and result["parameters"] > 0


def test_bench_learning(tmp_path: Path, shared_data: Path) -> None:
    result = _run(
        "bench_learning", tmp_path, "--dataset", "mnist", "--data-dir", str(shared_data),
        "--seconds", "0.5", "--batch-size", "4", "--sync-every", "2", "--init-batch", "8",
        "--test-limit", "20", "--eval-batch", "10",
    )  # fmt: skip
    row = result["results"][0]
    assert row["steps"] % 2 == 0 and row["steps"] >= 2 and row["train_seconds"] >= 0.5
    assert row["test_images"] == 20 and 0 < row["test_bpd"] < 16
    assert row["rejected_steps"] == 0


@pytest.mark.parametrize("script", ["bench_train", "bench_sample", "bench_learning"])
def test_cuda_graphs_on_a_cpu_is_refused(script: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(script).main(["--device", "cpu", "--cuda-graphs"])
    assert exit_info.value.code == 2
    assert "--cuda-graphs needs a CUDA device" in capsys.readouterr().err


def test_guarded_step_returns_nan_for_a_rejected_update() -> None:
    from common import guarded_step

    from glowlab.optim import Adamax

    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = Adamax([weight], lr=0.1)
    scale = torch.ones(())

    def backward(x: torch.Tensor) -> torch.Tensor:
        loss = (weight * x).sum() * scale
        loss.backward()
        return loss

    step = guarded_step(optimizer, backward)
    x = torch.ones(3)
    assert step(x, torch.tensor(False)).isnan() and torch.equal(weight, torch.ones(3))
    scale.fill_(math.inf)
    assert step(x).isnan() and torch.equal(weight, torch.ones(3))  # a non-finite loss
    scale.fill_(1.0)
    assert step(x, torch.tensor(True)).item() == 3.0  # the loss before the update
    assert (weight < 1).all()


def test_peak_step_memory_is_that_of_a_second_step(monkeypatch: pytest.MonkeyPatch) -> None:
    import common

    calls: list[str] = []
    monkeypatch.setattr(common, "synchronize", lambda device: calls.append("sync"))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda d: calls.append("reset"))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d: 3 * 2**29)
    peak = common.peak_step_memory_gib(lambda: calls.append("step"), torch.device("cuda"))
    assert peak == 1.5 and calls == ["step", "sync", "reset", "step", "sync"]


def _benchmark_file(
    path: Path, rows: list[dict], model: str = "glow-cifar10", **settings: object
) -> None:
    environment = {"hardware": "a GPU", "date": "2026-11-26"}
    payload = {"environment": environment, "args": {"model": model}, **settings}
    path.write_text(json.dumps({**payload, "results": rows}))


@pytest.mark.parametrize(
    ("checkpoint_ms", "chosen", "met"),
    [(150.0, "3.5 GiB (bf16, invertible, channels-last; 1.30x", "yes"),
     (120.0, "2.5 GiB (bf16, checkpoint, channels-last; 1.20x", "yes"),
     (None, "3.5 GiB (bf16, invertible", "yes")],
)  # fmt: skip
def test_targets_memory_row_keeps_to_the_step_time_limit(
    tmp_path: Path, checkpoint_ms: float | None, chosen: str, met: str
) -> None:
    import targets

    train = {"precision": "bf16", "memory_mode": "standard", "gflop_per_step": 1.0}
    _benchmark_file(tmp_path / "train.json", [
        {**train, "batch": 256, "step_ms": 100.0, "images_per_s": 2560.0},
        {**train, "batch": 64, "step_ms": 20.0, "images_per_s": 3200.0},
    ], cuda_graphs=True)  # fmt: skip
    memory = [{"batch": 256, "precision": "bf16", "memory_mode": "invertible",
               "peak_allocated_GiB": 3.5, "step_ms": 130.0}]  # fmt: skip
    if checkpoint_ms is not None:
        memory.append({**memory[0], "memory_mode": "checkpoint", "peak_allocated_GiB": 2.5,
                       "step_ms": checkpoint_ms})  # fmt: skip
    _benchmark_file(tmp_path / "memory.json", memory, channels_last=True)
    rows = {row[""]: row for row in targets.table(targets.read_folder(tmp_path))}
    row = rows["peak memory, batch 256, memory-saving mode (glow-cifar10)"]
    assert row["glowlab"].startswith(chosen) and row["met"] == met
    assert row["rosinality"] == "not measured"
    batch_64 = rows["training images/s, batch 64 (glow-cifar10)"]
    assert batch_64["glowlab"].startswith("3,200 images/s (bf16, CUDA") and batch_64["met"] == "yes"
    assert rows["training images/s, best batch size (glow-cifar10)"]["met"] == "no"  # < 8,000


def test_targets_memory_over_the_step_time_limit_is_not_met(tmp_path: Path) -> None:
    import targets

    train = {"precision": "tf32", "memory_mode": "standard", "gflop_per_step": 1.0}
    _benchmark_file(tmp_path / "a.json", [{**train, "batch": 256, "step_ms": 100.0,
                                           "images_per_s": 2560.0}])  # fmt: skip
    _benchmark_file(tmp_path / "b.json", [{"batch": 256, "precision": "bf16",
        "memory_mode": "checkpoint", "peak_allocated_GiB": 2.0, "step_ms": 150.0}])  # fmt: skip
    row = targets.table(targets.read_folder(tmp_path))[2]
    assert "1.50x the fastest step" in row["glowlab"] and row["met"] == "no"


def test_targets_count_only_the_targets_model(tmp_path: Path) -> None:
    import targets

    row = {"n": 32, "temperature": 0.7, "precision": "bf16", "median_ms": 9.0}
    _benchmark_file(tmp_path / "small.json", [row], model="small")
    _benchmark_file(tmp_path / "glow.json", [{**row, "median_ms": 20.0}])
    sample = targets.table(targets.read_folder(tmp_path))[3]
    assert sample["glowlab"].startswith("20 ms (") and sample["met"] == "no"
    sample = targets.table(targets.read_folder(tmp_path), any_model=True)[3]
    assert sample["glowlab"].startswith("9 ms (small; bf16") and sample["met"] == "yes"


@pytest.mark.parametrize("script", ["bench_learning", "bench_peers"])
def test_a_training_time_must_be_positive(
    script: str, shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--device", "cpu", "--seconds", "0", "--data-dir", str(shared_data)]
    if script == "bench_peers":
        args += ["--questions", "learning", "--dataset", "mnist", "--model", "small-mnist"]
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(script).main(args)
    assert exit_info.value.code == 2
    assert "--seconds must be > 0, got 0.0" in capsys.readouterr().err


@pytest.mark.parametrize("script", ["bench_train", "bench_memory", "bench_ops", "bench_peers"])
def test_an_unknown_memory_mode_is_a_usage_error(
    script: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(script).main(["--device", "cpu", "--memory-modes", "standard,fast"])
    assert exit_info.value.code == 2
    assert "unknown memory mode 'fast'; choose from standard, invertible" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graphed_benchmarks_run_on_cuda(tmp_path: Path) -> None:
    def run(script: str, *args: str) -> dict:
        out = tmp_path / f"{script}.json"
        importlib.import_module(script).main([*args, "--device", "cuda", "--json", str(out)])
        return json.loads(out.read_text())

    train = run(
        "bench_train", "--model", "small-mnist", "--batch-sizes", "4", "--precisions", "fp32,bf16",
        "--memory-modes", "standard,invertible", "--warmup", "1", "--repeats", "2",
        "--matmul-size", "256", "--cuda-graphs",
    )  # fmt: skip
    assert train["cuda_graphs"] and all(r["images_per_s"] > 0 for r in train["results"])
    torch_optim = run(
        "bench_train", "--model", "small-mnist", "--batch-sizes", "4", "--precisions", "fp32",
        "--memory-modes", "checkpoint", "--optimizer", "torch", "--warmup", "1", "--repeats", "2",
        "--matmul-size", "256", "--cuda-graphs",
    )  # fmt: skip
    assert torch_optim["results"][0]["images_per_s"] > 0  # a capturable torch.optim.Adamax
    sample = run("bench_sample", "--model", "small-mnist", "--n", "4", "--repeats", "2",
                 "--cuda-graphs")  # fmt: skip
    assert sample["results"][0]["median_ms"] > 0
