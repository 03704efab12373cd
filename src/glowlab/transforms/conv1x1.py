"""Invertible 1x1 convolutions (Glow), plain and LU-decomposed, with ActNorm folded in.

In Glow every 1x1 convolution follows an ActNorm, and the two are one affine map per pixel:
``W (exp(s) * (x - loc)) = W' x + b`` with ``W' = W diag(exp(s))`` and ``b = -W' loc``. The
log-determinants add: ``H * W * (sum(s) + log|det W|)``. :meth:`InvConv1x1.forward_fused`
and :meth:`InvConv1x1.inverse_fused` compute the pair as one convolution with a bias (the
inverse is ``x = diag(exp(-s)) W^-1 z + loc``), which saves the ActNorm's passes over the
activations and their backward; :class:`~glowlab.transforms.FlowSequential` uses them
wherever an ActNorm is followed by a 1x1 convolution. The function is the same, so the
gradients reach ``loc``, ``log_scale`` and the convolution's weights exactly as before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .actnorm import ActNorm
from .base import FoldedPairs, FusedPair, Transform, check_channels, spatial_size

__all__ = ["InvConv1x1", "InvConv1x1LU"]


def _random_rotation(channels: int) -> Tensor:
    # QR of a Gaussian matrix gives a random orthogonal matrix: log|det W| = 0 at init.
    q, _ = torch.linalg.qr(torch.randn(channels, channels, dtype=torch.float64))
    return q


def _mix(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """Apply ``weight`` (C_out, C_in) along the channel axis of (B, C) or (B, C, H, W)."""
    if x.dim() == 2:
        return F.linear(x, weight, bias)
    if x.dim() == 4:
        return F.conv2d(x, weight.view(*weight.shape, 1, 1), bias)
    raise ValueError(f"1x1 convolution expects (B, C) or (B, C, H, W) input, got {tuple(x.shape)}")


# -- the algebra, for one layer's tensors or for K layers' stacked along a first dimension ---
def _stacked(modules: Sequence[nn.Module], name: str) -> Tensor:
    """The tensor attribute ``name`` of each of ``modules``, stacked: (K, ...)."""
    return torch.stack([getattr(module, name) for module in modules])


def _fold(
    matrix: Tensor, logabsdet: Tensor, log_scale: Tensor, loc: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """An ActNorm ``(loc, log_scale)`` folded into the 1x1 convolution ``matrix`` that
    follows it: ``W' = W diag(exp(s))``, ``b = -W' loc`` and the per-position
    log-determinant ``sum(s) + log|det W|``."""
    weight = matrix * log_scale.exp().unsqueeze(-2)  # scales the columns
    bias = -(weight @ loc.unsqueeze(-1)).squeeze(-1)
    return weight, bias, log_scale.sum(-1) + logabsdet


def _unfold(inverse: Tensor, log_scale: Tensor) -> Tensor:
    """The weight of the folded pair's inverse ``x = diag(exp(-s)) W^-1 z + loc``."""
    return (-log_scale).exp().unsqueeze(-1) * inverse  # scales the rows


def _lu_factors(
    lower: Tensor, upper: Tensor, log_s: Tensor, sign: Tensor, lower_mask: Tensor, eye: Tensor
) -> tuple[Tensor, Tensor]:
    """``L`` (unit lower triangular) and ``U + diag(sign * exp(log|s|))`` from the factors'
    free parameters."""
    return lower * lower_mask + eye, upper * lower_mask.mT + torch.diag_embed(sign * log_s.exp())


def _lu_inverse(lower: Tensor, upper: Tensor, perm: Tensor, eye: Tensor) -> Tensor:
    """``(P L U)^-1 = U^-1 L^-1 P^T``, by two triangular solves rather than a general inverse."""
    eye = eye.expand_as(lower)
    lower_inv = torch.linalg.solve_triangular(lower, eye, upper=False, unitriangular=True)
    upper_inv = torch.linalg.solve_triangular(upper, eye, upper=True)
    return upper_inv @ lower_inv @ perm.mT


