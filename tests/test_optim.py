"""glowlab.optim: torch.optim's update rules over flat state, and steps skipped on the device."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import Tensor, nn

from glowlab.optim import Adam, Adamax, AdamW, FlatOptimizer, build_optimizer

TORCH = {Adam: torch.optim.Adam, AdamW: torch.optim.AdamW, Adamax: torch.optim.Adamax}


def _params() -> list[nn.Parameter]:
    """Shapes of a flow's parameters: a channels-last conv weight, vectors, a scalar."""
    conv = torch.randn(6, 4, 3, 3).contiguous(memory_format=torch.channels_last)
    return [nn.Parameter(t) for t in (conv, torch.randn(4, 4), torch.randn(6), torch.randn(()))]


def _pair(cls: type[FlatOptimizer], **options: float) -> tuple[list, list, FlatOptimizer, object]:
    ours = _params()
    theirs = [nn.Parameter(p.detach().clone()) for p in ours]
    groups = [{"params": ours[:2]}, {"params": ours[2:], "lr": 0.003}]
    their_groups = [{"params": theirs[:2]}, {"params": theirs[2:], "lr": 0.003}]
    ref = TORCH[cls](their_groups, lr=0.01, **options)
    return ours, theirs, cls(groups, lr=0.01, **options), ref


def _set_grads(params: list[nn.Parameter], grads: list[Tensor]) -> None:
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()


def _random_grads(params: list[nn.Parameter], scale: float = 1.0) -> list[Tensor]:
    return [scale * torch.randn_like(p) for p in params]


def _step_both(ours: list, theirs: list, opt: FlatOptimizer, ref: object) -> None:
    """One unguarded step of each optimizer on the same random gradients."""
    grads = _random_grads(ours)
    _set_grads(ours, grads)
    _set_grads(theirs, grads)
    opt.step()
    ref.step()  # type: ignore[attr-defined]


@pytest.mark.parametrize("cls", [Adam, AdamW, Adamax])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_updates_equal_torch_optim(cls: type[FlatOptimizer], weight_decay: float) -> None:
    ours, theirs, opt, ref = _pair(cls, weight_decay=weight_decay)
    for _ in range(6):
        _step_both(ours, theirs, opt, ref)
        for p, q in zip(ours, theirs, strict=True):
            torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
    assert ours[0].is_contiguous(memory_format=torch.channels_last)  # the layout is kept


@pytest.mark.parametrize("cls", [Adam, AdamW, Adamax])
def test_clipping_equals_clip_grad_norm(cls: type[FlatOptimizer]) -> None:
    ours, theirs, opt, ref = _pair(cls)
    for scale in (0.01, 10.0, 3.0):
        grads = _random_grads(ours, scale)
        _set_grads(ours, grads)
        _set_grads(theirs, grads)
        norm = opt.clip_grad_norm_(1.0)
        their_norm = nn.utils.clip_grad_norm_(theirs, 1.0)
        torch.testing.assert_close(norm, their_norm, rtol=1e-12, atol=0)
        assert bool(opt.step(valid=True))
        ref.step()  # type: ignore[attr-defined]
        for p, q in zip(ours, theirs, strict=True):
            torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


def test_clipping_twice_equals_clip_grad_norm_twice() -> None:
    ours, theirs, opt, _ = _pair(Adamax)
    grads = _random_grads(ours, 10.0)
    _set_grads(ours, grads)
    _set_grads(theirs, grads)
    for max_norm in (1.0, 1.0, 0.5):
        norm = opt.clip_grad_norm_(max_norm)
        their_norm = nn.utils.clip_grad_norm_(theirs, max_norm)
        torch.testing.assert_close(norm, their_norm, rtol=1e-9, atol=0)


def _snapshot(opt: FlatOptimizer, params: list[nn.Parameter]) -> list[Tensor]:
    state = [t.clone() for p in params for t in opt.state[p].values()]
    return [p.detach().clone() for p in params] + state


@pytest.mark.parametrize("cls", [Adam, AdamW, Adamax])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_gradient_leaves_everything_as_it_was(
    cls: type[FlatOptimizer], bad: float
) -> None:
    ours, theirs, opt, ref = _pair(cls, weight_decay=0.05)
    sequence = [_random_grads(ours) for _ in range(4)]
    poisoned = [g.clone() for g in sequence[1]]
    poisoned[2][3] = bad
    for i, grads in enumerate(sequence):
        if i == 1:  # a rejected step between two good ones: nothing moves, step count included
            before = _snapshot(opt, ours)
            _set_grads(ours, poisoned)
            assert not bool(opt.step(valid=torch.tensor(True)))
            for now, then in zip(_snapshot(opt, ours), before, strict=True):
                assert torch.equal(now, then)
            assert float(opt.state[ours[0]]["step"]) == 1
        _set_grads(ours, grads)
        _set_grads(theirs, grads)
        assert bool(opt.step(valid=torch.tensor(True)))
        ref.step()  # type: ignore[attr-defined]
    for p, q in zip(ours, theirs, strict=True):  # the same run as one without the bad step
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


