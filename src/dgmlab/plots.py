r"""Every figure of dgmlab: each function takes arrays and returns a :class:`matplotlib.figure.Figure`.

Conventions
-----------
* Inputs are torch tensors (any device; they are detached and copied to the CPU), numpy arrays or
  nested lists. No function takes a model: the caller encodes and decodes, the plot only draws.
* Figures are built with ``matplotlib.figure.Figure`` and an Agg canvas, never with ``pyplot``, so the
  library leaves the global pyplot state (current figure, backend) alone and works headless. A returned
  figure is drawn with ``fig.canvas.draw()``, saved with :func:`save_figure`, and shown inline by Jupyter.
* Images are intensities in [0, 1] drawn with ``Greys_r`` and a fixed colour scale (0 is black, 1 is
  white: white strokes on black, as in the problem set). Values outside [0, 1] raise ``ValueError``
  rather than being clipped silently, because they usually mean logits were passed where probabilities
  were meant (apply ``torch.sigmoid``) or an unbounded Gaussian mean needs ``.clamp(0, 1)``.

The 2-D latent manifold
-----------------------
The problem set's ``plot_latent_images`` decodes $z = (z_1, z_2) = (g_j, g_i)$ into tile $(i, j)$ and shows
the canvas with ``imshow``'s default origin, so $z_2$ increases *downwards* and the axes carry no
coordinates. :func:`latent_manifold` keeps the same ``decoded[i, j]`` indexing (see
:func:`latent_grid_points`) but places row $i$ so that $z_2$ increases upwards and labels both axes in
latent coordinates (ticks at the tile centres).

Monte-Carlo KL convergence (problem 3(b))
-----------------------------------------
The single-sample estimator $\widehat{\mathrm{KL}}_n = \frac1n\sum_{s=1}^n
[\log q(z_s\mid x) - \log p(z_s)]$, $z_s\sim q(z\mid x)$, is unbiased with variance
$\sigma^2/n$, $\sigma^2 = \mathrm{Var}_q[\log q(z\mid x) - \log p(z)]$. Its root-mean-square error is
therefore $\sigma n^{-1/2}$: a straight line of slope $-1/2$ on log-log axes,
$\log \mathrm{RMSE} = \log\sigma - \tfrac12 \log n$. :func:`kl_estimator_convergence` fits that slope by
least squares (:func:`fit_power_law`) and draws the $-1/2$ reference line with its intercept fitted.
"""

from __future__ import annotations

import contextlib
import math
import operator
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

__all__ = [
    "equal_axis_limits",
    "fit_power_law",
    "image_grid",
    "interpolation",
    "kl_estimator_convergence",
    "latent_grid_points",
    "latent_manifold",
    "latent_scatter",
    "latent_vs_angles",
    "loss_curves",
    "point_cloud_3d",
    "point_cloud_overlay",
    "principal_components",
    "reconstructions",
    "save_figure",
]

ArrayLike = torch.Tensor | np.ndarray | Sequence[Any]

IMAGE_COLORMAP = "Greys_r"  # the problem set's colour map: 0 black, 1 white
_RANGE_TOLERANCE = 1e-4  # float slack allowed outside [0, 1] before an image is rejected
_TWO_PI = 2.0 * math.pi


# ----------------------------------------------------------------------------------------------------
# Input handling
# ----------------------------------------------------------------------------------------------------
def _to_numpy(values: ArrayLike, name: str) -> np.ndarray:
    """A CPU numpy copy of a tensor, array or nested list; floats become float64."""
    if isinstance(values, torch.Tensor):
        tensor = values.detach().cpu()
        if tensor.is_floating_point():
            tensor = tensor.to(torch.float64)
        array = tensor.numpy()
    else:
        try:
            array = np.asarray(values)
        except (TypeError, ValueError) as error:  # ragged nested lists
            raise ValueError(f"{name} must be a rectangular array of numbers: {error}") from error
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise ValueError(f"{name} must hold numbers, got an array of dtype {array.dtype}")
    return array


def _as_float(values: ArrayLike, name: str) -> np.ndarray:
    """A finite float64 numpy array."""
    array = _to_numpy(values, name).astype(np.float64, copy=False)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def _check_unit_range(array: np.ndarray, name: str) -> np.ndarray:
    """Reject intensities outside [0, 1] (beyond float slack); return them clipped to [0, 1]."""
    low, high = float(array.min()), float(array.max())
    if low < -_RANGE_TOLERANCE or high > 1.0 + _RANGE_TOLERANCE:
        raise ValueError(
            f"{name} must hold intensities in [0, 1], got values in [{low:.4g}, {high:.4g}]: "
            "decoders that return logits need torch.sigmoid first, unbounded means need .clamp(0, 1)"
        )
    return np.clip(array, 0.0, 1.0)


