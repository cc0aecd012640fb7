r"""The estimators of invertible residual blocks against their exact values and bounds
(:mod:`dgmlab.models.flows.residual`, measured by :mod:`dgmlab.experiments.residual_estimators`).

Every figure draws a measurement as a solid line (or a bar) and the bound or prediction it is checked against
dashed, in the same colour: the fixed-point inverse's error against Banach's a-priori bound
:math:`\frac{c^k}{1-c}\lVert x^{(1)} - x^{(0)}\rVert` (:func:`inverse_error_curves`), the truncated power
series' bias against :math:`d\sum_{k>n}c^k/k` (:func:`logdet_bias_curves`), Hutchinson's variance against
:math:`2\lVert A_s\rVert_F^2` (:func:`probe_variance_curves`), and the cost of each estimator
(:func:`estimator_cost_bars`). Zeros (an error at exact rounding) cannot be drawn on a log axis and are left
out of the lines.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import NullLocator

from dgmlab.numerics import ArrayLike, as_float_array
from dgmlab.plots._common import new_figure

__all__ = ["estimator_cost_bars", "inverse_error_curves", "logdet_bias_curves", "probe_variance_curves"]


def _axis(values: ArrayLike, name: str) -> np.ndarray:
    array = as_float_array(values, name)
    if array.ndim != 1 or array.shape[0] < 1:
        raise ValueError(f"{name} must have shape [m] with m >= 1, got {tuple(array.shape)}")
    return array


def _curves(curves: Mapping[Any, ArrayLike], name: str, length: int, keys: Sequence[Any] | None = None
            ) -> dict[Any, np.ndarray]:
    """``curves`` as arrays of shape ``[length]``, with the same keys as ``keys`` when given."""
    if not isinstance(curves, Mapping) or not curves:
        raise ValueError(f"{name} must be a non-empty mapping from a label to values, got {type(curves).__name__}")
    if keys is not None and list(curves) != list(keys):
        raise ValueError(f"{name} must have the same keys as the measurements, {list(keys)}, got {list(curves)}")
    result = {}
    for key, values in curves.items():
        array = as_float_array(values, f"{name}[{key!r}]")
        if array.shape != (length,):
            raise ValueError(f"{name}[{key!r}] must have shape [{length}] (one value per point of the x axis), "
                             f"got {tuple(array.shape)}")
        result[key] = array
    return result


def _positive(values: np.ndarray) -> np.ndarray:
    # a log axis cannot draw zeros or negative values
    return np.where(values > 0, values, np.nan)


def _style_legend(ax: Any, colours: Mapping[str, str], styles: Sequence[tuple[str, str]]) -> None:
    """One legend entry per colour (a curve) and one per line style (what the line is)."""
    handles = [Line2D([], [], color=colour, label=label) for label, colour in colours.items()]
    handles += [Line2D([], [], color="0.3", linestyle=style, label=label) for label, style in styles]
    ax.legend(handles=handles, fontsize=8)


def _finish(ax: Any, xlabel: str, ylabel: str, colours: Mapping[str, str], styles: Sequence[tuple[str, str]],
            title: str) -> None:
    """Axis labels, a light grid, the colour-and-style legend and the title of a curves figure."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    _style_legend(ax, colours, styles)
    ax.set_title(title, fontsize=10)


def inverse_error_curves(iterations: ArrayLike, mean_error: Mapping[float, ArrayLike],
                         max_error: Mapping[float, ArrayLike], bound: Mapping[float, ArrayLike], *,
                         tolerance: float | None = None,
                         title: str = "Fixed-point inverse of y = x + g(x): error against Banach's bound") -> Figure:
    r"""The error :math:`\lVert x^{(k)} - x^\star\rVert` of the fixed-point iteration against the iteration
    :math:`k`, for each Lipschitz constant :math:`c`: the mean over examples (solid), the largest (thin) and the
    mean a-priori bound :math:`\frac{c^k}{1-c}\lVert x^{(1)} - x^{(0)}\rVert` (dashed), on a log axis.

    Args:
        iterations: ``[K]`` iteration numbers :math:`k`.
        mean_error, max_error, bound: ``{c: [K]}``, the same keys in the same order.
        tolerance: an optional stopping tolerance drawn as a grey horizontal line.
        title: figure title.
    """
    steps = _axis(iterations, "iterations")
    means = _curves(mean_error, "mean_error", len(steps))
    largest = _curves(max_error, "max_error", len(steps), list(means))
    bounds = _curves(bound, "bound", len(steps), list(means))
    figure = new_figure(7.5, 5.0)
    ax = figure.subplots()
    colours = {}
    for index, c in enumerate(means):
        colour = f"C{index % 10}"
        colours[f"c = {c:g}"] = colour
        ax.plot(steps, _positive(means[c]), color=colour, linewidth=1.8)
        ax.plot(steps, _positive(largest[c]), color=colour, linewidth=0.8, alpha=0.7)
        ax.plot(steps, _positive(bounds[c]), color=colour, linestyle="--", linewidth=1.2)
    styles = [("mean error", "-"), ("largest error (thin)", "-"), ("a-priori bound (mean)", "--")]
    if tolerance is not None:
        ax.axhline(float(tolerance), color="0.5", linestyle=":", linewidth=1.0)
        styles.append((f"tolerance {float(tolerance):g}", ":"))
    ax.set_yscale("log")
    _finish(ax, "iteration k", "error ‖x⁽ᵏ⁾ − x*‖ (Euclidean norm, same units as x)", colours, styles, title)
    return figure