def test_valid_false_skips_and_a_rejected_first_step_leaves_no_state() -> None:
    params = _params()
    opt = Adamax(params, lr=0.1)
    before = [p.detach().clone() for p in params]
    _set_grads(params, _random_grads(params))
    assert not bool(opt.step(valid=torch.tensor(False)))
    assert not bool(opt.step(valid=False))
    for p, q in zip(params, before, strict=True):
        assert torch.equal(p, q)
    for p in params:
        assert float(opt.state[p]["step"]) == 0 and not opt.state[p]["exp_avg"].any()
    # NaN in a gradient, even with valid=True, and then a NaN in clipping's norm.
    params[1].grad[0, 0] = math.nan
    norm = opt.clip_grad_norm_(1.0)
    assert math.isnan(float(norm))
    assert not bool(opt.step(valid=True))
    for p, q in zip(params, before, strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("cls", [Adam, AdamW, Adamax])
def test_a_huge_finite_gradient_is_rejected_without_a_trace(cls: type[FlatOptimizer]) -> None:
    """In float32 a gradient of 1e21 overflows the norm (so the step is rejected) and the
    candidate second moment (inf): none of it may reach the state, now or at the next step."""
    w = nn.Parameter(torch.ones(3, dtype=torch.float32))
    ref = nn.Parameter(torch.ones(3, dtype=torch.float32))
    opt, their = cls([w], lr=0.1), TORCH[cls]([ref], lr=0.1)
    ones = torch.ones(3, dtype=torch.float32)
    for grad in (ones, torch.tensor([1.0, 1e21, 1.0], dtype=torch.float32), ones):
        w.grad = grad.clone()
        applied = opt.step(valid=torch.isfinite(opt.clip_grad_norm_()))
        if bool(applied):  # the reference skips what was rejected
            ref.grad = grad.clone()
            their.step()
        assert all(torch.isfinite(t).all() for t in opt.state[w].values())
    assert float(opt.state[w]["step"]) == 2
    torch.testing.assert_close(w, ref)


@pytest.mark.parametrize("cls", [Adam, Adamax])
def test_a_rejected_first_step_with_eps_zero_changes_nothing(cls: type[FlatOptimizer]) -> None:
    w = nn.Parameter(torch.ones(3))
    opt = cls([w], lr=0.1, eps=0.0)
    w.grad = torch.tensor([1.0, math.nan, 0.0])  # zero moments: the candidate change is 0/0
    assert not bool(opt.step(valid=True))
    assert torch.equal(w.detach(), torch.ones(3))


@pytest.mark.parametrize("cls", [Adam, AdamW, Adamax])
def test_float32_stays_within_rounding_of_torch_optim(cls: type[FlatOptimizer]) -> None:
    w = nn.Parameter(torch.randn(50, 20, dtype=torch.float32))
    ref = nn.Parameter(w.detach().clone())
    opt, their = cls([w], lr=1e-2), TORCH[cls]([ref], lr=1e-2)
    for _ in range(100):
        grad = torch.randn(50, 20, dtype=torch.float32)
        w.grad, ref.grad = grad.clone(), grad.clone()
        opt.step(valid=True)
        their.step()
    torch.testing.assert_close(w, ref, rtol=0, atol=2e-6)  # a few float32 ulps


def test_unguarded_step_applies_whatever_the_gradient_is() -> None:
    """Without ``valid`` the step is torch.optim's: a NaN gradient reaches the weights."""
    w = nn.Parameter(torch.ones(3))
    opt = Adam([w], lr=0.1)
    w.grad = torch.tensor([1.0, math.nan, 1.0])
    assert opt.step() is None
    assert torch.isnan(w[1]) and torch.isfinite(w[0])


@pytest.mark.parametrize("cls", [Adam, AdamW, Adamax])
def test_state_moves_between_glowlab_and_torch(cls: type[FlatOptimizer]) -> None:
    ours, theirs, opt, ref = _pair(cls, weight_decay=0.01)
    for _ in range(3):
        _step_both(ours, theirs, opt, ref)

    def through_file(state: dict) -> dict:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        buffer.seek(0)
        return torch.load(buffer, weights_only=True)

    # Swap: torch.optim continues from glowlab's state, glowlab from torch.optim's.
    ours2 = [nn.Parameter(p.detach().clone()) for p in ours]
    theirs2 = [nn.Parameter(p.detach().clone()) for p in theirs]
    groups = [{"params": ours2[:2]}, {"params": ours2[2:], "lr": 0.003}]
    their_groups = [{"params": theirs2[:2]}, {"params": theirs2[2:], "lr": 0.003}]
    opt2 = cls(groups, lr=0.01, weight_decay=0.01)
    ref2 = TORCH[cls](their_groups, lr=0.01, weight_decay=0.01)
    opt2.load_state_dict(through_file(ref.state_dict()))  # type: ignore[attr-defined]
    ref2.load_state_dict(through_file(opt.state_dict()))
    for _ in range(3):
        grads = _random_grads(ours)
        for params in (ours, theirs, ours2, theirs2):
            _set_grads(params, grads)
        for o in (opt, ref, opt2, ref2):
            o.step()  # type: ignore[attr-defined]
    for a, b, c, d in zip(ours, theirs, ours2, theirs2, strict=True):
        for other in (b, c, d):
            torch.testing.assert_close(a, other, rtol=1e-12, atol=1e-14)


def test_state_dict_before_any_step_is_empty_and_loads() -> None:
    params = _params()
    opt = Adamax(params)
    state = opt.state_dict()
    assert state["state"] == {}
    Adamax(_params()).load_state_dict(state)


def test_a_group_at_mixed_step_counts_is_refused() -> None:
    params = _params()
    ref = torch.optim.Adam(params)
    params[0].grad = torch.ones_like(params[0])
    ref.step()  # only the first parameter has state
    params[1].grad = torch.ones_like(params[1])
    ref.step()
    with pytest.raises(ValueError, match="different step counts"):
        Adam(_params()).load_state_dict(ref.state_dict())


def test_a_parameter_without_gradient_steps_with_zeros() -> None:
    a, b = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    opt = Adam([a, b], lr=0.1)
    a.grad = torch.ones(2)
    opt.step(valid=True)
    assert torch.equal(b.detach(), torch.ones(2)) and not opt.state[b]["exp_avg"].any()
    b.grad = torch.ones(2)
    a.grad = None
    opt.step(valid=True)
    assert (a < 0.9).all()  # the momentum of the first step moves it on, as documented


def test_a_guarded_step_reads_nothing_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """The decision stays on the device: no tensor becomes a Python value during a step."""
    params = _params()
    opt = AdamW(params, weight_decay=0.1)

    def forbidden(*args, **kwargs):
        raise AssertionError("a host read-back inside the optimizer step")

    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__"):
        monkeypatch.setattr(Tensor, name, forbidden)
    for _ in range(3):
        _set_grads(params, _random_grads(params))
        opt.clip_grad_norm_(1.0)
        applied = opt.step(valid=torch.tensor(True))
    monkeypatch.undo()
    assert bool(applied)


def test_a_parameter_added_to_a_group_before_its_first_step_is_stepped() -> None:
    a, b = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(3))
    opt = Adam([a], lr=0.1)
    a.grad = torch.ones(2)
    opt.clip_grad_norm_()  # the buffers exist, no step yet
    opt.param_groups[0]["params"].append(b)  # the buffers are rebuilt for the new list
    a.grad, b.grad = torch.ones(2), torch.ones(3)
    opt.step()
    assert (a < 1).all() and (b < 1).all() and float(opt.state[b]["step"]) == 1