class _EvalCache:
    """Caches weights derived from parameters (inverses, LU products, folded ActNorms).

    A cached value is used only without gradients, in evaluation mode, and while every
    parameter it came from keeps its storage and its ``_version`` counter, which in-place
    updates bump (optimizer steps, ``load_state_dict``, EMA updates): it is recomputed only
    when the weights change. Switching the layer between training and evaluation mode
    clears it. Writes through ``param.data`` bump no counter: after such a write in
    evaluation mode call ``clear_inverse_cache()``. Compiled code does not use it: the
    computation is part of its graph.
    """

    def __init__(self) -> None:
        # By name and by whether inference mode was on: tensors made under
        # ``torch.inference_mode`` cannot take part in a later computation autograd records.
        self.entries: dict[tuple[str, bool], tuple[tuple, Any]] = {}

    def clear(self) -> None:
        self.entries.clear()

    def get(
        self, name: str, params: list[Tensor], compute: Callable[[], Any], training: bool
    ) -> Any:
        if training or (torch.is_grad_enabled() and any(p.requires_grad for p in params)):
            return compute()
        if torch.compiler.is_compiling():
            # The computation goes into the compiled graph instead: torch.compile cannot
            # tell whether inference mode is on, so a cached entry could be an inference
            # tensor that a later pass with gradients must not use.
            return compute()
        key = tuple((id(p), p.data_ptr(), p._version, p.device, p.dtype) for p in params)
        slot = (name, torch.is_inference_mode_enabled())
        entry = self.entries.get(slot)
        if entry is None or entry[0] != key:
            entry = self.entries[slot] = (key, compute())
        return entry[1]


