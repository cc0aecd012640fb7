"""Saving figures: PNG files written atomically."""

from __future__ import annotations

import io
import os
from pathlib import Path

from matplotlib.figure import Figure

from dgmlab.checkpoint import atomic_write_bytes

__all__ = ["save_figure"]


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
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=dpi, bbox_inches="tight", pad_inches=0.1)
    atomic_write_bytes(target, png.getvalue())
    return target
