"""Two-dimensional toy densities and a vector flow that learns them, with RealNVP's figure.

The same couplings, ActNorm and 1x1 "convolutions" as the image models, applied to points
``(B, 2)``: a coupling with ``mask="channel"`` on two dimensions transforms one coordinate
conditioned on the other, and the parity alternates so that both get transformed.

References:
    Density estimation using Real NVP, Dinh, Sohl-Dickstein & Bengio, 2016,
    arXiv:1605.08803 (figure 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from .nets import MLP
from .plot import PALETTE, Canvas, Panel, colormap, to_chw
from .priors import StandardNormal
from .transforms import ActNorm, Coupling, FlowSequential, InvConv1x1, Reverse, Transform

__all__ = [
    "DENSITIES",
    "ToyFlow",
    "density_grid",
    "sample_checkerboard",
    "sample_density",
    "sample_moons",
    "sample_rings",
    "toy_figure",
    "train_toy",
]

Density = Literal["moons", "checkerboard", "rings"]
ToyPermutation = Literal["conv1x1", "reverse", "none"]

DENSITIES: tuple[str, ...] = ("moons", "checkerboard", "rings")


def _check_n(n: int) -> None:
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"the number of samples must be a positive integer, got {n!r}")


def sample_moons(n: int, noise: float = 0.05, generator: torch.Generator | None = None) -> Tensor:
    """``n`` points from two interleaved half circles with Gaussian noise, centred, ``(n, 2)``.

    The upper moon is ``(cos t, sin t)``, the lower one ``(1 - cos t, 1/2 - sin t)`` for
    ``t ~ U[0, pi]``; the result is scaled by 2 and centred on the origin.
    """
    _check_n(n)
    t = torch.rand(n, generator=generator) * math.pi
    lower = torch.rand(n, generator=generator) < 0.5
    x = torch.where(lower, 1 - torch.cos(t), torch.cos(t))
    y = torch.where(lower, 0.5 - torch.sin(t), torch.sin(t))
    points = torch.stack([x - 0.5, y - 0.25], 1) * 2
    return points + noise * 2 * torch.randn(n, 2, generator=generator)


def sample_checkerboard(n: int, generator: torch.Generator | None = None) -> Tensor:
    """``n`` points uniform on the 8 dark cells of a 4x4 checkerboard over ``[-2, 2]^2``."""
    _check_n(n)
    cell = torch.randint(0, 8, (n,), generator=generator)
    row = cell // 2
    col = 2 * (cell % 2) + (row % 2)  # dark cells: (row + col) even
    u = torch.rand(n, 2, generator=generator)
    return torch.stack([col + u[:, 0], row + u[:, 1]], 1) - 2.0


def sample_rings(
    n: int,
    radii: tuple[float, ...] = (0.6, 1.4, 2.2),
    noise: float = 0.06,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``n`` points on concentric circles, uniform along their length, with radial noise."""
    _check_n(n)
    r = torch.tensor(radii, dtype=torch.get_default_dtype())
    ring = torch.multinomial(r / r.sum(), n, replacement=True, generator=generator)
    angle = torch.rand(n, generator=generator) * 2 * math.pi
    radius = r[ring] + noise * torch.randn(n, generator=generator)
    return torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], 1)


def sample_density(name: Density, n: int, generator: torch.Generator | None = None) -> Tensor:
    """``n`` samples ``(n, 2)`` of the toy density ``name`` (one of :data:`DENSITIES`)."""
    if name == "moons":
        return sample_moons(n, generator=generator)
    if name == "checkerboard":
        return sample_checkerboard(n, generator=generator)
    if name == "rings":
        return sample_rings(n, generator=generator)
    raise ValueError(f"unknown toy density {name!r}; choose one of {', '.join(DENSITIES)}")


