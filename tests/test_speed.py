"""The opt-in fast paths compute the same likelihood as the plain eager model."""

from __future__ import annotations

import copy
import os
import platform
import subprocess
import sys

import pytest
import torch

import glowlab
from glowlab.metrics import bits_per_dim_from_log_prob
from glowlab.speed import (
    autocast,
    channels_last_input,
    compile_flow_steps,
    set_tf32,
    tf32,
    to_channels_last,
)


def _trained_like_glow(shape: tuple[int, int, int] = (3, 8, 8), **kwargs: int) -> glowlab.Glow:
    options = {"levels": 2, "steps": 2, "hidden_channels": 8, **kwargs}
    model = glowlab.Glow(shape, **options)
    model.log_prob(torch.rand(8, *shape) - 0.5)  # ActNorm's init
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


@pytest.fixture
def float32() -> None:
    torch.set_default_dtype(torch.float32)  # the autouse fixture restores float64 afterwards


def test_compiled_steps_match_eager() -> None:
    model = _trained_like_glow()
    x = torch.rand(4, 3, 8, 8) - 0.5
    expected = model.log_prob(x)
    keys = list(model.state_dict())
    torch.manual_seed(3)
    expected_samples = model.eval().sample(2, 0.7)
    model.train()
    # aot_eager traces every layer through dynamo and AOT autograd without a C compiler.
    compile_flow_steps(model, backend="aot_eager")
    assert list(model.state_dict()) == keys
    log_prob = model.log_prob(x)
    assert torch.allclose(log_prob, expected, rtol=1e-5)
    log_prob.mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    torch.manual_seed(3)
    assert torch.allclose(model.eval().sample(2, 0.7), expected_samples, rtol=1e-5, atol=1e-7)


def _halve_weights(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)


def test_a_deep_copy_of_a_compiled_model_runs_its_own_layers() -> None:
    model = _trained_like_glow().eval()
    compile_flow_steps(model, backend="eager")
    twin = copy.deepcopy(model)  # an EMA copy, say
    _halve_weights(twin)
    plain = glowlab.Glow((3, 8, 8), levels=2, steps=2, hidden_channels=8).eval()
    plain.load_state_dict(twin.state_dict())
    x = torch.rand(3, 3, 8, 8) - 0.5
    eps = [torch.randn(2, *shape) for shape in twin.latent_shapes]
    with torch.no_grad():
        torch.testing.assert_close(twin.log_prob(x), plain.log_prob(x))
        torch.testing.assert_close(twin.decode(eps), plain.decode(eps))
        assert not torch.allclose(model.log_prob(x), plain.log_prob(x))


def test_a_deep_copy_made_under_autocast_is_not_patched() -> None:
    model = _trained_like_glow()
    x = torch.rand(3, 3, 8, 8) - 0.5
    with autocast(model, torch.bfloat16):
        twin = copy.deepcopy(model)
    _halve_weights(twin)
    plain = glowlab.Glow((3, 8, 8), levels=2, steps=2, hidden_channels=8)
    plain.load_state_dict(twin.state_dict())
    with torch.no_grad():  # float64 (the tests' default) all through: no bfloat16 net
        torch.testing.assert_close(twin.log_prob(x), plain.log_prob(x), rtol=0, atol=0)


@pytest.mark.skipif(
    os.environ.get("GLOWLAB_TEST_INDUCTOR") != "1",
    reason="inductor compilation takes over a minute on a small CPU; set GLOWLAB_TEST_INDUCTOR=1",
)
def test_inductor_compiled_steps_match_eager(float32: None) -> None:
    model = _trained_like_glow(levels=1, steps=1)
    x = torch.rand(4, 3, 8, 8) - 0.5
    expected = model.log_prob(x)
    compile_flow_steps(model, inverse=False)
    assert torch.allclose(model.log_prob(x), expected, rtol=1e-5)