def test_a_parameter_added_to_a_group_that_stepped_is_refused() -> None:
    a, b = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(3))
    opt = Adam([a], lr=0.1)
    a.grad = torch.ones(2)
    opt.step()
    opt.param_groups[0]["params"].append(b)
    a.grad, b.grad = torch.ones(2), torch.ones(3)
    with pytest.raises(ValueError, match="added to parameter group 0 after it stepped"):
        opt.step()


def test_a_parameter_removed_from_a_group_leaves_the_others_state() -> None:
    ours = [nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(3))]
    theirs = [nn.Parameter(torch.ones(2))]
    opt, ref = Adam(ours, lr=0.1), torch.optim.Adam(theirs, lr=0.1)
    for step in range(3):
        if step == 2:
            opt.param_groups[0]["params"].pop()
        ours[0].grad, ours[1].grad = torch.full((2,), step + 1.0), torch.ones(3)
        theirs[0].grad = torch.full((2,), step + 1.0)
        opt.step()
        ref.step()
    torch.testing.assert_close(ours[0], theirs[0])
    assert float(opt.state[ours[0]]["step"]) == 3 and ours[1] not in opt.state


def test_zero_grad_drops_gathered_gradients() -> None:
    w = nn.Parameter(torch.zeros(2))
    opt = Adam([w], lr=0.1)
    w.grad = torch.tensor([1.0, 1.0])
    opt.clip_grad_norm_()
    opt.zero_grad()
    w.grad = torch.tensor([-1.0, -1.0])
    opt.step()
    assert (w > 0).all()  # stepped against the new gradient, not the gathered old one


