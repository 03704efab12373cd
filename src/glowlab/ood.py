"""Out-of-distribution scoring with a flow: likelihood, typicality and input complexity.

A likelihood model trained on one data set would flag inputs from another by their low
likelihood, but flows trained on CIFAR-10 give *higher* likelihood to SVHN or MNIST
(Nalisnick et al. 2019). Two remedies are implemented, next to the raw score:

* ``likelihood``: bits/dim; higher means less likely.
* ``typicality``: ``|bits/dim - H|`` where ``H`` is the model's mean bits/dim on held-in
  reference data (an estimate of its entropy rate); inputs that are *more* likely than
  typical are flagged too (Nalisnick et al. 2019b). With ``batch > 1`` the mean over a
  batch of ``M`` inputs is tested, as in the paper.
* ``complexity``: ``bits/dim - L(x)``, where ``L(x)`` is the length in bits/dim of the
  image compressed losslessly by a generic compressor (PNG's filters and deflate here),
  which removes the part of the likelihood explained by simplicity (Serrà et al. 2020).

Every score is oriented so that a higher value means "more likely out of distribution",
and :func:`auroc` measures how well it separates two sets (1 = perfectly, 0.5 = chance).

References:
    Do Deep Generative Models Know What They Don't Know?, Nalisnick, Matsukawa, Teh, Gorur &
    Lakshminarayanan, 2019, arXiv:1810.09136.
    Detecting Out-of-Distribution Inputs to Deep Generative Models Using Typicality,
    Nalisnick, Matsukawa, Teh & Lakshminarayanan, 2019, arXiv:1906.02994.
    Input Complexity and Out-of-distribution Detection with Likelihood-based Generative
    Models, Serrà, Álvarez, Gómez, Slizovskaia, Núñez & Luque, 2020, arXiv:1909.11480.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .metrics import bits_per_dim
from .models.base import FlowModel

__all__ = [
    "SCORES",
    "OODResult",
    "auroc",
    "complexity_scores",
    "noise_images",
    "ood_scores",
    "per_image_bits_per_dim",
    "png_bits_per_dim",
    "typicality_scores",
    "typicality_threshold",
]

SCORES: tuple[str, ...] = ("likelihood", "typicality", "complexity")


@torch.no_grad()
def per_image_bits_per_dim(
    model: FlowModel,
    images: Tensor,
    n_bits: int = 8,
    batch_size: int = 256,
    y: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Bits/dim ``(N,)`` of each uint8 image ``(N, C, H, W)``, one dequantization draw each.

    For a class-conditional model without ``y`` this is the class-marginal likelihood.
    """
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise TypeError(
            f"per_image_bits_per_dim expects uint8 images (N, C, H, W), got {images.dtype}"
        )
    if tuple(images.shape[1:]) != tuple(model.image_shape):
        raise ValueError(
            f"the images are {tuple(images.shape[1:])} but the model takes "
            f"{tuple(model.image_shape)}"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    out = []
    for start in range(0, images.shape[0], batch_size):
        yb = None if y is None else y[start : start + batch_size]
        out.append(bits_per_dim(model, images[start : start + batch_size], n_bits, yb, generator))
    return torch.cat(out).double().cpu()  # one copy back, after every batch is queued


def auroc(in_scores: Tensor | np.ndarray, out_scores: Tensor | np.ndarray) -> float:
    """Area under the ROC curve for "out" scoring higher than "in", ties counting one half.

    Computed in the Mann-Whitney form: ``U / (n_in * n_out)`` where ``U`` is the rank sum of
    the out scores (average ranks for ties) minus ``n_out (n_out + 1) / 2``; that equals
    ``P(s_out > s_in) + P(s_out = s_in) / 2`` over all pairs, in ``O(n log n)``.

    Example:
        >>> auroc([0.1, 0.2, 0.3], [0.25, 0.4])
        0.8333333333333334
    """
    a = np.asarray(in_scores, dtype=np.float64).ravel()
    b = np.asarray(out_scores, dtype=np.float64).ravel()
    if a.size == 0 or b.size == 0:
        raise ValueError("auroc needs at least one score in each set")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("auroc needs finite scores (found NaN or infinity)")
    values = np.concatenate([a, b])
    _unique, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    # Average 1-based rank of each distinct value: the middle of its block in sorted order.
    end = np.cumsum(counts)
    average_rank = end - (counts - 1) / 2.0
    rank_sum = average_rank[inverse[a.size :]].sum()
    u = rank_sum - b.size * (b.size + 1) / 2.0
    return float(u / (a.size * b.size))


def _paeth(left: np.ndarray, up: np.ndarray, up_left: np.ndarray) -> np.ndarray:
    p = left + up - up_left
    pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - up_left)
    return np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, up_left))


def _png_stream(image: np.ndarray) -> bytes:
    """PNG's filtered scanlines of one ``(H, W, C)`` uint8 image: each row's filter is the one
    with the smallest sum of absolute signed residuals (the libpng heuristic)."""
    h, w, c = image.shape
    rows = image.reshape(h, w * c).astype(np.int16)
    left = np.zeros_like(rows)
    left[:, c:] = rows[:, :-c]
    up = np.zeros_like(rows)
    up[1:] = rows[:-1]
    up_left = np.zeros_like(rows)
    up_left[1:, c:] = rows[:-1, :-c]
    candidates = (
        np.stack(
            [
                rows,
                rows - left,
                rows - up,
                rows - (left + up) // 2,
                rows - _paeth(left, up, up_left),
            ]
        )
        % 256
    )  # (5, H, W*C)
    signed = np.where(candidates > 127, 256 - candidates, candidates).sum(2)  # (5, H)
    best = signed.argmin(0)
    chosen = candidates[best, np.arange(h)].astype(np.uint8)
    return np.concatenate([best.astype(np.uint8)[:, None], chosen], 1).tobytes()


