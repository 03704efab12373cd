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

None of these change ``state_dict``: a model trained with them saves and loads as usual.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from .models.base import FlowModel
from .transforms.base import Transform
from .transforms.coupling import Coupling

__all__ = [
    "autocast",
    "channels_last_input",
    "compile_flow_steps",
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
    depth. Returns ``model``; ``state_dict`` keys are unchanged.

    Example:
        >>> import glowlab
        >>> model = glowlab.Glow((3, 8, 8), levels=1, steps=1, hidden_channels=8)
        >>> model = compile_flow_steps(model, backend="eager")
    """
    for level in model.levels:
        for layer in level.flow:
            layer.compile(**options)
            # Instance attributes: they shadow the methods and are not part of state_dict.
            if inverse:
                layer.inverse = torch.compile(layer.inverse, **options)  # type: ignore[method-assign]
            if type(layer).forward_fused is not Transform.forward_fused:
                # A layer that folds its predecessor (the 1x1 convolution folds an ActNorm).
                layer.forward_fused = torch.compile(layer.forward_fused, **options)  # type: ignore[method-assign]
                if inverse:
                    layer.inverse_fused = torch.compile(layer.inverse_fused, **options)  # type: ignore[method-assign]
    return model


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
    happens with ``enabled=False``.

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
    for net in nets:
        net.forward = _autocast_forward(net.forward, device_type, dtype)  # type: ignore[method-assign]
    try:
        yield model
    finally:
        for net in nets:
            del net.forward  # removes the instance attribute: the class method is back


def _autocast_forward(forward: Any, device_type: str, dtype: torch.dtype) -> Any:
    def run(x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        with torch.autocast(device_type, dtype=dtype):
            out = forward(x, *args, **kwargs)
        return out.to(x.dtype)

    return run


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
    """``x`` (B, C, H, W) in the channels-last layout (a copy unless it already is)."""
    if x.dim() != 4:
        raise ValueError(f"channels_last_input expects (B, C, H, W), got {tuple(x.shape)}")
    return x.contiguous(memory_format=torch.channels_last)


def _tf32_flags() -> tuple[Any, Any] | None:
    """The matmul and convolution precision settings of the newer interface, if it exists."""
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    if hasattr(matmul, "fp32_precision") and hasattr(conv, "fp32_precision"):
        return matmul, conv
    return None  # PyTorch before 2.9


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