def logdet_bias_curves(terms: ArrayLike, mean_bias: Mapping[float, ArrayLike], bound: Mapping[float, ArrayLike],
                       measured_bound: Mapping[float, ArrayLike] | None = None, *,
                       title: str = "Truncated power series of ln det(I + J): bias against the truncation bound"
                       ) -> Figure:
    r"""The mean absolute bias :math:`|\sum_{k\le n}\frac{(-1)^{k+1}}{k}\operatorname{tr}J^k - \ln\det(I+J)|`
    against the number of terms :math:`n` for each Lipschitz constant :math:`c` (solid), beside the truncation
    bound :math:`d\sum_{k>n}c^k/k` (dashed) and, optionally, the same bound with :math:`c` replaced by the
    measured :math:`\max\lVert J\rVert_2` (dotted), on a log axis.

    Args:
        terms: ``[n]`` numbers of terms.
        mean_bias, bound, measured_bound: ``{c: [n]}`` in nats, the same keys in the same order.
        title: figure title.
    """
    counts = _axis(terms, "terms")
    biases = _curves(mean_bias, "mean_bias", len(counts))
    bounds = _curves(bound, "bound", len(counts), list(biases))
    measured = _curves(measured_bound, "measured_bound", len(counts), list(biases)) if measured_bound else None
    figure = new_figure(7.5, 5.0)
    ax = figure.subplots()
    colours = {}
    for index, c in enumerate(biases):
        colour = f"C{index % 10}"
        colours[f"c = {c:g}"] = colour
        ax.plot(counts, _positive(biases[c]), color=colour, marker="o", markersize=2.5, linewidth=1.6)
        ax.plot(counts, _positive(bounds[c]), color=colour, linestyle="--", linewidth=1.2)
        if measured is not None:
            ax.plot(counts, _positive(measured[c]), color=colour, linestyle=":", linewidth=1.2)
    styles = [("mean |bias| (measured)", "-"), ("bound with c", "--")]
    if measured is not None:
        styles.append(("bound with measured max ‖J‖₂", ":"))
    ax.set_yscale("log")
    _finish(ax, "terms n of the series", "|bias| of ln det(I + J) (nats)", colours, styles, title)
    return figure


def probe_variance_curves(terms: ArrayLike, measured: Mapping[str, ArrayLike], predicted: Mapping[str, ArrayLike],
                          standard_error: Mapping[str, ArrayLike] | None = None, *,
                          title: str = "Variance of the one-probe Hutchinson estimate of the n-term series"
                          ) -> Figure:
    r"""The variance of the one-probe estimate :math:`\sum_{k\le n}\frac{(-1)^{k+1}}{k}v^\top J^k v` against the
    number of terms :math:`n`, for each probe (solid, with two standard errors as bars) beside its prediction
    from the explicit Jacobian (dashed; :math:`2\lVert A_s\rVert_F^2` for Gaussian probes,
    :math:`2(\lVert A_s\rVert_F^2 - \sum_i A_{ii}^2)` for Rademacher ones); n on a log axis, the variance on
    one too when it spans more than a decade.

    Args:
        terms: ``[n]`` numbers of terms.
        measured, predicted, standard_error: ``{probe: [n]}`` in nats², the same keys in the same order.
        title: figure title.
    """
    counts = _axis(terms, "terms")
    values = _curves(measured, "measured", len(counts))
    predictions = _curves(predicted, "predicted", len(counts), list(values))
    errors = _curves(standard_error, "standard_error", len(counts), list(values)) if standard_error else None
    figure = new_figure(7.5, 5.0)
    ax = figure.subplots()
    colours = {}
    for index, probe in enumerate(values):
        colour = f"C{index % 10}"
        colours[str(probe)] = colour
        if errors is not None:
            ax.errorbar(counts, values[probe], yerr=2 * errors[probe], color=colour, marker="o", markersize=3,
                        linewidth=1.6, capsize=3)
        else:
            ax.plot(counts, values[probe], color=colour, marker="o", markersize=3, linewidth=1.6)
        ax.plot(counts, _positive(predictions[probe]), color=colour, linestyle="--", linewidth=1.2)
    styles = [("measured" + (" (± 2 s.e.)" if errors is not None else ""), "-"),
              ("predicted from J", "--")]
    ax.set_xscale("log")
    ax.set_xticks(counts, [f"{n:g}" for n in counts])
    ax.xaxis.set_minor_locator(NullLocator())
    shown = np.concatenate([np.concatenate([values[probe], predictions[probe]]) for probe in values])
    shown = shown[np.isfinite(shown) & (shown > 0)]
    if shown.size and shown.max() > 10 * shown.min():
        ax.set_yscale("log")  # variances over more than a decade; within one, a linear axis reads better
    _finish(ax, "terms n of the series", "variance of one-probe estimate (nats²)", colours, styles, title)
    return figure


