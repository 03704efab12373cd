"""A small numpy rasteriser for figures: scatter plots, polylines, heat maps and histograms.

Everything draws into a :class:`Canvas`, an ``(H, W, 3)`` uint8 array, so figures can be
written with :func:`glowlab.images.save_png` and glowlab needs no plotting library. Data
coordinates map to pixels through a :class:`Panel` (``y`` grows upwards, as on paper).
Numbers (axis ranges) are drawn with a 3x5 pixel font of digits, ``.``, ``-`` and ``e``.

Example:
    >>> import numpy as np
    >>> panel = Panel(Canvas(64, 64), (0, 0, 64, 64), (-1.0, 1.0, -1.0, 1.0))
    >>> panel.scatter(np.zeros((1, 2)), color=(255, 0, 0))
    >>> panel.canvas.pixels[32, 32].tolist()
    [255, 0, 0]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "PALETTE",
    "Canvas",
    "Panel",
    "colormap",
    "histogram_figure",
    "to_chw",
]

Color = tuple[int, int, int]

#: Colours for successive data sets (blue, orange, green, red, purple).
PALETTE: tuple[Color, ...] = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
)

# Anchor colours of a perceptually ordered dark-blue -> green -> yellow map (viridis-like).
_CMAP_ANCHORS = np.array(
    [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64
)

# 3x5 glyphs, one string of 15 bits per character, row by row.
_FONT: dict[str, str] = {
    "0": "111101101101111",
    "1": "010110010010111",
    "2": "111001111100111",
    "3": "111001111001111",
    "4": "101101111001001",
    "5": "111100111001111",
    "6": "111100111101111",
    "7": "111001001010010",
    "8": "111101111101111",
    "9": "111101111001111",
    ".": "000000000000010",
    "-": "000000111000000",
    "e": "000111111100111",
    "+": "000010111010000",
    " ": "000000000000000",
}


def colormap(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] (any shape) to RGB uint8 (shape + (3,)) with a viridis-like ramp."""
    v = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float64)), 0.0, 1.0)
    pos = v * (len(_CMAP_ANCHORS) - 1)
    lo = np.minimum(pos.astype(np.int64), len(_CMAP_ANCHORS) - 2)
    frac = (pos - lo)[..., None]
    rgb = _CMAP_ANCHORS[lo] * (1 - frac) + _CMAP_ANCHORS[lo + 1] * frac
    return np.round(rgb).astype(np.uint8)


def to_chw(pixels: np.ndarray) -> Tensor:
    """``(H, W, 3)`` uint8 -> ``(3, H, W)`` uint8 tensor, the layout of :func:`save_png`."""
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))


class Canvas:
    """An ``(height, width, 3)`` uint8 image to draw on, filled with ``background``."""

    def __init__(self, width: int, height: int, background: Color = (255, 255, 255)) -> None:
        if width < 1 or height < 1:
            raise ValueError(f"a canvas needs a positive size, got {width}x{height}")
        self.pixels = np.empty((height, width, 3), dtype=np.uint8)
        self.pixels[:] = background

    @property
    def width(self) -> int:
        return self.pixels.shape[1]

    @property
    def height(self) -> int:
        return self.pixels.shape[0]

    def put(self, rows: np.ndarray, cols: np.ndarray, color: Color, alpha: float = 1.0) -> None:
        """Paint pixels ``(rows[i], cols[i])`` (those inside the canvas) with ``color``."""
        rows, cols = np.asarray(rows, np.int64).ravel(), np.asarray(cols, np.int64).ravel()
        inside = (rows >= 0) & (rows < self.height) & (cols >= 0) & (cols < self.width)
        rows, cols = rows[inside], cols[inside]
        if alpha >= 1.0:
            self.pixels[rows, cols] = color
            return
        old = self.pixels[rows, cols].astype(np.float64)
        new = (1 - alpha) * old + alpha * np.asarray(color, np.float64)
        self.pixels[rows, cols] = np.round(new).astype(np.uint8)

    def rect(
        self, top: int, left: int, height: int, width: int, color: Color, alpha: float = 1.0
    ) -> None:
        """Fill the rectangle of ``height`` x ``width`` pixels whose top-left pixel is given."""
        rr, cc = np.mgrid[top : top + max(height, 0), left : left + max(width, 0)]
        self.put(rr, cc, color, alpha)

    def text(self, top: int, left: int, text: str, color: Color = (0, 0, 0), scale: int = 1) -> int:
        """Write ``text`` (digits, ``.-+e`` and space) in the 3x5 font; returns its width."""
        x = left
        for char in text:
            glyph = _FONT.get(char, _FONT[" "])
            bits = np.array([int(b) for b in glyph], dtype=bool).reshape(5, 3)
            rr, cc = np.nonzero(np.kron(bits, np.ones((scale, scale), dtype=bool)))
            self.put(rr + top, cc + x, color)
            x += 4 * scale
        return x - left

    def paste(self, top: int, left: int, image: np.ndarray) -> None:
        """Copy an ``(h, w, 3)`` uint8 image onto the canvas (clipped at the border)."""
        h = min(image.shape[0], self.height - top)
        w = min(image.shape[1], self.width - left)
        if h > 0 and w > 0:
            self.pixels[top : top + h, left : left + w] = image[:h, :w]


