"""Opt-in fast paths that keep the likelihood exact (or within a stated tolerance).

* :func:`compile_flow_steps` compiles every layer of every level with :func:`torch.compile`,
  one small graph per layer class rather than one huge graph per model, so compile time
  stays bounded however deep the model is. The result is the same function: the tests
  check compiled against eager ``log_prob`` to ``1e-5`` relative.
* :func:`autocast` runs only the coupling networks (the convolutions that are nearly all of
  the FLOPs) in bfloat16 or float16, and hands their output back in the model's dtype, so
  the invertible path, the log-determinants and the likelihood sums stay in float32. On
  a small Glow the bits/dim moves by less than 0.01 (checked by the tests on the CPU).
* :func:`to_channels_last` stores the convolution weights channels-last (NHWC), the layout
  the tensor cores of recent GPUs prefer; pass inputs through :func:`channels_last_input`.
* :func:`set_tf32` lets CUDA float32 matmuls and convolutions use TF32 tensor cores (10-bit
  mantissa products, float32 accumulation), or forbids it; :func:`tf32` does so for a block.
* :func:`keep_freed_memory` has the C allocator keep the memory that tensors free, so that
  each training step on the CPU reuses the pages of the last one instead of asking the
  kernel for fresh ones (``glowlab train`` does this on the CPU).
* :class:`GraphedCall` records a call on fixed-shape CUDA tensors (a whole training step:
  forward, backward and a :mod:`glowlab.optim` update; or drawing a batch of samples) as
  one CUDA graph and replays it, so the CPU launches one graph instead of thousands of
  kernels. It needs a call that never synchronises with the host, which glowlab's
  training step and sampling are built to be.

None of these change ``state_dict``: a model trained with them saves and loads as usual.
"""

from __future__ import annotations

import copy
import ctypes
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from .models.base import FlowModel
from .transforms.base import Transform
from .transforms.coupling import Coupling

__all__ = [
    "GraphedCall",
    "autocast",
    "channels_last_input",
    "compile_flow_steps",
    "keep_freed_memory",
    "keep_freed_memory_for",
    "set_tf32",
    "tf32",
    "to_channels_last",
]


def compile_flow_steps(model: FlowModel, inverse: bool = True, **options: Any) -> FlowModel:
    """Compile each layer of each level's flow in place (forward, and inverse for sampling).

    ``options`` go to :func:`torch.compile` (for example ``mode="max-autotune"`` or
    ``backend="aot_eager"``). The pre-processing layers, the splits and the priors stay
    eager: they run once per level and cost little. Layers of one class share compiled
    code, so compile time grows with the number of layer classes and shapes, not with the
    depth. Returns ``model``; ``state_dict`` keys are unchanged. A deep copy of the model
    (an EMA copy, say) has its own layers compiled, at their first call.

    Example:
        >>> import glowlab
        >>> model = glowlab.Glow((3, 8, 8), levels=1, steps=1, hidden_channels=8)
        >>> model = compile_flow_steps(model, backend="eager")
    """
    for level in model.levels:
        for layer in level.flow:
            # Instance attributes: they shadow the methods and are not part of state_dict.
            # ``_compiled_call_impl`` is what ``nn.Module.compile`` sets.
            layer._compiled_call_impl = _CompiledMethod(layer, "_call_impl", options)
            if inverse:
                layer.inverse = _CompiledMethod(layer, "inverse", options)  # type: ignore[method-assign]
            if type(layer).forward_fused is not Transform.forward_fused:
                # A layer that folds its predecessor (the 1x1 convolution folds an ActNorm).
                layer.forward_fused = _CompiledMethod(layer, "forward_fused", options)  # type: ignore[method-assign]
                if inverse:
                    layer.inverse_fused = _CompiledMethod(layer, "inverse_fused", options)  # type: ignore[method-assign]
    return model


class _CompiledMethod:
    """A layer's method compiled with :func:`torch.compile`.

    A deep copy of the layer (an EMA copy, say) gets the copy's own method compiled: a
    compiled bound method, copied as it is, would go on calling the original layer.
    """

    def __init__(self, layer: nn.Module, name: str, options: dict[str, Any]) -> None:
        self.layer, self.name, self.options = layer, name, options
        self.compiled = torch.compile(getattr(type(layer), name).__get__(layer), **options)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.compiled(*args, **kwargs)

    def __deepcopy__(self, memo: dict[int, Any]) -> _CompiledMethod:
        return _CompiledMethod(copy.deepcopy(self.layer, memo), self.name, self.options)


