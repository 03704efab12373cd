"""Memory-saving training: run a flow without storing its per-layer activations.

:meth:`glowlab.models.base.FlowModel.set_memory_mode` chooses how each level's flow is run
while gradients are being recorded; :func:`run_flow` is what the model calls for the two
memory-saving modes.

``"invertible"``
    Stores **no** per-layer activations. The level's flow runs under ``no_grad`` and only its
    output is kept. In the backward pass each layer's input is rebuilt from its output with
    ``layer.inverse``, layer by layer from the last to the first, and that single layer is
    re-run with gradients enabled to get its local vector-Jacobian product (for the gradient
    of both its output and its log-determinant). Activation memory is therefore that of one
    layer plus one output per level, whatever the number of steps ``K``. The price is one
    more evaluation of each layer in the backward pass, through ``layer.rebuild``: by
    default an inverse and a forward (:meth:`~glowlab.transforms.Transform.rebuild`), but
    for a coupling, whose kept half is the same in input and output, one evaluation of its
    network with gradients both inverts the layer and rebuilds its graph
    (:meth:`~glowlab.transforms.Coupling.rebuild`). Both modes walk the flow by
    :meth:`~glowlab.transforms.FlowSequential.units`, so an ActNorm and the 1x1 convolution
    after it are one folded layer here too. As in standard mode the folded pairs' weights
    are computed together (``FlowSequential.batch_folds``): each pair's input is rebuilt
    with inverse weights computed together, and the gradients of all the pairs' weights go
    back to their parameters in one pass at the end. ``docs/benchmarks.md`` has the
    measured step times.

    * **Exactness.** The gradients equal standard backprop up to the error of the
      reconstruction ``inverse(forward(x))``: about ``1e-15`` relative in float64 (the tests
      check every parameter's gradient to ``1e-8``). In float32 the rebuilt inputs drift
      from the true ones by about ``1e-6`` relative after a level of the small benchmark
      Glow (8 steps); its parameter gradients then differ from standard backprop by a
      median ``3e-5`` relative (norm of the difference over the norm of the gradient), up
      to ``6e-3`` for the smallest gradients: well below the noise of stochastic
      gradients.
    * **ActNorm's data-dependent init** changes the parameters during the forward pass, so a
      call in which any ActNorm of the flow still needs its init (training mode) falls back
      to a standard forward; every later call is memory-saving.
    * **BatchNormFlow in training mode** normalises with the statistics of the batch, which
      cannot be recovered from the output, while its ``inverse`` uses the running averages:
      the input cannot be rebuilt. Such a flow raises :class:`ValueError`; use
      ``"checkpoint"`` for it (or evaluation mode, where the layer is an ordinary bijection).
    * **Coupling networks must be deterministic** (no dropout): the backward pass re-runs
      them and must see the same function. Batch normalisation inside a coupling network is
      fine (its input, the kept half, is rebuilt exactly); its running statistics are
      restored after the backward re-runs so that they are updated once per step.
    * Double backward (gradients of gradients) is not supported in this mode.

``"checkpoint"``
    Gradient checkpointing of every layer (:func:`torch.utils.checkpoint.checkpoint` with
    ``use_reentrant=False``): each layer's input is stored and the layer's internal
    activations (the wide hidden layers of the coupling networks, most of the memory) are
    recomputed in the backward pass (one extra forward: 1.3 to 1.6 times the step time of
    standard backprop on a CPU). A folded (ActNorm, 1x1 convolution) pair is not
    checkpointed: its weights are computed together with the level's other pairs, and its
    one convolution stores only its input, as a checkpoint would. Memory still grows with
    ``K``, more slowly; any layer works, BatchNormFlow in training mode included. A layer
    that still needs ActNorm's init runs without checkpointing for that call, and buffers
    (running statistics of batch normalisation) are restored after the recomputation so
    that they are updated once per step, as in standard training.

:func:`saved_activation_bytes` measures the bytes autograd stores for one training
forward pass; it is how the tests and ``benchmarks/bench_memory.py`` compare the modes on a
CPU, where there is no peak-memory counter like ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .transforms.actnorm import ActNorm
from .transforms.base import (
    FlowSequential,
    FoldedPairs,
    FusedPair,
    Transform,
    spatial_size,
    zero_logdet,
)
from .transforms.normalization import BatchNormFlow

__all__ = ["run_flow", "saved_activation_bytes"]

SavingMode = Literal["invertible", "checkpoint"]


def run_flow(
    flow: FlowSequential, h: Tensor, y: Tensor | None, mode: SavingMode
) -> tuple[Tensor, Tensor]:
    """Run ``flow`` forward (``h -> (z, logdet)``) in a memory-saving ``mode``.

    Returns exactly what ``flow(h, y)`` returns and gives the same gradients; only what is
    stored for the backward pass differs (see the module docstring).

    Args:
        flow: one level's sequence of transforms.
        h: the level's input.
        y: conditioning passed to every layer as ``context`` (may be ``None``).
        mode: ``"invertible"`` or ``"checkpoint"``.

    Example:
        >>> import glowlab
        >>> model = glowlab.Glow((3, 8, 8), levels=2, steps=2, hidden_channels=8)
        >>> x = torch.rand(4, 3, 8, 8) - 0.5
        >>> _ = model.log_prob(x)  # ActNorm's data-dependent init, standard pass
        >>> loss = -model.set_memory_mode("invertible").log_prob(x).mean()
        >>> loss.backward()
    """
    if mode == "invertible":
        return _run_invertible(flow, h, y)
    if mode == "checkpoint":
        return _run_checkpointed(flow, h, y)
    raise ValueError(f"unknown memory-saving mode {mode!r}; choose 'invertible' or 'checkpoint'")


# -- helpers shared by both modes ------------------------------------------------------------
def _needs_actnorm_init(module: nn.Module) -> bool:
    return any(isinstance(m, ActNorm) and m.training and m.needs_init() for m in module.modules())


@contextmanager
def _buffers_restored(module: nn.Module) -> Iterator[None]:
    """Undo any change to ``module``'s buffers (running statistics) made inside the block."""
    saved = [(b, b.detach().clone()) for b in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


# -- "invertible" ------------------------------------------------------------------------------
def _run_invertible(flow: FlowSequential, h: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
    if len(flow) == 0 or _needs_actnorm_init(flow):
        return flow(h, y)
    for module in flow.modules():
        if isinstance(module, BatchNormFlow) and module.training:
            raise ValueError(
                "memory mode 'invertible' cannot rebuild the input of a BatchNormFlow in "
                "training mode (it normalises with batch statistics that its output does not "
                "determine); use set_memory_mode('checkpoint') for this model"
            )
    params = tuple(p for p in flow.parameters() if p.requires_grad)
    return _InvertibleFlow.apply(flow, h, y, *params)  # type: ignore[no-any-return]


class _InvertibleFlow(torch.autograd.Function):
    """``(h, context, *params) -> (z, logdet)`` through a flow, keeping only ``z``.

    The parameters are inputs of the function so that autograd hands their gradients to
    ``backward``'s caller (and to DistributedDataParallel's gradient hooks) like any other.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        flow: FlowSequential,
        h: Tensor,
        context: Tensor | None,
        *params: Tensor,
    ) -> tuple[Tensor, Tensor]:
        z, logdet = flow(h, context)
        if z.untyped_storage().data_ptr() == h.untyped_storage().data_ptr():
            z = z.clone()  # a view of the input cannot be an output of a custom Function
        ctx.flow = flow
        ctx.params = params
        ctx.save_for_backward(z, context)
        return z, logdet

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(  # type: ignore[override]
        ctx: Any, grad_z: Tensor | None, grad_logdet: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        z, context = ctx.saved_tensors
        flow: FlowSequential = ctx.flow
        params: tuple[Tensor, ...] = ctx.params
        want_context = context is not None and ctx.needs_input_grad[2]
        index = {id(p): i for i, p in enumerate(params)}
        param_grads: list[Tensor | None] = [None] * len(params)
        context_grad: Tensor | None = None

        out = z.detach()
        grad_out = torch.zeros_like(out) if grad_z is None else grad_z
        grad_ld = zero_logdet(out) if grad_logdet is None else grad_logdet
        units, folds = _PairFolds.of(flow, out)
        with _buffers_restored(flow):
            for layer in reversed(units):
                if folds is not None and isinstance(layer, FusedPair):
                    out, grad_out = folds.rebuild_previous(out, grad_out)
                    continue
                local = [p for p in layer.parameters() if id(p) in index]
                ctx_in = [context] if want_context else []
                with torch.enable_grad():
                    rebuilt = layer.rebuild(out, context)
                    z_layer, ld_layer = rebuilt.z, rebuilt.logdet
                    # A constant log-determinant (a permutation, a squeeze) has no graph.
                    pairs = [(z_layer, grad_out), (ld_layer, grad_ld.to(ld_layer.dtype))]
                    pairs = [(t, g) for t, g in pairs if t.requires_grad]
                    grads = torch.autograd.grad(
                        [t for t, _ in pairs],
                        [*rebuilt.leaves, *local, *ctx_in],
                        [g for _, g in pairs],
                        allow_unused=True,
                    )
                n = len(rebuilt.leaves)
                leaf_grads = [
                    torch.zeros_like(leaf) if g is None else g
                    for leaf, g in zip(rebuilt.leaves, grads[:n], strict=True)
                ]
                grad_out = rebuilt.combine(*leaf_grads)
                x = rebuilt.x
                for p, g in zip(local, grads[n : n + len(local)], strict=True):
                    if g is not None:
                        i = index[id(p)]
                        param_grads[i] = g if param_grads[i] is None else param_grads[i] + g
                if want_context and grads[-1] is not None:
                    context_grad = grads[-1] if context_grad is None else context_grad + grads[-1]
                out = x.detach()
            if folds is not None:  # before the buffers are restored: the graph reads them
                for p, g in folds.parameter_grads(grad_ld, index):
                    i = index[id(p)]
                    param_grads[i] = g if param_grads[i] is None else param_grads[i] + g
        return (None, grad_out, context_grad, *param_grads)


class _PairFolds:
    """A flow's folded pairs in the invertible backward pass, their weights computed
    together (:meth:`Transform.fold_pairs`, :meth:`Transform.unfold_pairs`).

    Each pair's input is rebuilt with the batched inverse weights, and the gradients of its
    weight and bias are kept; at the end one backward pass through the batched weight
    computation turns them, and the log-determinants' gradient, into the parameters'.
    """

    def __init__(self, pairs: list[FusedPair], folded: FoldedPairs, inverses: list[Any]) -> None:
        self.pairs = pairs
        self.folded = folded
        self.inverses = inverses
        self.next = len(pairs)  # the pairs are met last to first
        self.positions: list[int] = []  # H*W of each pair's input, first pair first
        self.weight_grads: list[Tensor] = []
        self.bias_grads: list[Tensor] = []

    @classmethod
    def of(cls, flow: FlowSequential, out: Tensor) -> tuple[list[Transform], _PairFolds | None]:
        """The flow's units, and its folded pairs computed together where they can be."""
        with torch.enable_grad():
            units, folded = flow.folded_units(out)
        # Where some of the pairs' parameters are frozen, the per-unit rebuild handles them.
        if folded is None or not all(
            t.requires_grad for t in (folded.weights[0], folded.biases[0], folded.per_position)
        ):
            return units, None
        pairs = [unit for unit in units if isinstance(unit, FusedPair)]
        inverses = pairs[0].second.unfold_pairs(pairs)
        return units, None if inverses is None else cls(pairs, folded, inverses)

    def rebuild_previous(self, out: Tensor, grad_out: Tensor) -> tuple[Tensor, Tensor]:
        """The input of the pair whose output is ``out``, and the gradient there."""
        self.next -= 1
        k = self.next
        self.positions.insert(0, spatial_size(out))
        with torch.no_grad():
            x = self.inverses[k](out)
        leaf = x.detach().requires_grad_(True)
        weight, bias = self.folded.weights[k], self.folded.biases[k]
        with torch.enable_grad():
            z = self.folded.apply[k](leaf)
            grad_x, grad_w, grad_b = torch.autograd.grad(z, [leaf, weight, bias], grad_out)
        self.weight_grads.insert(0, grad_w)
        self.bias_grads.insert(0, grad_b)
        return x.detach(), grad_x

    def parameter_grads(
        self, grad_logdet: Tensor, index: dict[int, int]
    ) -> list[tuple[Tensor, Tensor]]:
        """``(parameter, gradient)`` for the pairs' parameters that need one."""
        params = [p for pair in self.pairs for p in pair.parameters() if id(p) in index]
        per_position = self.folded.per_position
        # The flow's log-determinant holds sum_k positions[k] * per_position[k] for each
        # example (FlowSequential.run_units).
        total = grad_logdet.sum().to(per_position.dtype)
        if len(set(self.positions)) == 1:
            grad_per_position = (self.positions[0] * total).expand_as(per_position)
        else:
            grad_per_position = torch.stack([n * total for n in self.positions])
        with torch.enable_grad():
            grads = torch.autograd.grad(
                [*self.folded.weights, *self.folded.biases, per_position],
                params,
                [*self.weight_grads, *self.bias_grads, grad_per_position],
                allow_unused=True,
            )
        return [(p, g) for p, g in zip(params, grads, strict=True) if g is not None]


# -- "checkpoint" ------------------------------------------------------------------------------
def _run_checkpointed(flow: FlowSequential, h: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
    # The recomputation replays the random number generator's state, in case a layer draws
    # random numbers; glowlab's layers draw none. Reading that state is not allowed while a
    # CUDA graph is recorded (glowlab.speed.GraphedCall), so it is skipped then.
    preserve_rng = not (h.is_cuda and torch.cuda.is_current_stream_capturing())
    # The folded pairs' weights are computed together, as in standard mode (a few stacked
    # parameters are all they keep), and a folded pair is then one convolution, which
    # stores only its input: what a checkpoint of it would store.

    def run(layer: Transform, x: Tensor) -> tuple[Tensor, Tensor]:
        if _needs_actnorm_init(layer):
            return layer(x, y)
        return checkpoint(  # type: ignore[no-any-return]
            _once_updating(layer, y), x, use_reentrant=False, preserve_rng_state=preserve_rng
        )

    return flow.run_units(h, run)


def _once_updating(layer: nn.Module, y: Tensor | None) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    """``layer(., y)``; the second call (the recomputation) leaves the buffers unchanged."""
    calls = [0]

    def run(x: Tensor) -> tuple[Tensor, Tensor]:
        calls[0] += 1
        if calls[0] == 1:
            return layer(x, y)
        with _buffers_restored(layer):
            return layer(x, y)

    return run


# -- measuring --------------------------------------------------------------------------------
def saved_activation_bytes(fn: Callable[[], Any], exclude: nn.Module | None = None) -> int:
    """Bytes of the tensors autograd stores for the backward pass while ``fn()`` runs.

    Each storage is counted once, however many saved tensors view it, and the storages of
    ``exclude``'s parameters and buffers (the model's weights, which are in memory anyway)
    are not counted. This is a deterministic, CPU-friendly measure of activation memory;
    on a GPU the real peak is ``torch.cuda.max_memory_allocated``, which also counts the
    weights, the gradients, the optimizer state and the temporaries of the backward pass.

    Example:
        >>> import glowlab
        >>> model = glowlab.Glow((3, 8, 8), levels=1, steps=2, hidden_channels=8)
        >>> x = torch.rand(2, 3, 8, 8) - 0.5
        >>> saved_activation_bytes(lambda: model.log_prob(x), exclude=model) > 0
        True
    """
    skip = set()
    if exclude is not None:
        skip = {t.untyped_storage().data_ptr() for t in (*exclude.parameters(), *exclude.buffers())}
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip and storage.device.type != "meta":
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fn()
    del result
    return sum(seen.values())
