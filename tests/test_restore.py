"""Restoration with a flow prior: exact constraints, and a trained prior beats the baselines."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import glowlab
from glowlab.restore import (
    Restoration,
    center_mask,
    colorize,
    degrade,
    inpaint,
    mean_fill,
    psnr,
    restore,
    super_resolve,
    upsample,
)

# Colour of the synthetic images: every pixel is luminance-like value L times this vector.
COLOR = torch.tensor([1.3, 1.0, 0.5])
STEPS = 200


def planes(n: int, generator: torch.Generator) -> torch.Tensor:
    """3x4x4 images on a 3-dimensional manifold: a tilted plane of one fixed colour, plus a
    little noise. Every task's missing information is predictable from what is observed."""
    offset = (torch.rand(n, 1, 1, 1, generator=generator) - 0.5) * 0.2
    slope = (torch.rand(n, 2, 1, 1, generator=generator) - 0.5) * 0.4
    grid = (torch.arange(4.0) - 1.5) / 3
    field = offset + slope[:, :1] * grid.view(1, 1, 4, 1) + slope[:, 1:] * grid.view(1, 1, 1, 4)
    noise = 0.005 * torch.randn(n, 3, 4, 4, generator=generator)
    return field * COLOR.view(1, 3, 1, 1) + noise


@pytest.fixture(scope="module")
def trained() -> tuple[glowlab.Glow, torch.Tensor]:
    """A small Glow fitted to :func:`planes` by maximum likelihood (a few seconds)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        torch.manual_seed(0)
        generator = torch.Generator().manual_seed(0)
        model = glowlab.Glow((3, 4, 4), levels=1, steps=4, hidden_channels=32)
        optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
        model.train()
        for _ in range(STEPS):
            loss = -model.log_prob(planes(64, generator)).mean() / 48
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        test = planes(6, torch.Generator().manual_seed(123))
    finally:
        torch.set_default_dtype(previous)
    return model, test


def test_inpaint_keeps_known_pixels_and_beats_mean_fill(trained) -> None:
    model, clean = trained
    mask = center_mask(clean.shape, 0.5).to(clean)
    assert int((mask == 0).sum()) == 4
    observed = clean * mask
    out = inpaint(model, observed, mask, steps=100)
    assert torch.equal(out * mask, observed * mask)  # known pixels untouched
    baseline = mean_fill(observed, mask)
    assert float(psnr(out, clean).mean()) > float(psnr(baseline, clean).mean()) + 3


def test_super_resolution_satisfies_the_pooling_constraint_and_beats_upsampling(trained) -> None:
    model, clean = trained
    low = F.avg_pool2d(clean, 2)
    out = super_resolve(model, low, steps=100)
    torch.testing.assert_close(F.avg_pool2d(out, 2), low, atol=1e-6, rtol=0)
    assert float(psnr(out, clean).mean()) > float(psnr(upsample(low), clean).mean()) + 3


def test_colorize_keeps_luminance_and_beats_gray(trained) -> None:
    model, clean = trained
    gray = degrade(clean, "colorize")
    out = colorize(model, gray, steps=100)
    torch.testing.assert_close(degrade(out, "colorize"), gray, atol=1e-6, rtol=0)
    assert (
        float(psnr(out, clean).mean()) > float(psnr(gray.expand(-1, 3, -1, -1), clean).mean()) + 3
    )


def test_colorize_observes_the_luminance_that_to_gray_computes() -> None:
    from glowlab.imageio import to_gray

    clean = torch.rand(2, 3, 4, 4, dtype=torch.float32, generator=torch.Generator().manual_seed(0))
    for images in (clean, clean.double()):
        gray = degrade(images, "colorize")
        assert gray.dtype == images.dtype and gray.shape == (2, 1, 4, 4)
        torch.testing.assert_close(gray, to_gray(images))


def test_denoise_beats_the_noisy_input(trained) -> None:
    model, clean = trained
    result = restore(
        model, clean, "denoise", steps=100, sigma=0.08, generator=torch.Generator().manual_seed(0)
    )
    summary = result.summary()
    assert summary["restored_psnr"] > summary["baseline_psnr"] + 3
    assert summary["restored_mse"] < summary["baseline_mse"]


def test_restore_reports_every_task(trained) -> None:
    model, clean = trained
    for task in ("inpaint", "colorize", "super-resolution"):
        result = restore(model, clean[:2], task, steps=2)
        assert isinstance(result, Restoration)
        assert (
            result.restored.shape
            == result.baseline.shape
            == result.observed.shape
            == clean[:2].shape
        )
        assert set(result.summary()) == {
            "baseline_mse",
            "baseline_psnr",
            "restored_mse",
            "restored_psnr",
        }


def test_zero_steps_returns_the_baseline() -> None:
    model = glowlab.Glow((3, 4, 4), levels=1, steps=1, hidden_channels=8)
    clean = torch.rand(2, 3, 4, 4) - 0.5
    for task in ("inpaint", "denoise", "colorize", "super-resolution"):
        result = restore(model, clean, task, steps=0, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(result.restored, result.baseline, atol=1e-12, rtol=0)


def test_restore_rejects_bad_input() -> None:
    gray_model = glowlab.Glow((1, 4, 4), levels=1, steps=1, hidden_channels=8)
    x = torch.rand(1, 1, 4, 4) - 0.5
    with pytest.raises(ValueError, match="unknown restoration task"):
        restore(gray_model, x, "sharpen")
    with pytest.raises(ValueError, match="3-channel"):
        colorize(gray_model, x)
    with pytest.raises(ValueError, match="low-resolution"):
        super_resolve(gray_model, x)
    with pytest.raises(ValueError, match=r"restore expects images of shape \(B, 1, 4, 4\)"):
        restore(gray_model, torch.rand(1, 1, 8, 8), "inpaint")
    with pytest.raises(ValueError, match="sigma"):
        restore(gray_model, x, "denoise", sigma=0.0)
    for value in (math.inf, math.nan):
        with pytest.raises(ValueError, match="sigma must be a finite number > 0"):
            restore(gray_model, x, "denoise", sigma=value)
        with pytest.raises(ValueError, match="learning rate must be a finite number > 0"):
            restore(gray_model, x, "inpaint", steps=1, lr=value)


def test_a_non_finite_objective_is_an_error_not_a_result() -> None:
    model = glowlab.Glow((3, 4, 4), levels=1, steps=1, hidden_channels=8)
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    clean = torch.rand(2, 3, 4, 4) - 0.5
    with pytest.raises(FloatingPointError, match="non-finite"):
        restore(model, clean, "denoise", steps=3, generator=torch.Generator().manual_seed(0))
