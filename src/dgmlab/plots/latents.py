r"""Figures of latent codes: the decoded 2-D latent grid, latent scatters, and codes against known angles.

The 2-D latent manifold
-----------------------
The problem set's ``plot_latent_images`` decodes $z = (z_1, z_2) = (g_j, g_i)$ into tile $(i, j)$ and shows
the canvas with ``imshow``'s default origin, so $z_2$ increases *downwards* and the axes carry no
coordinates. :func:`latent_manifold` keeps the same ``decoded[i, j]`` indexing (see
:func:`latent_grid_points`) but places row $i$ so that $z_2$ increases upwards and labels both axes in
latent coordinates (ticks at the tile centres).

Higher-dimensional codes are shown on their first two principal components
(:func:`dgmlab.numerics.principal_components`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from dgmlab.numerics import ArrayLike, as_float_array, as_numpy, first_harmonic_r2, principal_components
from dgmlab.plots._common import IMAGE_COLORMAP, TWO_PI, check_unit_range, format_number, new_figure
from dgmlab.utils import check_int

__all__ = ["latent_grid_points", "latent_manifold", "latent_scatter", "latent_vs_angles"]


def latent_grid_points(n: int = 8, low: float = -2.0, high: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """An n x n grid of 2-D latent points, in the order :func:`latent_manifold` expects.

    ``grid_values = linspace(low, high, n)`` and ``points[i * n + j] = (grid_values[j], grid_values[i])``,
    i.e. row i fixes z2 and column j fixes z1 (the problem set's ``z = [x_j, y_i]``). Decoding ``points``
    in order and reshaping to [n, n, H, W] gives ``decoded[i, j] = decode(z1=grid_values[j],
    z2=grid_values[i])``.

    Returns:
        ``(grid_values [n], points [n * n, 2])`` as float tensors (the default torch dtype).
    """
    size = check_int(n, "n", minimum=2)
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"need finite low < high, got low={low}, high={high}")
    grid_values = torch.linspace(float(low), float(high), size)
    # z2[i, j] = grid_values[i], z1[i, j] = grid_values[j]
    z2, z1 = torch.meshgrid(grid_values, grid_values, indexing="ij")
    points = torch.stack([z1.reshape(-1), z2.reshape(-1)], dim=1)
    return grid_values, points


def latent_manifold(
    decoded: ArrayLike,
    grid_values: ArrayLike,
    title: str = "Decoded 2-D latent grid",
) -> Figure:
    """Decoded images of a 2-D latent grid on one canvas, with axes in latent coordinates.

    Args:
        decoded: [n, n, H, W], values in [0, 1]; ``decoded[i, j]`` decodes
            ``z = (z1, z2) = (grid_values[j], grid_values[i])`` (the order of :func:`latent_grid_points`).
        grid_values: [n] evenly spaced, increasing latent values shared by z1 and z2.
        title: axes title; the grid size and range are appended on a second line.

    Returns:
        A figure whose image axes has x = "z1" increasing to the right and y = "z2" increasing upwards,
        with ticks at the tile centres labelled with the grid values. (The problem set's canvas had z2
        increasing downwards and no coordinates.)
    """
    grid = as_float_array(grid_values, "grid_values")
    if grid.ndim != 1 or grid.shape[0] < 2:
        raise ValueError(f"grid_values must have shape [n] with n >= 2, got {tuple(grid.shape)}")
    spacing = np.diff(grid)
    if not np.all(spacing > 0):
        raise ValueError("grid_values must be strictly increasing")
    if not np.allclose(spacing, spacing[0], rtol=1e-4, atol=0.0):
        raise ValueError(
            "grid_values must be evenly spaced (as from linspace): the tiles are drawn on a regular grid"
        )
    size = grid.shape[0]
    images = as_float_array(decoded, "decoded")
    if images.ndim != 4 or images.shape[0] != size or images.shape[1] != size:
        raise ValueError(
            f"decoded must have shape [n, n, H, W] with n = len(grid_values) = {size}, "
            f"got {tuple(images.shape)}; decoded[i, j] decodes (z1, z2) = (grid_values[j], grid_values[i]), "
            "so reshape the decodings of latent_grid_points(n)[1] with .reshape(n, n, H, W)"
        )
    images = check_unit_range(images, "decoded")
    height, width = images.shape[2], images.shape[3]
    # Canvas row block r holds decoded[n - 1 - r]: the largest z2 is drawn at the top.
    canvas = images[::-1].transpose(0, 2, 1, 3).reshape(size * height, size * width)
    half_step = spacing[0] / 2.0
    extent = (grid[0] - half_step, grid[-1] + half_step, grid[0] - half_step, grid[-1] + half_step)

    figure = new_figure(7.5, 7.8)
    ax = figure.add_subplot()
    ax.imshow(
        canvas,
        cmap=IMAGE_COLORMAP,
        vmin=0.0,
        vmax=1.0,
        interpolation="nearest",
        origin="upper",
        extent=extent,
        aspect=height / width,  # square pixels
    )
    tick_labels = [format_number(value) for value in grid]
    ax.set_xticks(grid, labels=tick_labels)
    ax.set_yticks(grid, labels=tick_labels)
    ax.set_xlabel("z1")
    ax.set_ylabel("z2")
    ax.set_title(
        f"{title}\n{size}\u00d7{size} grid, z1 and z2 in "
        f"[{format_number(grid[0])}, {format_number(grid[-1])}]"
    )
    return figure



def latent_scatter(
    codes: ArrayLike,
    labels: ArrayLike | None,
    title: str = "Latent codes",
    point_size: float = 4.0,
) -> Figure:
    """Latent codes coloured by digit; 2-D codes directly, higher-dimensional ones by PCA.

    Args:
        codes: [N, d], d >= 2 (e.g. posterior means). For d == 2 the axes are "z1" and "z2"; for d > 2
            the codes are projected onto their first two principal components
            (:func:`~dgmlab.numerics.principal_components`) and the axes read "PC1 (xx.x% var)", "PC2 (yy.y% var)".
        labels: [N] integer labels (digits 0-9) shown with a discrete legend (a colour bar when there are
            more than 10 classes), or None for a single colour.
        title: axes title; the number of codes (and the PCA summary) is appended.
        point_size: marker area.
    """
    array = as_float_array(codes, "codes")
    if array.ndim != 2 or array.shape[1] < 2:
        raise ValueError(f"codes must have shape [N, d] with d >= 2, got {tuple(array.shape)}")
    count, dimension = array.shape
    if count < 2:
        raise ValueError(f"codes needs at least 2 rows, got {count}")
    if dimension == 2:
        xy = array
        x_label, y_label, summary = "z1", "z2", f"{count} codes"
    else:
        xy, ratio = principal_components(array, 2)
        x_label = f"PC1 ({100 * ratio[0]:.1f}% var)"
        y_label = f"PC2 ({100 * ratio[1]:.1f}% var)"
        summary = (
            f"{count} codes, PCA of {dimension}-D latents: "
            f"PC1+PC2 explain {100 * ratio.sum():.1f}% of variance"
        )

    figure = new_figure(7.5, 6.5)
    ax = figure.add_subplot()
    order = np.random.default_rng(0).permutation(count)  # no class is drawn entirely on top
    if labels is None:
        ax.scatter(xy[order, 0], xy[order, 1], s=point_size, alpha=0.6, color="tab:blue", rasterized=True)
    else:
        label_values = as_numpy(labels, "labels").reshape(-1)
        if label_values.shape[0] != count:
            raise ValueError(f"labels must have {count} entries (one per code), got {label_values.shape[0]}")
        if not np.all(np.equal(np.mod(label_values, 1), 0)):
            raise ValueError("labels must be integers (class indices such as digits 0-9)")
        label_values = label_values.astype(np.int64)
        classes = np.unique(label_values)
        if classes.shape[0] <= 10:
            palette = {int(value): f"C{position}" for position, value in enumerate(classes)}
            colours = [palette[int(value)] for value in label_values[order]]
            ax.scatter(xy[order, 0], xy[order, 1], s=point_size, alpha=0.6, c=colours, rasterized=True)
            handles = [
                Line2D([], [], linestyle="", marker="o", color=palette[int(value)], label=str(int(value)))
                for value in classes
            ]
            ax.legend(handles=handles, title="digit", loc="center left", bbox_to_anchor=(1.01, 0.5))
        else:
            points = ax.scatter(
                xy[order, 0],
                xy[order, 1],
                s=point_size,
                alpha=0.6,
                c=label_values[order],
                cmap="viridis",
                rasterized=True,
            )
            figure.colorbar(points, ax=ax, label="label")
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_aspect("equal", adjustable="datalim")
    ax.grid(True, alpha=0.3)
    ax.set_title(f"{title}\n{summary}")
    return figure



def latent_vs_angles(
    latents: ArrayLike,
    angles: ArrayLike,
    title: str = "Latent coordinates vs torus angles",
    angle_names: tuple[str, str] = ("u", "v"),
) -> Figure:
    """Each latent coordinate scattered against each torus angle (u, v).

    Row k, column a plots ``z_{k+1}`` against angle a (wrapped to [0, 2 pi), ticks at 0, pi, 2 pi),
    coloured by the other angle (cyclic colour map, one colour bar per column). Each panel's title gives
    the $R^2$ of a first-harmonic fit $z \\approx a_0 + a_1\\cos\\theta + a_2\\sin\\theta$: the fraction of
    the coordinate's variance that this angle alone explains.

    Args:
        latents: [N, d], d >= 1 (e.g. posterior means).
        angles: [N, 2] angles (u, v) in radians of the same points.
        title: figure title.
        angle_names: names of the two angles.
    """
    codes = as_float_array(latents, "latents")
    if codes.ndim != 2 or codes.shape[1] < 1 or codes.shape[0] < 2:
        raise ValueError(f"latents must have shape [N, d] with N >= 2, d >= 1, got {tuple(codes.shape)}")
    angle_values = as_float_array(angles, "angles")
    if angle_values.shape != (codes.shape[0], 2):
        raise ValueError(
            f"angles must have shape [N, 2] = [{codes.shape[0]}, 2] (u, v per point), "
            f"got {tuple(angle_values.shape)}"
        )
    if len(angle_names) != 2:
        raise ValueError(f"angle_names must name the 2 angles, got {angle_names!r}")
    wrapped = np.mod(angle_values, TWO_PI)
    dimension = codes.shape[1]
    figure = new_figure(10.0, 2.4 * dimension + 1.0)
    axes = figure.subplots(dimension, 2, squeeze=False)
    tick_positions, tick_labels = [0.0, math.pi, TWO_PI], ["0", "\u03c0", "2\u03c0"]
    for column, name in enumerate(angle_names):
        other = 1 - column
        scatter = None
        for row in range(dimension):
            ax = axes[row, column]
            scatter = ax.scatter(
                wrapped[:, column],
                codes[:, row],
                c=wrapped[:, other],
                cmap="twilight",
                vmin=0.0,
                vmax=TWO_PI,
                s=3,
                alpha=0.7,
                rasterized=True,
            )
            ax.set_xlim(0.0, TWO_PI)
            ax.set_xticks(tick_positions, labels=tick_labels)
            ax.set_xlabel(f"{name} (rad)")
            ax.set_ylabel(f"z{row + 1}")
            ax.grid(True, alpha=0.3)
            r2 = first_harmonic_r2(codes[:, row], wrapped[:, column])
            ax.set_title(f"z{row + 1} vs {name}: R\u00b2 = {r2:.2f}", fontsize=10)
        colorbar = figure.colorbar(
            scatter, ax=axes[:, column], label=f"{angle_names[other]} (rad)", shrink=0.8
        )
        colorbar.set_ticks(tick_positions, labels=tick_labels)
    figure.suptitle(f"{title}\nR\u00b2: variance of each coordinate explained by cos and sin of one angle")
    return figure
