r"""Line plots: training curves and the convergence of a Monte-Carlo estimator.

Monte-Carlo KL convergence (problem 3(b))
-----------------------------------------
The single-sample estimator $\widehat{\mathrm{KL}}_n = \frac1n\sum_{s=1}^n
[\log q(z_s\mid x) - \log p(z_s)]$, $z_s\sim q(z\mid x)$, is unbiased with variance
$\sigma^2/n$, $\sigma^2 = \mathrm{Var}_q[\log q(z\mid x) - \log p(z)]$. Its root-mean-square error is
therefore $\sigma n^{-1/2}$: a straight line of slope $-1/2$ on log-log axes,
$\log \mathrm{RMSE} = \log\sigma - \tfrac12 \log n$. :func:`kl_estimator_convergence` fits that slope by
least squares (:func:`dgmlab.numerics.fit_power_law`) and draws the $-1/2$ reference line with its intercept
fitted (:func:`dgmlab.numerics.power_law_intercept`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from dgmlab.numerics import ArrayLike, as_float_array, fit_power_law, power_law_intercept
from dgmlab.plots._common import new_figure

__all__ = ["kl_estimator_convergence", "loss_curves"]


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
    figure = new_figure(4.6 * columns, 3.6 * rows + 0.5)
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
    (:func:`~dgmlab.numerics.fit_power_law`) and a reference line of slope -1/2 whose intercept is fitted;
    theory predicts RMSE = sigma * n^(-1/2).

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
    counts = as_float_array(n_samples, "n_samples")
    if counts.ndim != 1 or counts.shape[0] < 2:
        raise ValueError(f"n_samples must have shape [m] with m >= 2, got {tuple(counts.shape)}")
    if np.any(counts <= 0):
        raise ValueError("n_samples must be positive (they are drawn on a log axis)")
    estimates = as_float_array(mc_estimates, "mc_estimates")
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
        errors = as_float_array(abs_errors, "abs_errors")
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
    reference_intercept = power_law_intercept(counts[positive], errors[positive], -0.5)

    figure = new_figure(12.0, 5.0)
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