def png_bits_per_dim(images: Tensor, level: int = 9) -> Tensor:
    """Length of each uint8 image ``(N, C, H, W)`` compressed as PNG image data, in bits/dim.

    The image is filtered as PNG does and deflated with zlib at ``level``; the length of the
    compressed stream (without the fixed PNG headers) is divided by ``C * H * W``. This is
    the generic lossless compressor ``L(x)`` of Serrà et al. (2020).
    """
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise TypeError(f"png_bits_per_dim expects uint8 images (N, C, H, W), got {images.dtype}")
    array = images.cpu().numpy().transpose(0, 2, 3, 1)
    dims = math.prod(images.shape[1:])
    lengths = [len(zlib.compress(_png_stream(image), level)) for image in array]
    return torch.tensor(lengths, dtype=torch.float64) * 8 / dims


def complexity_scores(bpd: Tensor, images: Tensor, n_bits: int = 8) -> Tensor:
    """Serrà et al.'s ``S(x) = bits/dim - L(x)`` with :func:`png_bits_per_dim` as ``L``.

    ``L`` compresses the images at the bit depth the model sees (``n_bits``), so that both
    terms measure the same data.
    """
    levels = torch.div(images, 2 ** (8 - n_bits), rounding_mode="floor").to(torch.uint8)
    return bpd.double().cpu() - png_bits_per_dim(levels)


def typicality_scores(bpd: Tensor, entropy: float, batch: int = 1) -> Tensor:
    """``|mean bits/dim of each batch - entropy|`` for consecutive batches of ``batch`` inputs.

    ``entropy`` is the model's mean bits/dim on held-in data. With ``batch = 1`` every input
    is scored alone; a trailing incomplete batch is dropped.
    """
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"the typicality batch size must be a positive integer, got {batch!r}")
    n = (bpd.numel() // batch) * batch
    if n == 0:
        raise ValueError(f"need at least {batch} scores for typicality batches of {batch}")
    return (bpd.double().cpu()[:n].view(-1, batch).mean(1) - entropy).abs()


def typicality_threshold(
    reference_bpd: Tensor,
    entropy: float,
    batch: int = 1,
    quantile: float = 0.99,
    bootstraps: int = 1000,
    generator: torch.Generator | None = None,
) -> float:
    """The test's threshold ``epsilon``: the ``quantile`` of :func:`typicality_scores` of
    batches resampled with replacement from held-in ``reference_bpd`` (Nalisnick et al. 2019b).

    A batch whose score exceeds it is declared out of distribution at level ``1 - quantile``.
    """
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    index = torch.randint(reference_bpd.numel(), (bootstraps, batch), generator=generator)
    means = reference_bpd.double().cpu()[index].mean(1)
    return float(torch.quantile((means - entropy).abs(), quantile))


def noise_images(
    n: int, shape: tuple[int, int, int], generator: torch.Generator | None = None
) -> Tensor:
    """``n`` images of independent uniform 8-bit noise, ``(n, *shape)`` uint8."""
    return torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=generator)


@dataclass
class OODResult:
    """Per-image scores of every data set, and the AUROC of each score for each outlier set.

    ``bpd[name]`` and ``scores[score][name]`` are ``(N,)``; ``aurocs[score][name]`` compares
    the set ``name`` against the in-distribution set; ``entropy`` is the reference mean
    bits/dim used by the typicality score.
    """

    in_name: str
    entropy: float
    bpd: dict[str, Tensor]
    scores: dict[str, dict[str, Tensor]]
    aurocs: dict[str, dict[str, float]]

    def table(self) -> str:
        """A plain-text table: one row per outlier set, one AUROC column per score."""
        names = [n for n in self.bpd if n != self.in_name]
        head = f"{'in: ' + self.in_name + ' vs':<24}" + "".join(f"{s:>12}" for s in SCORES)
        rows = [head]
        for name in names:
            rows.append(f"{name:<24}" + "".join(f"{self.aurocs[s][name]:>12.3f}" for s in SCORES))
        return "\n".join(rows)


def ood_scores(
    model: FlowModel,
    in_images: Tensor,
    out_images: Mapping[str, Tensor],
    reference_images: Tensor,
    in_name: str = "in",
    n_bits: int = 8,
    batch_size: int = 256,
    typicality_batch: int = 1,
    generator: torch.Generator | None = None,
) -> OODResult:
    """Score held-in test images and each outlier set with all of :data:`SCORES`; AUROC of each.

    ``reference_images`` (held-in, e.g. training images) estimate the entropy for the
    typicality score, so the test images are not used to set it.
    """
    if in_name in out_images:
        raise ValueError(
            f"the outlier set {in_name!r} has the same name as the in-distribution set"
        )
    sets = {in_name: in_images, **out_images}
    bpd = {
        name: per_image_bits_per_dim(model, images, n_bits, batch_size, generator=generator)
        for name, images in sets.items()
    }
    reference = per_image_bits_per_dim(
        model, reference_images, n_bits, batch_size, generator=generator
    )
    entropy = float(reference.mean())
    scores: dict[str, dict[str, Tensor]] = {
        "likelihood": bpd,
        "typicality": {n: typicality_scores(b, entropy, typicality_batch) for n, b in bpd.items()},
        "complexity": {n: complexity_scores(bpd[n], sets[n], n_bits) for n in sets},
    }
    aurocs = {
        score: {n: auroc(values[in_name], values[n]) for n in out_images}
        for score, values in scores.items()
    }
    return OODResult(in_name, entropy, bpd, scores, aurocs)
