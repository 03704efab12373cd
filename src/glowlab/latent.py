"""Latent-space operations on the standardized latents of a flow.

Every :class:`~glowlab.models.base.FlowModel` maps an image to a list of standardized
latents ``eps`` (one tensor per level, finest first, the top level last), each ``N(0, I)``
under the model. Because the map is a bijection, anything done to the latents decodes to an
image, and leaving them untouched decodes back to the input. This module holds:

* reconstruction (:func:`reconstruct`) and batched :func:`encode_images`;
* interpolation between two images (:func:`interpolate`) or along a path through several
  (:func:`interpolate_path`), linear or spherical;
* class-conditional sampling (:func:`sample_classes`);
* attribute directions: a mean latent difference (:func:`attribute_direction`), applied with
  a scale (:func:`manipulate`), saved and loaded (:func:`save_direction`,
  :func:`load_direction`);
* conceptual compression: keep the coarsest latents and resample the rest
  (:func:`compress`, :func:`keep_masks`).

References:
    Density estimation using Real NVP, Dinh, Sohl-Dickstein & Bengio, 2016, arXiv:1605.08803
    (appendix D, conceptual compression).
    Glow: Generative Flow with Invertible 1x1 Convolutions, Kingma & Dhariwal, 2018,
    arXiv:1807.03039 (section 5: interpolation and semantic manipulation).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from ._files import atomic_write
from ._optional import require
from .models.base import FlowModel

__all__ = [
    "COMPRESSION_FRACTIONS",
    "Direction",
    "attribute_direction",
    "compress",
    "decode_latents",
    "encode_images",
    "interpolate",
    "interpolate_latents",
    "interpolate_path",
    "keep_masks",
    "load_direction",
    "manipulate",
    "reconstruct",
    "sample_classes",
    "save_direction",
    "slerp",
]

Method = Literal["linear", "slerp"]

#: The rows of RealNVP's conceptual-compression figure: fractions of latent dimensions kept.
COMPRESSION_FRACTIONS: tuple[float, ...] = (1.0, 0.5, 0.25, 0.125, 0.0625)


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")


# -- interpolation ----------------------------------------------------------------------
def slerp(a: Tensor, b: Tensor, t: Tensor) -> Tensor:
    """Spherical interpolation between ``a`` and ``b`` (B, ...) at fractions ``t`` (T,).

    Returns (T, B, ...). Falls back to linear interpolation where the two are parallel or
    opposite (the great circle is then not unique); between opposite latents that path goes
    through the origin. ``t = 0`` gives ``a`` and ``t = 1`` gives ``b`` exactly.
    """
    af, bf = a.flatten(1), b.flatten(1)
    cos = (af * bf).sum(1) / (af.norm(dim=1) * bf.norm(dim=1)).clamp_min(1e-12)
    omega = torch.arccos(cos.clamp(-1.0, 1.0))
    sin = torch.sin(omega)
    shape = (-1, a.shape[0], *([1] * (a.dim() - 1)))
    tt = t.view(-1, 1)
    parallel = sin.abs() < 1e-6
    safe_sin = torch.where(parallel, torch.ones_like(sin), sin)
    wa = torch.where(parallel, 1 - tt, torch.sin((1 - tt) * omega) / safe_sin)
    wb = torch.where(parallel, tt, torch.sin(tt * omega) / safe_sin)
    out = wa.view(shape) * a.unsqueeze(0) + wb.view(shape) * b.unsqueeze(0)
    # Exact endpoints, whatever rounding the trigonometry does.
    out[t == 0] = a
    out[t == 1] = b
    return out


def interpolate_latents(
    a: list[Tensor], b: list[Tensor], steps: int, method: Method = "linear"
) -> list[Tensor]:
    """Interpolate two lists of latents (one tensor per level, each (B, ...)) in ``steps`` steps.

    Returns one tensor per level of shape (steps * B, ...), step-major.
    """
    if not isinstance(steps, int) or steps < 2:
        raise ValueError(f"interpolation needs an integer steps >= 2, got {steps!r}")
    if method not in ("linear", "slerp"):
        raise ValueError(f"unknown interpolation method {method!r}; choose 'linear' or 'slerp'")
    t = torch.linspace(0, 1, steps, device=a[0].device, dtype=a[0].dtype)
    out = []
    for za, zb in zip(a, b, strict=True):
        if method == "slerp":
            path = slerp(za, zb, t)
        else:
            tt = t.view(-1, *([1] * za.dim()))
            path = (1 - tt) * za.unsqueeze(0) + tt * zb.unsqueeze(0)
            path[0], path[-1] = za, zb
        out.append(path.reshape(-1, *za.shape[1:]))
    return out


@torch.no_grad()
def interpolate(
    model: FlowModel,
    x_a: Tensor,
    x_b: Tensor,
    steps: int = 8,
    method: Method = "linear",
    y_a: Tensor | None = None,
    y_b: Tensor | None = None,
) -> Tensor:
    """Images along the path between ``x_a`` and ``x_b`` in the standardized latents.

    ``x_a`` and ``x_b`` are float images (B, C, H, W) in [-0.5, 0.5); returns
    (steps, B, C, H, W) whose first and last entries decode ``encode(x_a)`` and
    ``encode(x_b)``, which reproduce the inputs up to floating-point error. For a
    class-conditional model the path is decoded with ``y_a`` and its last step with ``y_b``
    (``y_b`` defaults to ``y_a``).
    """
    y_b = y_a if y_b is None else y_b
    za = model.encode(x_a, y_a)
    zb = model.encode(x_b, y_b)
    path = interpolate_latents(za, zb, steps, method)
    y = None
    if y_a is not None and y_b is not None:
        y = torch.cat([y_a.repeat(steps - 1), y_b])
    return model.decode(path, y).view(steps, *x_a.shape)


@torch.no_grad()
def interpolate_path(
    model: FlowModel,
    x: Tensor,
    steps: int = 8,
    method: Method = "linear",
    y: Tensor | None = None,
    batch_size: int = 256,
) -> Tensor:
    """Images along the path ``x[0] -> x[1] -> ... -> x[N-1]`` through the latents of N images.

    Each of the ``N - 1`` segments is interpolated in ``steps`` steps (linear, or spherical
    per level with ``"slerp"``) and the shared endpoints are not repeated, so the result has
    ``(N - 1) * (steps - 1) + 1`` images. Image ``k * (steps - 1)`` decodes ``encode(x[k])``
    exactly, which reproduces ``x[k]`` up to floating-point error. For a class-conditional
    model, ``y`` (N,) gives each image's class; a segment is decoded with the class of its
    start, and each endpoint with its own class.
    """
    model._check_x(x, "interpolate_path")
    if x.shape[0] < 2:
        raise ValueError(f"interpolate_path needs at least 2 images, got {x.shape[0]}")
    y = _labels(model, y, x.shape[0], "interpolate_path")
    latents = encode_images(model, x, y, batch_size)
    pieces: list[list[Tensor]] = [[] for _ in latents]
    labels: list[Tensor] = []
    for k in range(x.shape[0] - 1):
        a = [z[k : k + 1] for z in latents]
        b = [z[k + 1 : k + 2] for z in latents]
        segment = interpolate_latents(a, b, steps, method)
        keep = steps if k == x.shape[0] - 2 else steps - 1
        for level, z in enumerate(segment):
            pieces[level].append(z[:keep])
        if y is not None:
            seg_y = y[k].repeat(keep)
            seg_y[steps - 1 :] = y[k + 1]  # the last image of the path keeps its own class
            labels.append(seg_y)
    path = [torch.cat(p) for p in pieces]
    return decode_latents(model, path, torch.cat(labels) if y is not None else None, batch_size)


# -- encoding in batches, reconstruction ------------------------------------------------
def _labels(model: FlowModel, y: Tensor | None, n: int, what: str) -> Tensor | None:
    if model.num_classes is None:
        return None
    if y is None:
        raise ValueError(f"{what}: this model is class-conditional; pass the class labels y")
    y = torch.as_tensor(y).long()
    if y.dim() == 0:
        y = y.expand(n)
    return y


@torch.no_grad()
def encode_images(
    model: FlowModel, x: Tensor, y: Tensor | None = None, batch_size: int = 256
) -> list[Tensor]:
    """``model.encode`` in batches of ``batch_size``, without gradients."""
    _check_batch_size(batch_size)
    device = model._reference().device
    chunks = []
    for start in range(0, x.shape[0], batch_size):
        yb = None if y is None else y[start : start + batch_size].to(device)
        chunks.append(model.encode(x[start : start + batch_size].to(device), yb))
    return [torch.cat(level) for level in zip(*chunks, strict=True)]


@torch.no_grad()
def decode_latents(
    model: FlowModel, latents: Sequence[Tensor], y: Tensor | None = None, batch_size: int = 256
) -> Tensor:
    """``model.decode`` in batches of ``batch_size``, without gradients."""
    _check_batch_size(batch_size)
    n = latents[0].shape[0]
    device = model._reference().device
    out = []
    for start in range(0, n, batch_size):
        yb = None if y is None else y[start : start + batch_size].to(device)
        out.append(model.decode([z[start : start + batch_size].to(device) for z in latents], yb))
    return torch.cat(out)


@torch.no_grad()
def reconstruct(
    model: FlowModel, x: Tensor, y: Tensor | None = None, batch_size: int = 256
) -> tuple[Tensor, float]:
    """``decode(encode(x))`` and the largest absolute difference to ``x`` over all pixels.

    The flow is a bijection, so the error is only floating-point rounding: for a trained
    model in float32 it is far below one grey level (``1/256`` in the [-0.5, 0.5) domain).
    """
    model._check_x(x, "reconstruct")
    y = _labels(model, y, x.shape[0], "reconstruct")
    x_hat = decode_latents(model, encode_images(model, x, y, batch_size), y, batch_size)
    return x_hat, float((x_hat - x.to(x_hat.device)).abs().max())


# -- class-conditional sampling ---------------------------------------------------------
@torch.no_grad()
def sample_classes(
    model: FlowModel,
    classes: Sequence[int] | None = None,
    n_per_class: int = 8,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``n_per_class`` samples of each class in ``classes`` (all classes when None), class-major.

    Returns ``(len(classes) * n_per_class, C, H, W)`` floats; row ``i`` of a grid with
    ``nrow=n_per_class`` holds class ``classes[i]``. The model must have been built with
    ``num_classes`` (Glow's class-conditional top prior).
    """
    if model.num_classes is None:
        raise ValueError(
            "this model was not trained with classes (num_classes is None); class-conditional "
            "sampling needs a model trained with --set model.num_classes=K"
        )
    classes = list(range(model.num_classes)) if classes is None else [int(c) for c in classes]
    if not classes:
        raise ValueError("sample_classes needs at least one class")
    bad = [c for c in classes if not 0 <= c < model.num_classes]
    if bad:
        raise ValueError(f"classes must be in [0, {model.num_classes - 1}], got {bad}")
    if not isinstance(n_per_class, int) or n_per_class < 1:
        raise ValueError(f"n_per_class must be a positive integer, got {n_per_class!r}")
    device = model._reference().device
    y = torch.tensor(classes, device=device).repeat_interleave(n_per_class)
    return model.sample(len(y), temperature, y, generator=generator)


