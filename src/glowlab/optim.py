"""Adam, AdamW and Adamax that can skip a non-finite step on the device.

A training loop that must never apply a NaN gradient has to decide, every step, whether to
step. With :mod:`torch.optim` that decision is a Python ``if`` on a device tensor, a host
synchronisation: the CPU waits for the GPU to finish the step before it can queue the next
one, and a small model spends much of its time waiting. These optimizers take the decision
on the device instead::

    loss.backward()
    grad_norm = optimizer.clip_grad_norm_(max_norm)    # optional; returns a device tensor
    applied = optimizer.step(valid=torch.isfinite(loss))

``step(valid=...)`` applies the update only if ``valid`` holds and every gradient is finite;
otherwise the parameters and every state tensor keep their exact values and the step count
does not move. ``applied`` is a 0-dim bool tensor that the caller reads whenever it likes
(a loop can read a window of them in one go). Without ``valid``, ``step()`` updates
unconditionally, like :mod:`torch.optim`.

How: each parameter group's gradients are gathered into one flat buffer (one multi-tensor
copy) and its state lives in flat buffers too, so the update is a few element-wise kernels
over all parameters rather than one per parameter, and a candidate update can be committed
by selection, ``where(ok, new, old)``: a rejected candidate's values, inf and NaN included
(a huge gradient makes an infinite second moment), never reach the state or the weights.
The cost is memory: one parameter-sized buffer beside the
state for the gathered gradients (which then holds the parameter change), and two for the
candidate moments, kept between steps on the CPU and allocated only during a step on CUDA.

The update rules are those of :mod:`torch.optim` (``tests/test_optim.py`` compares them in
float64 over several steps, with weight decay and clipping), and ``state_dict`` has the same
layout (per parameter ``step``, ``exp_avg`` and ``exp_avg_sq`` or ``exp_inf``), so state
moves between a glowlab optimizer and the :mod:`torch.optim` one of the same name. Every
parameter of a group is stepped together: one with no ``.grad`` is stepped with a zero
gradient (its moments decay and weight decay applies), where :mod:`torch.optim` would leave
it out; so leave frozen parameters out of the optimizer. Adding a parameter to a group
after a step starts that group's state afresh.

References:
    Adam: A Method for Stochastic Optimization. Kingma and Ba, 2015 (arXiv:1412.6980);
    Adamax is its infinity-norm variant from the same paper.
    Decoupled Weight Decay Regularization. Loshchilov and Hutter, 2019 (arXiv:1711.05101).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["Adam", "AdamW", "Adamax", "FlatOptimizer", "build_optimizer"]


class FlatOptimizer(torch.optim.Optimizer):
    """Base of :class:`Adam`, :class:`AdamW` and :class:`Adamax`: flat state, guarded steps.

    Subclasses name their second moment (``_second``) and compute a candidate update in
    :meth:`_candidate`; this class gathers gradients, clips, guards and commits. ``lr`` and
    ``weight_decay`` default to torch.optim's for the class (``default_lr``,
    ``default_weight_decay``: 1e-3 and 0, AdamW's decay 1e-2, Adamax's rate 2e-3).

    ``lr`` may be a 0-dim tensor on the parameters' device, here or in a group: the update
    then reads it on the device, so a step recorded in a CUDA graph
    (:class:`glowlab.speed.GraphedCall`) follows a schedule that changes the tensor in
    place between replays (``lr.fill_(value)``).

    A group's parameters share one step count. Parameters taken out of a group leave the
    others' state as it is; parameters added to a group that has stepped are refused (give
    them a group of their own with ``add_param_group``).
    """

    _second = "exp_avg_sq"
    _decoupled = False  # weight decay: L2 (added to the gradient), or decoupled (AdamW)
    # torch.optim's defaults, which a class may change (AdamW: decay; Adamax: rate).
    default_lr = 1e-3
    default_weight_decay = 0.0

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor | None = None,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float | None = None,
    ) -> None:
        lr = self.default_lr if lr is None else lr
        weight_decay = self.default_weight_decay if weight_decay is None else weight_decay
        if isinstance(lr, Tensor) and lr.dim() != 0:
            raise ValueError(f"a tensor learning rate must be 0-dim, got shape {tuple(lr.shape)}")
        if not (math.isfinite(lr) and lr >= 0):
            raise ValueError(f"invalid learning rate {float(lr)}: need a finite lr >= 0")
        if not all(0.0 <= b < 1.0 for b in betas) or len(betas) != 2:
            raise ValueError(f"invalid betas {betas}: need two values in [0, 1)")
        if not eps >= 0:
            raise ValueError(f"invalid eps {eps}: need eps >= 0")
        if not weight_decay >= 0:
            raise ValueError(f"invalid weight_decay {weight_decay}: need weight_decay >= 0")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)
        self._flat: dict[int, _FlatGroup] = {}  # by index into param_groups, made lazily
        self._norm: Tensor | None = None  # the gathered gradients' current norm, once taken

    # -- the public steps ------------------------------------------------------------------
    @torch.no_grad()
    def clip_grad_norm_(self, max_norm: float | None = None) -> Tensor:
        """Gather the gradients, clip their total 2-norm to ``max_norm``; return the norm.

        The norm is taken over every group's gradients before clipping, as
        :func:`torch.nn.utils.clip_grad_norm_` does; it is a device tensor (NaN or inf when a
        gradient is). The next :meth:`step` uses the gathered, clipped gradients. A second
        call sees the clipped gradients, as torch's does: it returns their norm and clips
        them no further than ``max_norm``.
        """
        if max_norm is not None and not max_norm > 0:
            raise ValueError(f"max_norm must be > 0, got {max_norm}")
        flats = self._gather()
        norm = self._norm if self._norm is not None else self._total_norm(flats)
        self._norm = norm
        if max_norm is not None:
            coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
            for f in flats:
                f.grad.mul_(coef.to(f.grad.device, f.grad.dtype))
            self._norm = norm * coef  # the norm of the gradients as they are now
        return norm

    @staticmethod
    def _total_norm(flats: list[_FlatGroup]) -> Tensor:
        norms = [torch.linalg.vector_norm(f.grad) for f in flats]
        if len(norms) == 1:
            return norms[0]
        return torch.linalg.vector_norm(torch.stack([n.to(norms[0].device) for n in norms]))

    @torch.no_grad()
    def step(  # type: ignore[override]
        self, closure: Callable[[], Any] | None = None, *, valid: Tensor | bool | None = None
    ) -> Any:
        """One update of every group.

        With ``valid`` (a bool, or a 0-dim tensor on the parameters' device) the update is
        applied only if ``valid`` holds and every gradient is finite, decided on the device;
        the return value is then that decision as a 0-dim bool tensor. Without it the update
        is applied as is and the return value is ``closure()``'s, as in :mod:`torch.optim`.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        flats = self._gather()
        ok: Tensor | None = None
        if valid is not None:
            # One decision for all groups, or a step could be half applied. The norm that
            # clip_grad_norm_ took is finite exactly when every gradient is (or overflows).
            norm = self._norm if self._norm is not None else self._total_norm(flats)
            ok = torch.isfinite(norm)
            if isinstance(valid, Tensor):
                ok = ok & valid.to(device=ok.device, dtype=torch.bool)
            elif not valid:
                ok = torch.zeros_like(ok)
        for flat, group in zip(flats, self.param_groups, strict=True):
            self._update(flat, group, ok.to(flat.grad.device) if ok is not None else None)
        self._forget_gradients()
        return ok if valid is not None else loss

    # -- gathering and committing ---------------------------------------------------------
    def _gather(self) -> list[_FlatGroup]:
        flats = []
        for index in range(len(self.param_groups)):
            flat = self._flat_group(index)
            if not flat.gathered:
                flat.gather()
            flats.append(flat)
        return flats

    def _flat_group(self, index: int) -> _FlatGroup:
        group = self.param_groups[index]
        flat = self._flat.get(index)
        # The group's list object, as torch.optim keeps it (load_state_dict included): an
        # identity check, not a walk over the parameters on every step.
        if flat is None or flat.source is not group["params"] or flat.size != len(flat.source):
            old, flat = flat, _FlatGroup(group["params"], (self._second,))
            if old is not None:
                self._carry_over(old, flat, index)
            self._flat[index] = flat
            self._link_state(flat)
        return flat

    def _carry_over(self, old: _FlatGroup, new: _FlatGroup, index: int) -> None:
        """Keep the state of the parameters a changed group still holds.

        A group's parameters share one step count, so a group that has stepped cannot take
        new ones: they would start with its step count instead of their own (what
        ``load_state_dict`` also refuses).
        """
        kept = {id(p): views for p, views in zip(old.params, old.state_views(), strict=True)}
        if any(id(p) not in kept for p in new.params) and bool(old.step > 0):  # a host read,
            raise ValueError(  # once per change of the group
                f"parameters were added to parameter group {index} after it stepped; this "
                "optimizer steps a group's parameters together: give new parameters a group "
                "of their own (add_param_group)"
            )
        new.step.copy_(old.step)
        for p, views in zip(new.params, new.state_views(), strict=True):
            for name, view in views.items():
                if id(p) in kept:
                    view.copy_(kept[id(p)][name])
        for p in old.params:
            if all(p is not q for q in new.params):
                self.state.pop(p, None)

    def _link_state(self, flat: _FlatGroup) -> None:
        """Point ``self.state`` at the flat buffers (what ``state_dict`` saves)."""
        for p, views in zip(flat.params, flat.state_views(), strict=True):
            self.state[p] = {"step": flat.step, **views}

    def _update(self, flat: _FlatGroup, group: dict[str, Any], ok: Tensor | None) -> None:
        g = flat.grad
        lr, wd = group["lr"], group["weight_decay"]
        if isinstance(lr, Tensor) and lr.device != g.device:
            # A CPU tensor would still work eagerly, read as a number, but a CUDA graph
            # would keep the value it had when it was recorded.
            raise ValueError(
                f"a tensor learning rate must be on the parameters' device {g.device}, "
                f"got one on {lr.device}"
            )
        if wd and not self._decoupled:
            torch._foreach_add_(flat.grad_views, flat.params, alpha=wd)
        if wd and self._decoupled:
            factor: Tensor | float = 1 - lr * wd
            if ok is not None:
                factor = 1 - (lr * wd) * ok.to(g.dtype)
            torch._foreach_mul_(flat.params, factor)
        # The candidate's step count (>= 1 even after rejections), in float64 for the bias
        # corrections, which torch.optim computes in Python floats.
        step = (flat.step + 1).to(torch.float64)
        state = flat.state
        first, second = self._candidate(
            g,
            state["exp_avg"],
            state[self._second],
            step,
            group,
            scratch=flat.scratch(),
            out=g,  # the gradients are spent by then: the change takes their buffer
        )
        # A rejected candidate may hold inf or NaN (a huge or non-finite gradient): select,
        # never blend, so that none of it reaches the state or the weights.
        _commit(state["exp_avg"], first, ok)
        _commit(state[self._second], second, ok)
        if ok is not None:
            g.masked_fill_(~ok, 0.0)
        torch._foreach_add_(flat.params, flat.grad_views)
        flat.step.add_(1 if ok is None else ok.to(flat.step.dtype))

    def _candidate(
        self,
        g: Tensor,
        exp_avg: Tensor,
        second: Tensor,
        step: Tensor,
        group: dict[str, Any],
        scratch: tuple[Tensor, Tensor],
        out: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """New first and second moments (in the ``scratch`` buffers), not yet committed, and
        the parameter change in ``out``, which may be ``g``'s buffer. ``step`` is the step
        count the update would reach (>= 1, float64)."""
        raise NotImplementedError

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none=set_to_none)
        self._forget_gradients()

    def _forget_gradients(self) -> None:
        """The next step gathers ``.grad`` afresh (after a step, or new gradients)."""
        self._norm = None
        for flat in self._flat.values():
            flat.gathered = False

    # -- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state_dict = super().state_dict()
        # A step tensor apiece, as torch.optim keeps them: a shared one would be counted
        # once per parameter by a torch.optim optimizer that loads this state.
        state_dict["state"] = {
            key: {**value, "step": value["step"].clone()}
            for key, value in state_dict["state"].items()
        }
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for group in state_dict["param_groups"]:
            options = [k for k in ("amsgrad", "maximize", "differentiable") if group.get(k)]
            if options:  # a torch.optim state with options these optimizers do not have
                raise ValueError(
                    f"the saved optimizer uses {', '.join(options)}, which this one lacks"
                )
        super().load_state_dict(state_dict)
        loaded = self.state
        self.state = type(loaded)()
        self._flat = {}
        for index, group in enumerate(self.param_groups):
            present = [p for p in group["params"] if loaded.get(p)]
            if not present:
                continue  # never stepped: the buffers are made at the first step
            flat = self._flat_group(index)
            steps = {float(loaded[p]["step"]) if p in loaded else 0.0 for p in group["params"]}
            if len(steps) != 1:
                raise ValueError(
                    f"parameter group {index} holds parameters at different step counts "
                    f"{sorted(steps)}; this optimizer steps a group's parameters together"
                )
            flat.step.fill_(steps.pop())
            for p, views in zip(flat.params, flat.state_views(), strict=True):
                for name, view in views.items():
                    saved = loaded.get(p, {}).get(name)
                    if saved is None:
                        raise ValueError(
                            f"the saved state has no {name!r} for a parameter of group {index}"
                        )
                    view.copy_(saved)


class Adam(FlatOptimizer):
    """Adam (``torch.optim.Adam``'s rule, L2 weight decay) with device-side skipping.

    Example:
        >>> w = torch.nn.Parameter(torch.ones(3))
        >>> opt = Adam([w], lr=0.1)
        >>> w.grad = torch.tensor([1.0, float("nan"), 1.0])
        >>> bool(opt.step(valid=True)), w.tolist()
        (False, [1.0, 1.0, 1.0])
    """

    def _candidate(self, g, exp_avg, second, step, group, scratch, out):  # type: ignore[no-untyped-def]
        beta1, beta2 = group["betas"]
        first = torch.lerp(exp_avg, g, 1 - beta1, out=scratch[0])
        second = torch.mul(second, beta2, out=scratch[1]).addcmul_(g, g, value=1 - beta2)
        bias1 = 1 - torch.pow(beta1, step)
        bias2_sqrt = torch.sqrt(1 - torch.pow(beta2, step))
        denom = torch.sqrt(second, out=out).div_(bias2_sqrt).add_(group["eps"])
        torch.div(first, denom, out=out).mul_(-group["lr"] / bias1)
        return first, second


class AdamW(Adam):
    """AdamW (``torch.optim.AdamW``'s rule: decoupled weight decay) with device-side skipping."""

    _decoupled = True
    default_weight_decay = 1e-2


class Adamax(FlatOptimizer):
    """Adamax (``torch.optim.Adamax``'s rule, L2 weight decay) with device-side skipping.

    The optimizer of the Glow paper.
    """

    _second = "exp_inf"
    default_lr = 2e-3

    def _candidate(self, g, exp_avg, second, step, group, scratch, out):  # type: ignore[no-untyped-def]
        beta1, beta2 = group["betas"]
        first = torch.lerp(exp_avg, g, 1 - beta1, out=scratch[0])
        second = torch.mul(second, beta2, out=scratch[1])
        torch.maximum(second, g.abs_().add_(group["eps"]), out=second)
        bias1 = 1 - torch.pow(beta1, step)
        torch.div(first, second, out=out).mul_(-group["lr"] / bias1)
        return first, second


def build_optimizer(
    name: str,
    params: Iterable[Tensor] | Iterable[dict[str, Any]],
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float | None = None,
) -> FlatOptimizer:
    """``"adam"``, ``"adamw"`` or ``"adamax"`` as a glowlab optimizer; ``weight_decay=None``
    is the class's default (AdamW's 1e-2, 0 for the others)."""
    classes: dict[str, type[FlatOptimizer]] = {"adam": Adam, "adamw": AdamW, "adamax": Adamax}
    if name not in classes:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {sorted(classes)}")
    return classes[name](params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def _commit(buffer: Tensor, new: Tensor, ok: Tensor | None) -> None:
    if ok is None:
        buffer.copy_(new)
    else:
        torch.where(ok, new, buffer, out=buffer)


class _FlatGroup:
    """One parameter group's flat gradient and state buffers, and views shaped like each
    parameter (with its strides, so channels-last weights stay on the multi-tensor path)."""

    def __init__(self, params: Sequence[Tensor], second: tuple[str, ...]) -> None:
        if not params:
            raise ValueError("a parameter group needs at least one parameter")
        devices = {p.device for p in params}
        dtypes = {p.dtype for p in params}
        if len(devices) > 1 or len(dtypes) > 1:
            raise ValueError(
                "the parameters of a group must share one device and dtype, got "
                f"{sorted(map(str, devices))} and {sorted(map(str, dtypes))}"
            )
        if not all(p.dtype.is_floating_point for p in params):
            raise ValueError("only floating-point parameters can be optimized")
        self.source, self.size = params, len(params)  # the group's list, to notice a change
        self.params = list(params)
        ref = self.params[0]
        total = sum(p.numel() for p in self.params)
        self.grad = torch.zeros(total, device=ref.device, dtype=ref.dtype)
        self.grad_views = self.views_of(self.grad)
        # On the CPU the candidate moments' buffers are kept: large allocations are fresh
        # pages each time, and faulting them in cost as much as the arithmetic. CUDA's
        # caching allocator reuses freed blocks, so there they live only during a step
        # and add nothing to the peak memory of the forward and backward passes.
        self._scratch = None
        if ref.device.type == "cpu":
            self._scratch = (torch.empty_like(self.grad), torch.empty_like(self.grad))
        self.state = {
            name: torch.zeros(total, device=ref.device, dtype=ref.dtype)
            for name in ("exp_avg", *second)
        }
        # torch.optim's step type: float32, or float64 under a float64 default dtype.
        step_dtype = torch.float64 if ref.dtype == torch.float64 else torch.float32
        self.step = torch.zeros((), device=ref.device, dtype=step_dtype)
        self.gathered = False

    def scratch(self) -> tuple[Tensor, Tensor]:
        if self._scratch is not None:
            return self._scratch
        return torch.empty_like(self.grad), torch.empty_like(self.grad)

    def views_of(self, flat: Tensor) -> list[Tensor]:
        views, offset = [], 0
        for p in self.params:
            n = p.numel()
            chunk = flat.narrow(0, offset, n)
            dense = _dense(p)
            views.append(chunk.as_strided(p.shape, p.stride()) if dense else chunk.view(p.shape))
            offset += n
        return views

    def state_views(self) -> list[dict[str, Tensor]]:
        per_buffer = {name: self.views_of(buffer) for name, buffer in self.state.items()}
        return [
            {name: views[i] for name, views in per_buffer.items()} for i in range(len(self.params))
        ]

    def gather(self) -> None:
        grads = [p.grad for p in self.params]
        if all(g is not None for g in grads):
            torch._foreach_copy_(self.grad_views, grads)  # type: ignore[arg-type]
            self.gathered = True
            return
        present = [(v, g) for v, g in zip(self.grad_views, grads, strict=True) if g is not None]
        missing = [v for v, g in zip(self.grad_views, grads, strict=True) if g is None]
        if present:
            views, sources = zip(*present, strict=True)
            torch._foreach_copy_(list(views), list(sources))
        if missing:
            torch._foreach_zero_(missing)
        self.gathered = True


def _dense(t: Tensor) -> bool:
    """Whether ``t`` covers exactly ``numel`` consecutive elements in some dimension order
    (contiguous, channels-last, ...), so a flat chunk can take its strides."""
    expected = 1
    for size, stride in sorted(zip(t.shape, t.stride(), strict=True), key=lambda d: d[1]):
        if size == 1:
            continue
        if stride != expected:
            return False
        expected *= size
    return True
