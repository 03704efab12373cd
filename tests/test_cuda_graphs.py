"""glowlab.speed.GraphedCall: a training step and sampling recorded as CUDA graphs.

The recorded step must do exactly what the eager step does: the same losses and weights
after the same batches, in each memory mode, with a learning rate that changes between
replays. These tests need a GPU and skip on a CPU, where only the refusals are checked.
"""

from __future__ import annotations

import copy

import pytest
import torch

import glowlab
from glowlab.optim import Adamax
from glowlab.speed import GraphedCall, autocast, tf32

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(autouse=True)
def _float32() -> None:
    torch.set_default_dtype(torch.float32)  # the autouse fixture restores float64 afterwards


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where CUDA is missing")
def test_without_cuda_it_says_so() -> None:
    with pytest.raises(RuntimeError, match="need a CUDA device"):
        GraphedCall(lambda x: x, torch.ones(1))


@CUDA
def test_inputs_off_the_gpu_are_refused() -> None:
    with pytest.raises(ValueError, match="one CUDA device"):
        GraphedCall(lambda x: x, torch.ones(1))
    with pytest.raises(ValueError, match="warmup"):
        GraphedCall(lambda x: x, torch.ones(1, device="cuda"), warmup=0)


@CUDA
def test_a_replay_checks_its_inputs() -> None:
    graphed = GraphedCall(lambda x: x * 2, torch.ones(3, device="cuda"))
    torch.testing.assert_close(
        graphed(torch.arange(3.0, device="cuda")).cpu(), torch.tensor([0.0, 2, 4])
    )
    with pytest.raises(ValueError, match="fixed shapes"):
        graphed(torch.ones(4, device="cuda"))
    with pytest.raises(ValueError, match="expected 1 inputs"):
        graphed()


def _model() -> glowlab.Glow:
    torch.manual_seed(0)
    model = glowlab.Glow((3, 8, 8), levels=2, steps=2, hidden_channels=16).cuda()
    with torch.no_grad():
        model.log_prob(torch.rand(16, 3, 8, 8, device="cuda") - 0.5)  # ActNorm's init
    return model


def _step(model: glowlab.Glow, optimizer: Adamax, bf16: bool = False, zero_first: bool = False):
    def step(x: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if zero_first:  # the gradients then live on between calls (as in bench_learning.py)
            optimizer.zero_grad()
        with autocast(model, enabled=bf16):  # the memory-saving backward runs the nets again
            loss = -model.log_prob(x).mean()
            loss.backward()
        optimizer.clip_grad_norm_(10.0)
        applied = optimizer.step(valid=valid & torch.isfinite(loss.detach()))
        if not zero_first:
            optimizer.zero_grad()
        return loss.detach(), applied

    return step


@CUDA
@pytest.mark.parametrize("mode", ["standard", "invertible", "checkpoint"])
def test_a_graphed_training_step_equals_eager_steps(mode: str) -> None:
    eager = _model().set_memory_mode(mode)
    graphed_model = copy.deepcopy(eager)
    batches = [torch.rand(4, 3, 8, 8, device="cuda") - 0.5 for _ in range(3)]
    rates = [1e-3, 3e-3, 5e-4]
    yes = torch.tensor(True, device="cuda")
    with tf32(False):
        eager_optimizer = Adamax(eager.parameters(), lr=rates[0])
        eager_step = _step(eager, eager_optimizer)
        eager_losses = []
        for x, rate in zip(batches, rates, strict=True):
            eager_optimizer.param_groups[0]["lr"] = rate
            eager_losses.append(eager_step(x, yes)[0].clone())

        lr = torch.tensor(rates[0], device="cuda")
        optimizer = Adamax(graphed_model.parameters(), lr=lr)
        no = torch.tensor(False, device="cuda")  # the warmup calls reject their updates
        graphed = GraphedCall(_step(graphed_model, optimizer), batches[0], no)
        losses = []
        for x, rate in zip(batches, rates, strict=True):
            lr.fill_(rate)
            loss, applied = graphed(x, yes)
            assert bool(applied)
            losses.append(loss.clone())
    torch.testing.assert_close(torch.stack(losses), torch.stack(eager_losses), rtol=1e-5, atol=1e-6)
    for p, q in zip(graphed_model.parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)
    first = next(graphed_model.parameters())
    assert float(optimizer.state[first]["step"]) == 3  # the warmup did not count


@CUDA
@pytest.mark.parametrize("mode", ["standard", "invertible", "checkpoint"])
def test_a_graphed_bf16_step_trains(mode: str) -> None:
    model = _model().set_memory_mode(mode)
    optimizer = Adamax(model.parameters(), lr=torch.tensor(1e-3, device="cuda"))
    x = torch.rand(8, 3, 8, 8, device="cuda") - 0.5
    graphed = GraphedCall(_step(model, optimizer, bf16=True), x, torch.tensor(False, device="cuda"))
    losses = [graphed(x, torch.tensor(True, device="cuda"))[0].clone() for _ in range(20)]
    assert torch.isfinite(torch.stack(losses)).all() and losses[-1] < losses[0]


@CUDA
def test_graphed_sampling_draws_fresh_samples_each_replay() -> None:
    model = _model().eval()
    graphed = GraphedCall(lambda: model.sample(8, temperature=0.7), device="cuda")
    first, second = graphed().clone(), graphed().clone()
    assert first.shape == (8, 3, 8, 8) and torch.isfinite(first).all()
    assert not torch.equal(first, second)


@CUDA
def test_a_learning_rate_off_the_parameters_device_is_refused() -> None:
    # A CPU tensor would be read once, when the step is recorded, and never again.
    model = _model()
    optimizer = Adamax(model.parameters(), lr=torch.tensor(1e-3))
    x = torch.rand(4, 3, 8, 8, device="cuda") - 0.5
    with pytest.raises(ValueError, match="parameters' device"):
        _step(model, optimizer)(x, torch.tensor(True, device="cuda"))


@CUDA
@pytest.mark.parametrize("zero_first", [False, True])
def test_two_graphs_of_one_model_train_it_as_eager_steps_do(zero_first: bool) -> None:
    # Two recordings (two batch shapes) share the weights and the optimizer state, and
    # each keeps its own gradients: replaying one after the other is the eager sequence.
    eager = _model()
    graphed_model = copy.deepcopy(eager)
    shapes = [(4, 3, 8, 8), (8, 3, 8, 8), (4, 3, 8, 8)]
    batches = [torch.rand(shape, device="cuda") - 0.5 for shape in shapes]
    yes, no = torch.tensor(True, device="cuda"), torch.tensor(False, device="cuda")
    with tf32(False):
        eager_step = _step(eager, Adamax(eager.parameters(), lr=1e-3), zero_first=zero_first)
        eager_losses = [eager_step(x, yes)[0].clone() for x in batches]

        optimizer = Adamax(graphed_model.parameters(), lr=torch.tensor(1e-3, device="cuda"))
        step = _step(graphed_model, optimizer, zero_first=zero_first)
        graphs = {
            shape: GraphedCall(step, torch.zeros(shape, device="cuda"), no)
            for shape in dict.fromkeys(shapes)  # one recording per shape
        }
        losses = [graphs[tuple(x.shape)](x, yes)[0].clone() for x in batches]
    torch.testing.assert_close(torch.stack(losses), torch.stack(eager_losses), rtol=1e-5, atol=1e-6)
    for p, q in zip(graphed_model.parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)
    assert float(optimizer.state[next(graphed_model.parameters())]["step"]) == 3