# -- attribute directions ---------------------------------------------------------------
@dataclass
class Direction:
    """A direction in the standardized latents, one tensor per level (shape ``latent_shapes``).

    ``metadata`` is JSON-serialisable information about where it came from (the attribute,
    the number of images on each side, the model's latent shapes).
    """

    latents: list[Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        return [tuple(z.shape) for z in self.latents]

    def norm(self) -> float:
        """Euclidean norm over all levels."""
        return math.sqrt(sum(float((z.double() ** 2).sum()) for z in self.latents))


@torch.no_grad()
def attribute_direction(
    model: FlowModel,
    positive: Tensor,
    negative: Tensor,
    y_positive: Tensor | None = None,
    y_negative: Tensor | None = None,
    batch_size: int = 256,
    metadata: dict[str, Any] | None = None,
) -> Direction:
    """Mean latent of images with an attribute minus the mean latent of images without it.

    ``positive`` and ``negative`` are float images (B, C, H, W) in [-0.5, 0.5). This is
    Glow's semantic manipulation vector (Kingma & Dhariwal 2018, section 5), computed in the
    standardized latents of every level.
    """
    for name, images in (("positive", positive), ("negative", negative)):
        model._check_x(images, f"attribute_direction ({name} images)")
        if images.shape[0] == 0:
            raise ValueError(f"attribute_direction needs at least one {name} image")
    y_positive = _labels(model, y_positive, positive.shape[0], "attribute_direction")
    y_negative = _labels(model, y_negative, negative.shape[0], "attribute_direction")
    pos = encode_images(model, positive, y_positive, batch_size)
    neg = encode_images(model, negative, y_negative, batch_size)
    latents = [(p.mean(0) - q.mean(0)).cpu() for p, q in zip(pos, neg, strict=True)]
    meta = {
        "positive_count": int(positive.shape[0]),
        "negative_count": int(negative.shape[0]),
        "latent_shapes": [list(s) for s in model.latent_shapes],
        "model": getattr(model, "name", type(model).__name__),
        **(metadata or {}),
    }
    return Direction(latents, meta)


@torch.no_grad()
def manipulate(
    model: FlowModel,
    x: Tensor,
    direction: Direction,
    alphas: Sequence[float],
    y: Tensor | None = None,
    batch_size: int = 256,
) -> Tensor:
    """Decode ``encode(x) + alpha * direction`` for every ``alpha``; returns (A, B, C, H, W).

    With ``alpha = 0`` the latents are exactly ``encode(x)``, so the image is
    ``decode(encode(x))``: the input up to floating-point error, and the same 8-bit image.
    """
    model._check_x(x, "manipulate")
    alphas = [_check_alpha(a) for a in alphas]
    if not alphas:
        raise ValueError("manipulate needs at least one alpha")
    expected = [tuple(s) for s in model.latent_shapes]
    if direction.shapes != expected:
        raise ValueError(
            f"the direction has latent shapes {direction.shapes} but the model's are {expected}; "
            "it was computed with a different model"
        )
    y = _labels(model, y, x.shape[0], "manipulate")
    z = encode_images(model, x, y, batch_size)
    edited = [
        torch.cat([zl + a * d.to(zl) if a != 0 else zl for a in alphas])
        for zl, d in zip(z, direction.latents, strict=True)
    ]
    ys = None if y is None else y.repeat(len(alphas))
    return decode_latents(model, edited, ys, batch_size).view(len(alphas), *x.shape)


def _check_alpha(alpha: Any) -> float:
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise ValueError(f"alpha must be a number, got {alpha!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"alpha must be a finite number, got {alpha!r}")
    return value


def save_direction(direction: Direction, path: str | os.PathLike[str]) -> Path:
    """Write a direction as ``.safetensors`` (tensors + JSON metadata) or ``.pt`` (``torch.save``).

    The format follows the file extension; anything but ``.safetensors`` uses ``torch.save``
    of ``{"latents": [...], "metadata": {...}}``. The file is written to a temporary name
    and renamed, so a failed write leaves the previous file as it was.
    """
    path = Path(path)
    tensors = [z.detach().cpu().contiguous() for z in direction.latents]
    meta = json.dumps(direction.metadata)
    if path.suffix == ".safetensors":
        try:
            safetensors = require("safetensors", "train")
        except ImportError:
            raise ValueError(
                "saving .safetensors needs the safetensors package (pip install glowlab[train]); "
                "or save to a .pt file"
            ) from None
        save_file = require("safetensors.torch", "train").save_file
        failure: type[Exception] = safetensors.SafetensorError

        def write(tmp: Path) -> None:
            named = {f"level_{i}": z for i, z in enumerate(tensors)}
            save_file(named, str(tmp), {"glowlab_direction": meta})

    else:
        failure = RuntimeError  # how torch.save reports a failed write (a full disk, say)

        def write(tmp: Path) -> None:
            torch.save({"latents": tensors, "metadata": meta}, tmp)

    try:
        return atomic_write(path, write)
    except failure as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OSError(f"cannot write the direction file {path}: {reason}") from exc


def load_direction(path: str | os.PathLike[str]) -> Direction:
    """Read a direction written by :func:`save_direction`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"direction file {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            safe_open = require("safetensors", "train").safe_open
        except ImportError:
            raise ValueError("reading .safetensors needs the safetensors package") from None
        try:
            with safe_open(str(path), framework="pt") as handle:
                meta = handle.metadata() or {}
                keys = sorted(handle.keys(), key=lambda k: int(k.split("_")[-1]))
                latents = [handle.get_tensor(k) for k in keys]
        except Exception as exc:  # safetensors raises its own error types for damaged files
            raise ValueError(f"cannot read direction file {path}: {exc}") from None
        if "glowlab_direction" not in meta:
            raise ValueError(f"{path} is not a glowlab direction (no 'glowlab_direction' metadata)")
        return Direction(latents, json.loads(meta["glowlab_direction"]))
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        return Direction(list(data["latents"]), json.loads(data["metadata"]))
    except Exception as exc:  # torch raises several types for a damaged or foreign file
        raise ValueError(f"{path} is not a glowlab direction file: {exc}") from None


# -- conceptual compression -------------------------------------------------------------
def keep_masks(latent_shapes: Sequence[tuple[int, ...]], fraction: float) -> list[Tensor]:
    """Boolean masks (one per level, shaped like ``latent_shapes``) of the latents kept.

    Latent dimensions are ranked from the coarsest level (the last one, the top of the
    multi-scale architecture) to the finest, and within a level in ``(C, H, W)`` order: the
    first channels first, each channel whole. The first ``round(fraction * D)`` are kept.
    So for a Glow with L levels the fractions at level boundaries keep whole levels, and a
    fraction that falls inside a level keeps that level's first channels (and, if the count
    is not a whole number of channels, the first rows of the next channel).

    Example:
        >>> [m.sum().item() for m in keep_masks([(6, 4, 4), (24, 2, 2)], 0.25)]
        [0, 48]
    """
    fraction = float(fraction)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"the fraction of latents kept must be in [0, 1], got {fraction}")
    sizes = [math.prod(s) for s in latent_shapes]
    remaining = round(fraction * sum(sizes))
    masks: list[Tensor] = [torch.zeros(0)] * len(sizes)
    for i in reversed(range(len(sizes))):
        keep = min(remaining, sizes[i])
        flat = torch.zeros(sizes[i], dtype=torch.bool)
        flat[:keep] = True
        masks[i] = flat.view(latent_shapes[i])
        remaining -= keep
    return masks


@torch.no_grad()
def compress(
    model: FlowModel,
    x: Tensor,
    fractions: Sequence[float] = COMPRESSION_FRACTIONS,
    temperature: float = 1.0,
    y: Tensor | None = None,
    generator: torch.Generator | None = None,
    batch_size: int = 256,
) -> Tensor:
    """RealNVP's conceptual compression: keep the coarsest latents, resample the others.

    For each fraction ``f`` the latents chosen by :func:`keep_masks` are taken from
    ``encode(x)`` and the rest are drawn from the base distribution at ``temperature``;
    returns ``(len(fractions), B, C, H, W)``. Row ``f = 1`` is the reconstruction. The same
    draw is used in every row, so the rows differ only in what is kept.

    References:
        Density estimation using Real NVP, Dinh, Sohl-Dickstein & Bengio, 2016,
        arXiv:1605.08803 (appendix D).
    """
    model._check_x(x, "compress")
    if temperature < 0 or not math.isfinite(temperature):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    if not fractions:
        raise ValueError("compress needs at least one fraction")
    y = _labels(model, y, x.shape[0], "compress")
    z = encode_images(model, x, y, batch_size)
    noise = [
        eps.to(zl.device)
        for eps, zl in zip(model.sample_latents(x.shape[0], temperature, generator), z, strict=True)
    ]
    rows = []
    for fraction in fractions:
        masks = keep_masks(model.latent_shapes, fraction)
        rows.append(
            [torch.where(m.to(zl.device), zl, e) for m, zl, e in zip(masks, z, noise, strict=True)]
        )
    latents = [torch.cat([row[level] for row in rows]) for level in range(len(z))]
    ys = None if y is None else y.repeat(len(fractions))
    return decode_latents(model, latents, ys, batch_size).view(len(fractions), *x.shape)
