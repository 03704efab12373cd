"""What every glowlab model shares: the multi-scale skeleton and the public API."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..multiscale import Split
from ..priors import GaussianPrior, StandardLogistic, StandardNormal
from ..transforms.base import FlowSequential, zero_logdet

__all__ = ["FlowModel", "FlowOutput", "Level", "MemoryMode"]

#: How training stores activations: all of them ("standard"), none, reconstructing each
#: level's input from its output in the backward pass ("invertible"), or recomputing each
#: level's activations in the backward pass ("checkpoint"). See :mod:`glowlab.memory`.
MemoryMode = Literal["standard", "invertible", "checkpoint"]


@dataclass
class FlowOutput:
    """Everything one pass of :meth:`FlowModel.evaluate` computes, per example.

    ``log_prob = prior_log_prob + logdet`` (nats). ``latents`` are the standardized latents,
    coarsest level last. ``class_logits`` is set for class-conditional models.
    """

    log_prob: Tensor
    prior_log_prob: Tensor
    logdet: Tensor
    latents: list[Tensor]
    class_logits: Tensor | None = None


class Level(nn.Module):
    """One scale of a multi-scale flow: a sequence of transforms, then an optional split."""

    def __init__(self, flow: FlowSequential, split: Split | None = None) -> None:
        super().__init__()
        self.flow = flow
        self.split = split


class FlowModel(nn.Module):
    """Base class of NICE, RealNVP and Glow.

    A model is ``pre`` (a transform on the data), then ``levels`` (each a flow and an
    optional :class:`~glowlab.multiscale.Split` that factors out a latent), then an optional
    learned ``top`` prior on what is left; ``base`` is the distribution of the standardized
    latents. Subclasses build these parts and set ``latent_shapes``.

    Every model has:

    * ``log_prob(x, y=None) -> (B,)``: exact log-density of float images in [-0.5, 0.5), nats.
    * ``encode(x, y=None) -> list[Tensor]``: the standardized latents, one per level.
    * ``decode(eps, y=None) -> x``: the exact inverse of ``encode``.
    * ``sample(n, temperature=1.0, y=None) -> x``.
    * ``evaluate(x, y=None) -> FlowOutput``: the likelihood split into its terms, for training.
    """

    #: Registry name, used by checkpoints to rebuild the model from its config.
    name: str = "flow"

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int | None = None) -> None:
        super().__init__()
        self.image_shape = _check_image_shape(image_shape)
        if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 2):
            raise ValueError(f"num_classes must be an integer >= 2 or None, got {num_classes!r}")
        self.num_classes = num_classes
        self.pre = FlowSequential([])
        self.levels = nn.ModuleList()
        self.top: GaussianPrior | None = None
        self.base: StandardNormal | StandardLogistic = StandardNormal()
        self.classifier: nn.Module | None = None
        self.latent_shapes: list[tuple[int, ...]] = []
        self.config: dict[str, Any] = {}
        self.memory_mode: MemoryMode = "standard"

    # -- properties ---------------------------------------------------------------------
    @property
    def dims(self) -> int:
        """Number of dimensions ``D = C * H * W`` of one image."""
        return math.prod(self.image_shape)

    @property
    def conditional(self) -> bool:
        return self.num_classes is not None

    def _reference(self) -> Tensor:
        for tensor in self.parameters():
            return tensor
        for tensor in self.buffers():
            return tensor
        return torch.empty(0)

    # -- input checks -------------------------------------------------------------------
    def _check_x(self, x: Tensor, what: str) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"{what} expects a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(
                f"{what} expects float images in [-0.5, 0.5), got dtype {x.dtype}; "
                "convert uint8 images with glowlab.dequantize or use glowlab.bits_per_dim"
            )
        if x.dim() != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(
                f"{what} expects images of shape (B, {', '.join(map(str, self.image_shape))}), "
                f"got {tuple(x.shape)}"
            )

    def _check_y(self, y: Tensor | None, batch: int, what: str) -> Tensor | None:
        if y is None:
            return None
        if self.num_classes is None:
            raise ValueError(
                f"{what} got class labels y, but this model was built without num_classes"
            )
        y = torch.as_tensor(y, device=self._reference().device)
        if y.dim() == 0:
            y = y.expand(batch)
        if y.shape != (batch,) or y.is_floating_point():
            raise ValueError(
                f"{what} expects y as {batch} integer class labels, got shape {tuple(y.shape)}"
            )
        # Checked on the CPU only: on a GPU the test would stall the stream on every step.
        if y.device.type == "cpu" and bool(((y < 0) | (y >= self.num_classes)).any()):
            raise ValueError(f"class labels must be in [0, {self.num_classes - 1}]")
        return y.long()

    # -- the bijection ------------------------------------------------------------------
    def set_memory_mode(self, mode: MemoryMode) -> FlowModel:
        """Choose how training stores activations (see :data:`MemoryMode`); returns ``self``."""
        if mode not in ("standard", "invertible", "checkpoint"):
            raise ValueError(
                f"unknown memory mode {mode!r}; choose 'standard', 'invertible' or 'checkpoint'"
            )
        self.memory_mode = mode
        return self

    def _run_flow(self, flow: FlowSequential, h: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
        if self.memory_mode == "standard" or not torch.is_grad_enabled():
            return flow(h, y)
        from ..memory import run_flow  # imported here: only the memory-saving modes need it

        return run_flow(flow, h, y, self.memory_mode)

    def _forward(self, x: Tensor, y: Tensor | None) -> tuple[list[Tensor], Tensor, Tensor]:
        """``x -> (latents, logdet, top_z)``; ``top_z`` is the top latent before standardization."""
        h, logdet = self.pre(x, y)
        latents: list[Tensor] = []
        for level in self.levels:
            h, ld = self._run_flow(level.flow, h, y)
            logdet = logdet + ld
            if level.split is not None:
                h, eps, ld = level.split(h, y)
                logdet = logdet + ld
                latents.append(eps)
        top_z = h
        if self.top is not None:
            h, ld = self.top(h, y)
            logdet = logdet + ld
        latents.append(h)
        return latents, logdet, top_z

    def _inverse(self, latents: list[Tensor], y: Tensor | None) -> tuple[Tensor, Tensor]:
        """``latents -> (x, log|det dx/d eps|)``."""
        h = latents[-1]
        logdet = zero_logdet(h)
        if self.top is not None:
            h, ld = self.top.inverse(h, y)
            logdet = logdet + ld
        index = len(latents) - 2
        for level in reversed(self.levels):
            if level.split is not None:
                h, ld = level.split.inverse(h, latents[index], y)
                logdet = logdet + ld
                index -= 1
            h, ld = level.flow.inverse(h, y)
            logdet = logdet + ld
        x, ld = self.pre.inverse(h, y)
        return x, logdet + ld

    # -- public API ---------------------------------------------------------------------
    def evaluate(self, x: Tensor, y: Tensor | None = None) -> FlowOutput:
        """One pass that returns the log-likelihood split into its terms (see :class:`FlowOutput`).

        A class-conditional model needs ``y`` here; :meth:`log_prob` can marginalise it out.
        """
        self._check_x(x, "evaluate")
        y = self._check_y(y, x.shape[0], "evaluate")
        if self.conditional and y is None:
            raise ValueError("this model is class-conditional: pass the class labels y")
        latents, logdet, top_z = self._forward(x, y)
        prior = sum(self.base.log_prob(eps) for eps in latents)
        logits = None
        if self.classifier is not None:
            logits = self.classifier(top_z.mean(dim=tuple(range(2, top_z.dim()))))
        return FlowOutput(prior + logdet, prior, logdet, latents, logits)  # type: ignore[arg-type]

    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Exact log-density of ``x`` (B, C, H, W) in nats, ``(B,)``.

        For a class-conditional model without ``y`` this is the marginal
        ``log sum_y p(x | y) p(y)`` under a uniform class prior.
        """
        self._check_x(x, "log_prob")
        if self.conditional and y is None:
            assert self.num_classes is not None
            per_class = [
                self.evaluate(x, torch.full((x.shape[0],), k, device=x.device)).log_prob
                for k in range(self.num_classes)
            ]
            return torch.logsumexp(torch.stack(per_class, 1), 1) - math.log(self.num_classes)
        return self.evaluate(x, y).log_prob

    def encode(self, x: Tensor, y: Tensor | None = None) -> list[Tensor]:
        """Standardized latents of ``x``, one tensor per level (finest first); each ``N(0, I)``."""
        self._check_x(x, "encode")
        y = self._check_y(y, x.shape[0], "encode")
        if self.conditional and y is None:
            raise ValueError("this model is class-conditional: pass the class labels y to encode")
        return self._forward(x, y)[0]

    def decode(self, eps: list[Tensor] | tuple[Tensor, ...], y: Tensor | None = None) -> Tensor:
        """Images from standardized latents; the exact inverse of :meth:`encode`."""
        eps = list(eps)
        if len(eps) != len(self.latent_shapes):
            raise ValueError(
                f"decode expects {len(self.latent_shapes)} latent tensors, got {len(eps)}"
            )
        for i, (e, shape) in enumerate(zip(eps, self.latent_shapes, strict=True)):
            if tuple(e.shape[1:]) != shape or e.shape[0] != eps[0].shape[0]:
                expected = ", ".join(map(str, shape))
                raise ValueError(
                    f"latent {i} must have shape (B, {expected}), got {tuple(e.shape)}"
                )
        y = self._check_y(y, eps[0].shape[0], "decode")
        if self.conditional and y is None:
            raise ValueError("this model is class-conditional: pass the class labels y to decode")
        return self._inverse(eps, y)[0]

    def sample_latents(
        self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> list[Tensor]:
        """Standardized latents drawn from the base distribution at the given temperature."""
        ref = self._reference()
        return [
            self.base.sample(
                (n, *shape), temperature, device=ref.device, dtype=ref.dtype, generator=generator
            )
            for shape in self.latent_shapes
        ]

    @torch.no_grad()
    def sample(
        self,
        n: int,
        temperature: float = 1.0,
        y: Tensor | int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """``n`` images; standardized latents from ``N(0, T^2 I)`` (temperature ``T``).

        For a class-conditional model ``y`` picks the classes (an int for all, or ``(n,)``);
        without it the classes are drawn uniformly, which samples the marginal.
        """
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        if temperature < 0 or not math.isfinite(temperature):
            raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
        ref = self._reference()
        if self.conditional and y is None:
            assert self.num_classes is not None
            y = torch.randint(self.num_classes, (n,), device=ref.device, generator=generator)
        y_t = self._check_y(torch.as_tensor(y) if y is not None else None, n, "sample")
        return self._inverse(self.sample_latents(n, temperature, generator), y_t)[0]

    def class_loss(self, output: FlowOutput, y: Tensor) -> Tensor:
        """Cross-entropy of the classifier head on the top latent (Glow's ycond auxiliary loss)."""
        if output.class_logits is None:
            raise ValueError("this model has no classifier head (build it with num_classes)")
        return F.cross_entropy(output.class_logits, y.long(), reduction="none")


def _check_image_shape(image_shape: Any) -> tuple[int, int, int]:
    try:
        shape = tuple(int(s) for s in image_shape)
    except (TypeError, ValueError):
        raise ValueError(f"image_shape must be (C, H, W), got {image_shape!r}") from None
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(
            f"image_shape must be three positive integers (C, H, W), got {image_shape!r}"
        )
    return shape  # type: ignore[return-value]
