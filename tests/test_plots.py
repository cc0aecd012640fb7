"""Tests of dgmlab.plots: titles, labels, orientation, PCA, convergence slopes, saving, and bad inputs."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import textwrap

import matplotlib
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.figure import Figure
from matplotlib.image import AxesImage

from dgmlab import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def all_titles(figure: Figure) -> str:
    """The suptitle and every axes title, one per line."""
    return "\n".join([figure.get_suptitle()] + [ax.get_title() for ax in figure.axes])


def tick_texts(labels) -> list[str]:
    return [label.get_text().replace("\u2212", "-") for label in labels]


def torus_points(count: int = 500, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    u, v = rng.uniform(0, 2 * np.pi, count), rng.uniform(0, 2 * np.pi, count)
    xyz = np.stack([(1 + 0.5 * np.cos(v)) * np.cos(u), (1 + 0.5 * np.cos(v)) * np.sin(u), 0.5 * np.sin(v)], 1)
    return xyz, np.stack([u, v], 1)


# ----------------------------------------------------------------------------------------------------
# reconstructions, image_grid, interpolation
# ----------------------------------------------------------------------------------------------------
def test_reconstructions_rows_labels_and_title():
    originals = torch.rand(5, 784)
    figure = plots.reconstructions(originals, originals * 0.5, labels=torch.tensor([5, 0, 4, 1, 9]))
    assert isinstance(figure, Figure)
    assert len(figure.axes) == 10
    assert figure.get_suptitle() == "Reconstructions (posterior mean)"
    assert figure.axes[0].get_ylabel() == "original"
    assert figure.axes[5].get_ylabel() == "reconstruction"
    assert [ax.get_title() for ax in figure.axes[:5]] == [
        "label 5",
        "label 0",
        "label 4",
        "label 1",
        "label 9",
    ]
    shown = figure.axes[5].get_images()[0].get_array()
    assert shown.shape == (28, 28)
    np.testing.assert_allclose(shown, originals[0].reshape(28, 28).numpy() * 0.5, atol=1e-6)


def test_reconstructions_accepts_channel_dimension_and_grad_tensors():
    images = torch.rand(3, 1, 28, 28, requires_grad=True)
    figure = plots.reconstructions(images, images.detach(), title="Reconstructions (sampled z)")
    assert figure.get_suptitle() == "Reconstructions (sampled z)"
    assert all(ax.get_title() == "" for ax in figure.axes)  # no labels, no subtitles


def test_reconstructions_bad_inputs():
    with pytest.raises(ValueError, match="same shape"):
        plots.reconstructions(torch.rand(5, 784), torch.rand(4, 784))
    with pytest.raises(ValueError, match="not a square number"):
        plots.reconstructions(torch.rand(2, 780), torch.rand(2, 780))
    with pytest.raises(ValueError, match="sigmoid"):
        plots.reconstructions(torch.rand(2, 784), torch.randn(2, 784) * 5)  # logits, not probabilities
    with pytest.raises(ValueError, match="labels must have 2 entries"):
        plots.reconstructions(torch.rand(2, 784), torch.rand(2, 784), labels=[1, 2, 3])
    with pytest.raises(ValueError, match="NaN"):
        plots.reconstructions(torch.full((1, 4), float("nan")), torch.rand(1, 4))


def test_image_grid_places_tiles_row_major():
    count, side, per_row, padding = 10, 6, 4, 2
    images = torch.arange(count, dtype=torch.float32).div(count).view(count, 1, 1).expand(count, side, side)
    figure = plots.image_grid(images, per_row, "Prior samples", padding=padding)
    ax = figure.axes[0]
    assert ax.get_title() == "Prior samples"
    canvas = ax.get_images()[0].get_array()
    rows = math.ceil(count / per_row)
    assert canvas.shape == (rows * (side + padding) + padding, per_row * (side + padding) + padding)
    for index in range(count):
        row, column = divmod(index, per_row)
        top, left = padding + row * (side + padding), padding + column * (side + padding)
        np.testing.assert_allclose(canvas[top : top + side, left : left + side], index / count)
    assert ax.get_images()[0].get_cmap().name == "Greys_r"


def test_image_grid_flat_input_and_bad_inputs():
    assert isinstance(plots.image_grid(np.random.rand(9, 784), 3, "samples"), Figure)
    with pytest.raises(ValueError, match="nrow must be a positive integer"):
        plots.image_grid(np.random.rand(9, 784), 0, "samples")
    with pytest.raises(ValueError, match=r"\[n, H, W\]"):
        plots.image_grid(np.random.rand(2, 3, 28, 28), 2, "samples")


def test_interpolation_labels_first_and_last():
    figure = plots.interpolation(torch.rand(7, 28, 28), title="Interpolation 5 to 0")
    assert len(figure.axes) == 7
    assert figure.axes[0].get_title() == "start"
    assert figure.axes[-1].get_title() == "end"
    assert all(ax.get_title() == "" for ax in figure.axes[1:-1])
    assert figure.get_suptitle() == "Interpolation 5 to 0 (7 steps)"
    with pytest.raises(ValueError, match="at least 2 images"):
        plots.interpolation(torch.rand(1, 28, 28))


# ----------------------------------------------------------------------------------------------------
# 2-D latent grid
# ----------------------------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(size=st.integers(2, 12), low=st.floats(-5, 0), width=st.floats(0.5, 5))
def test_latent_grid_points_order(size, low, width):
    grid_values, points = plots.latent_grid_points(size, low, low + width)
    assert grid_values.shape == (size,) and points.shape == (size * size, 2)
    torch.testing.assert_close(grid_values, torch.linspace(low, low + width, size))
    grid_points = points.reshape(size, size, 2)
    for i in range(size):
        for j in range(size):
            assert grid_points[i, j, 0] == grid_values[j]  # z1 varies along columns
            assert grid_points[i, j, 1] == grid_values[i]  # z2 varies along rows


def test_latent_grid_points_problem_set_values_and_bad_inputs():
    grid_values, _ = plots.latent_grid_points()
    expected = [-2, -1.428571, -0.857143, -0.285714, 0.285714, 0.857143, 1.428571, 2]  # the problem set's
    np.testing.assert_allclose(grid_values, expected, atol=1e-5)
    with pytest.raises(ValueError, match="integer >= 2"):
        plots.latent_grid_points(1)
    with pytest.raises(ValueError, match="low < high"):
        plots.latent_grid_points(4, 1.0, -1.0)


def _fake_decode(points: torch.Tensor, grid_values: torch.Tensor) -> torch.Tensor:
    """Constant 28x28 images whose brightness encodes the (z1, z2) they were decoded from."""
    size = grid_values.shape[0]
    column = torch.argmin((points[:, :1] - grid_values).abs(), dim=1)  # index of z1
    row = torch.argmin((points[:, 1:] - grid_values).abs(), dim=1)  # index of z2
    brightness = 0.1 + 0.8 * (row * size + column).float() / (size * size - 1)
    return brightness.view(-1, 1, 1).expand(-1, 28, 28)


def test_latent_manifold_ticks_labels_and_upward_z2():
    size = 5
    grid_values, points = plots.latent_grid_points(size)
    decoded = _fake_decode(points, grid_values).reshape(size, size, 28, 28)
    figure = plots.latent_manifold(decoded, grid_values, title="VAE latent grid")
    ax = figure.axes[0]
    assert ax.get_xlabel() == "z1" and ax.get_ylabel() == "z2"
    assert "VAE latent grid" in ax.get_title() and "5\u00d75 grid" in ax.get_title()
    for ticks, labels in ((ax.get_xticks(), ax.get_xticklabels()), (ax.get_yticks(), ax.get_yticklabels())):
        np.testing.assert_allclose(ticks, grid_values.numpy(), atol=1e-6)
        shown = [float(text) for text in tick_texts(labels)]
        np.testing.assert_allclose(shown, grid_values.numpy(), atol=5e-3)
    bottom, top = ax.get_ylim()
    assert top > bottom  # z2 increases upwards
    left, right = ax.get_xlim()
    assert right > left

    # The image's own geometry: the first canvas row is drawn at the top and holds the largest z2.
    image = ax.get_images()[0]
    assert isinstance(image, AxesImage)
    canvas = image.get_array()
    extent = image.get_extent()
    assert image.origin == "upper" and extent[3] > extent[2]
    top_row_brightness = canvas[0, 14]  # tile (i = size - 1, j = 0): z1 = -2, z2 = +2
    assert top_row_brightness == pytest.approx(float(decoded[size - 1, 0, 0, 0]))


def test_latent_manifold_rendered_pixel_at_each_latent_point_is_its_decoding():
    """End to end: the pixel drawn at data coordinates (z1, z2) is the decoding of (z1, z2)."""
    size = 4
    grid_values, points = plots.latent_grid_points(size)
    decoded_flat = _fake_decode(points, grid_values)
    figure = plots.latent_manifold(decoded_flat.reshape(size, size, 28, 28), grid_values)
    figure.canvas.draw()
    rgba = np.asarray(figure.canvas.buffer_rgba())
    ax = figure.axes[0]
    colormap = matplotlib.colormaps["Greys_r"]
    for (z1, z2), image in zip(points.numpy(), decoded_flat, strict=True):
        x_pixel, y_pixel = ax.transData.transform((z1, z2))
        rendered = rgba[int(round(rgba.shape[0] - y_pixel)), int(round(x_pixel)), 0] / 255.0
        expected = colormap(float(image[0, 0]))[0]
        assert rendered == pytest.approx(expected, abs=0.02), (z1, z2)


def test_latent_manifold_bad_inputs():
    grid_values, points = plots.latent_grid_points(3)
    flat = torch.rand(9, 28, 28)
    with pytest.raises(ValueError, match=r"\[n, n, H, W\].*n = len\(grid_values\) = 3"):
        plots.latent_manifold(flat, grid_values)
    with pytest.raises(ValueError, match=r"\[n, n, H, W\]"):
        plots.latent_manifold(torch.rand(4, 4, 28, 28), grid_values)
    with pytest.raises(ValueError, match="evenly spaced"):
        plots.latent_manifold(torch.rand(3, 3, 28, 28), [0.0, 1.0, 3.0])
    with pytest.raises(ValueError, match="strictly increasing"):
        plots.latent_manifold(torch.rand(3, 3, 28, 28), [1.0, 0.0, -1.0])
    with pytest.raises(ValueError, match=r"intensities in \[0, 1\]"):
        plots.latent_manifold(torch.randn(3, 3, 28, 28) * 4, grid_values)


# ----------------------------------------------------------------------------------------------------
# latent scatter and PCA
# ----------------------------------------------------------------------------------------------------
def test_latent_scatter_two_dimensional_codes_use_z_axes():
    rng = np.random.default_rng(1)
    figure = plots.latent_scatter(rng.normal(size=(300, 2)), rng.integers(0, 10, 300), title="AE codes")
    ax = figure.axes[0]
    assert ax.get_xlabel() == "z1" and ax.get_ylabel() == "z2"
    assert "AE codes" in ax.get_title() and "300 codes" in ax.get_title()
    legend = ax.get_legend()
    assert legend.get_title().get_text() == "digit"
    assert sorted(int(text.get_text()) for text in legend.get_texts()) == list(range(10))


def test_latent_scatter_projects_higher_dimensional_codes_with_pca():
    rng = np.random.default_rng(2)
    codes = rng.normal(size=(400, 4)) * np.array([3.0, 2.0, 1.0, 0.5])
    eigenvalues = np.sort(np.linalg.eigvalsh(np.cov(codes, rowvar=False)))[::-1]
    ratio = eigenvalues / eigenvalues.sum()
    figure = plots.latent_scatter(torch.from_numpy(codes), torch.from_numpy(rng.integers(0, 3, 400)))
    ax = figure.axes[0]
    assert ax.get_xlabel() == f"PC1 ({100 * ratio[0]:.1f}% var)"
    assert ax.get_ylabel() == f"PC2 ({100 * ratio[1]:.1f}% var)"
    assert "PCA of 4-D latents" in ax.get_title()
    assert [text.get_text() for text in ax.get_legend().get_texts()] == ["0", "1", "2"]


def test_latent_scatter_bad_inputs():
    with pytest.raises(ValueError, match="d >= 2"):
        plots.latent_scatter(np.zeros((10, 1)), np.zeros(10))
    with pytest.raises(ValueError, match="labels must have 10 entries"):
        plots.latent_scatter(np.random.rand(10, 2), np.zeros(9))
    with pytest.raises(ValueError, match="labels must be integers"):
        plots.latent_scatter(np.random.rand(10, 2), np.linspace(0, 1, 10))
    with pytest.raises(ValueError, match="zero variance"):
        plots.latent_scatter(np.ones((10, 3)), np.zeros(10))
    assert isinstance(plots.latent_scatter(np.random.rand(10, 2), None), Figure)


# ----------------------------------------------------------------------------------------------------
# loss curves
# ----------------------------------------------------------------------------------------------------
def _history(epochs: int = 6, with_test: bool = True) -> list[dict]:
    history = []
    for epoch in range(1, epochs + 1):
        record = {
            "epoch": epoch,
            "train": {"loss": 10.0 ** (-epoch), "recon_nll": 90.0 - epoch, "kl": 3.0 + 0.1 * epoch},
            "units": {"loss": "MSE + c*KL", "recon_nll": "nats", "kl": "nats"},
        }
        if with_test:
            record["test"] = {"loss": 2 * 10.0**-epoch, "recon_nll": 91.0 - epoch, "kl": 3.1 + 0.1 * epoch}
        history.append(record)
    return history


def test_loss_curves_one_panel_per_term_with_units_and_scales():
    figure = plots.loss_curves(_history(), title="VAE on MNIST")
    assert figure.get_suptitle() == "VAE on MNIST"
    assert len(figure.axes) == 3
    loss_ax, recon_ax, kl_ax = figure.axes
    assert loss_ax.get_ylabel() == "loss (MSE + c*KL)"
    assert recon_ax.get_ylabel() == "recon_nll (nats)"
    assert kl_ax.get_ylabel() == "kl (nats)"
    assert all(ax.get_xlabel() == "epoch" for ax in figure.axes)
    assert loss_ax.get_yscale() == "log"  # spans six decades
    assert recon_ax.get_yscale() == "linear" and kl_ax.get_yscale() == "linear"
    for ax in figure.axes:
        assert [line.get_label() for line in ax.get_lines()] == ["train", "test"]
        np.testing.assert_array_equal(ax.get_lines()[0].get_xdata(), np.arange(1, 7))
    assert recon_ax.get_title() == "recon_nll: final train 84, test 85"


def test_loss_curves_without_test_and_with_a_repeated_epoch():
    history = _history(3, with_test=False)
    history.append({"epoch": 3, "train": {"loss": 0.5, "recon_nll": 50.0, "kl": 1.0, "note": "resumed"}})
    figure = plots.loss_curves(history)
    assert len(figure.axes) == 3  # "note" is not numeric
    recon_ax = figure.axes[1]
    assert [line.get_label() for line in recon_ax.get_lines()] == ["train"]
    np.testing.assert_array_equal(recon_ax.get_lines()[0].get_ydata(), [89.0, 88.0, 50.0])
    assert recon_ax.get_ylabel() == "recon_nll (nats)"


def test_loss_curves_bad_inputs():
    with pytest.raises(ValueError, match="non-empty list"):
        plots.loss_curves([])
    with pytest.raises(ValueError, match="numeric 'epoch'"):
        plots.loss_curves([{"train": {"loss": 1.0}}])
    with pytest.raises(ValueError, match="'train' dict"):
        plots.loss_curves([{"epoch": 1, "test": {"loss": 1.0}}])
    with pytest.raises(ValueError, match="no numeric loss terms"):
        plots.loss_curves([{"epoch": 1, "train": {"name": "x"}}])


# ----------------------------------------------------------------------------------------------------
# Monte-Carlo KL convergence
# ----------------------------------------------------------------------------------------------------
def _legend_slope(ax) -> float:
    (text,) = [t.get_text() for t in ax.get_legend().get_texts() if t.get_text().startswith("fitted slope")]
    return float(re.search(r"-?\d+\.\d+", text).group())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kl_convergence_fitted_slope_with_repeated_trials(seed):
    rng = np.random.default_rng(seed)
    n_samples = np.arange(1, 4000, 100)  # the problem set's n
    analytic, sigma = 0.058, 0.013
    estimates = analytic + sigma * rng.normal(size=(n_samples.size, 30)) / np.sqrt(n_samples)[:, None]
    figure = plots.kl_estimator_convergence(n_samples, estimates, analytic)
    left, right = figure.axes
    assert abs(_legend_slope(right) + 0.5) < 0.1
    assert left.get_xscale() == "log" and right.get_xscale() == "log" and right.get_yscale() == "log"
    assert left.get_ylabel() == "KL (nats per image)"
    assert right.get_ylabel().endswith("KL (nats per image)")
    assert "analytic KL = 0.058 nats per image" in figure.get_suptitle()
    assert "fitted slope" in right.get_title()
    horizontal = [line for line in left.get_lines() if np.ptp(line.get_ydata()) == 0]
    assert horizontal and horizontal[0].get_ydata()[0] == pytest.approx(analytic)
    np.testing.assert_allclose(left.get_lines()[0].get_ydata(), estimates.mean(axis=1))
    labels = [t.get_text() for t in right.get_legend().get_texts()]
    assert "reference slope -1/2" in labels and "RMS error over 30 trials" in labels


def test_kl_convergence_single_trial_and_given_errors():
    rng = np.random.default_rng(4)
    n_samples = np.unique(np.geomspace(1, 10_000, 60).astype(int))
    estimates = torch.tensor(0.1 + 0.02 * rng.normal(size=n_samples.size) / np.sqrt(n_samples))
    figure = plots.kl_estimator_convergence(torch.tensor(n_samples), estimates, torch.tensor(0.1))
    assert abs(_legend_slope(figure.axes[1]) + 0.5) < 0.1
    exact_errors = 0.3 * n_samples**-0.5
    figure = plots.kl_estimator_convergence(n_samples, estimates, 0.1, abs_errors=exact_errors)
    assert _legend_slope(figure.axes[1]) == pytest.approx(-0.5, abs=1e-3)
    np.testing.assert_allclose(figure.axes[1].get_lines()[0].get_ydata(), exact_errors)


def test_kl_convergence_bad_inputs():
    n_samples = np.array([1, 10, 100])
    with pytest.raises(ValueError, match=r"\[m\] or \[m, trials\] with m = len\(n_samples\) = 3"):
        plots.kl_estimator_convergence(n_samples, np.zeros(4), 0.0)
    with pytest.raises(ValueError, match="positive"):
        plots.kl_estimator_convergence(np.array([0, 10, 100]), np.ones(3), 0.0)
    with pytest.raises(ValueError, match="finite number"):
        plots.kl_estimator_convergence(n_samples, np.ones(3), float("nan"))
    with pytest.raises(ValueError, match="non-zero errors"):
        plots.kl_estimator_convergence(n_samples, np.ones(3), 1.0)
    with pytest.raises(ValueError, match="abs_errors must have shape"):
        plots.kl_estimator_convergence(n_samples, np.ones(3), 0.0, abs_errors=np.ones(2))


# ----------------------------------------------------------------------------------------------------
# point clouds
# ----------------------------------------------------------------------------------------------------
def _assert_equal_scales(ax) -> None:
    ranges = np.array([np.ptp(ax.get_xlim3d()), np.ptp(ax.get_ylim3d()), np.ptp(ax.get_zlim3d())])
    box = np.asarray(ax.get_box_aspect())
    np.testing.assert_allclose(box / box[0], ranges / ranges[0], rtol=1e-6)  # one unit is equally long


def test_point_cloud_3d_equal_axes_like_the_problem_set_helper():
    xyz, _ = torus_points()
    figure = plots.point_cloud_3d(torch.from_numpy(xyz).float(), "Training data")
    ax = figure.axes[0]
    assert "Training data" in ax.get_title() and "500 points" in ax.get_title()
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_zlabel()) == ("X", "Y", "Z")
    _assert_equal_scales(ax)
    ranges = [np.ptp(ax.get_xlim3d()), np.ptp(ax.get_ylim3d()), np.ptp(ax.get_zlim3d())]
    np.testing.assert_allclose(ranges, ranges[0], rtol=1e-6)
    box = np.asarray(ax.get_box_aspect())
    np.testing.assert_allclose(box, box[0])  # (1, 1, 1)
    half = np.max(xyz.max(0) - xyz.min(0)) / 2
    centre = (xyz.max(0) + xyz.min(0)) / 2
    np.testing.assert_allclose(ax.get_zlim3d(), [centre[2] - half, centre[2] + half], rtol=1e-5, atol=1e-6)


def test_point_cloud_3d_colour_values_limits_and_bad_inputs():
    xyz, angles = torus_points(200)
    figure = plots.point_cloud_3d(xyz, "coloured by u", color=angles[:, 0], color_label="u (rad)")
    assert len(figure.axes) == 2 and figure.axes[1].get_ylabel() == "u (rad)"  # colour bar
    limits = [[-2, 2], [-2, 2], [-1, 1]]
    figure = plots.point_cloud_3d(xyz, "shared limits", color="red", ax_limits=limits)
    ax = figure.axes[0]
    np.testing.assert_allclose(ax.get_zlim3d(), [-1, 1])
    _assert_equal_scales(ax)
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        plots.point_cloud_3d(xyz[:, :2], "bad")
    with pytest.raises(ValueError, match="200 values"):
        plots.point_cloud_3d(xyz, "bad", color=np.ones(5))
    with pytest.raises(ValueError, match=r"\[3, 2\]"):
        plots.point_cloud_3d(xyz, "bad", ax_limits=[[-1, 1], [-1, 1]])
    with pytest.raises(ValueError, match="low < high"):
        plots.point_cloud_3d(xyz, "bad", ax_limits=[[1, -1], [-1, 1], [-1, 1]])


def test_point_cloud_2d_scatters_every_point_with_equal_scales():
    points = np.random.default_rng(0).normal(size=(300, 2)) * [3.0, 0.5]
    figure = plots.point_cloud_2d(points, "samples")
    ax = figure.axes[0]
    np.testing.assert_allclose(ax.collections[0].get_offsets(), points)
    assert ax.get_aspect() == 1.0 and ax.get_title().endswith("300 points")
    assert ax.get_xlabel() == "$x_1$" and ax.get_ylabel() == "$x_2$"
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        plots.point_cloud_2d(np.ones((4, 3)), "bad")


def test_point_cloud_overlay_draws_path_start_and_end():
    xyz, _ = torus_points()
    angle = np.linspace(0.5 * np.pi, -0.5 * np.pi, 50)
    path = np.stack([np.cos(angle), np.sin(angle), np.zeros_like(angle)], 1)
    figure = plots.point_cloud_overlay(xyz, path, "Decoded torus and interpolation")
    ax = figure.axes[0]
    assert ax.get_title() == "Decoded torus and interpolation"
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert "start" in labels and "end" in labels and "path (50 points)" in labels
    (path_line,) = ax.get_lines()
    assert matplotlib.colors.same_color(path_line.get_color(), "red")
    np.testing.assert_allclose(path_line.get_data_3d()[0], path[:, 0])
    _assert_equal_scales(ax)
    with pytest.raises(ValueError, match="at least 2"):
        plots.point_cloud_overlay(xyz, path[:1], "bad")


def test_equal_axis_limits_cover_every_set():
    limits = plots.equal_axis_limits(np.zeros((1, 3)), np.array([[4.0, 1.0, 0.0]]))
    np.testing.assert_allclose(limits, [[0, 4], [-1.5, 2.5], [-2, 2]])
    np.testing.assert_allclose(plots.equal_axis_limits(np.ones((3, 3))), [[0.5, 1.5]] * 3)
    with pytest.raises(ValueError, match="at least one"):
        plots.equal_axis_limits()


def test_latent_vs_angles_grid_ticks_and_r2():
    xyz, angles = torus_points(800)
    noise = np.random.default_rng(0).normal(size=800)
    latents = np.stack([np.cos(angles[:, 0]), np.sin(angles[:, 1]), noise], 1)
    shifted = torch.from_numpy(angles - np.pi)  # angles in [-pi, pi) are wrapped to [0, 2 pi)
    figure = plots.latent_vs_angles(torch.from_numpy(latents), shifted, title="PolarVAE")
    panels = [ax for ax in figure.axes if ax.get_xlabel()]  # the two colour bars have no x label
    assert len(panels) == 6  # row k: z_{k+1} vs u, z_{k+1} vs v
    assert "PolarVAE" in figure.get_suptitle()
    assert [ax.get_xlabel() for ax in panels] == ["u (rad)", "v (rad)"] * 3
    assert [ax.get_ylabel() for ax in panels] == ["z1", "z1", "z2", "z2", "z3", "z3"]
    for ax in panels:
        np.testing.assert_allclose(ax.get_xticks(), [0, np.pi, 2 * np.pi])
        assert tick_texts(ax.get_xticklabels()) == ["0", "\u03c0", "2\u03c0"]
        offsets = ax.collections[0].get_offsets()
        assert offsets[:, 0].min() >= 0 and offsets[:, 0].max() < 2 * np.pi  # wrapped angles
    titles = [ax.get_title() for ax in panels]
    assert titles[0] == "z1 vs u: R\u00b2 = 1.00" and titles[3] == "z2 vs v: R\u00b2 = 1.00"
    assert titles[1] == "z1 vs v: R\u00b2 = 0.00" and titles[2] == "z2 vs u: R\u00b2 = 0.00"
    with pytest.raises(ValueError, match=r"angles must have shape \[N, 2\] = \[800, 2\]"):
        plots.latent_vs_angles(latents, angles[:10])


# ----------------------------------------------------------------------------------------------------
# saving and global state
# ----------------------------------------------------------------------------------------------------
def test_save_figure_writes_png_atomically(tmp_path):
    figure = plots.interpolation(torch.rand(3, 28, 28))
    target = tmp_path / "nested" / "dir" / "interp.png"
    written = plots.save_figure(figure, target)
    assert written == target
    assert target.read_bytes()[:8] == PNG_SIGNATURE
    assert os.listdir(target.parent) == ["interp.png"]  # no temporary file left
    assert target.stat().st_mode & 0o777 == 0o644
    plots.save_figure(figure, str(target), dpi=50)  # overwrite
    assert os.listdir(target.parent) == ["interp.png"]


def test_save_figure_failure_leaves_no_temporary_file(tmp_path, monkeypatch):
    figure = plots.interpolation(torch.rand(3, 28, 28))

    def broken_savefig(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(figure, "savefig", broken_savefig)
    with pytest.raises(RuntimeError, match="disk full"):
        plots.save_figure(figure, tmp_path / "out.png")
    assert os.listdir(tmp_path) == []


def test_save_figure_bad_inputs(tmp_path):
    figure = plots.interpolation(torch.rand(3, 28, 28))
    with pytest.raises(ValueError, match="must end in .png"):
        plots.save_figure(figure, tmp_path / "figure.pdf")
    with pytest.raises(TypeError, match="matplotlib Figure"):
        plots.save_figure("not a figure", tmp_path / "figure.png")


def test_library_never_touches_pyplot():
    script = textwrap.dedent(
        """
        import sys
        import numpy as np
        from dgmlab import plots
        plots.latent_manifold(np.random.rand(3, 3, 8, 8), np.linspace(-2, 2, 3)).canvas.draw()
        plots.point_cloud_3d(np.random.rand(20, 3), "cloud").canvas.draw()
        assert "matplotlib.pyplot" not in sys.modules, "pyplot was imported"
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


