"""Figures of density models: receptive fields and per-pixel negative log-likelihood of image models (PixelCNN),
and grids of 2-D densities (a target beside the flows fitted to it)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from dgmlab.numerics import ArrayLike, as_float_array, as_numpy
from dgmlab.plots._common import RANGE_TOLERANCE, new_figure
from dgmlab.utils import is_int

__all__ = ["density_grid", "pixel_nll_heatmap", "receptive_field_map"]

# cell categories of receptive_field_map and their colours
_FIELD_CATEGORIES = (
    ("read (earlier pixel)", "#3182bd"),
    ("earlier, not read (blind spot or beyond reach)", "#e6550d"),
    ("target or later (never read)", "#d9d9d9"),
    ("target or later, READ: not autoregressive", "#000000"),
)


def _as_map(values: ArrayLike, name: str) -> np.ndarray:
    """A finite float [H, W] map; leading singleton dimensions ([1, H, W], [1, 1, H, W]) are dropped."""
    array = as_float_array(values, name)
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(
            f"{name} must be one map of shape [H, W], got {tuple(as_numpy(values, name).shape)}; "
            "for a batch, average over the images first (e.g. nll.mean(0))"
        )
    return array


def _integer_pixel_axes(ax: Any, height: int, width: int) -> None:
    """Row/column labels and integer ticks on an image of pixels."""
    ax.set_xlabel("column")
    ax.set_ylabel("row")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=min(width, 8)))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=min(height, 8)))


def receptive_field_map(
    maps: Mapping[str, ArrayLike],
    position: tuple[int, int],
    title: str = "Receptive field of one pixel",
) -> Figure:
    """Side by side, for each model, which input pixels the prediction at ``position`` reads.

    Each cell is coloured by category: an earlier pixel (raster order) that is read (blue); an earlier pixel
    that is not read (orange: the PixelCNN's blind spot, or beyond the vertical reach); the target and later
    pixels (light grey); a target-or-later pixel that *is* read (black: the model is not autoregressive). The
    target is marked with a yellow star and every panel's title counts the earlier pixels read.

    Args:
        maps: ``{name: map}``, each ``[H, W]`` (bool, or gradient magnitudes: non-zero means read), e.g.
            :func:`dgmlab.models.pixelcnn.receptive_field` for a PixelCNN and a gated PixelCNN.
        position: ``(row, column)`` of the target pixel, inside every map.
        title: figure title; the target position is appended.

    Returns:
        A figure with one panel per map and a legend of the categories.
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    if not isinstance(maps, Mapping) or not maps:
        raise ValueError("maps must be a non-empty dict {name: [H, W] map}")
    if (
        not isinstance(position, Sequence)
        or len(position) != 2
        or not all(is_int(index) for index in position)
    ):
        raise ValueError(f"position must be a (row, column) pair of integers, got {position!r}")
    row, column = int(position[0]), int(position[1])
    panels = []
    for name, values in maps.items():
        field = _as_map(values, f"maps[{name!r}]")
        height, width = field.shape
        if not (0 <= row < height and 0 <= column < width):
            raise ValueError(f"position {(row, column)} lies outside maps[{name!r}] of shape {height}x{width}")
        read = field != 0
        earlier = (np.arange(height * width) < row * width + column).reshape(height, width)
        # 0 read, 1 earlier not read, 2 target or later, 3 target or later but read
        categories = np.where(earlier, np.where(read, 0, 1), np.where(read, 3, 2))
        panels.append((str(name), categories, int(read[earlier].sum()), int(earlier.sum()), int(read[~earlier].sum())))

    count = len(panels)
    aspect = min(max(max(p[1].shape[0] / p[1].shape[1] for p in panels), 0.3), 3.0)  # height / width
    figure = new_figure(3.6 * count + 0.4, 3.3 * aspect + 2.3)  # images, two-line titles, legend
    axes = figure.subplots(1, count, squeeze=False)[0]
    colormap = ListedColormap([colour for _, colour in _FIELD_CATEGORIES])
    for ax, (name, categories, seen, earlier_count, violations) in zip(axes, panels, strict=True):
        ax.imshow(categories, cmap=colormap, vmin=-0.5, vmax=len(_FIELD_CATEGORIES) - 0.5, interpolation="nearest")
        ax.plot(column, row, marker="*", markersize=14, color="gold", markeredgecolor="black", linestyle="")
        _integer_pixel_axes(ax, *categories.shape)
        panel_title = f"{name}\nreads {seen} of {earlier_count} earlier pixels"
        if violations:
            panel_title += f", {violations} at/after the target!"
        ax.set_title(panel_title, fontsize=10)
    handles = [Patch(facecolor=colour, edgecolor="grey", label=label) for label, colour in _FIELD_CATEGORIES]
    handles.append(
        Line2D([], [], marker="*", markersize=12, color="gold", markeredgecolor="black", linestyle="", label="target")
    )
    figure.legend(handles=handles, loc="outside lower center", ncol=2, fontsize=8)
    figure.suptitle(f"{title}: target pixel (row {row}, column {column})")
    return figure


def pixel_nll_heatmap(nll_per_pixel: ArrayLike, title: str = "Per-pixel negative log-likelihood") -> Figure:
    """A heat map of :math:`-\\log p(x_{rs}\\mid x_{<rs})` in nats, with its total in the title.

    Args:
        nll_per_pixel: ``[H, W]`` non-negative values in nats (``[1, H, W]`` is accepted; average a batch
            first), e.g. ``-model.log_prob_per_pixel(x).mean(0)``.
        title: figure title; the total (nats per image) and bits per dimension are appended.

    Returns:
        A figure with one image axes and a colour bar labelled "nats".
    """
    nll = _as_map(nll_per_pixel, "nll_per_pixel")
    if float(nll.min()) < -RANGE_TOLERANCE:
        raise ValueError(
            f"nll_per_pixel must be non-negative (a negative log-likelihood of binary pixels), got a minimum of "
            f"{float(nll.min()):.4g}: pass -log p, not log p"
        )
    height, width = nll.shape
    total = float(nll.sum())
    bits_per_dim = total / (height * width * math.log(2.0))
    figure = new_figure(5.2, 4.6)
    ax = figure.add_subplot()
    image = ax.imshow(nll, cmap="viridis", vmin=0.0, interpolation="nearest")
    figure.colorbar(image, ax=ax, label="nats")
    _integer_pixel_axes(ax, height, width)
    ax.set_title(f"{title}\ntotal {total:.2f} nats per image ({bits_per_dim:.3f} bits/dim), max {nll.max():.2f}")
    return figure


def density_grid(rows: Sequence[Sequence[tuple[str, ArrayLike]]], limit: float, title: str,
                 xlabel: str = "$z_1$", ylabel: str = "$z_2$") -> Figure:
    """A grid of 2-D densities on the square :math:`[-\\ell, \\ell]^2` (e.g. a target and the flows fitted to it).

    Args:
        rows: one sequence of panels per row; a panel is ``(title, log_density)`` with ``log_density`` an
            ``[n, n]`` array of log-densities on a regular grid, row ``i`` at :math:`z_2` and column ``j`` at
            :math:`z_1` (``origin="lower"``). Every row has the same number of panels.
        limit: :math:`\\ell`, the half-width of the square the grid covers.
        title: figure title.

    Each panel shows the density :math:`e^{\\log p}` with its own colour scale from 0 to its maximum.
    """
    panels = [list(row) for row in rows]
    if not panels or not panels[0] or any(len(row) != len(panels[0]) for row in panels):
        raise ValueError("density_grid: rows must be non-empty and hold the same number of panels each")
    if not limit > 0:
        raise ValueError(f"density_grid: limit must be > 0, got {limit}")
    columns = len(panels[0])
    figure = new_figure(1.9 * columns, 1.95 * len(panels) + 0.6)
    axes = figure.subplots(len(panels), columns, squeeze=False, sharex=True, sharey=True)
    ticks = [t for t in (-4, -2, 0, 2, 4) if abs(t) <= limit] or [-limit, 0, limit]
    for r, row in enumerate(panels):
        for c, (panel_title, log_density) in enumerate(row):
            values = as_numpy(log_density, "log_density").astype(np.float64)  # -inf (zero density) is allowed
            if np.isnan(values).any() or (values == np.inf).any():
                raise ValueError(f"density_grid: panel {panel_title!r} has NaN or +inf log-densities")
            if values.ndim != 2:
                raise ValueError(f"density_grid: panel {panel_title!r} must be a 2-D grid, got shape {values.shape}")
            ax = axes[r, c]
            ax.imshow(np.exp(values), origin="lower", extent=(-limit, limit, -limit, limit), cmap="viridis",
                      vmin=0.0, interpolation="nearest", aspect="equal")
            ax.set_title(panel_title, fontsize=8)
            ax.set_xticks(ticks)
            ax.set_yticks(ticks)
            ax.tick_params(labelsize=7)
            if r == len(panels) - 1:
                ax.set_xlabel(xlabel, fontsize=8)
            if c == 0:
                ax.set_ylabel(ylabel, fontsize=8)
    figure.suptitle(title, fontsize=9)
    return figure