def _device_type(model: nn.Module) -> str:
    for tensor in model.parameters():
        return tensor.device.type
    return "cpu"


@contextmanager
def autocast(
    model: FlowModel, dtype: torch.dtype = torch.bfloat16, enabled: bool = True
) -> Iterator[FlowModel]:
    """Within the block, run the coupling networks of ``model`` under ``torch.autocast``.

    Only the networks inside :class:`~glowlab.transforms.Coupling` layers are affected: their
    convolutions run in ``dtype`` and their output is cast back to the dtype of their input,
    so the coupling's scale and shift, the log-determinants and the likelihood are computed
    in the model's dtype (float32). Gradients reach the float32 parameters as usual. Nothing
    happens with ``enabled=False``. In the ``"invertible"`` and ``"checkpoint"`` memory modes
    the backward pass runs the networks again, so call ``backward`` inside the block too
    (outside it they would run in float32: a checkpoint then fails its recomputation check).

    Example:
        >>> import glowlab
        >>> model = glowlab.Glow((3, 8, 8), levels=1, steps=1, hidden_channels=8)
        >>> with autocast(model):
        ...     log_prob = model.log_prob(torch.rand(2, 3, 8, 8) - 0.5)
        >>> log_prob.dtype
        torch.float32
    """
    if dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"autocast dtype must be torch.bfloat16 or torch.float16, got {dtype}")
    nets = [m.net for m in model.modules() if isinstance(m, Coupling)] if enabled else []
    device_type = _device_type(model)
    # What each net's instance attribute was: an enclosing block's patch, or none.
    saved = [net.__dict__.get("forward") for net in nets]
    for net in nets:
        net.forward = _AutocastForward(net.forward, device_type, dtype)  # type: ignore[method-assign]
    try:
        yield model
    finally:
        for net, forward in zip(nets, saved, strict=True):
            if forward is None:
                del net.forward  # removes the instance attribute: the class method is back
            else:
                net.forward = forward  # type: ignore[method-assign]


