"""2-D toy densities, the vector flow and its figure."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from glowlab.plot import Canvas, Panel
from glowlab.toy import (
    ToyFlow,
    density_grid,
    sample_checkerboard,
    sample_density,
    sample_moons,
    sample_rings,
    toy_figure,
    train_toy,
)


def test_samplers_have_the_documented_support() -> None:
    g = torch.Generator().manual_seed(0)
    board = sample_checkerboard(4000, g)
    assert board.shape == (4000, 2)
    assert bool((board.abs() <= 2).all())
    cells = torch.floor(board + 2).long()
    assert bool(((cells[:, 0] + cells[:, 1]) % 2 == 0).all())  # only the dark cells
    assert len({tuple(c) for c in cells.tolist()}) == 8
    rings = sample_rings(3000, radii=(1.0, 2.0), noise=0.01, generator=g)
    radius = rings.norm(dim=1)
    assert bool(((radius - 1).abs() < 0.06).logical_or((radius - 2).abs() < 0.06).all())
    assert 0.25 < float(((radius - 1).abs() < 0.06).double().mean()) < 0.42  # 1/3 by arc length
    moons = sample_moons(2000, noise=0.0, generator=g)
    assert moons.abs().max() < 3.1 and abs(float(moons.mean(0)[0])) < 0.2
    with pytest.raises(ValueError, match="unknown toy density"):
        sample_density("spiral", 10)
    with pytest.raises(ValueError, match="positive integer"):
        sample_moons(0)


def test_toy_flow_inverts_and_its_logdet_is_the_jacobian() -> None:
    flow = ToyFlow(layers=3, hidden_features=16)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(5, 2)
    z, logdet = flow(x)
    x_back, logdet_inv = flow.inverse(z)
    torch.testing.assert_close(x_back, x, atol=1e-10, rtol=0)
    torch.testing.assert_close(logdet + logdet_inv, torch.zeros(5), atol=1e-10, rtol=0)
    for i in range(5):
        jac = torch.autograd.functional.jacobian(lambda p: flow(p.view(1, 2))[0].view(2), x[i])
        torch.testing.assert_close(
            logdet[i], torch.linalg.slogdet(jac).logabsdet, atol=1e-10, rtol=0
        )
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        flow(torch.zeros(3, 3))


def test_trained_toy_density_integrates_to_one_and_fits_the_data() -> None:
    flow = ToyFlow(layers=4, hidden_features=32)
    flow = train_toy("moons", steps=150, batch_size=128, lr=5e-3, flow=flow)
    limit, resolution = 6.0, 300
    log_p = density_grid(flow, limit, resolution)
    mass = np.exp(log_p).sum() * (2 * limit / resolution) ** 2
    assert mass == pytest.approx(1.0, abs=0.02)
    data = sample_moons(1000, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        nll = float(-flow.log_prob(data).mean())
    gaussian_nll = math.log(2 * math.pi) + 0.5 * float(torch.logdet(torch.cov(data.T))) + 1.0
    assert nll < gaussian_nll - 0.2  # better than the best Gaussian fit
    assert flow.sample(7).shape == (7, 2)


def test_toy_figure_draws_every_panel() -> None:
    flow = ToyFlow(layers=2, hidden_features=8)
    data = sample_rings(300, generator=torch.Generator().manual_seed(0))
    image = toy_figure(flow, data, panel_size=60)
    assert image.dtype == torch.uint8 and image.shape[0] == 3
    pad = 6
    assert image.shape[1:] == (2 * 60 + 3 * pad, 4 * 60 + 5 * pad)
    for row in range(2):
        for col in range(4):
            top, left = pad + row * (60 + pad), pad + col * (60 + pad)
            panel = image[:, top : top + 60, left : left + 60]
            assert torch.unique(panel.reshape(3, -1), dim=1).shape[1] > 2, (row, col)


def test_the_warped_grid_drawn_in_one_call_per_direction_is_the_grid_line_by_line() -> None:
    from glowlab.plot import PALETTE
    from glowlab.toy import _draw_grid, _grid_lines

    flow = ToyFlow(layers=2, hidden_features=8)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
    ref = next(flow.parameters())
    at_once, by_line = (
        Panel(Canvas(90, 90), (5, 5, 80, 80), (-4.0, 4.0, -4.0, 4.0)) for _ in range(2)
    )
    _draw_grid(at_once, flow.forward, 2.0, ref)
    for lines, color in zip(_grid_lines(2.0), PALETTE, strict=False):
        for line in lines:
            with torch.no_grad():
                mapped = flow.forward(torch.as_tensor(line, dtype=ref.dtype))[0]
            by_line.polyline(mapped.double().numpy(), color)
    assert np.array_equal(at_once.canvas.pixels, by_line.canvas.pixels)
    assert len(np.unique(at_once.canvas.pixels.reshape(-1, 3), axis=0)) == 3  # two colours


def test_rasteriser_places_points_and_lines() -> None:
    panel = Panel(Canvas(11, 11), (0, 0, 11, 11), (0.0, 10.0, 0.0, 10.0))
    panel.scatter(np.array([[0.0, 10.0], [10.0, 0.0]]), (255, 0, 0))
    pixels = panel.canvas.pixels
    assert pixels[0, 0].tolist() == [255, 0, 0] and pixels[10, 10].tolist() == [255, 0, 0]
    panel.polyline(np.array([[0.0, 5.0], [10.0, 5.0]]), (0, 0, 255))
    assert (pixels[5, :, 2] == 255).all() and (pixels[5, :, 0] == 0).all()
    panel.heatmap(np.array([[0.0, 1.0]]))
    assert pixels[0, 0].tolist() != pixels[0, 10].tolist()


def test_a_non_finite_toy_loss_is_an_error() -> None:
    flow = ToyFlow()
    with torch.no_grad():
        for p in flow.parameters():
            p.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="non-finite"):
        train_toy("moons", steps=3, flow=flow)