def _bar_panel(ax: Any, dimensions: np.ndarray, values: Mapping[str, np.ndarray],
               expected: Mapping[str, np.ndarray] | None = None) -> None:
    names = list(values)
    width = 0.8 / len(names)
    positions = np.arange(len(dimensions))
    for index, name in enumerate(names):
        offset = positions - 0.4 + width * (index + 0.5)
        ax.bar(offset, values[name], width=width * 0.95, color=f"C{index % 10}", label=name)
        if expected is not None and name in expected:
            # the predicted value: a dashed tick across the bar
            for x, value in zip(offset, expected[name], strict=True):
                ax.plot([x - width / 2, x + width / 2], [value, value], color="black", linestyle="--",
                        linewidth=1.2)
    ax.set_xticks(positions, [f"d = {int(d)}" if float(d).is_integer() else f"d = {d:g}" for d in dimensions])
    ax.set_yscale("log")
    ax.grid(True, axis="y", alpha=0.3)


def estimator_cost_bars(dimensions: ArrayLike, vjps: Mapping[str, ArrayLike], milliseconds: Mapping[str, ArrayLike],
                        expected_vjps: Mapping[str, ArrayLike] | None = None,
                        training_milliseconds: Mapping[str, ArrayLike] | None = None, *,
                        title: str = "Cost of the log-determinant estimators per batch") -> Figure:
    """Bars of the cost of each estimator at each dimension :math:`d`: vector-Jacobian products per batch
    (with the expected count as a dashed tick: :math:`d` for the exact Jacobian, :math:`n` for the series,
    :math:`m + (1-p)/p` for the roulette), milliseconds per batch, and, optionally, milliseconds of a training
    step (value and backward of the mean); log axes.

    Args:
        dimensions: ``[m]`` dimensions :math:`d`.
        vjps, milliseconds: ``{estimator: [m]}``, the same keys in the same order.
        expected_vjps: ``{estimator: [m]}`` for some or all of the estimators.
        training_milliseconds: ``{gradient: [m]}``.
        title: figure title.
    """
    sizes = _axis(dimensions, "dimensions")
    counts = _curves(vjps, "vjps", len(sizes))
    times = _curves(milliseconds, "milliseconds", len(sizes), list(counts))
    expected = None
    if expected_vjps:
        unknown = [name for name in expected_vjps if name not in counts]
        if unknown:
            raise ValueError(f"expected_vjps names estimators without measurements: {unknown}; measured: "
                             f"{list(counts)}")
        expected = _curves(expected_vjps, "expected_vjps", len(sizes))
    training = _curves(training_milliseconds, "training_milliseconds", len(sizes)) if training_milliseconds \
        else None
    panels = 3 if training is not None else 2
    figure = new_figure(4.8 * panels, 4.4)
    axes = figure.subplots(1, panels)
    _bar_panel(axes[0], sizes, counts, expected)
    axes[0].set_ylabel("vector-Jacobian products per batch")
    axes[0].set_xlabel("dimension")
    axes[0].set_title("backward passes (dashed: expected)", fontsize=10)
    axes[0].legend(fontsize=8)
    _bar_panel(axes[1], sizes, times)
    axes[1].set_ylabel("time per batch (ms)")
    axes[1].set_xlabel("dimension")
    axes[1].set_title("log-determinant value (median ms)", fontsize=10)
    if training is not None:
        _bar_panel(axes[2], sizes, training)
        axes[2].set_ylabel("time per training step (ms)")
        axes[2].set_xlabel("dimension")
        axes[2].set_title("value + backward of the mean (median ms)", fontsize=10)
        axes[2].legend(fontsize=8)
    figure.suptitle(title)
    return figure
