"""What every figure module shares: image checks, a pyplot-free figure, the image style.

Private to :mod:`dgmlab.plots`; array conversion itself lives in :mod:`dgmlab.numerics`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dgmlab.numerics import ArrayLike, as_float_array

IMAGE_COLORMAP = "Greys_r"  # the problem set's colour map: 0 black, 1 white
RANGE_TOLERANCE = 1e-4  # float slack allowed outside [0, 1] before an image is rejected
TWO_PI = 2.0 * math.pi


def check_unit_range(array: np.ndarray, name: str) -> np.ndarray:
    """Reject intensities outside [0, 1] (beyond float slack); return them clipped to [0, 1]."""
    low, high = float(array.min()), float(array.max())
    if low < -RANGE_TOLERANCE or high > 1.0 + RANGE_TOLERANCE:
        raise ValueError(
            f"{name} must hold intensities in [0, 1], got values in [{low:.4g}, {high:.4g}]: "
            "decoders that return logits need torch.sigmoid first, unbounded means need .clamp(0, 1)"
        )
    return np.clip(array, 0.0, 1.0)


def as_images(values: ArrayLike, name: str) -> np.ndarray:
    """Images as [n, H, W] in [0, 1], from [n, H, W], [n, 1, H, W] or flat square [n, H*W]."""
    array = as_float_array(values, name)
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
    return check_unit_range(array, name)


def new_figure(width: float, height: float, constrained: bool = True) -> Figure:
    """A Figure with its own Agg canvas: never registered with pyplot."""
    figure = Figure(figsize=(width, height), layout="constrained" if constrained else None)
    FigureCanvasAgg(figure)
    return figure


def show_image(ax: Any, image: np.ndarray) -> None:
    """Draw intensities in [0, 1] with the fixed grey scale, without ticks."""
    ax.imshow(image, cmap=IMAGE_COLORMAP, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def format_number(value: float) -> str:
    """Three significant digits, for tick labels and titles."""
    return f"{value:.3g}"