def _as_images(values: ArrayLike, name: str) -> np.ndarray:
    """Images as [n, H, W] in [0, 1], from [n, H, W], [n, 1, H, W] or flat square [n, H*W]."""
    array = _as_float(values, name)
    shape = tuple(array.shape)
    if array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]
    elif array.ndim == 2:
        side = math.isqrt(array.shape[1])
        if side == 0 or side * side != array.shape[1]:
            raise ValueError(
                f"{name} has shape {shape}: {array.shape[1]} values per image is not a square number, "
                "so the image side cannot be inferred; pass [n, H, W]"
            )
        array = array.reshape(array.shape[0], side, side)
    if array.ndim != 3:
        raise ValueError(f"{name} must have shape [n, H, W], [n, 1, H, W] or [n, H*W], got {shape}")
    if array.shape[0] == 0 or array.shape[1] == 0 or array.shape[2] == 0:
        raise ValueError(f"{name} is empty (shape {shape})")
    return _check_unit_range(array, name)


def _as_points(values: ArrayLike, name: str, minimum: int = 1) -> np.ndarray:
    """Points as a finite float array [N, 3] with N >= minimum."""
    array = _as_float(values, name)
    if array.ndim != 2 or array.shape[1] != 3:
        raise ValueError(f"{name} must have shape [N, 3] (x, y, z per point), got {tuple(array.shape)}")
    if array.shape[0] < minimum:
        raise ValueError(f"{name} needs at least {minimum} point(s), got {array.shape[0]}")
    return array


def _as_limits(ax_limits: ArrayLike, name: str = "ax_limits") -> np.ndarray:
    limits = _as_float(ax_limits, name)
    if limits.shape != (3, 2):
        raise ValueError(
            f"{name} must have shape [3, 2] ((low, high) for x, y and z), got {tuple(limits.shape)}"
        )
    if not np.all(limits[:, 1] > limits[:, 0]):
        raise ValueError(f"{name} must have low < high on every axis, got {limits.tolist()}")
    return limits


def _new_figure(width: float, height: float, constrained: bool = True) -> Figure:
    """A Figure with its own Agg canvas: never registered with pyplot."""
    figure = Figure(figsize=(width, height), layout="constrained" if constrained else None)
    FigureCanvasAgg(figure)
    return figure