# ----------------------------------------------------------------------------------------------------
# autoregressive image models: receptive fields, per-pixel NLL, completions
# ----------------------------------------------------------------------------------------------------
def test_receptive_field_map_categories_counts_and_target():
    earlier = (np.arange(49) < 4 * 7 + 3).reshape(7, 7)  # every pixel before (4, 3)
    blind = earlier.copy()
    blind[3, 5:] = False  # a blind spot above-right
    figure = plots.receptive_field_map({"PixelCNN": torch.from_numpy(blind), "Gated PixelCNN": earlier}, (4, 3))
    pixel_ax, gated_ax = figure.axes
    assert "row 4, column 3" in figure.get_suptitle()
    assert pixel_ax.get_title() == "PixelCNN\nreads 29 of 31 earlier pixels"
    assert gated_ax.get_title() == "Gated PixelCNN\nreads 31 of 31 earlier pixels"
    assert pixel_ax.get_xlabel() == "column" and pixel_ax.get_ylabel() == "row"
    categories = pixel_ax.get_images()[0].get_array()
    assert categories[3, 5] == 1 and categories[3, 4] == 0 and categories[4, 3] == 2 and categories[6, 0] == 2
    (target,) = pixel_ax.get_lines()
    assert (target.get_xdata()[0], target.get_ydata()[0]) == (3, 4) and target.get_marker() == "*"
    legend_texts = [text.get_text() for text in figure.legends[0].get_texts()]
    assert "earlier, not read (blind spot or beyond reach)" in legend_texts and "target" in legend_texts