def test_bf16_coupling_autocast_keeps_bits_per_dim(float32: None) -> None:
    model = _trained_like_glow((3, 16, 16), hidden_channels=32)
    x = torch.rand(16, 3, 16, 16) - 0.5
    reference = bits_per_dim_from_log_prob(model.log_prob(x), 3 * 16 * 16)
    with autocast(model, torch.bfloat16):
        log_prob = model.log_prob(x)
        log_prob.mean().backward()
    assert log_prob.dtype == torch.float32
    bpd = bits_per_dim_from_log_prob(log_prob, 3 * 16 * 16)
    assert (bpd.mean() - reference.mean()).abs() < 0.01
    assert not torch.equal(bpd, reference)  # the networks really ran in bfloat16
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())
    nets = [m.net for m in model.modules() if isinstance(m, glowlab.transforms.Coupling)]
    assert nets and all("forward" not in net.__dict__ for net in nets)  # restored
    with pytest.raises(ValueError, match="bfloat16"):
        with autocast(model, torch.float64):
            pass


def test_autocast_blocks_nest(float32: None) -> None:
    model = _trained_like_glow((3, 8, 8), hidden_channels=16)
    x = torch.rand(4, 3, 8, 8) - 0.5
    reference = model.log_prob(x)
    nets = [m.net for m in model.modules() if isinstance(m, glowlab.transforms.Coupling)]
    with autocast(model):
        outer = model.log_prob(x)
        with autocast(model):
            pass
        assert torch.equal(model.log_prob(x), outer)  # still in bfloat16 after the inner block
    assert not torch.equal(outer, reference)
    assert all("forward" not in net.__dict__ for net in nets)
    assert torch.equal(model.log_prob(x), reference)


def test_channels_last_keeps_values() -> None:
    model = _trained_like_glow()
    x = torch.rand(4, 3, 8, 8) - 0.5
    expected = model.log_prob(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    to_channels_last(model)
    conv = model.levels[0].flow.transforms[3].net.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert torch.allclose(model.log_prob(channels_last_input(x)), expected, rtol=1e-10)
    with pytest.raises(ValueError, match="B, C, H, W"):
        channels_last_input(torch.zeros(2, 3))


def test_tf32_block_sets_and_restores_the_flags() -> None:
    # The settings exist (and can be written) in CPU builds of PyTorch too.
    with tf32(False):
        assert not _tf32_on()
        with tf32(True):
            assert _tf32_on()
            set_tf32(False)
            assert not _tf32_on()
        assert not _tf32_on()
        with tf32(True):
            assert _tf32_on()
        assert not _tf32_on()


def _tf32_on() -> bool:
    matmul, conv = torch.backends.cuda.matmul, getattr(torch.backends.cudnn, "conv", None)
    if hasattr(matmul, "fp32_precision") and hasattr(conv, "fp32_precision"):
        return matmul.fp32_precision == "tf32" and conv.fp32_precision == "tf32"
    return bool(torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32)


_FAULTS_PER_ROUND = """
import resource, sys, torch
import glowlab.speed
if sys.argv[1] == "keep":
    assert glowlab.speed.keep_freed_memory()

def round_of_allocations():
    kept = [torch.ones(256 * 1024) for _ in range(32)]  # 32 blocks of 1 MiB, written
    kept.append(torch.ones(12 * 2**20))  # and one of 48 MiB
    del kept

round_of_allocations()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    round_of_allocations()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="glibc's malloc settings",
)
def test_keep_freed_memory_reuses_pages() -> None:
    """Blocks freed by one round of allocations serve the next without new page faults."""

    def faults(mode: str) -> float:
        run = subprocess.run(
            [sys.executable, "-c", _FAULTS_PER_ROUND, mode],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        return float(run.stdout)

    # 80 MiB written per round (20,480 pages). With glibc's defaults the large block and
    # part of the rest go back to the kernel when freed and are faulted in again the next
    # round (about 20,000 faults on the machine the tests were written on).
    default = faults("default")
    if default < 200:
        pytest.skip(f"this C library's defaults already reuse the blocks ({default} faults)")
    assert faults("keep") < default / 4


@pytest.mark.parametrize(
    ("device", "setting", "calls"),
    [("cpu", None, 1), ("cuda", None, 0), ("cpu", False, 0), ("cuda", True, 1)],
)
def test_keep_freed_memory_for_a_device(
    monkeypatch: pytest.MonkeyPatch, device: str, setting: bool | None, calls: int
) -> None:
    called: list[None] = []
    monkeypatch.setattr(glowlab.speed, "keep_freed_memory", lambda: called.append(None) or True)
    took = glowlab.speed.keep_freed_memory_for(torch.device(device), setting)
    assert len(called) == calls and took == bool(calls)