class _Conv1x1(Transform):
    """What both 1x1 convolutions share: the mixing, the caches and the ActNorm folding.

    A subclass provides :meth:`weight_matrix`, :meth:`_compute_inverse` and
    :meth:`_logabsdet_matrix` (``log|det W|``, a 0-dim tensor).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self._cache = _EvalCache()

    def weight_matrix(self) -> Tensor:
        raise NotImplementedError

    def _compute_inverse(self) -> Tensor:
        raise NotImplementedError

    def _logabsdet_matrix(self) -> Tensor:
        raise NotImplementedError

    def _cached(self, name: str, compute: Callable[[], Any], *others: nn.Module) -> Any:
        params = [*self.parameters(), *(p for m in others for p in m.parameters())]
        return self._cache.get(name, params, compute, self.training)

    def inverse_weight(self) -> Tensor:
        """``W^-1``, cached in evaluation mode until the weights change."""
        return self._cached("inverse", self._compute_inverse)

    def clear_inverse_cache(self) -> None:
        """Forget the cached weights (needed only after writing weights through ``.data``)."""
        self._cache.clear()

    def train(self, mode: bool = True) -> _Conv1x1:
        self._cache.clear()
        return super().train(mode)

    def _logdet(self, per_position: Tensor, x: Tensor, sign: float) -> Tensor:
        return (sign * spatial_size(x) * per_position).to(x.dtype).expand(x.shape[0])

    def _logabsdet(self) -> Tensor:
        return self._cached("logabsdet", self._logabsdet_matrix)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_channels(x, self.channels, type(self).__name__)
        weight = self._cached("weight", self.weight_matrix)
        return _mix(x, weight), self._logdet(self._logabsdet(), x, 1.0)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_channels(z, self.channels, type(self).__name__)
        return _mix(z, self.inverse_weight()), self._logdet(self._logabsdet(), z, -1.0)

    # -- ActNorm folded into the convolution ----------------------------------------------
    def fuses_with(self, previous: Transform) -> bool:
        return isinstance(previous, ActNorm) and previous.channels == self.channels

    def _foldable(self, previous: Transform, x: Tensor) -> bool:
        return (
            self.fuses_with(previous)
            and x.dim() in (2, 4)
            and not (previous.training and previous.needs_init())  # type: ignore[attr-defined]
        )

    def _fold_forward(self, actnorm: ActNorm) -> tuple[Tensor, Tensor, Tensor]:
        matrix, logabsdet = self.weight_matrix(), self._logabsdet_matrix()
        return _fold(matrix, logabsdet, actnorm.log_scale, actnorm.loc)

    def _fold_inverse(self, actnorm: ActNorm) -> tuple[Tensor, Tensor, Tensor]:
        weight = _unfold(self.inverse_weight(), actnorm.log_scale)
        return weight, actnorm.loc, actnorm.log_scale.sum() + self._logabsdet_matrix()

    def _folded(
        self, previous: Transform, x: Tensor, fold: Callable[[ActNorm], Any], sign: float
    ) -> tuple[Tensor, Tensor] | None:
        if not self._foldable(previous, x):
            return None
        check_channels(x, self.channels, type(self).__name__)
        name = fold.__name__  # one cache entry per direction
        weight, bias, per_position = self._cached(name, lambda: fold(previous), previous)  # type: ignore[arg-type]
        return _mix(x, weight, bias), self._logdet(per_position, x, sign)

    def forward_fused(
        self, previous: Transform, x: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor] | None:
        """``self(previous(x))`` as one convolution when ``previous`` is an initialised ActNorm.

        Returns None when the pair cannot be folded (another layer, or an ActNorm that will
        initialise itself on this batch); the caller then runs the layers one by one.
        """
        return self._folded(previous, x, self._fold_forward, 1.0)

    def inverse_fused(
        self, previous: Transform, z: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor] | None:
        """``previous.inverse(self.inverse(z))`` as one convolution (see :meth:`forward_fused`)."""
        return self._folded(previous, z, self._fold_inverse, -1.0)

    @classmethod
    def _batched_matrices(cls, convs: Sequence[_Conv1x1]) -> tuple[Tensor, Tensor]:
        """``W`` of each of ``convs`` (K, C, C) and ``log|det W|`` (K,), computed together."""
        raise NotImplementedError

    @classmethod
    def _batched_inverses(cls, convs: Sequence[_Conv1x1]) -> Tensor:
        """``W^-1`` of each of ``convs`` (K, C, C), computed together."""
        raise NotImplementedError

    def _same_kind(self, pairs: Sequence[FusedPair]) -> tuple[list[_Conv1x1], list[ActNorm]] | None:
        """The pairs' convolutions and ActNorms, if all are ActNorms before 1x1 convolutions
        of this class and width (what the batched weights need), else None."""
        convs, norms = [pair.second for pair in pairs], [pair.first for pair in pairs]
        if all(
            type(conv) is type(self) and conv.channels == self.channels and conv.fuses_with(norm)
            for conv, norm in zip(convs, norms, strict=True)
        ):
            return convs, norms  # type: ignore[return-value]
        return None

    def fold_pairs(self, pairs: Sequence[FusedPair], x: Tensor) -> FoldedPairs | None:
        """Every (ActNorm, 1x1 convolution) pair of a flow folded with batched operations.

        The pairs' weights ``W_k diag(exp(s_k))``, biases and log-determinants come from one
        stack of each parameter and a handful of batched matrix operations, forward and
        backward, instead of a dozen small operations per pair (the same algebra as
        :meth:`forward_fused`'s). Only while the weights are computed anew on every call
        (training, or gradients for the parameters); in evaluation each pair's folded
        weights are cached (:meth:`forward_fused`). None where the pairs are not all
        initialised ActNorms before 1x1 convolutions of this class and width. ``x`` is a
        tensor of the flow's shape (its input, or its output).
        """
        kind = self._same_kind(pairs)
        if kind is None or not all(c._foldable(n, x) for c, n in zip(*kind, strict=True)):
            return None
        convs, norms = kind
        modules: list[nn.Module] = [*convs, *norms]
        computed = any(m.training for m in modules) or (
            torch.is_grad_enabled()
            and any(p.requires_grad for m in modules for p in m.parameters())
        )
        if not computed:
            return None
        matrices, logabsdet = type(self)._batched_matrices(convs)
        weights, biases, per_position = _fold(
            matrices, logabsdet, _stacked(norms, "log_scale"), _stacked(norms, "loc")
        )
        name = type(self).__name__

        def apply(weight: Tensor, bias: Tensor) -> Callable[[Tensor], Tensor]:
            def run(h: Tensor) -> Tensor:
                check_channels(h, self.channels, name)
                return _mix(h, weight, bias)

            return run

        weight_list, bias_list = list(weights.unbind(0)), list(biases.unbind(0))
        return FoldedPairs(
            [apply(w, b) for w, b in zip(weight_list, bias_list, strict=True)],
            per_position,
            weight_list,
            bias_list,
        )

    @torch.no_grad()
    def unfold_pairs(self, pairs: Sequence[FusedPair]) -> list[Callable[[Tensor], Tensor]] | None:
        """The inverses ``x = diag(exp(-s_k)) W_k^-1 z + loc_k`` of the pairs that
        :meth:`fold_pairs` folds, their weights computed together, without gradients (what
        the memory-saving backward pass rebuilds each pair's input with)."""
        kind = self._same_kind(pairs)
        if kind is None:
            return None
        convs, norms = kind
        weights = _unfold(type(self)._batched_inverses(convs), _stacked(norms, "log_scale"))
        return [
            partial(_mix, weight=w, bias=b)
            for w, b in zip(weights.unbind(0), _stacked(norms, "loc").unbind(0), strict=True)
        ]

    def extra_repr(self) -> str:
        return f"{self.channels}"


class InvConv1x1(_Conv1x1):
    """Invertible 1x1 convolution ``z = W x`` with a full learned matrix ``W``.

    ``W`` starts as a random rotation. The log-determinant is ``H * W * log|det W|``,
    computed with ``slogdet`` (an LU factorisation), which does not overflow the way
    ``log(det W)`` can.

    References:
        Glow: Generative Flow with Invertible 1x1 Convolutions, Kingma & Dhariwal, 2018,
        arXiv:1807.03039.

    Example:
        >>> conv = InvConv1x1(4)
        >>> z, logdet = conv(torch.randn(2, 4, 5, 5))
        >>> z.shape
        torch.Size([2, 4, 5, 5])
    """

    def __init__(self, channels: int) -> None:
        super().__init__(channels)
        self.weight = nn.Parameter(_random_rotation(channels).to(torch.get_default_dtype()))

    def weight_matrix(self) -> Tensor:
        return self.weight

    @classmethod
    def _batched_matrices(cls, convs: Sequence[_Conv1x1]) -> tuple[Tensor, Tensor]:
        weights = _stacked(convs, "weight")
        return weights, torch.linalg.slogdet(weights).logabsdet

    @classmethod
    def _batched_inverses(cls, convs: Sequence[_Conv1x1]) -> Tensor:
        return torch.linalg.inv_ex(_stacked(convs, "weight")).inverse

    def _compute_inverse(self) -> Tensor:
        # inv_ex: linalg.inv would read its error flag back to the host (a synchronisation
        # in every memory-saving backward pass); a singular W gives non-finite values, which
        # the training step's non-finite guard rejects.
        return torch.linalg.inv_ex(self.weight).inverse

    def _logabsdet_matrix(self) -> Tensor:
        return torch.linalg.slogdet(self.weight).logabsdet


class InvConv1x1LU(_Conv1x1):
    """Invertible 1x1 convolution with ``W = P L (U + diag(sign(s) * exp(log|s|)))``.

    ``P`` is a fixed permutation, ``L`` unit lower triangular, ``U`` strictly upper
    triangular, ``sign(s)`` fixed and ``log|s|`` learned, so the log-determinant is the cheap
    and exact ``H * W * sum(log|s|)``. Initialised from the LU factors of a random rotation,
    so it computes the same function as :class:`InvConv1x1` with that rotation.

    References:
        Glow: Generative Flow with Invertible 1x1 Convolutions, Kingma & Dhariwal, 2018,
        arXiv:1807.03039.

    Example:
        >>> conv = InvConv1x1LU(4)
        >>> torch.allclose(conv.weight() @ conv.inverse_weight(), torch.eye(4), atol=1e-6)
        True
    """

    def __init__(self, channels: int, init_weight: Tensor | None = None) -> None:
        super().__init__(channels)
        w = _random_rotation(channels) if init_weight is None else init_weight.double()
        p, lower, upper = torch.linalg.lu(w)
        s = torch.diagonal(upper)
        dtype = torch.get_default_dtype()
        self.register_buffer("perm", p.to(dtype))
        self.register_buffer("sign_s", torch.sign(s).to(dtype))
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1).to(dtype))
        self.register_buffer("eye", torch.eye(channels, dtype=dtype))
        self.lower = nn.Parameter(torch.tril(lower, -1).to(dtype))
        self.upper = nn.Parameter(torch.triu(upper, 1).to(dtype))
        self.log_s = nn.Parameter(torch.log(torch.abs(s)).to(dtype))

    def _factors(self) -> tuple[Tensor, Tensor]:
        return _lu_factors(
            self.lower, self.upper, self.log_s, self.sign_s, self.lower_mask, self.eye
        )

    def weight_matrix(self) -> Tensor:
        lower, upper = self._factors()
        return self.perm @ lower @ upper

    @classmethod
    def _batched_factors(cls, convs: Sequence[_Conv1x1], log_s: Tensor) -> tuple[Tensor, Tensor]:
        """``L`` and ``U`` of each of ``convs`` (K, C, C), as :meth:`_factors` makes them."""
        # The masks and the identity depend only on the width, which the convolutions share.
        first: InvConv1x1LU = convs[0]  # type: ignore[assignment]
        lower, upper, sign = (_stacked(convs, name) for name in ("lower", "upper", "sign_s"))
        return _lu_factors(lower, upper, log_s, sign, first.lower_mask, first.eye)

    @classmethod
    def _batched_matrices(cls, convs: Sequence[_Conv1x1]) -> tuple[Tensor, Tensor]:
        log_s = _stacked(convs, "log_s")
        lower, upper = cls._batched_factors(convs, log_s)
        return _stacked(convs, "perm") @ lower @ upper, log_s.sum(1)

    @classmethod
    def _batched_inverses(cls, convs: Sequence[_Conv1x1]) -> Tensor:
        lower, upper = cls._batched_factors(convs, _stacked(convs, "log_s"))
        return _lu_inverse(lower, upper, _stacked(convs, "perm"), convs[0].eye)  # type: ignore[arg-type]

    def weight(self) -> Tensor:
        """``W = P L U``, the matrix the layer applies (cached like :meth:`inverse_weight`)."""
        return self._cached("weight", self.weight_matrix)

    def _logabsdet_matrix(self) -> Tensor:
        return self.log_s.sum()

    def _compute_inverse(self) -> Tensor:
        lower, upper = self._factors()
        return _lu_inverse(lower, upper, self.perm, self.eye)