@pytest.mark.parametrize("cls", [Adam, AdamW, Adamax])
def test_a_tensor_learning_rate_is_read_at_each_step(cls: type[FlatOptimizer]) -> None:
    """A 0-dim tensor lr, changed in place between steps, gives the updates of a float lr
    changed between steps (what a step recorded in a CUDA graph relies on)."""
    ours = _params()
    theirs = [nn.Parameter(p.detach().clone()) for p in ours]
    lr = torch.tensor(0.01)
    opt = cls(ours, lr=lr, weight_decay=0.1)
    ref = cls(theirs, lr=0.01, weight_decay=0.1)
    for value in (0.01, 0.002, 0.03, 0.0):
        lr.fill_(value)
        for group in ref.param_groups:
            group["lr"] = value
        grads = _random_grads(ours)
        _set_grads(ours, grads)
        _set_grads(theirs, grads)
        opt.clip_grad_norm_(1.0)
        ref.clip_grad_norm_(1.0)
        opt.step(valid=torch.tensor(True))
        ref.step(valid=torch.tensor(True))
        for p, q in zip(ours, theirs, strict=True):
            torch.testing.assert_close(p, q, rtol=1e-14, atol=1e-15)
    assert opt.param_groups[0]["lr"] is lr  # still the caller's tensor


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: Adam([nn.Parameter(torch.ones(1))], lr=-1.0), "learning rate"),
        (lambda: Adam([nn.Parameter(torch.ones(1))], lr=torch.tensor([0.1])), "0-dim"),
        (lambda: Adam([nn.Parameter(torch.ones(1))], lr=torch.tensor(math.nan)), "learning rate"),
        (lambda: Adam([nn.Parameter(torch.ones(1))], betas=(0.9, 1.0)), "betas"),
        (lambda: Adam([nn.Parameter(torch.ones(1))], eps=-1.0), "eps"),
        (lambda: AdamW([nn.Parameter(torch.ones(1))], weight_decay=-1.0), "weight_decay"),
        (lambda: build_optimizer("sgd", [nn.Parameter(torch.ones(1))], lr=0.1), "unknown"),
    ],
)
def test_bad_options_are_refused(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("option", ["amsgrad", "maximize"])
def test_a_torch_state_with_options_these_lack_is_refused(option: str) -> None:
    p = nn.Parameter(torch.ones(3))
    theirs = torch.optim.Adam([p], lr=0.1, **{option: True})
    p.grad = torch.ones(3)
    theirs.step()
    with pytest.raises(ValueError, match=option):
        Adam([p], lr=0.1).load_state_dict(theirs.state_dict())


def test_build_optimizer_keeps_the_class_defaults() -> None:
    params = [nn.Parameter(torch.ones(1))]
    assert build_optimizer("adamw", params, lr=0.1).param_groups[0]["weight_decay"] == 1e-2
    assert build_optimizer("adam", params, lr=0.1).param_groups[0]["weight_decay"] == 0.0


def test_a_group_of_mixed_dtypes_is_refused() -> None:
    a = nn.Parameter(torch.ones(2, dtype=torch.float32))
    b = nn.Parameter(torch.ones(2, dtype=torch.float64))
    opt = Adam([a, b])
    a.grad, b.grad = torch.ones_like(a), torch.ones_like(b)
    with pytest.raises(ValueError, match="share one device and dtype"):
        opt.step()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_guarded_step_does_not_synchronise_on_cuda() -> None:
    params = [nn.Parameter(p.detach().cuda()) for p in _params()]
    opt = Adamax(params, lr=1e-3)
    _set_grads(params, _random_grads(params))
    valid = torch.ones((), dtype=torch.bool, device="cuda")
    opt.step(valid=valid)  # the first step builds the buffers
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            opt.clip_grad_norm_(1.0)
            opt.step(valid=valid)
    finally:
        torch.cuda.set_sync_debug_mode("default")
