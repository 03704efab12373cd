"""Out-of-distribution scores: AUROC against a brute-force count, PNG lengths, typicality."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import glowlab
from glowlab.imageio import fit_images
from glowlab.ood import (
    _png_stream,
    auroc,
    complexity_scores,
    noise_images,
    ood_scores,
    per_image_bits_per_dim,
    png_bits_per_dim,
    typicality_scores,
    typicality_threshold,
)
from glowlab.plot import histogram_figure


def brute_force_auroc(a: np.ndarray, b: np.ndarray) -> float:
    wins = sum(1.0 if y > x else 0.5 if y == x else 0.0 for x in a for y in b)
    return wins / (len(a) * len(b))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(-5, 5), min_size=1, max_size=25),
    st.lists(st.integers(-5, 5), min_size=1, max_size=25),
)
def test_auroc_equals_the_pairwise_count_with_ties(a: list[int], b: list[int]) -> None:
    a_arr, b_arr = np.array(a, float) / 2, np.array(b, float) / 2  # many ties
    assert auroc(a_arr, b_arr) == pytest.approx(brute_force_auroc(a_arr, b_arr), abs=1e-12)


def test_auroc_limits_and_errors() -> None:
    assert auroc([0, 1, 2], [3, 4]) == 1.0
    assert auroc([3, 4], [0, 1, 2]) == 0.0
    assert auroc([1.0, 1.0], [1.0]) == 0.5
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=300), rng.normal(1.0, size=200)
    assert auroc(a, b) == pytest.approx(brute_force_auroc(a, b))
    with pytest.raises(ValueError, match="at least one"):
        auroc([], [1.0])
    with pytest.raises(ValueError, match="finite"):
        auroc([np.nan], [1.0])


def _png_file(image: np.ndarray) -> bytes:
    """A complete PNG built around our filtered stream, to check it with Pillow's decoder."""
    h, w, c = image.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", w, h, 8, 0 if c == 1 else 2, 0, 0, 0)
    idat = zlib.compress(_png_stream(image), 9)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("channels", [1, 3])
def test_png_stream_decodes_to_the_image(channels: int) -> None:
    image_module = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(channels)
    smooth = np.cumsum(rng.integers(-3, 4, size=(12, 10, channels)), axis=1) + 128
    image = np.clip(smooth, 0, 255).astype(np.uint8)
    image[3:6] = rng.integers(0, 256, size=(3, 10, channels))  # rows where other filters win
    decoded = np.asarray(image_module.open(io.BytesIO(_png_file(image))))
    assert np.array_equal(decoded.reshape(image.shape), image)
    filters = set(_png_stream(image)[:: 1 + 10 * channels])
    assert len(filters) > 1  # the per-row choice is exercised


def test_png_bits_per_dim_orders_simple_below_complex() -> None:
    flat = torch.full((1, 3, 32, 32), 77, dtype=torch.uint8)
    noise = noise_images(1, (3, 32, 32), torch.Generator().manual_seed(0))
    ramp = torch.arange(32, dtype=torch.uint8).mul(8).view(1, 1, 1, 32).expand(1, 3, 32, 32)
    two_bits = 100 + torch.randint(0, 4, (1, 3, 32, 32), generator=torch.Generator().manual_seed(1))
    bpd = png_bits_per_dim(torch.cat([flat, ramp.contiguous(), two_bits.to(torch.uint8), noise]))
    assert bpd[0] < 0.15 and bpd[1] < 0.15  # PNG's Sub filter turns a ramp into a constant
    assert 2.0 < float(bpd[2]) < 4.5  # 2 bits of entropy per value, deflate needs a little more
    assert 7.9 < float(bpd[3]) < 8.3  # incompressible: about 8 bits per dimension
    scores = complexity_scores(torch.full((2,), 5.0), torch.cat([flat, noise]))
    torch.testing.assert_close(scores, 5.0 - bpd[[0, 3]])


def test_typicality_scores_and_threshold() -> None:
    bpd = torch.tensor([1.0, 3.0, 2.0, 2.5, 4.0])
    torch.testing.assert_close(
        typicality_scores(bpd, 2.0), torch.tensor([1.0, 1.0, 0.0, 0.5, 2.0], dtype=torch.float64)
    )
    torch.testing.assert_close(
        typicality_scores(bpd, 2.0, batch=2), torch.tensor([0.0, 0.25], dtype=torch.float64)
    )
    reference = torch.randn(2000, generator=torch.Generator().manual_seed(0)) * 0.1 + 3
    eps1 = typicality_threshold(reference, 3.0, 1, 0.99, 2000, torch.Generator().manual_seed(1))
    eps25 = typicality_threshold(reference, 3.0, 25, 0.99, 2000, torch.Generator().manual_seed(1))
    assert eps1 == pytest.approx(0.1 * 2.576, rel=0.15)  # |N(0, 0.1)| at 99%
    assert eps25 == pytest.approx(eps1 / 5, rel=0.25)  # batch means shrink by sqrt(25)
    with pytest.raises(ValueError, match="batch"):
        typicality_scores(bpd, 2.0, batch=0)


def _smooth_images(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(60, 190, (n, 3, 1, 1), generator=g)
    ramp = torch.arange(8).view(1, 1, 1, 8) * torch.randint(0, 4, (n, 1, 1, 1), generator=g)
    return (
        (base + ramp + torch.randint(0, 3, (n, 3, 8, 8), generator=g)).clamp(0, 255).to(torch.uint8)
    )


def test_ood_scores_flag_noise_with_every_score() -> None:
    model = glowlab.Glow((3, 8, 8), levels=2, steps=1, hidden_channels=8)
    model.train()
    with torch.no_grad():
        model.evaluate(glowlab.dequantize(_smooth_images(64, 0)))  # ActNorm fits the data scale
    model.eval()
    inliers = _smooth_images(40, 1)
    noise = noise_images(30, (3, 8, 8), torch.Generator().manual_seed(2))
    result = ood_scores(model, inliers, {"noise": noise}, _smooth_images(40, 3), "smooth")
    assert set(result.aurocs) == {"likelihood", "typicality", "complexity"}
    assert result.aurocs["likelihood"]["noise"] == 1.0
    assert result.aurocs["typicality"]["noise"] == 1.0
    assert result.scores["likelihood"]["noise"].shape == (30,)
    assert "noise" in result.table()
    torch.testing.assert_close(
        result.bpd["smooth"],
        per_image_bits_per_dim(model, inliers, generator=None),
        atol=0.05,
        rtol=0,
    )
    with pytest.raises(ValueError, match="model takes"):
        per_image_bits_per_dim(model, torch.zeros(2, 1, 8, 8, dtype=torch.uint8))


def test_mnist_style_conversion_and_histogram_figure() -> None:
    digits = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    rgb = fit_images(digits, (3, 32, 32), "pad")
    assert rgb.shape == (2, 3, 32, 32)
    assert torch.equal(rgb[:, 0, 2:30, 2:30], digits[:, 0]) and torch.equal(rgb[:, 0], rgb[:, 2])
    assert int(rgb[:, :, :2].sum()) == 0
    figure = histogram_figure(
        [np.random.default_rng(0).normal(size=500), np.ones(10)], width=200, height=100
    )
    assert figure.shape == (3, 100, 200) and figure.dtype == torch.uint8
    assert torch.unique(figure.view(3, -1), dim=1).shape[1] > 3  # bars in several colours