class Panel:
    """A rectangle of a canvas with data coordinates ``limits = (xmin, xmax, ymin, ymax)``.

    ``box = (top, left, height, width)`` in pixels. Points outside the limits are clipped.
    """

    def __init__(
        self,
        canvas: Canvas,
        box: tuple[int, int, int, int],
        limits: tuple[float, float, float, float],
    ) -> None:
        xmin, xmax, ymin, ymax = (float(v) for v in limits)
        if not (xmax > xmin and ymax > ymin):
            raise ValueError(f"panel limits must have xmax > xmin and ymax > ymin, got {limits}")
        self.canvas = canvas
        self.box = box
        self.limits = (xmin, xmax, ymin, ymax)

    def to_pixels(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Data points ``(N, 2)`` -> float pixel ``(rows, cols)``."""
        top, left, height, width = self.box
        xmin, xmax, ymin, ymax = self.limits
        points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        cols = left + (points[:, 0] - xmin) / (xmax - xmin) * (width - 1)
        rows = top + (ymax - points[:, 1]) / (ymax - ymin) * (height - 1)
        return rows, cols

    def _inside(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        top, left, height, width = self.box
        ok = np.isfinite(rows) & np.isfinite(cols)
        return ok & (rows >= top) & (rows < top + height) & (cols >= left) & (cols < left + width)

    def fill(self, color: Color) -> None:
        top, left, height, width = self.box
        self.canvas.rect(top, left, height, width, color)

    def frame(self, color: Color = (0, 0, 0)) -> None:
        """Draw a one-pixel border around the panel."""
        top, left, height, width = self.box
        self.canvas.rect(top - 1, left - 1, 1, width + 2, color)
        self.canvas.rect(top + height, left - 1, 1, width + 2, color)
        self.canvas.rect(top - 1, left - 1, height + 2, 1, color)
        self.canvas.rect(top - 1, left + width, height + 2, 1, color)

    def scatter(
        self, points: np.ndarray, color: Color, radius: int = 0, alpha: float = 1.0
    ) -> None:
        """Draw each point as a square of side ``2 * radius + 1`` pixels."""
        rows, cols = self.to_pixels(points)
        rows, cols = np.round(rows), np.round(cols)
        keep = self._inside(rows, cols)
        rows, cols = rows[keep].astype(np.int64), cols[keep].astype(np.int64)
        offsets = np.arange(-radius, radius + 1)
        dr, dc = np.meshgrid(offsets, offsets, indexing="ij")
        rr = (rows[:, None] + dr.ravel()[None]).ravel()
        cc = (cols[:, None] + dc.ravel()[None]).ravel()
        keep = self._inside(rr.astype(np.float64), cc.astype(np.float64))
        self.canvas.put(rr[keep], cc[keep], color, alpha)

    def polyline(self, points: np.ndarray, color: Color, alpha: float = 1.0) -> None:
        """Join consecutive points ``(N, 2)`` with straight one-pixel segments."""
        rows, cols = self.to_pixels(points)
        if len(rows) < 2:
            return
        r0, r1, c0, c1 = rows[:-1], rows[1:], cols[:-1], cols[1:]
        ok = np.isfinite(r0) & np.isfinite(r1) & np.isfinite(c0) & np.isfinite(c1)
        # Segments that leave the canvas far behind are dropped rather than drawn to infinity.
        span = np.maximum(np.abs(r1 - r0), np.abs(c1 - c0))
        ok &= span < 4 * (self.canvas.width + self.canvas.height)
        r0, r1, c0, c1, span = r0[ok], r1[ok], c0[ok], c1[ok], span[ok]
        counts = np.ceil(span).astype(np.int64) + 1
        seg = np.repeat(np.arange(len(counts)), counts)
        step = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        t = step / np.maximum(counts[seg] - 1, 1)
        rr = np.round(r0[seg] + t * (r1[seg] - r0[seg]))
        cc = np.round(c0[seg] + t * (c1[seg] - c0[seg]))
        keep = self._inside(rr, cc)
        self.canvas.put(rr[keep].astype(np.int64), cc[keep].astype(np.int64), color, alpha)

    def heatmap(self, values: np.ndarray) -> None:
        """Fill the panel with ``values`` ``(rows, cols)``, row 0 at the top, scaled to fit."""
        values = np.asarray(values, dtype=np.float64)
        top, left, height, width = self.box
        lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
        scaled = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
        ri = np.arange(height) * values.shape[0] // height
        ci = np.arange(width) * values.shape[1] // width
        self.canvas.paste(top, left, colormap(scaled[np.ix_(ri, ci)]))


def histogram_figure(
    samples: Sequence[np.ndarray],
    bins: int = 50,
    width: int = 480,
    height: int = 240,
    colors: Sequence[Color] = PALETTE,
    value_range: tuple[float, float] | None = None,
) -> Tensor:
    """Overlaid histograms of one or more 1-D samples; returns ``(3, H, W)`` uint8.

    Each sample set is drawn as translucent bars in its colour of ``colors``, the height of a
    bar the fraction of the set in that bin, so data sets of different sizes compare. The
    x-axis range is written under the axis at both ends and at the midpoint. Without
    ``value_range`` the axis spans the 1% to 99% quantiles of all sets, but at most three
    times the spread of the first set on either side of its median, so that one far-away set
    (noise at thousands of bits/dim) does not squash the others; values outside the axis are
    counted in the first or last bin.
    """
    arrays = [np.asarray(s, dtype=np.float64).ravel() for s in samples]
    arrays = [a[np.isfinite(a)] for a in arrays]
    if not arrays or any(a.size == 0 for a in arrays):
        raise ValueError("histogram_figure needs at least one non-empty set of finite values")
    if value_range is None:
        lo = min(float(np.quantile(a, 0.01)) for a in arrays)
        hi = max(float(np.quantile(a, 0.99)) for a in arrays)
        first_lo, centre, first_hi = np.quantile(arrays[0], [0.01, 0.5, 0.99])
        spread = max(float(first_hi - first_lo), 1e-12)
        lo, hi = max(lo, centre - 3 * spread), min(hi, centre + 3 * spread)
    else:
        lo, hi = value_range
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    densities = [np.histogram(np.clip(a, lo, hi), bins=edges)[0] / a.size for a in arrays]
    peak = max(float(d.max()) for d in densities) or 1.0
    canvas = Canvas(width, height)
    margin_left, margin_bottom, margin_top, margin_right = 12, 24, 8, 12
    plot_w = width - margin_left - margin_right
    plot_h = height - margin_bottom - margin_top
    base = margin_top + plot_h
    for i, density in enumerate(densities):
        color = colors[i % len(colors)]
        for b, value in enumerate(density):
            left = margin_left + round(b * plot_w / bins)
            right = margin_left + round((b + 1) * plot_w / bins)
            bar = round(value / peak * (plot_h - 1))
            canvas.rect(base - bar, left, bar, max(right - left, 1), color, alpha=0.55)
    canvas.rect(base, margin_left, 1, plot_w, (0, 0, 0))
    for frac in (0.0, 0.5, 1.0):
        col = margin_left + round(frac * (plot_w - 1))
        canvas.rect(base, col, 4, 1, (0, 0, 0))
        label = _format_number(lo + frac * (hi - lo))
        text_left = min(max(col - 4 * len(label), 0), width - 8 * len(label))
        canvas.text(base + 8, text_left, label, scale=2)
    return to_chw(canvas.pixels)


def _format_number(value: float) -> str:
    if value != 0 and (abs(value) >= 1e4 or abs(value) < 1e-2):
        return f"{value:.1e}".replace("e+0", "e").replace("e-0", "e-")
    return f"{value:.2f}".rstrip("0").rstrip(".") if "." in f"{value:.2f}" else f"{value}"
