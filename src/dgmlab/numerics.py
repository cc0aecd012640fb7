r"""Small numerical computations that figures and reports need: array checks, PCA, least-squares fits.

Pure functions of arrays: nothing here draws, trains or reads files. Inputs may be torch tensors (any
device; they are detached and copied to the CPU), NumPy arrays or nested lists; results are float64
NumPy arrays or Python floats.

Principal components
--------------------
With the centred data $C = X - \bar x$ ($N \times d$) and its thin SVD $C = U S V^\top$, the projection on
the first $k$ principal directions is $C V_{:, :k} = U_{:, :k} S_{:k}$, and component $m$ explains the
fraction $s_m^2 / \sum_l s_l^2$ of the total variance ($s_m^2 / (N - 1)$ is the sample variance along it).

Power laws
----------
$y = a x^b$ is a straight line on log-log axes, $\log y = b \log x + \log a$, fitted by ordinary least
squares on the logarithms. With the slope held fixed at $b$, the least-squares intercept is the mean
$\frac1m \sum_i (\log y_i - b \log x_i)$.

First-harmonic fit
------------------
How much of a signal $z$ one angle $\theta$ explains: the coefficient of determination $R^2$ of the
least-squares fit $z \approx a_0 + a_1 \cos\theta + a_2 \sin\theta$.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from dgmlab.utils import is_int

__all__ = [
    "ArrayLike",
    "as_float_array",
    "as_numpy",
    "first_harmonic_r2",
    "fit_power_law",
    "power_law_intercept",
    "principal_components",
]

ArrayLike = torch.Tensor | np.ndarray | Sequence[Any]


def as_numpy(values: ArrayLike, name: str) -> np.ndarray:
    """A CPU NumPy copy of a tensor, array or nested list of numbers; floating tensors become float64.

    Raises:
        ValueError: the values are ragged (nested lists of unequal lengths) or not numbers; the message
            names the argument ``name``.
    """
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


def as_float_array(values: ArrayLike, name: str) -> np.ndarray:
    """:func:`as_numpy` as a finite float64 array; NaN or infinite values raise ``ValueError``."""
    array = as_numpy(values, name).astype(np.float64, copy=False)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def principal_components(codes: ArrayLike, components: int = 2) -> tuple[np.ndarray, np.ndarray]:
    r"""Project centred codes onto their first principal components (exact SVD, deterministic signs).

    With centred codes $C = U S V^\top$, the projection is $C V_{:, :k}$ and component $m$ explains
    $s_m^2 / \sum_l s_l^2$ of the total variance. Each component's sign is chosen so that its
    largest-magnitude loading is positive, so the result does not depend on the order of the rows.

    Args:
        codes: [N, d] with N >= 2 and d >= components.
        components: k, the number of components kept.

    Returns:
        ``(projected [N, k], explained_variance_ratio [k])``, float64.
    """
    array = as_float_array(codes, "codes")
    if array.ndim != 2 or array.shape[0] < 2:
        raise ValueError(f"codes must have shape [N, d] with N >= 2, got {tuple(array.shape)}")
    if not is_int(components):
        raise ValueError(f"components must be an integer in [1, d={array.shape[1]}], got {components!r}")
    if not 1 <= components <= array.shape[1]:
        raise ValueError(f"components must lie in [1, d={array.shape[1]}], got {components}")
    # C = X - mean(X)
    centred = torch.from_numpy(array - array.mean(axis=0, keepdims=True))
    # C = U S V^T (thin)
    _, singular_values, right_vectors_t = torch.linalg.svd(centred, full_matrices=False)
    total = float((singular_values**2).sum())
    if total <= 0.0:
        raise ValueError("codes have zero variance: every code is the same point")
    directions = right_vectors_t[:components].T  # V[:, :k], [d, k]
    largest = directions.abs().argmax(dim=0)
    signs = torch.sign(directions[largest, torch.arange(components)])
    directions = directions * torch.where(signs == 0, torch.ones_like(signs), signs)
    # C V[:, :k] and s_m^2 / sum_l s_l^2
    projected = (centred @ directions).numpy()
    ratio = (singular_values[:components] ** 2 / total).numpy()
    return projected, ratio


def _log_log(x: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """``(log x, log y)`` of two positive vectors of the same length >= 2."""
    x_values = as_float_array(x, "x").reshape(-1)
    y_values = as_float_array(y, "y").reshape(-1)
    if x_values.shape != y_values.shape or x_values.shape[0] < 2:
        raise ValueError(
            f"x and y must have the same length >= 2, got {x_values.shape[0]} and {y_values.shape[0]}"
        )
    if np.any(x_values <= 0) or np.any(y_values <= 0):
        raise ValueError("a power law is fitted on log-log axes: x and y must be positive")
    return np.log(x_values), np.log(y_values)


def fit_power_law(x: ArrayLike, y: ArrayLike) -> tuple[float, float]:
    r"""Least-squares fit of $\log y = \text{slope} \cdot \log x + \text{intercept}$ (natural logs).

    For $y = a x^b$ this recovers ``(b, log a)``.

    Args:
        x, y: [m] positive values, m >= 2, x not all equal.

    Returns:
        ``(slope, intercept)``.
    """
    log_x, log_y = _log_log(x, y)
    if np.ptp(log_x) == 0:
        raise ValueError("x values are all equal: the slope is undefined")
    # ordinary least squares of log y on (log x, 1)
    slope, intercept = np.polyfit(log_x, log_y, 1)
    return float(slope), float(intercept)


def power_law_intercept(x: ArrayLike, y: ArrayLike, slope: float) -> float:
    r"""The least-squares intercept of $\log y = \text{slope} \cdot \log x + \text{intercept}$ for a given slope.

    Minimising $\sum_i (\log y_i - b \log x_i - c)^2$ over $c$ alone gives
    $c = \frac1m \sum_i (\log y_i - b \log x_i)$; e.g. the reference line of slope $-\tfrac12$ of a
    Monte-Carlo error, $\mathrm{RMSE} = \sigma n^{-1/2}$, has $c = \log \sigma$.

    Args:
        x, y: [m] positive values, m >= 2.
        slope: b, a finite number.
    """
    if isinstance(slope, bool) or not isinstance(slope, numbers.Real) or not math.isfinite(slope):
        raise ValueError(f"slope must be a finite number, got {slope!r}")
    log_x, log_y = _log_log(x, y)
    # c = mean(log y - b log x)
    return float(np.mean(log_y - float(slope) * log_x))


def first_harmonic_r2(values: ArrayLike, angles: ArrayLike) -> float:
    r"""$R^2$ of the least-squares fit $z \approx a_0 + a_1 \cos\theta + a_2 \sin\theta$; NaN for constant $z$.

    $R^2 = 1 - \sum_i (z_i - \hat z_i)^2 / \sum_i (z_i - \bar z)^2$: the fraction of the variance of ``values``
    that the first harmonic of ``angles`` explains (1 for $z = \cos(\theta - \varphi)$, about 0 for $z$
    independent of $\theta$).

    Args:
        values: [N] the signal z.
        angles: [N] the angles theta in radians.
    """
    z = as_float_array(values, "values").reshape(-1)
    theta = as_float_array(angles, "angles").reshape(-1)
    if z.shape != theta.shape or z.shape[0] < 1:
        raise ValueError(f"values and angles must have the same length >= 1, got {z.shape[0]} and {theta.shape[0]}")
    # design matrix [1, cos theta, sin theta]
    design = np.stack([np.ones_like(theta), np.cos(theta), np.sin(theta)], axis=1)
    coefficients, *_ = np.linalg.lstsq(design, z, rcond=None)
    total = float(np.sum((z - z.mean()) ** 2))
    if total == 0.0:
        return float("nan")
    # R^2 = 1 - residual sum of squares / total sum of squares
    return 1.0 - float(np.sum((z - design @ coefficients) ** 2)) / total