def test_receptive_field_map_flags_a_non_autoregressive_map_and_bad_inputs():
    leaky = np.ones((5, 5))  # gradient magnitudes: reads everything, the target included
    figure = plots.receptive_field_map({"leaky": leaky}, (2, 2))
    assert figure.axes[0].get_title().endswith("13 at/after the target!")
    assert figure.axes[0].get_images()[0].get_array()[2, 2] == 3
    with pytest.raises(ValueError, match="non-empty dict"):
        plots.receptive_field_map({}, (0, 0))
    with pytest.raises(ValueError, match=r"outside maps\['leaky'\] of shape 5x5"):
        plots.receptive_field_map({"leaky": leaky}, (5, 0))
    with pytest.raises(ValueError, match=r"one map of shape \[H, W\]"):
        plots.receptive_field_map({"batch": np.ones((2, 5, 5))}, (0, 0))
    with pytest.raises(ValueError, match="pair of integers"):
        plots.receptive_field_map({"leaky": leaky}, (1.5, 0))


def test_pixel_nll_heatmap_colour_bar_and_total():
    nll = torch.full((1, 4, 6), 0.25)
    nll[0, 0, 0] = 0.693
    figure = plots.pixel_nll_heatmap(nll, title="PixelCNN, test digit")
    ax, colour_bar = figure.axes
    assert colour_bar.get_ylabel() == "nats"
    total = 23 * 0.25 + 0.693
    assert ax.get_title().startswith(f"PixelCNN, test digit\ntotal {total:.2f} nats per image")
    assert f"({total / (24 * math.log(2)):.3f} bits/dim)" in ax.get_title()
    np.testing.assert_allclose(ax.get_images()[0].get_array(), nll[0].numpy())
    assert ax.get_xlabel() == "column" and ax.get_ylabel() == "row"
    with pytest.raises(ValueError, match="pass -log p, not log p"):
        plots.pixel_nll_heatmap(-nll)
    with pytest.raises(ValueError, match=r"average over the images first"):
        plots.pixel_nll_heatmap(torch.rand(3, 4, 6))


