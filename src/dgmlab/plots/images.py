"""Figures of images: reconstructions, grids of samples, interpolations, and completions.

Images are intensities in [0, 1] (``[n, H, W]``, ``[n, 1, H, W]`` or flat square ``[n, H*W]``), drawn with
the fixed grey scale of :mod:`dgmlab.plots` (0 black, 1 white).
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure

from dgmlab.numerics import ArrayLike, as_float_array, as_numpy
from dgmlab.plots._common import as_images, check_unit_range, new_figure, show_image
from dgmlab.utils import check_int, is_int

__all__ = ["completions", "image_grid", "interpolation", "reconstructions"]


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
    original_images = as_images(originals, "originals")
    reconstructed_images = as_images(reconstructions, "reconstructions")
    if original_images.shape != reconstructed_images.shape:
        raise ValueError(
            "originals and reconstructions must have the same shape, got "
            f"{tuple(original_images.shape)} and {tuple(reconstructed_images.shape)} (as [n, H, W])"
        )
    count = original_images.shape[0]
    label_values = None
    if labels is not None:
        label_values = as_numpy(labels, "labels").reshape(-1)
        if label_values.shape[0] != count:
            raise ValueError(f"labels must have {count} entries (one per image), got {label_values.shape[0]}")

    figure = new_figure(1.35 * count + 1.0, 3.4)
    axes = figure.subplots(2, count, squeeze=False)
    for column in range(count):
        show_image(axes[0, column], original_images[column])
        show_image(axes[1, column], reconstructed_images[column])
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
    tiles = as_images(images, "images")
    per_row = check_int(nrow, "nrow", minimum=1)
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
    figure = new_figure(columns * cell + 0.6, rows * cell + 0.9)
    ax = figure.add_subplot()
    show_image(ax, canvas)
    ax.set_title(title)
    return figure


def interpolation(images: ArrayLike, title: str = "Latent interpolation") -> Figure:
    """Decoded images along a latent path, in one row; the first is titled "start", the last "end".

    Args:
        images: [steps, H, W], [steps, 1, H, W] or flat [steps, H*W], values in [0, 1], steps >= 2,
            ordered from the start of the path to its end.
        title: figure title; the number of steps is appended.
    """
    tiles = as_images(images, "images")
    steps = tiles.shape[0]
    if steps < 2:
        raise ValueError(f"an interpolation needs at least 2 images, got {steps}")
    cell = min(1.1, 18.0 / steps)
    figure = new_figure(cell * steps + 0.4, cell + 1.0)
    axes = figure.subplots(1, steps, squeeze=False)[0]
    for index, ax in enumerate(axes):
        show_image(ax, tiles[index])
    axes[0].set_title("start", fontsize=9)
    axes[-1].set_title("end", fontsize=9)
    figure.suptitle(f"{title} ({steps} steps)")
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
    original_images = as_images(originals, "originals")
    count, height, width = original_images.shape
    array = as_float_array(completed, "completed")
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
    samples = check_unit_range(array, "completed")
    if not is_int(known_rows) or not (
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
    figure = new_figure(cell * count + 1.2, cell * len(rows) + 1.0)
    axes = figure.subplots(len(rows), count, squeeze=False)
    for row_index, (label, images) in enumerate(rows):
        for column in range(count):
            ax = axes[row_index, column]
            show_image(ax, images[column])
            ax.axhline(known - 0.5, color="red", linestyle="--", linewidth=1.0)
        axes[row_index, 0].set_ylabel(label, fontsize=9)
    figure.suptitle(
        f"{title}\nfirst {known} of {height} rows given (above the red dashed line), "
        f"{samples.shape[0]} completion{'s' if samples.shape[0] != 1 else ''} per image"
    )
    return figure