class _AutocastForward:
    """A network's forward under :func:`torch.autocast`, its output cast back.

    A deep copy of the network, made inside the block, is not patched: it gets a copy of
    what the patch wraps (the class's forward, or an enclosing block's patch), since no
    block would undo a patch on the copy.
    """

    def __init__(self, forward: Any, device_type: str, dtype: torch.dtype) -> None:
        self.forward, self.device_type, self.dtype = forward, device_type, dtype

    def __call__(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        # No cast cache: each call casts its weights once anyway, and a cache would keep
        # tensors of a CUDA graph's capture alive past it.
        with torch.autocast(self.device_type, dtype=self.dtype, cache_enabled=False):
            out = self.forward(x, *args, **kwargs)
        return out.to(x.dtype)

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        return copy.deepcopy(self.forward, memo)


def to_channels_last(model: nn.Module) -> nn.Module:
    """Store ``model``'s 4-d parameters and buffers channels-last (NHWC), in place.

    The values, names and shapes are unchanged; only the memory layout differs, so
    ``state_dict`` is the same. Returns ``model``.
    """
    with torch.no_grad():
        for tensor in (*model.parameters(), *model.buffers()):
            if tensor.dim() == 4:
                tensor.data = _channels_last_copy(tensor.data)
    return model


def _channels_last_copy(tensor: Tensor) -> Tensor:
    # Explicit NHWC strides, even where a size-1 dimension makes the plain layout count as
    # channels-last too (1x1 kernels): the gradients of convolutions come back with these
    # strides, and DistributedDataParallel warns when a gradient's strides differ from its
    # parameter's.
    _, c, h, w = tensor.shape
    out = torch.empty_strided(
        tensor.shape, (c * h * w, 1, w * c, c), dtype=tensor.dtype, device=tensor.device
    )
    return out.copy_(tensor)


def channels_last_input(x: Tensor) -> Tensor:
    """``x`` (B, C, H, W) in the channels-last layout (a copy unless it already is).

    The strides are explicit, a channel stride of 1 even for one channel (where PyTorch
    would keep the plain strides): the model's squeezes read the layout from them, so a
    one-channel image, too, flows channels-last through the whole model.
    """
    if x.dim() != 4:
        raise ValueError(f"channels_last_input expects (B, C, H, W), got {tuple(x.shape)}")
    _, c, h, w = x.shape
    if x.stride() == (c * h * w, 1, w * c, c):
        return x
    return _channels_last_copy(x)


# glibc's mallopt parameters.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_TRIM_THRESHOLD = 2**31 - 1


def keep_freed_memory() -> bool:
    """Have the C allocator (glibc's malloc) keep freed memory for reuse; process-wide.

    A training step on the CPU allocates its activations afresh and frees them at the end.
    By default glibc serves large blocks with ``mmap``, which gives them back to the kernel
    when freed, and trims freed memory at the top of the heap, so the next step faults in
    new zeroed pages again: thousands of page faults per step for the small Glow, and over
    a hundred thousand for the paper's width at batch 64. This serves every block from the
    heap and hands memory back only when more than 2 GiB is free at its top. The cost is
    that the process keeps its peak memory (a few percent more of it) until it exits.

    Returns whether the settings took effect: ``False``, changing nothing, where the C
    library is not glibc (macOS, Windows, musl). Calling it again does no harm.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1


def keep_freed_memory_for(device: torch.device, setting: bool | None = None) -> bool:
    """:func:`keep_freed_memory` where ``setting`` asks for it; ``None`` (the default of
    ``train.keep_freed_memory`` and the benchmarks) means where it pays: on a CPU device.

    Returns whether the settings took effect.
    """
    if setting or (setting is None and torch.device(device).type == "cpu"):
        return keep_freed_memory()
    return False


def _tf32_flags() -> tuple[Any, Any] | None:
    """The matmul and convolution precision settings of the newer interface, if it exists."""
    matmul = torch.backends.cuda.matmul
    conv = getattr(torch.backends.cudnn, "conv", None)  # PyTorch 2.9 and later
    if hasattr(matmul, "fp32_precision") and hasattr(conv, "fp32_precision"):
        return matmul, conv
    return None


def set_tf32(enabled: bool) -> None:
    """Allow (``True``) or forbid (``False``) TF32 in CUDA float32 matmuls and convolutions.

    This is process-wide state of PyTorch. ``False`` is strict float32: PyTorch's own default
    lets cuDNN convolutions use TF32, which this turns off too. It has no effect on the CPU.
    Use this (or :func:`tf32`) rather than the ``allow_tf32`` flags: PyTorch raises when a
    process mixes those with the newer ``fp32_precision`` settings.
    """
    flags = _tf32_flags()
    if flags is not None:
        for flag in flags:
            flag.fp32_precision = "tf32" if enabled else "ieee"
    else:
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


@contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """Within the block, TF32 is allowed or forbidden as :func:`set_tf32` sets it; the
    previous settings come back afterwards."""
    flags = _tf32_flags()
    if flags is not None:
        saved = [flag.fp32_precision for flag in flags]
    else:
        saved = [torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32]
    set_tf32(enabled)
    try:
        yield
    finally:
        if flags is not None:
            for flag, value in zip(flags, saved, strict=True):
                flag.fp32_precision = value
        else:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


class GraphedCall:
    """``fn(*inputs)`` recorded once as a CUDA graph, then replayed: one launch per call.

    A step of a deep flow is thousands of small kernels, and launching them one by one
    from Python can take longer than running them. A CUDA graph records the kernels of one
    call and replays them with a single launch. The price is that everything is fixed at
    recording time: the shapes, the addresses of every tensor, and any Python number that
    a kernel was launched with.

    * ``inputs`` are copied into static tensors that the graph reads; each call copies its
      arguments into them (same shapes and dtypes), replays, and returns the graph's
      outputs. **The outputs are static too**: the next call overwrites them, so clone
      what you keep. A call without inputs (drawing samples) names its ``device``.
    * ``fn`` runs ``warmup`` times, on a side stream, before the recording (the recording
      itself runs no kernel): its effects on the model and optimizer happen then. A
      training step can be made harmless during warmup by a ``valid`` flag among the
      inputs that rejects the update (:meth:`glowlab.optim.FlatOptimizer.step`); ActNorm's
      data-dependent init is not an update it can reject, so run it before.
    * Python runs ``fn`` only while warming up and recording; a replay repeats its kernels
      and nothing else. A number that changes between calls must therefore be a tensor,
      such as an optimizer's learning rate (``glowlab.optim`` takes a 0-dim tensor ``lr``:
      ``fill_`` it between calls).
    * ``fn`` must not synchronise with the host (no ``.item()``, no Python ``if`` on a
      tensor), or the recording fails. Random numbers (dequantization noise, sampling)
      are drawn afresh on each replay from the default CUDA generator; PyTorch refuses a
      ``torch.Generator`` of one's own inside a recording. In the ``"checkpoint"`` memory
      mode the recomputation does not replay the random number generator's state while
      recording (that state cannot be read then); glowlab's layers draw no random numbers.
    * What was computed before the recording is not computed again. In evaluation mode
      glowlab caches each 1x1 convolution's inverse weight: record a sampling graph again
      after the weights change. A training step computes its weights inside the graph
      and follows the optimizer's in-place updates. The graph keeps the addresses of the
      optimizer's buffers and of a tensor ``lr``: after ``optimizer.load_state_dict``
      (which makes new ones) record the step again.

    Example (on a GPU)::

        x = torch.empty(64, 3, 32, 32, device="cuda")
        lr = torch.tensor(1e-3, device="cuda")
        optimizer = glowlab.optim.Adamax(model.parameters(), lr=lr)

        def step(x, valid):
            loss = -model.log_prob(x).mean()
            loss.backward()
            optimizer.clip_grad_norm_(50.0)
            applied = optimizer.step(valid=valid & torch.isfinite(loss.detach()))
            optimizer.zero_grad()
            return loss.detach(), applied

        graphed = GraphedCall(step, x, torch.tensor(False, device="cuda"))  # warmup: no update
        loss, applied = graphed(batch, torch.tensor(True, device="cuda"))
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *inputs: Tensor,
        device: torch.device | str | None = None,
        warmup: int = 3,
    ) -> None:
        if not torch.cuda.is_available():
            raise RuntimeError("CUDA graphs need a CUDA device; none is available")
        named = [torch.device(device)] if device is not None else []
        devices = {_indexed(d) for d in (*(t.device for t in inputs), *named)}
        if not devices:
            devices = {torch.device("cuda", torch.cuda.current_device())}
        if len(devices) != 1 or next(iter(devices)).type != "cuda":
            raise ValueError(
                f"a CUDA graph runs on one CUDA device; its inputs and device are on "
                f"{sorted(map(str, devices))}"
            )
        if warmup < 1:
            raise ValueError(f"warmup must be at least 1 (kernels are loaded then), got {warmup}")
        self.device = next(iter(devices))
        self.inputs = tuple(t.detach().clone() for t in inputs)
        with torch.cuda.device(self.device):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(warmup):
                    fn(*self.inputs)
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            # Recorded on a stream of this device: torch.cuda.graph's own capture stream is
            # made once per process, on whichever device was current then, and the work on
            # another device's tensors would not be recorded on it.
            with torch.cuda.graph(self.graph, stream=side):
                self.outputs = fn(*self.inputs)

    def __call__(self, *inputs: Tensor) -> Any:
        if len(inputs) != len(self.inputs):
            raise ValueError(f"expected {len(self.inputs)} inputs, got {len(inputs)}")
        for static, value in zip(self.inputs, inputs, strict=True):
            if value.shape != static.shape or value.dtype != static.dtype:
                raise ValueError(
                    f"a CUDA graph replays fixed shapes: expected {tuple(static.shape)} "
                    f"{static.dtype}, got {tuple(value.shape)} {value.dtype}"
                )
            static.copy_(value, non_blocking=True)
        with torch.cuda.device(self.device):
            self.graph.replay()
        return self.outputs


def _indexed(device: torch.device) -> torch.device:
    """``cuda`` as ``cuda:N`` of the current device, so that the two compare equal."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device
