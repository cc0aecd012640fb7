"""Figures of patch priors: the leading eigenvectors of a Gaussian mixture's heaviest components, the test
log-likelihood of patches against the number of components, and power spectra of images."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from dgmlab.numerics import ArrayLike, as_float_array
from dgmlab.plots._common import new_figure

__all__ = ["mixture_eigenvectors", "patch_log_likelihood_against_components", "power_spectra"]


def mixture_eigenvectors(weights: ArrayLike, covariances: ArrayLike, components: int = 8, vectors: int = 8,
                         title: str = "Leading eigenvectors of the heaviest components") -> Figure:
    """One row per component, the ``components`` heaviest first (weight :math:`\\pi_k` at the left), one column
    per eigenvector of its covariance, largest eigenvalue first, each drawn as a patch.

    ``weights`` ``[K]``, ``covariances`` ``[K, p*p, p*p]`` of :math:`p \\times p` patches. An eigenvector's sign
    is arbitrary, so each is drawn on a symmetric scale from -max|v| (black) to +max|v| (white); the share of the
    component's variance it carries is under it."""
    pi = as_float_array(weights, "weights")
    sigma = as_float_array(covariances, "covariances")
    if pi.ndim != 1 or sigma.shape != (len(pi), sigma.shape[1], sigma.shape[1]):
        raise ValueError(f"mixture_eigenvectors: weights [K] and covariances [K, D, D] expected, got "
                         f"{list(pi.shape)} and {list(sigma.shape)}")
    side = math.isqrt(sigma.shape[1])
    if side * side != sigma.shape[1]:
        raise ValueError(f"mixture_eigenvectors: {sigma.shape[1]} values per patch is not a square patch")
    components, vectors = min(components, len(pi)), min(vectors, sigma.shape[1])
    order = np.argsort(-pi)[:components]
    figure = new_figure(0.95 * vectors + 0.9, 1.0 * components + 0.6)
    axes = figure.subplots(components, vectors, squeeze=False)
    for row, k in enumerate(order):
        values, eigenvectors = np.linalg.eigh(sigma[k])
        values, eigenvectors = values[::-1], eigenvectors[:, ::-1]
        for column in range(vectors):
            ax = axes[row, column]
            vector = eigenvectors[:, column].reshape(side, side)
            scale = float(np.abs(vector).max()) or 1.0
            ax.imshow(vector, cmap="gray", vmin=-scale, vmax=scale, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(f"{values[column] / values.sum():.0%}", fontsize=7, labelpad=1)
            if column == 0:
                ax.set_ylabel(f"$\\pi$ = {pi[k]:.3f}", fontsize=7)
    figure.suptitle(title + " (variance share under each)", fontsize=9)
    return figure


def patch_log_likelihood_against_components(num_components: Sequence[int], train: Sequence[float],
                                            test: Sequence[float], unit: str = "nats per patch",
                                            title: str = "Gaussian-mixture patch prior") -> Figure:
    """Mean train and test log-likelihood of patches against the number of components K (log axis)."""
    if not (len(num_components) == len(train) == len(test)) or not num_components:
        raise ValueError("patch_log_likelihood_against_components: one train and one test value per K")
    figure = new_figure(5.0, 3.4)
    ax = figure.add_subplot()
    ax.plot(num_components, train, "o-", label="training patches")
    ax.plot(num_components, test, "s-", label="test patches (unseen photographs)")
    for k, value in zip(num_components, test, strict=True):
        ax.annotate(f"{value:.1f}", (k, value), textcoords="offset points", xytext=(0, -12), ha="center", fontsize=7)
    ax.set_xscale("log")
    ax.set_xticks(list(num_components), [str(k) for k in num_components])
    ax.set_xlabel("components K")
    ax.set_ylabel(f"mean log-likelihood ({unit})")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return figure


def power_spectra(spectra: Sequence[tuple[str, ArrayLike, ArrayLike, float]],
                  title: str = "Radially averaged power spectra") -> Figure:
    """Power against spatial frequency on log-log axes, one line per ``(label, frequency, power, slope)``; the
    fitted slope is in the legend, with a reference line of slope -2 (a scale-invariant image)."""
    if not spectra:
        raise ValueError("power_spectra: no spectra given")
    figure = new_figure(5.2, 3.8)
    ax = figure.add_subplot()
    for label, frequency, power, slope in spectra:
        f, p = as_float_array(frequency, "frequency"), as_float_array(power, "power")
        ax.loglog(f, p / p[0], label=f"{label} (slope {slope:.2f})")
    f = as_float_array(spectra[0][1], "frequency")
    ax.loglog(f, (f / f[0]) ** -2.0, "k--", linewidth=1, label="slope -2")
    ax.set_xlabel("spatial frequency (cycles per pixel)")
    ax.set_ylabel("power, relative to the lowest frequency")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return figure