def _show_image(ax: Any, image: np.ndarray) -> None:
    ax.imshow(image, cmap=IMAGE_COLORMAP, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _format_number(value: float) -> str:
    return f"{value:.3g}"


# ----------------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------------
def reconstructions(
    originals: ArrayLike,
    reconstructions: ArrayLike,
    labels: ArrayLike | None = None,
    title: str = "Reconstructions (posterior mean)",
) -> Figure:
    """Originals (top row, "original") above their reconstructions (bottom row, "reconstruction").

    Args:
        originals: [n, H, W], [n, 1, H, W] or flat [n, H*W] (square side inferred), values in [0, 1].
        reconstructions: the same shape as ``originals``, values in [0, 1] (probabilities or means,
            not logits).
        labels: optional [n] digit labels, shown as "label k" above each column.
        title: figure title. Say whether z was the posterior mean or a sample.

    Returns:
        A 2 x n figure.
    """
    original_images = _as_images(originals, "originals")
    reconstructed_images = _as_images(reconstructions, "reconstructions")
    if original_images.shape != reconstructed_images.shape:
        raise ValueError(
            "originals and reconstructions must have the same shape, got "
            f"{tuple(original_images.shape)} and {tuple(reconstructed_images.shape)} (as [n, H, W])"
        )
    count = original_images.shape[0]
    label_values = None
    if labels is not None:
        label_values = _to_numpy(labels, "labels").reshape(-1)
        if label_values.shape[0] != count:
            raise ValueError(f"labels must have {count} entries (one per image), got {label_values.shape[0]}")

    figure = _new_figure(1.35 * count + 1.0, 3.4)
    axes = figure.subplots(2, count, squeeze=False)
    for column in range(count):
        _show_image(axes[0, column], original_images[column])
        _show_image(axes[1, column], reconstructed_images[column])
        if label_values is not None:
            axes[0, column].set_title(f"label {label_values[column]}", fontsize=9)
    axes[0, 0].set_ylabel("original")
    axes[1, 0].set_ylabel("reconstruction")
    figure.suptitle(title)
    return figure


def image_grid(
    images: ArrayLike,
    nrow: int,
    title: str,
    padding: int = 2,
    pad_value: float = 0.5,
) -> Figure:
    """Tile images into one grid canvas (for prior samples, test digits, ...).

    Args:
        images: [n, H, W], [n, 1, H, W] or flat [n, H*W] (square side inferred), values in [0, 1]
            (grey, white strokes on black).
        nrow: images per row, as in ``torchvision.utils.make_grid``; the grid has ceil(n / nrow) rows.
        title: figure title.
        padding: pixels of ``pad_value`` between and around the tiles (grey by default, so black
            backgrounds of neighbouring digits stay apart).
        pad_value: intensity in [0, 1] of the padding and of empty trailing cells.

    Returns:
        A figure with one image axes.
    """
    tiles = _as_images(images, "images")
    try:
        per_row = operator.index(nrow)
    except TypeError as error:
        raise ValueError(f"nrow must be a positive integer, got {nrow!r}") from error
    if per_row < 1:
        raise ValueError(f"nrow must be a positive integer, got {nrow!r}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if not 0.0 <= pad_value <= 1.0:
        raise ValueError(f"pad_value must lie in [0, 1], got {pad_value}")
    count, height, width = tiles.shape
    columns = min(per_row, count)
    rows = math.ceil(count / per_row)
    canvas = np.full((rows * (height + padding) + padding, columns * (width + padding) + padding), pad_value)
    for index in range(count):
        row, column = divmod(index, per_row)
        top = padding + row * (height + padding)
        left = padding + column * (width + padding)
        canvas[top : top + height, left : left + width] = tiles[index]

    cell = min(0.9, 12.0 / columns, 12.0 / rows)
    figure = _new_figure(columns * cell + 0.6, rows * cell + 0.9)
    ax = figure.add_subplot()
    _show_image(ax, canvas)
    ax.set_title(title)
    return figure


def interpolation(images: ArrayLike, title: str = "Latent interpolation") -> Figure:
    """Decoded images along a latent path, in one row; the first is titled "start", the last "end".

    Args:
        images: [steps, H, W], [steps, 1, H, W] or flat [steps, H*W], values in [0, 1], steps >= 2,
            ordered from the start of the path to its end.
        title: figure title; the number of steps is appended.
    """
    tiles = _as_images(images, "images")
    steps = tiles.shape[0]
    if steps < 2:
        raise ValueError(f"an interpolation needs at least 2 images, got {steps}")
    cell = min(1.1, 18.0 / steps)
    figure = _new_figure(cell * steps + 0.4, cell + 1.0)
    axes = figure.subplots(1, steps, squeeze=False)[0]
    for index, ax in enumerate(axes):
        _show_image(ax, tiles[index])
    axes[0].set_title("start", fontsize=9)
    axes[-1].set_title("end", fontsize=9)
    figure.suptitle(f"{title} ({steps} steps)")
    return figure


# ----------------------------------------------------------------------------------------------------
# 2-D latent grids and latent codes
# ----------------------------------------------------------------------------------------------------
def latent_grid_points(n: int = 8, low: float = -2.0, high: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """An n x n grid of 2-D latent points, in the order :func:`latent_manifold` expects.

    ``grid_values = linspace(low, high, n)`` and ``points[i * n + j] = (grid_values[j], grid_values[i])``,
    i.e. row i fixes z2 and column j fixes z1 (the problem set's ``z = [x_j, y_i]``). Decoding ``points``
    in order and reshaping to [n, n, H, W] gives ``decoded[i, j] = decode(z1=grid_values[j],
    z2=grid_values[i])``.

    Returns:
        ``(grid_values [n], points [n * n, 2])`` as float tensors (the default torch dtype).
    """
    try:
        size = operator.index(n)
    except TypeError as error:
        raise ValueError(f"n must be an integer >= 2, got {n!r}") from error
    if isinstance(n, bool) or size < 2:
        raise ValueError(f"n must be an integer >= 2, got {n!r}")
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
    grid = _as_float(grid_values, "grid_values")
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
    images = _as_float(decoded, "decoded")
    if images.ndim != 4 or images.shape[0] != size or images.shape[1] != size:
        raise ValueError(
            f"decoded must have shape [n, n, H, W] with n = len(grid_values) = {size}, "
            f"got {tuple(images.shape)}; decoded[i, j] decodes (z1, z2) = (grid_values[j], grid_values[i]), "
            "so reshape the decodings of latent_grid_points(n)[1] with .reshape(n, n, H, W)"
        )
    images = _check_unit_range(images, "decoded")
    height, width = images.shape[2], images.shape[3]
    # Canvas row block r holds decoded[n - 1 - r]: the largest z2 is drawn at the top.
    canvas = images[::-1].transpose(0, 2, 1, 3).reshape(size * height, size * width)
    half_step = spacing[0] / 2.0
    extent = (grid[0] - half_step, grid[-1] + half_step, grid[0] - half_step, grid[-1] + half_step)

    figure = _new_figure(7.5, 7.8)
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
    tick_labels = [_format_number(value) for value in grid]
    ax.set_xticks(grid, labels=tick_labels)
    ax.set_yticks(grid, labels=tick_labels)
    ax.set_xlabel("z1")
    ax.set_ylabel("z2")
    ax.set_title(
        f"{title}\n{size}\u00d7{size} grid, z1 and z2 in "
        f"[{_format_number(grid[0])}, {_format_number(grid[-1])}]"
    )
    return figure


def principal_components(codes: ArrayLike, components: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Project centred codes onto their first principal components (exact SVD, deterministic signs).

    With centred codes $C = U S V^\\top$, the projection is $C V_{:, :k}$ and component $m$ explains
    $s_m^2 / \\sum_l s_l^2$ of the total variance. Each component's sign is chosen so that its
    largest-magnitude loading is positive.

    Args:
        codes: [N, d] with N >= 2 and d >= components.
        components: k, the number of components kept.

    Returns:
        ``(projected [N, k], explained_variance_ratio [k])``.
    """
    array = _as_float(codes, "codes")
    if array.ndim != 2 or array.shape[0] < 2:
        raise ValueError(f"codes must have shape [N, d] with N >= 2, got {tuple(array.shape)}")
    if not 1 <= components <= array.shape[1]:
        raise ValueError(f"components must lie in [1, d={array.shape[1]}], got {components}")
    centred = torch.from_numpy(array - array.mean(axis=0, keepdims=True))
    _, singular_values, right_vectors_t = torch.linalg.svd(centred, full_matrices=False)
    total = float((singular_values**2).sum())
    if total <= 0.0:
        raise ValueError("codes have zero variance: every code is the same point")
    directions = right_vectors_t[:components].T  # [d, k]
    largest = directions.abs().argmax(dim=0)
    signs = torch.sign(directions[largest, torch.arange(components)])
    directions = directions * torch.where(signs == 0, torch.ones_like(signs), signs)
    projected = (centred @ directions).numpy()
    ratio = (singular_values[:components] ** 2 / total).numpy()
    return projected, ratio


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
            (:func:`principal_components`) and the axes read "PC1 (xx.x% var)", "PC2 (yy.y% var)".
        labels: [N] integer labels (digits 0-9) shown with a discrete legend (a colour bar when there are
            more than 10 classes), or None for a single colour.
        title: axes title; the number of codes (and the PCA summary) is appended.
        point_size: marker area.
    """
    array = _as_float(codes, "codes")
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

    figure = _new_figure(7.5, 6.5)
    ax = figure.add_subplot()
    order = np.random.default_rng(0).permutation(count)  # no class is drawn entirely on top
    if labels is None:
        ax.scatter(xy[order, 0], xy[order, 1], s=point_size, alpha=0.6, color="tab:blue", rasterized=True)
    else:
        label_values = _to_numpy(labels, "labels").reshape(-1)
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


# ----------------------------------------------------------------------------------------------------
# Training curves and estimator convergence
# ----------------------------------------------------------------------------------------------------
def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def loss_curves(history: Sequence[Mapping[str, Any]], title: str = "Training curves") -> Figure:
    """One panel per loss term, train and test against epoch, from the lines of ``metrics.jsonl``.

    Args:
        history: records such as ``{"epoch": 1, "train": {"loss": 0.05, "recon_nll": 0.04, "kl": 3.2},
            "test": {...}, "units": {"loss": "MSE + c*KL", "kl": "nats"}}``. "test" and "units" are
            optional; non-numeric entries are ignored. Every numeric term of "train" or "test" gets a
            panel whose y label carries its unit. If an epoch appears twice (a resumed run), its last
            record wins. A panel uses a log y axis when its values are positive and span more than two
            decades.
        title: figure title.

    Returns:
        A figure with one axes per term; each panel's title gives the final train (and test) value.
    """
    if isinstance(history, (str, bytes)) or not isinstance(history, Sequence) or len(history) == 0:
        raise ValueError("history must be a non-empty list of dicts (the parsed lines of metrics.jsonl)")
    by_epoch: dict[float, Mapping[str, Any]] = {}
    units: dict[str, str] = {}
    terms: dict[str, None] = {}  # ordered set
    for index, record in enumerate(history):
        if not isinstance(record, Mapping):
            raise ValueError(f"history[{index}] must be a dict, got {type(record).__name__}")
        if not _is_number(record.get("epoch")):
            raise ValueError(f"history[{index}] needs a numeric 'epoch', got keys {sorted(record)}")
        if not isinstance(record.get("train"), Mapping):
            raise ValueError(f"history[{index}] needs a 'train' dict of named loss terms")
        for split in ("train", "test"):
            values = record.get(split) or {}
            if not isinstance(values, Mapping):
                raise ValueError(f"history[{index}][{split!r}] must be a dict, got {type(values).__name__}")
            for key, value in values.items():
                if _is_number(value):
                    terms.setdefault(str(key))
        record_units = record.get("units") or {}
        if isinstance(record_units, Mapping):
            units.update({str(key): str(value) for key, value in record_units.items()})
        by_epoch[float(record["epoch"])] = record
    if not terms:
        raise ValueError("history has no numeric loss terms under 'train' or 'test'")

    epochs = sorted(by_epoch)
    names = list(terms)
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    figure = _new_figure(4.6 * columns, 3.6 * rows + 0.5)
    axes = figure.subplots(rows, columns, squeeze=False).reshape(-1)
    for ax in axes[len(names) :]:
        ax.remove()
    for ax, name in zip(axes, names, strict=False):
        finals = []
        every_value = []
        for split, colour, marker in (("train", "C0", "o"), ("test", "C1", "s")):
            points = [
                (epoch, float(by_epoch[epoch][split][name]))
                for epoch in epochs
                if isinstance(by_epoch[epoch].get(split), Mapping)
                and _is_number(by_epoch[epoch][split].get(name))
                and math.isfinite(float(by_epoch[epoch][split][name]))
            ]
            if not points:
                continue
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, color=colour, marker=marker, markersize=3, label=split)
            finals.append(f"{split} {ys[-1]:.4g}")
            every_value.extend(ys)
        values = np.asarray(every_value)
        if values.size and np.all(values > 0) and values.max() / values.min() > 100.0:
            ax.set_yscale("log")
        unit = units.get(name)
        ax.set_ylabel(f"{name} ({unit})" if unit else name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(f"{name}: final {', '.join(finals)}", fontsize=10)
    figure.suptitle(title)
    return figure


def fit_power_law(x: ArrayLike, y: ArrayLike) -> tuple[float, float]:
    """Least-squares fit of $\\log y = \\text{slope} \\cdot \\log x + \\text{intercept}$ (natural logs).

    Args:
        x, y: [m] positive values, m >= 2, x not all equal.

    Returns:
        ``(slope, intercept)``.
    """
    x_values = _as_float(x, "x").reshape(-1)
    y_values = _as_float(y, "y").reshape(-1)
    if x_values.shape != y_values.shape or x_values.shape[0] < 2:
        raise ValueError(
            f"x and y must have the same length >= 2, got {x_values.shape[0]} and {y_values.shape[0]}"
        )
    if np.any(x_values <= 0) or np.any(y_values <= 0):
        raise ValueError("a power law is fitted on log-log axes: x and y must be positive")
    log_x, log_y = np.log(x_values), np.log(y_values)
    if np.ptp(log_x) == 0:
        raise ValueError("x values are all equal: the slope is undefined")
    slope, intercept = np.polyfit(log_x, log_y, 1)
    return float(slope), float(intercept)


def kl_estimator_convergence(
    n_samples: ArrayLike,
    mc_estimates: ArrayLike,
    analytic: float,
    abs_errors: ArrayLike | None = None,
    title: str = "Monte-Carlo KL estimate vs analytic KL",
) -> Figure:
    """Convergence of the Monte-Carlo KL estimate to the analytic KL (problem 3(b), done right).

    Left: the estimate against the number of samples n (log x), with the analytic value as a horizontal
    line. Right: the error against n on log-log axes, with the least-squares fitted slope
    (:func:`fit_power_law`) and a reference line of slope -1/2 whose intercept is fitted; theory predicts
    RMSE = sigma * n^(-1/2).

    Args:
        n_samples: [m] positive sample counts, m >= 2.
        mc_estimates: [m] one estimate per n, or [m, trials] independent repeats per n; with repeats the
            left panel shows the mean (band: +-1 standard deviation across trials) and the right panel the
            root-mean-square error over trials, which follows n^(-1/2) far more cleanly than one |error|.
        analytic: the analytic KL in nats per image (the same batch and weights as the estimates).
        abs_errors: optional [m] errors to plot and fit instead of those computed from ``mc_estimates``
            (e.g. computed in higher precision by the caller).
        title: figure title; the analytic value and the fitted slope are appended.

    Returns:
        A two-panel figure. Zero errors cannot be drawn on log axes and are left out of the fit.
    """
    counts = _as_float(n_samples, "n_samples")
    if counts.ndim != 1 or counts.shape[0] < 2:
        raise ValueError(f"n_samples must have shape [m] with m >= 2, got {tuple(counts.shape)}")
    if np.any(counts <= 0):
        raise ValueError("n_samples must be positive (they are drawn on a log axis)")
    estimates = _as_float(mc_estimates, "mc_estimates")
    if estimates.ndim not in (1, 2) or estimates.shape[0] != counts.shape[0]:
        raise ValueError(
            f"mc_estimates must have shape [m] or [m, trials] with m = len(n_samples) = {counts.shape[0]}, "
            f"got {tuple(estimates.shape)}"
        )
    try:
        analytic = float(analytic)  # a float, numpy scalar or one-element tensor
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"analytic must be a finite number, got {analytic!r}") from error
    if not math.isfinite(analytic):
        raise ValueError(f"analytic must be a finite number, got {analytic!r}")
    if estimates.ndim == 2 and estimates.shape[1] < 1:
        raise ValueError("mc_estimates has no trials (shape [m, 0])")
    if estimates.ndim == 1:
        centre, spread = estimates, None
        centre_label = "Monte-Carlo estimate"
        errors = np.abs(estimates - analytic)
        error_label = "|MC - analytic|"
    else:
        trials = estimates.shape[1]
        centre, spread = estimates.mean(axis=1), estimates.std(axis=1)
        centre_label = f"Monte-Carlo mean of {trials} trials"
        errors = np.sqrt(np.mean((estimates - analytic) ** 2, axis=1))
        error_label = f"RMS error over {trials} trials"
    if abs_errors is not None:
        errors = _as_float(abs_errors, "abs_errors")
        if errors.shape != counts.shape:
            raise ValueError(
                f"abs_errors must have shape [m] = {tuple(counts.shape)}, got {tuple(errors.shape)}"
            )
        if np.any(errors < 0):
            raise ValueError("abs_errors must be non-negative")
        error_label = "|MC - analytic| (given)"
    positive = errors > 0
    if positive.sum() < 2 or np.ptp(counts[positive]) == 0:
        raise ValueError("need non-zero errors at two or more distinct n to fit the convergence slope")
    slope, intercept = fit_power_law(counts[positive], errors[positive])
    # reference line of slope -1/2 with the least-squares intercept: mean of log(err) + log(n) / 2
    reference_intercept = float(np.mean(np.log(errors[positive]) + 0.5 * np.log(counts[positive])))

    figure = _new_figure(12.0, 5.0)
    left, right = figure.subplots(1, 2)
    left.plot(counts, centre, marker="o", markersize=3, color="C0", label=centre_label)
    if spread is not None:
        left.fill_between(
            counts,
            centre - spread,
            centre + spread,
            color="C0",
            alpha=0.2,
            label="\u00b11 s.d. across trials",
        )
    left.axhline(analytic, color="black", linestyle="--", label=f"analytic KL = {analytic:.4g}")
    left.set_xscale("log")
    left.set_xlabel("number of Monte-Carlo samples n")
    left.set_ylabel("KL (nats per image)")
    left.set_title("estimate vs number of samples")
    left.grid(True, which="both", alpha=0.3)
    left.legend()

    line_x = np.geomspace(counts[positive].min(), counts[positive].max(), 100)
    right.loglog(
        counts[positive],
        errors[positive],
        linestyle="",
        marker="o",
        markersize=4,
        color="C0",
        label=error_label,
    )
    right.loglog(line_x, np.exp(intercept) * line_x**slope, color="C3", label=f"fitted slope {slope:.3f}")
    right.loglog(
        line_x,
        np.exp(reference_intercept) * line_x**-0.5,
        color="black",
        linestyle="--",
        label="reference slope -1/2",
    )
    right.set_xlabel("number of Monte-Carlo samples n")
    right.set_ylabel("|MC - analytic| KL (nats per image)")
    right.set_title(f"error vs n: fitted slope {slope:.3f} (theory -0.5)")
    right.grid(True, which="both", alpha=0.3)
    right.legend()
    figure.suptitle(f"{title}\nanalytic KL = {analytic:.4g} nats per image, fitted error slope {slope:.3f}")
    return figure


# ----------------------------------------------------------------------------------------------------
# Point clouds (torus)
# ----------------------------------------------------------------------------------------------------
def equal_axis_limits(*point_sets: ArrayLike) -> np.ndarray:
    """Equal-range 3-D axis limits covering every given [N, 3] point set.

    As in the problem set's ``plot_torus_point_cloud``: each axis is centred on its own (min + max) / 2 and
    every axis gets the largest half-range of the three (0.5 if all points coincide).

    Returns:
        [3, 2] array of (low, high) for x, y and z.
    """
    if not point_sets:
        raise ValueError("equal_axis_limits needs at least one point set")
    points = np.concatenate(
        [_as_points(points, f"point set {index}") for index, points in enumerate(point_sets)]
    )
    low, high = points.min(axis=0), points.max(axis=0)
    centre = (low + high) / 2.0
    half_range = float(np.max(high - low)) / 2.0
    if half_range == 0.0:
        half_range = 0.5
    return np.stack([centre - half_range, centre + half_range], axis=1)


def _setup_3d_axes(ax: Any, limits: np.ndarray) -> None:
    ax.set_xlim(*limits[0])
    ax.set_ylim(*limits[1])
    ax.set_zlim(*limits[2])
    # box sides proportional to the ranges: (1, 1, 1) for equal limits, so one unit is as long on every axis
    ax.set_box_aspect(tuple(limits[:, 1] - limits[:, 0]))
    ax.set_xlabel("X")
    ax.set_ylabel("Y")
    ax.set_zlabel("Z")


def point_cloud_3d(
    points: ArrayLike,
    title: str,
    color: str | ArrayLike | None = None,
    ax_limits: ArrayLike | None = None,
    size: float = 2,
    color_label: str = "value",
) -> Figure:
    """A 3-D scatter of a point cloud with equal scales on X, Y and Z.

    Args:
        points: [N, 3].
        title: axes title; the number of points is appended.
        color: None (blue), a matplotlib colour name, or [N] values drawn with a colour bar.
        ax_limits: optional [3, 2] (low, high) per axis, e.g. :func:`equal_axis_limits` of several clouds
            so that figures share limits; default :func:`equal_axis_limits` of ``points``. The box sides
            are proportional to the ranges, so scales stay equal even for unequal limits.
        size: marker area.
        color_label: colour bar label when ``color`` holds values.
    """
    cloud = _as_points(points, "points")
    limits = equal_axis_limits(cloud) if ax_limits is None else _as_limits(ax_limits)
    figure = _new_figure(7.0, 6.5)
    ax = figure.add_subplot(projection="3d")
    if color is None or isinstance(color, str):
        ax.scatter(cloud[:, 0], cloud[:, 1], cloud[:, 2], s=size, color=color or "tab:blue")
    else:
        values = _as_float(color, "color").reshape(-1)
        if values.shape[0] != cloud.shape[0]:
            raise ValueError(
                f"color must be a colour name or {cloud.shape[0]} values (one per point), "
                f"got {values.shape[0]}"
            )
        scatter = ax.scatter(cloud[:, 0], cloud[:, 1], cloud[:, 2], s=size, c=values, cmap="viridis")
        figure.colorbar(scatter, ax=ax, label=color_label, shrink=0.7)
    _setup_3d_axes(ax, limits)
    ax.set_title(f"{title}\n{cloud.shape[0]} points")
    return figure


def point_cloud_overlay(
    background_points: ArrayLike,
    path_points: ArrayLike,
    title: str,
    ax_limits: ArrayLike | None = None,
    background_label: str = "point cloud",
    path_label: str = "path",
) -> Figure:
    """A path (ordered points) drawn in red over a faint blue point cloud, with its start and end marked.

    Args:
        background_points: [N, 3], e.g. the decoded torus.
        path_points: [K, 3] ordered points, K >= 2, e.g. decoded latent interpolations.
        title: axes title.
        ax_limits: optional [3, 2] limits; default :func:`equal_axis_limits` of both sets.
        background_label, path_label: legend entries.
    """
    cloud = _as_points(background_points, "background_points")
    path = _as_points(path_points, "path_points", minimum=2)
    limits = equal_axis_limits(cloud, path) if ax_limits is None else _as_limits(ax_limits)
    figure = _new_figure(7.5, 6.5)
    ax = figure.add_subplot(projection="3d")
    ax.scatter(
        cloud[:, 0],
        cloud[:, 1],
        cloud[:, 2],
        s=3,
        color="tab:blue",
        alpha=0.25,
        label=f"{background_label} ({cloud.shape[0]} points)",
    )
    ax.plot(
        path[:, 0],
        path[:, 1],
        path[:, 2],
        color="red",
        linewidth=1.5,
        marker="o",
        markersize=2.5,
        label=f"{path_label} ({path.shape[0]} points)",
    )
    ax.scatter(
        *path[0], s=70, marker="^", color="limegreen", edgecolors="black", depthshade=False, label="start"
    )
    ax.scatter(*path[-1], s=60, marker="s", color="black", depthshade=False, label="end")
    _setup_3d_axes(ax, limits)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title)
    return figure


def _first_harmonic_r2(values: np.ndarray, angles: np.ndarray) -> float:
    """R^2 of the least-squares fit values ~ a + b cos(angle) + c sin(angle); NaN for constant values."""
    design = np.stack([np.ones_like(angles), np.cos(angles), np.sin(angles)], axis=1)
    coefficients, *_ = np.linalg.lstsq(design, values, rcond=None)
    total = float(np.sum((values - values.mean()) ** 2))
    if total == 0.0:
        return float("nan")
    return 1.0 - float(np.sum((values - design @ coefficients) ** 2)) / total


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
    codes = _as_float(latents, "latents")
    if codes.ndim != 2 or codes.shape[1] < 1 or codes.shape[0] < 2:
        raise ValueError(f"latents must have shape [N, d] with N >= 2, d >= 1, got {tuple(codes.shape)}")
    angle_values = _as_float(angles, "angles")
    if angle_values.shape != (codes.shape[0], 2):
        raise ValueError(
            f"angles must have shape [N, 2] = [{codes.shape[0]}, 2] (u, v per point), "
            f"got {tuple(angle_values.shape)}"
        )
    if len(angle_names) != 2:
        raise ValueError(f"angle_names must name the 2 angles, got {angle_names!r}")
    wrapped = np.mod(angle_values, _TWO_PI)
    dimension = codes.shape[1]
    figure = _new_figure(10.0, 2.4 * dimension + 1.0)
    axes = figure.subplots(dimension, 2, squeeze=False)
    tick_positions, tick_labels = [0.0, math.pi, _TWO_PI], ["0", "\u03c0", "2\u03c0"]
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
                vmax=_TWO_PI,
                s=3,
                alpha=0.7,
                rasterized=True,
            )
            ax.set_xlim(0.0, _TWO_PI)
            ax.set_xticks(tick_positions, labels=tick_labels)
            ax.set_xlabel(f"{name} (rad)")
            ax.set_ylabel(f"z{row + 1}")
            ax.grid(True, alpha=0.3)
            r2 = _first_harmonic_r2(codes[:, row], wrapped[:, column])
            ax.set_title(f"z{row + 1} vs {name}: R\u00b2 = {r2:.2f}", fontsize=10)
        colorbar = figure.colorbar(
            scatter, ax=axes[:, column], label=f"{angle_names[other]} (rad)", shrink=0.8
        )
        colorbar.set_ticks(tick_positions, labels=tick_labels)
    figure.suptitle(f"{title}\nR\u00b2: variance of each coordinate explained by cos and sin of one angle")
    return figure


# ----------------------------------------------------------------------------------------------------
# Autoregressive image models (PixelCNN): receptive fields, per-pixel NLL, completions
# ----------------------------------------------------------------------------------------------------
__all__ += ["completions", "pixel_nll_heatmap", "receptive_field_map"]

# cell categories of receptive_field_map and their colours
_FIELD_CATEGORIES = (
    ("read (earlier pixel)", "#3182bd"),
    ("earlier, not read (blind spot or beyond reach)", "#e6550d"),
    ("target or later (never read)", "#d9d9d9"),
    ("target or later, READ: not autoregressive", "#000000"),
)


def _as_map(values: ArrayLike, name: str) -> np.ndarray:
    """A finite float [H, W] map; leading singleton dimensions ([1, H, W], [1, 1, H, W]) are dropped."""
    array = _as_float(values, name)
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(
            f"{name} must be one map of shape [H, W], got {tuple(_to_numpy(values, name).shape)}; "
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
        or not all(isinstance(index, (int, np.integer)) and not isinstance(index, bool) for index in position)
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
    figure = _new_figure(3.6 * count + 0.4, 3.3 * aspect + 2.3)  # images, two-line titles, legend
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
    if float(nll.min()) < -_RANGE_TOLERANCE:
        raise ValueError(
            f"nll_per_pixel must be non-negative (a negative log-likelihood of binary pixels), got a minimum of "
            f"{float(nll.min()):.4g}: pass -log p, not log p"
        )
    height, width = nll.shape
    total = float(nll.sum())
    bits_per_dim = total / (height * width * math.log(2.0))
    figure = _new_figure(5.2, 4.6)
    ax = figure.add_subplot()
    image = ax.imshow(nll, cmap="viridis", vmin=0.0, interpolation="nearest")
    figure.colorbar(image, ax=ax, label="nats")
    _integer_pixel_axes(ax, height, width)
    ax.set_title(f"{title}\ntotal {total:.2f} nats per image ({bits_per_dim:.3f} bits/dim), max {nll.max():.2f}")
    return figure


def completions(
    originals: ArrayLike,
    completed: ArrayLike,
    known_rows: int,
    title: str = "Image completion",
) -> Figure:
    """Originals, the given part, and completions sampled below it, one column per image.

    Rows of the figure: "original"; "given": the first ``known_rows`` rows, the rest grey (0.5); then one row
    per completion. A red dashed line in every panel marks where the known part ends.

    Args:
        originals: ``[n, H, W]``, ``[n, 1, H, W]`` or flat ``[n, H*W]``, values in [0, 1].
        completed: one completion per image, ``[n, H, W]`` or ``[n, 1, H, W]``, or ``s`` per image,
            ``[s, n, H, W]`` or ``[s, n, 1, H, W]``; values in [0, 1]; rows ``< known_rows`` must equal the
            originals' (as :meth:`dgmlab.models.pixelcnn.PixelCNN.complete` keeps them).
        known_rows: number of given rows, ``0..H``.
        title: figure title; the number of given rows is appended.
    """
    original_images = _as_images(originals, "originals")
    count, height, width = original_images.shape
    array = _as_float(completed, "completed")
    shape = tuple(array.shape)
    if array.ndim == 5 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 4 and array.shape[1] == 1 and array.shape[0] == count:
        array = array[:, 0][None]  # [n, 1, H, W]: one completion per image
    elif array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[1:] != (count, height, width):
        raise ValueError(
            f"completed must have shape [n, H, W], [n, 1, H, W], [s, n, H, W] or [s, n, 1, H, W] with "
            f"n, H, W = {count}, {height}, {width} (the originals'), got {shape}"
        )
    samples = _check_unit_range(array, "completed")
    if not (isinstance(known_rows, (int, np.integer)) and not isinstance(known_rows, bool)) or not (
        0 <= known_rows <= height
    ):
        raise ValueError(f"known_rows must be an integer in 0..{height} (the image height), got {known_rows!r}")
    known = int(known_rows)
    if known and not np.allclose(samples[:, :, :known], original_images[None, :, :known], atol=1e-6):
        raise ValueError(
            f"completed differs from originals in the first {known} (given) rows: pass the originals the "
            "completions were made from, in the same order"
        )
    given = original_images.copy()
    given[:, known:] = 0.5
    rows = [("original", original_images), (f"given ({known} rows)", given)]
    rows += [(f"completion {index + 1}", samples[index]) for index in range(samples.shape[0])]

    cell = min(1.2, 14.0 / count)
    figure = _new_figure(cell * count + 1.2, cell * len(rows) + 1.0)
    axes = figure.subplots(len(rows), count, squeeze=False)
    for row_index, (label, images) in enumerate(rows):
        for column in range(count):
            ax = axes[row_index, column]
            _show_image(ax, images[column])
            ax.axhline(known - 0.5, color="red", linestyle="--", linewidth=1.0)
        axes[row_index, 0].set_ylabel(label, fontsize=9)
    figure.suptitle(
        f"{title}\nfirst {known} of {height} rows given (above the red dashed line), "
        f"{samples.shape[0]} completion{'s' if samples.shape[0] != 1 else ''} per image"
    )
    return figure


# ----------------------------------------------------------------------------------------------------
# Saving
# ----------------------------------------------------------------------------------------------------
def save_figure(fig: Figure, path: str | os.PathLike[str], dpi: int = 110) -> Path:
    """Save a figure as PNG atomically (temporary file in the same folder, then ``os.replace``).

    Parent folders are created. A reader never sees a half-written file, and a failed save leaves no
    temporary file behind.

    Returns:
        The path written.
    """
    if not isinstance(fig, Figure):
        raise TypeError(f"fig must be a matplotlib Figure, got {type(fig).__name__}")
    target = Path(path)
    if target.suffix.lower() != ".png":
        raise ValueError(f"save_figure writes PNG files: the path must end in .png, got {str(target)!r}")
    if dpi <= 0:
        raise ValueError(f"dpi must be positive, got {dpi}")
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            fig.savefig(handle, format="png", dpi=dpi, bbox_inches="tight", pad_inches=0.1)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary_name, 0o644)  # mkstemp creates 0600 files
        os.replace(temporary_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary_name)
        raise
    return target