def test_completions_rows_line_and_grey_unknown_part():
    originals = (torch.rand(3, 1, 6, 6) > 0.5).float()
    completed = originals.unsqueeze(0).repeat(2, 1, 1, 1, 1)  # [s=2, n=3, 1, 6, 6]
    completed[:, :, :, 4:] = 1 - completed[:, :, :, 4:]
    figure = plots.completions(originals, completed, known_rows=4, title="PixelCNN completions")
    assert len(figure.axes) == 4 * 3
    assert [figure.axes[3 * row].get_ylabel() for row in range(4)] == [
        "original",
        "given (4 rows)",
        "completion 1",
        "completion 2",
    ]
    assert "first 4 of 6 rows given" in figure.get_suptitle() and "2 completions per image" in figure.get_suptitle()
    for ax in figure.axes:
        (line,) = ax.get_lines()
        np.testing.assert_allclose(line.get_ydata(), [3.5, 3.5])  # between row 3 (given) and row 4
    given = figure.axes[3].get_images()[0].get_array()
    np.testing.assert_allclose(given[:4], originals[0, 0, :4].numpy())
    np.testing.assert_allclose(given[4:], 0.5)
    # one completion per image, [n, 1, H, W]
    figure = plots.completions(originals, completed[0], known_rows=4)
    assert len(figure.axes) == 3 * 3 and "1 completion per image" in figure.get_suptitle()


def test_completions_bad_inputs():
    originals = (torch.rand(2, 6, 6) > 0.5).float()
    with pytest.raises(ValueError, match=r"differs from originals in the first 3 \(given\) rows"):
        plots.completions(originals, 1 - originals, known_rows=3)
    with pytest.raises(ValueError, match=r"n, H, W = 2, 6, 6"):
        plots.completions(originals, torch.rand(3, 6, 6), known_rows=0)
    with pytest.raises(ValueError, match=r"known_rows must be an integer in 0..6"):
        plots.completions(originals, originals, known_rows=7)
    with pytest.raises(ValueError, match="sigmoid"):
        plots.completions(originals, originals * 5 - 2, known_rows=0)
