"""Figures of point clouds: 3-D (the torus of problem set 1: scatters and paths) and 2-D (samples of a density on
the plane), with equal axis scales."""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from dgmlab.numerics import ArrayLike, as_float_array
from dgmlab.plots._common import new_figure

__all__ = ["equal_axis_limits", "point_cloud_2d", "point_cloud_3d", "point_cloud_overlay"]


def _as_points(values: ArrayLike, name: str, minimum: int = 1) -> np.ndarray:
    """Points as a finite float array [N, 3] with N >= minimum."""
    array = as_float_array(values, name)
    if array.ndim != 2 or array.shape[1] != 3:
        raise ValueError(f"{name} must have shape [N, 3] (x, y, z per point), got {tuple(array.shape)}")
    if array.shape[0] < minimum:
        raise ValueError(f"{name} needs at least {minimum} point(s), got {array.shape[0]}")
    return array


def _as_limits(ax_limits: ArrayLike, name: str = "ax_limits") -> np.ndarray:
    limits = as_float_array(ax_limits, name)
    if limits.shape != (3, 2):
        raise ValueError(
            f"{name} must have shape [3, 2] ((low, high) for x, y and z), got {tuple(limits.shape)}"
        )
    if not np.all(limits[:, 1] > limits[:, 0]):
        raise ValueError(f"{name} must have low < high on every axis, got {limits.tolist()}")
    return limits



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
    figure = new_figure(7.0, 6.5)
    ax = figure.add_subplot(projection="3d")
    if color is None or isinstance(color, str):
        ax.scatter(cloud[:, 0], cloud[:, 1], cloud[:, 2], s=size, color=color or "tab:blue")
    else:
        values = as_float_array(color, "color").reshape(-1)
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
    figure = new_figure(7.5, 6.5)
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


def point_cloud_2d(points: ArrayLike, title: str, size: float = 2, alpha: float = 0.5) -> Figure:
    """A scatter of 2-D points (samples of a density on the plane) with equal scales on both axes.

    Args:
        points: [N, 2].
        title: axes title; the number of points is appended.
        size: marker area.
        alpha: marker opacity (dense regions darken).
    """
    cloud = as_float_array(points, "points")
    if cloud.ndim != 2 or cloud.shape[1] != 2 or cloud.shape[0] < 1:
        raise ValueError(f"points must have shape [N, 2] with N >= 1 (x1, x2 per point), got {tuple(cloud.shape)}")
    figure = new_figure(6.0, 6.0)
    ax = figure.subplots()
    ax.scatter(cloud[:, 0], cloud[:, 1], s=size, alpha=alpha, color="tab:blue", linewidths=0)
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    ax.grid(True, alpha=0.3)
    ax.set_title(f"{title}\n{cloud.shape[0]} points")
    return figure

