"""The patch-prior figures (dgmlab.plots.image_priors): they draw what they say, and refuse what they cannot."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dgmlab import plots


def test_eigenvector_rows_are_the_heaviest_components_with_their_variance_shares():
    covariances = torch.stack([torch.diag(torch.arange(1.0, 17.0)) * (k + 1) for k in range(3)])
    figure = plots.mixture_eigenvectors(torch.tensor([0.2, 0.5, 0.3]), covariances, components=2, vectors=3)
    axes = figure.axes
    assert len(axes) == 2 * 3
    assert axes[0].get_ylabel() == "$\\pi$ = 0.500" and axes[3].get_ylabel() == "$\\pi$ = 0.300"
    # the largest eigenvalue of diag(1..16) is 16 of 136: 12%; its eigenvector is the last pixel
    assert axes[0].get_xlabel() == f"{16 / 136:.0%}"
    image = axes[0].get_images()[0].get_array()
    assert image.shape == (4, 4) and np.argmax(np.abs(image)) == 15
    figure.canvas.draw()


def test_the_likelihood_figure_labels_every_k():
    figure = plots.patch_log_likelihood_against_components([1, 10, 200], [1.0, 2.0, 3.0], [1.5, 2.5, 3.5])
    ax = figure.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()][:3] == ["1", "10", "200"]
    assert "nats per patch" in ax.get_ylabel()
    figure.canvas.draw()


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="not a square patch"):
        plots.mixture_eigenvectors(torch.ones(2), torch.eye(5).expand(2, 5, 5))
    with pytest.raises(ValueError, match=r"weights \[K\] and covariances \[K, D, D\]"):
        plots.mixture_eigenvectors(torch.ones(3), torch.eye(4).expand(2, 4, 4))
    with pytest.raises(ValueError, match="one train and one test value per K"):
        plots.patch_log_likelihood_against_components([1, 2], [1.0], [1.0, 2.0])


def test_power_spectra_put_the_fitted_slope_in_the_legend_beside_a_slope_minus_two_line():
    f = np.array([0.01, 0.1, 0.5])
    figure = plots.power_spectra([("leaves", f, f**-2.0, -2.0), ("photos", f, f**-3.0, -3.0)])
    labels = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert labels == ["leaves (slope -2.00)", "photos (slope -3.00)", "slope -2"]
    assert figure.axes[0].get_xscale() == "log"
    with pytest.raises(ValueError, match="no spectra"):
        plots.power_spectra([])