class ToyFlow(nn.Module):
    """A flow on points ``(B, 2)``: ``layers`` x (ActNorm, permutation, affine coupling).

    Couplings transform one coordinate given the other (channel mask), with alternating
    parity, an MLP and RealNVP's ``exp(a * tanh(h))`` scale; the permutation between them is
    a learned 2x2 invertible matrix (``"conv1x1"``, Glow's 1x1 convolution on vectors), a swap
    (``"reverse"``) or nothing. The base distribution is ``N(0, I)``.

    ``forward(x) -> (z, logdet)`` maps data to latent, ``inverse(z) -> (x, logdet)``.

    References:
        Density estimation using Real NVP, Dinh, Sohl-Dickstein & Bengio, 2016, arXiv:1605.08803.
        Glow: Generative Flow with Invertible 1x1 Convolutions, Kingma & Dhariwal, 2018,
        arXiv:1807.03039.

    Example:
        >>> flow = ToyFlow(layers=2, hidden_features=16)
        >>> flow.log_prob(torch.zeros(3, 2)).shape
        torch.Size([3])
    """

    def __init__(
        self,
        layers: int = 8,
        hidden_features: int = 64,
        hidden_layers: int = 2,
        permutation: ToyPermutation = "conv1x1",
    ) -> None:
        super().__init__()
        for name, value in (("layers", layers), ("hidden_features", hidden_features),
                            ("hidden_layers", hidden_layers)):  # fmt: skip
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if permutation not in ("conv1x1", "reverse", "none"):
            raise ValueError(
                f"unknown permutation {permutation!r}; choose 'conv1x1', 'reverse' or 'none'"
            )
        net = partial(MLP, hidden_features=hidden_features, hidden_layers=hidden_layers)
        steps: list[Transform] = []
        for i in range(layers):
            steps.append(ActNorm(2))
            if permutation == "conv1x1":
                steps.append(InvConv1x1(2))
            elif permutation == "reverse":
                steps.append(Reverse(2))
            steps.append(
                Coupling(2, net, kind="affine", mask="channel", parity=i % 2, scale="exp_tanh")
            )
        self.flow = FlowSequential(steps)
        self.base = StandardNormal()

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Data to latent: ``(z, log|det dz/dx|)``."""
        _check_points(x)
        return self.flow(x)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Latent to data: ``(x, log|det dx/dz|)``."""
        _check_points(z)
        return self.flow.inverse(z)

    def log_prob(self, x: Tensor) -> Tensor:
        """``log p(x) = log N(f(x); 0, I) + log|det df/dx|``, ``(B,)`` nats."""
        z, logdet = self.forward(x)
        return self.base.log_prob(z) + logdet

    @torch.no_grad()
    def sample(
        self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> Tensor:
        """``n`` points from the model, latents drawn from ``N(0, T^2 I)``."""
        _check_n(n)
        ref = next(self.parameters())
        z = self.base.sample(
            (n, 2), temperature, device=ref.device, dtype=ref.dtype, generator=generator
        )
        return self.inverse(z)[0]


def _check_points(x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[1] != 2:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"a toy flow works on points of shape (B, 2), got {shape}")


def train_toy(
    density: Density,
    steps: int = 2000,
    batch_size: int = 256,
    lr: float = 2e-3,
    seed: int = 0,
    flow: ToyFlow | None = None,
) -> ToyFlow:
    """Fit a :class:`ToyFlow` to ``density`` by maximum likelihood (Adam); returns it in eval mode.

    Each step draws a fresh batch, so there is no over-fitting to a fixed sample. The
    learning rate decays with a cosine schedule to zero.
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    generator = torch.Generator().manual_seed(seed)
    if flow is None:
        torch.manual_seed(seed)
        flow = ToyFlow()
    flow.train()
    optimizer = torch.optim.Adam(flow.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    reference = next(flow.parameters())
    finite = torch.ones((), dtype=torch.bool, device=reference.device)
    for _ in range(steps):
        x = sample_density(density, batch_size, generator).to(reference)
        loss = -flow.log_prob(x).mean()
        finite &= torch.isfinite(loss.detach())  # read once, after the loop
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    if not bool(finite):
        raise FloatingPointError("the toy flow's loss became non-finite; lower the learning rate")
    return flow.eval()


def _grid_lines(limit: float, lines: int = 11, points: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """The vertical and the horizontal lines of a grid over ``[-limit, limit]^2``, each
    ``(lines, points, 2)``."""
    ticks = np.linspace(-limit, limit, lines)
    positions = np.linspace(-limit, limit, points)
    across, along = np.meshgrid(ticks, positions, indexing="ij")
    return np.stack([across, along], -1), np.stack([along, across], -1)


def _draw_grid(
    panel: Panel, fn: Callable[[Tensor], tuple[Tensor, Tensor]], limit: float, ref: Tensor
) -> None:
    """The grid of ``[-limit, limit]^2`` mapped by ``fn``, one colour for each direction."""
    for lines, color in zip(_grid_lines(limit), PALETTE, strict=False):
        mapped = _apply(fn, lines.reshape(-1, 2), ref).reshape(lines.shape)
        # One polyline for all lines: Panel.polyline skips the segments with a non-finite end,
        # so a NaN point between two lines lifts the pen.
        gaps = np.full((len(lines), 1, 2), np.nan)
        panel.polyline(np.concatenate([mapped, gaps], 1).reshape(-1, 2), color)


def _apply(fn, points: np.ndarray, ref: Tensor) -> np.ndarray:  # type: ignore[no-untyped-def]
    with torch.no_grad():
        out = fn(torch.as_tensor(points, dtype=ref.dtype, device=ref.device))[0]
    return out.cpu().double().numpy()


@torch.no_grad()
def toy_figure(
    flow: ToyFlow,
    data: Tensor,
    panel_size: int = 200,
    limit: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """RealNVP's figure 1 for a 2-D flow, as a ``(3, H, W)`` uint8 image of 2 x 4 panels.

    Top row, inference ``x -> z``: the data ``x ~ p_data``; its latents ``z = f(x)``; a grid
    of the data space warped by ``f``; the learned density ``p(x)``. Bottom row, generation
    ``z -> x``: latents ``z ~ N(0, I)``; samples ``x = f^-1(z)``; a grid of the latent
    space warped by ``f^-1``; the learned log-density. Points keep the colour of their
    horizontal position in the panel they come from, so they can be followed across panels.
    Data panels span ``[-limit, limit]^2`` (chosen from the data when None), latent panels
    ``[-4, 4]^2``.
    """
    flow = flow.eval()
    ref = next(flow.parameters())
    x = data.detach().to(ref.dtype).cpu().numpy()
    if limit is None:
        limit = float(np.quantile(np.abs(x), 0.999)) * 1.15
    zlim = 4.0
    pad = 6
    canvas = Canvas(4 * panel_size + 5 * pad, 2 * panel_size + 3 * pad)

    def panel(row: int, col: int, lim: float) -> Panel:
        box = (
            pad + row * (panel_size + pad),
            pad + col * (panel_size + pad),
            panel_size,
            panel_size,
        )
        p = Panel(canvas, box, (-lim, lim, -lim, lim))
        p.fill((250, 250, 250))
        p.frame((120, 120, 120))
        return p

    def colored_scatter(p: Panel, points: np.ndarray, hue: np.ndarray) -> None:
        order = np.clip((hue + 1) / 2, 0, 1)
        colors = colormap(order)
        # Bucket by colour: one vectorised draw per bucket.
        buckets = np.minimum((order * 16).astype(np.int64), 15)
        for b in range(16):
            sel = buckets == b
            if sel.any():
                p.scatter(points[sel], tuple(int(c) for c in colors[sel][0]), radius=0)  # type: ignore[arg-type]

    z = _apply(flow.forward, x, ref)
    hue_x = x[:, 0] / limit
    colored_scatter(panel(0, 0, limit), x, hue_x)
    colored_scatter(panel(0, 1, zlim), z, hue_x)
    _draw_grid(panel(0, 2, zlim), flow.forward, limit, ref)

    z_s = flow.base.sample((len(x), 2), generator=generator, dtype=ref.dtype, device=ref.device)
    z_np = z_s.cpu().numpy()
    hue_z = z_np[:, 0] / zlim
    colored_scatter(panel(1, 0, zlim), z_np, hue_z)
    colored_scatter(panel(1, 1, limit), _apply(flow.inverse, z_np, ref), hue_z)
    _draw_grid(panel(1, 2, limit), flow.inverse, zlim, ref)

    log_density = density_grid(flow, limit, panel_size)
    panel(0, 3, limit).heatmap(np.exp(log_density))
    panel(1, 3, limit).heatmap(np.maximum(log_density, log_density.max() - 12.0))
    return to_chw(canvas.pixels)


@torch.no_grad()
def density_grid(flow: ToyFlow, limit: float, resolution: int = 200) -> np.ndarray:
    """``log p(x)`` on a ``resolution``^2 grid of cell centres over ``[-limit, limit]^2``.

    Row 0 is the top (largest second coordinate), as in an image.
    """
    ref = next(flow.parameters())
    centres = (np.arange(resolution) + 0.5) / resolution * 2 * limit - limit
    xx, yy = np.meshgrid(centres, centres[::-1])
    points = torch.as_tensor(
        np.stack([xx.ravel(), yy.ravel()], 1), dtype=ref.dtype, device=ref.device
    )
    values = torch.cat([flow.log_prob(chunk) for chunk in points.split(65536)])
    return values.cpu().double().numpy().reshape(resolution, resolution)
