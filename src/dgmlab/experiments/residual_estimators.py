r"""Every estimator of the invertible residual block :math:`F(x) = x + g(x)`,
:math:`\mathrm{Lip}(g) \le c < 1` (:mod:`dgmlab.models.flows.residual`), against its exact value, in float64,
on dense contractions :math:`g: \mathbb R^d \to \mathbb R^d` (:func:`dense_contraction`).

The branches
------------
:math:`g` is a :func:`~dgmlab.models.flows.lipschitz.lipschitz_mlp` of :math:`L` layers with coefficient
:math:`c^{1/L}` per layer, its weights scaled up so that every layer is really normalised, its power
iteration run and its vectors :math:`u, v` then set to the top singular pair by SVD before it is frozen (eval
mode). The product of the normalised weights' exact
spectral norms, :math:`\prod_l\lVert\tilde W_l\rVert_2 \ge \mathrm{Lip}(g)`, is computed by SVD and checked to
be at most :math:`c`: every bound below then holds with the nominal :math:`c`. The Jacobian
:math:`J = J_g(x)` at a point is built by autograd (:math:`d` backward passes); its measured
:math:`\lVert J\rVert_2` shows how far the worst case :math:`\lVert J\rVert_2 = c` is.

What is measured
----------------
a. **Inverse.** With :math:`y = x^\star + g(x^\star)`, the error :math:`\lVert x^{(k)} - x^\star\rVert` of
   :math:`x^{(k+1)} = y - g(x^{(k)})`, :math:`x^{(0)} = y`, beside Banach's bounds

   .. math:: \lVert x^{(k)} - x^\star\rVert \le \frac{c^k}{1-c}\lVert x^{(1)} - x^{(0)}\rVert, \qquad
             \lVert x^{(k)} - x^\star\rVert \le \frac{c}{1-c}\lVert x^{(k)} - x^{(k-1)}\rVert,

   each checked for every example and iteration up to a rounding allowance
   :math:`16\,\epsilon\lVert y\rVert/(1-c)` (the rounding of :math:`y` and of each step, amplified by
   :math:`\sum_j c^j`), and the steps until the largest error is below a tolerance, measured and predicted by
   the a-priori bound.
b. **Truncation bias.** :math:`\ln\det(I + J)` by ``slogdet`` against the series truncated at :math:`n`
   terms, computed exactly from :math:`J`,

   .. math:: \Big|\sum_{k=1}^{n}\frac{(-1)^{k+1}}{k}\operatorname{tr}J^k - \ln\det(I+J)\Big|
             \le d\sum_{k>n}\frac{c^k}{k}

   (:func:`~dgmlab.models.flows.residual.truncation_bound`), also with :math:`c` replaced by the measured
   :math:`\max\lVert J\rVert_2`, a valid and much tighter bound.
c. **Probe variance.** The one-probe estimate :math:`v^\top A v` of :math:`\operatorname{tr}A`,
   :math:`A = \sum_{k\le n}\frac{(-1)^{k+1}}{k}J^k`, has variance :math:`2\lVert A_s\rVert_F^2` for a standard
   Gaussian :math:`v` and :math:`2(\lVert A_s\rVert_F^2 - \sum_i A_{ii}^2)` for a Rademacher one, with
   :math:`A_s = (A + A^\top)/2`: measured over many probes at a few points, beside that prediction from
   the explicit :math:`J`, both averaged over the points. The standard error of a sample variance
   :math:`s^2` of :math:`M` draws is :math:`\sqrt{(m_4 - s^4)/M}` (:math:`m_4` the fourth central moment).
d. **Russian roulette and cost.** The mean over independent calls (one truncation :math:`m + N` per call,
   :math:`N \sim \operatorname{Geometric}(p)`) of the batch-mean roulette estimate, ± its standard error,
   against the exact batch mean, beside the exact bias of the truncated series. Its variance is finite
   when :math:`\sum_k (1-p)^{-k}\lVert J^k\rVert^2 < \infty`, which :math:`\lVert J\rVert_2^2 < 1 - p`
   guarantees (recorded per dimension). Cost per batch: vector-Jacobian products (counted by a hook on the
   input's gradient) and milliseconds (median of repeats, one CPU thread) of the exact Jacobian, the series
   and the roulette; and of a training step (value and backward of the batch mean) with
   ``gradient="backprop"`` and ``gradient="neumann"``.

:func:`run_residual_estimators` writes ``results.json``, ``table.md`` and four figures
(:mod:`dgmlab.plots.residual`).
"""

from __future__ import annotations

import json
import math
import statistics
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dgmlab import plots
from dgmlab.checkpoint import atomic_write_text
from dgmlab.models.flows.lipschitz import LipschitzNet, lipschitz_mlp
from dgmlab.models.flows.residual import (
    a_posteriori_bound,
    a_priori_bound,
    fixed_point_inverse,
    logdet_exact,
    logdet_power_series,
    truncation_bound,
)
from dgmlab.rundir import lock_run, refuse_or_clear_results
from dgmlab.utils import check_int, cpu_threads

__all__ = ["QUICK", "SETTINGS", "ResidualEstimatorsSettings", "dense_contraction", "exact_truncated_series",
           "jacobian", "lipschitz_certificate", "residual_estimators_table", "run_residual_estimators"]

OUTPUT_FILES = ("results.json", "table.md", "inverse_error.png", "logdet_bias.png", "probe_variance.png",
                "estimator_cost.png")  # a finished run; results.json is written last
F64 = torch.float64
EPS = torch.finfo(F64).eps
ROUNDING_FACTOR = 16  # units of rounding in the allowances of the checks (module docstring)


@dataclass(frozen=True)
class ResidualEstimatorsSettings:
    """Every setting of :func:`run_residual_estimators` (section letters as in the module docstring)."""

    # the branches g
    hidden: int = 64
    layers: int = 2
    weight_scale: float = 3.0  # weights scaled up so that every layer is at its bound
    power_iterations: int = 300
    input_scale: float = 2.0  # points x ~ input_scale * N(0, I)
    coefficients: tuple[float, ...] = (0.5, 0.7, 0.9, 0.97)
    # a. inverse
    inverse_dimension: int = 16
    inverse_examples: int = 64
    inverse_iterations: int = 60
    inverse_tolerance: float = 1e-10
    # b. truncation bias
    bias_dimension: int = 16
    bias_examples: int = 32
    bias_terms: int = 30
    # c. probe variance
    variance_coefficient: float = 0.9
    variance_dimension: int = 16
    variance_points: int = 8
    variance_probes: int = 4000
    variance_terms: tuple[int, ...] = (1, 2, 5, 10, 20)
    # d. roulette and cost
    roulette_coefficient: float = 0.9
    roulette_dimensions: tuple[int, ...] = (2, 16, 64)
    roulette_batch: int = 64
    roulette_terms: int = 2
    roulette_p: float = 0.5
    roulette_calls: int = 10000
    series_terms: tuple[int, ...] = (2, 5, 10)
    cost_series_terms: tuple[int, ...] = (5, 10)
    timing_repeats: int = 15


SETTINGS = ResidualEstimatorsSettings()
#: The smoke run (seconds): fewer probes, roulette calls and timing repeats; the same branches and points.
QUICK = replace(SETTINGS, variance_probes=500, roulette_calls=600, timing_repeats=3)


# ----------------------------------------------------------------------------------------------------------
# Branches and their Jacobians
# ----------------------------------------------------------------------------------------------------------
def _seed(seed: int, *parts: object) -> int:
    """A seed of its own for each part of the experiment, from the run's seed."""
    return zlib.crc32(repr((seed, *parts)).encode())


def dense_contraction(d: int, c: float, *, hidden: int = 64, layers: int = 2, seed: int = 0,
                      weight_scale: float = 3.0, power_iterations: int = 300) -> LipschitzNet:
    r"""A float64 branch :math:`g: \mathbb R^d\to\mathbb R^d` with :math:`\mathrm{Lip}(g)\le c`: a
    :func:`~dgmlab.models.flows.lipschitz.lipschitz_mlp` of ``layers`` layers (ELU) with coefficient
    :math:`c^{1/L}` each, its weights multiplied by ``weight_scale`` (so that every layer's norm is above its
    coefficient and the rescaling is active), ``power_iterations`` power iterations per layer, then the buffers
    ``u, v`` set to the top singular pair by SVD (so :math:`\hat\sigma = \lVert W\rVert_2` and the certificate
    equals :math:`c` to rounding), then eval mode (frozen). Built from ``seed`` without touching torch's global
    random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        g = lipschitz_mlp(d, hidden, layers=layers, coefficient=c ** (1 / layers), activation="elu").to(F64)
    with torch.no_grad():
        for parameter in g.parameters():
            parameter.mul_(weight_scale)
        for layer in g.spectral_layers():
            layer.power_iterate(power_iterations)
            # then u, v <- the top singular pair by SVD, so that sigma_hat = ||W||_2 to rounding and the
            # certificate prod ||W~_l||_2 equals c (power iteration alone stops a few 1e-9 short of ||W||_2)
            left, _, right = torch.linalg.svd(layer.weight, full_matrices=False)
            layer.u.copy_(left[:, 0])
            layer.v.copy_(right[0])
    return g.eval()


@torch.no_grad()
def lipschitz_certificate(g: LipschitzNet) -> float:
    r""":math:`\prod_l\lVert\tilde W_l\rVert_2` by SVD over the normalised weights of ``g``'s spectral layers: an
    upper bound on :math:`\mathrm{Lip}(g)` (the activations being 1-Lipschitz)."""
    return math.prod(float(torch.linalg.matrix_norm(layer.normalized_weight(), ord=2))
                     for layer in g.spectral_layers())


def jacobian(g: torch.nn.Module, x: Tensor) -> Tensor:
    """:math:`J_g` at every example of ``x`` ``[B, d]``: ``[B, d, d]`` (row :math:`i` is the gradient of
    :math:`g_i`), by :math:`d` backward passes over the whole batch (examples must not interact in ``g``)."""
    with torch.enable_grad():
        inner = x.detach().requires_grad_(True)
        gx = g(inner)
        rows = [torch.autograd.grad(gx[:, i].sum(), inner, retain_graph=True)[0] for i in range(x.shape[1])]
    return torch.stack(rows, dim=1)


def _matrix_terms(jacobians: Tensor, terms: int) -> list[Tensor]:
    """:math:`A_n = \\sum_{k\\le n}(-1)^{k+1}J^k/k` for :math:`n = 1..` ``terms``, each ``[B, d, d]``."""
    power, total, partial = jacobians, torch.zeros_like(jacobians), []
    for k in range(1, terms + 1):
        if k > 1:
            power = power @ jacobians
        # A_n = A_{n-1} + (-1)^(n+1) J^n / n
        total = total + ((-1) ** (k + 1) / k) * power
        partial.append(total)
    return partial


def exact_truncated_series(jacobians: Tensor, terms: int) -> Tensor:
    r""":math:`\sum_{k\le n}\frac{(-1)^{k+1}}{k}\operatorname{tr}J^k` for :math:`n = 1..` ``terms`` from explicit
    Jacobians ``[B, d, d]``: ``[terms, B]``."""
    return torch.stack([a.diagonal(dim1=-2, dim2=-1).sum(-1) for a in _matrix_terms(jacobians, terms)])


def _exact_logdet(jacobians: Tensor) -> Tensor:
    eye = torch.eye(jacobians.shape[-1], dtype=jacobians.dtype)
    sign, value = torch.linalg.slogdet(eye + jacobians)
    if not bool((sign > 0).all()):
        raise RuntimeError("det(I + J) <= 0 at some point: g is not a contraction there")
    return value


def _points(examples: int, d: int, scale: float, seed: int) -> Tensor:
    return scale * torch.randn(examples, d, dtype=F64, generator=torch.Generator().manual_seed(seed))


def _branch(settings: ResidualEstimatorsSettings, d: int, c: float, seed: int) -> tuple[LipschitzNet, float]:
    g = dense_contraction(d, c, hidden=settings.hidden, layers=settings.layers, seed=seed,
                          weight_scale=settings.weight_scale, power_iterations=settings.power_iterations)
    certificate = lipschitz_certificate(g)
    if certificate > c * (1 + 1e-9):
        raise RuntimeError(f"the branch for c = {c} has prod ||W_l||_2 = {certificate:.12g} > c: its power iteration "
                           f"has not converged; raise power_iterations")
    return g, certificate


def _values(tensor: Tensor) -> list[float]:
    return [float(v) for v in tensor]


# ----------------------------------------------------------------------------------------------------------
# a. The inverse
# ----------------------------------------------------------------------------------------------------------
def _first_step_below(values: Tensor, tolerance: float) -> int | None:
    """The first iteration k (values[k - 1] is iteration k) at which ``values`` is at most ``tolerance``."""
    below = (values <= tolerance).nonzero()
    return int(below[0]) + 1 if len(below) else None


def _measure_inverse(settings: ResidualEstimatorsSettings, seed: int) -> dict[str, Any]:
    d, K = settings.inverse_dimension, settings.inverse_iterations
    results: dict[str, Any] = {}
    for c in settings.coefficients:
        g, certificate = _branch(settings, d, c, _seed(seed, "inverse", c))
        x_star = _points(settings.inverse_examples, d, settings.input_scale, _seed(seed, "inverse points", c))
        with torch.no_grad():
            # y = x* + g(x*)
            y = x_star + g(x_star)
        _, steps, iterates = fixed_point_inverse(g, y, iterations=K, atol=0.0, history=True)
        # an exact fixed point in floating point (a zero step everywhere) repeats itself
        iterates = iterates + [iterates[-1]] * (K + 1 - len(iterates))
        stacked = torch.stack(iterates)  # [K + 1, B, d]
        errors = (stacked[1:] - x_star).norm(dim=-1)  # [K, B]: ||x^(k) - x*||
        first_step = (stacked[1] - stacked[0]).norm(dim=-1)
        ks = torch.arange(1, K + 1, dtype=F64)[:, None]
        prior = a_priori_bound(c, ks, first_step)  # [K, B]
        posterior = a_posteriori_bound(c, (stacked[1:] - stacked[:-1]).norm(dim=-1))
        allowance = ROUNDING_FACTOR * EPS * y.norm(dim=-1) / (1 - c)
        prior_violations = int((errors > prior + allowance).sum())
        posterior_violations = int((errors > posterior + allowance).sum())
        tolerance = settings.inverse_tolerance
        # smallest k with c^k / (1 - c) max ||x1 - x0|| <= tolerance
        predicted = math.ceil(math.log(tolerance * (1 - c) / float(first_step.max())) / math.log(c))
        results[str(c)] = {
            "c": c, "lipschitz_certificate": certificate, "iterations_run": steps,
            "mean_error": _values(errors.mean(1)), "max_error": _values(errors.max(1).values),
            "mean_a_priori_bound": _values(prior.mean(1)), "mean_a_posteriori_bound": _values(posterior.mean(1)),
            "a_priori_violations": prior_violations, "a_posteriori_violations": posterior_violations,
            "checks": int(errors.numel()),
            "within_rounding_allowance_only": int(((errors > prior) & (errors <= prior + allowance)).sum()),
            "largest_rounding_allowance": float(allowance.max()),
            "steps_to_tolerance": _first_step_below(errors.max(1).values, tolerance),
            "steps_to_tolerance_a_priori": max(predicted, 0),
        }
    return results


# ----------------------------------------------------------------------------------------------------------
# b. The truncation bias
# ----------------------------------------------------------------------------------------------------------
def _measure_bias(settings: ResidualEstimatorsSettings, seed: int) -> dict[str, Any]:
    d, n = settings.bias_dimension, settings.bias_terms
    results: dict[str, Any] = {}
    for c in settings.coefficients:
        g, certificate = _branch(settings, d, c, _seed(seed, "bias", c))
        x = _points(settings.bias_examples, d, settings.input_scale, _seed(seed, "bias points", c))
        jacobians = jacobian(g, x)
        exact = _exact_logdet(jacobians)
        bias = (exact_truncated_series(jacobians, n) - exact).abs()  # [n, B]
        norms = torch.linalg.matrix_norm(jacobians, ord=2)
        radius = torch.linalg.eigvals(jacobians).abs().max(-1).values
        bound = torch.tensor([truncation_bound(d, c, k) for k in range(1, n + 1)], dtype=F64)
        measured_norm = float(norms.max())
        tighter = torch.tensor([truncation_bound(d, measured_norm, k) for k in range(1, n + 1)], dtype=F64)
        allowance = ROUNDING_FACTOR * EPS * d * max(1.0, float(exact.abs().max()))
        results[str(c)] = {
            "c": c, "lipschitz_certificate": certificate,
            "max_jacobian_norm": measured_norm, "mean_jacobian_norm": float(norms.mean()),
            "max_spectral_radius": float(radius.max()), "mean_exact_logdet": float(exact.mean()),
            "mean_abs_bias": _values(bias.mean(1)), "max_abs_bias": _values(bias.max(1).values),
            "truncation_bound": _values(bound), "truncation_bound_measured_norm": _values(tighter),
            "bound_violations": int((bias > bound[:, None] + allowance).sum()),
            "measured_norm_bound_violations": int((bias > tighter[:, None] + allowance).sum()),
            "rounding_allowance": allowance,
        }
    return results


# ----------------------------------------------------------------------------------------------------------
# c. The probes' variance
# ----------------------------------------------------------------------------------------------------------
def _measure_variance(settings: ResidualEstimatorsSettings, seed: int) -> dict[str, Any]:
    d, c = settings.variance_dimension, settings.variance_coefficient
    points, probes, terms = settings.variance_points, settings.variance_probes, settings.variance_terms
    g, certificate = _branch(settings, d, c, _seed(seed, "variance", c))
    x = _points(points, d, settings.input_scale, _seed(seed, "variance points"))
    jacobians = jacobian(g, x)
    matrices = _matrix_terms(jacobians, max(terms))
    inner = x.repeat_interleave(probes, dim=0).requires_grad_(True)  # each point replicated into the probes
    gx = g(inner)
    results: dict[str, Any] = {"c": c, "d": d, "points": points, "probes_per_point": probes, "terms": list(terms),
                               "lipschitz_certificate": certificate}
    for probe in ("gaussian", "rademacher"):
        generator = torch.Generator().manual_seed(_seed(seed, "variance probes", probe))
        record: dict[str, list[float]] = {key: [] for key in (
            "measured", "standard_error", "predicted", "relative_difference", "mean_error",
            "mean_error_standard_error")}
        for n in terms:
            estimates = logdet_power_series(gx, inner, terms=n, probe=probe, generator=generator).value
            estimates = estimates.reshape(points, probes)
            variance = estimates.var(dim=1)  # per point, unbiased
            centred = estimates - estimates.mean(dim=1, keepdim=True)
            fourth = centred.pow(4).mean(dim=1)
            # standard error of a sample variance: sqrt((m4 - s^4) / M), then of the mean over points
            error = ((fourth - variance**2).clamp_min(0) / probes).sqrt().pow(2).sum().sqrt() / points
            a = matrices[n - 1]
            symmetric = (a + a.transpose(-1, -2)) / 2
            frobenius = symmetric.pow(2).sum((-1, -2))
            # Var v^T A v = 2 ||A_s||_F^2 (Gaussian), 2 (||A_s||_F^2 - sum_i A_ii^2) (Rademacher)
            predicted = 2 * frobenius if probe == "gaussian" else 2 * (
                frobenius - a.diagonal(dim1=-2, dim2=-1).pow(2).sum(-1))
            trace = a.diagonal(dim1=-2, dim2=-1).sum(-1)
            deviation = estimates - trace[:, None]  # Hutchinson is unbiased for the truncated series
            record["measured"].append(float(variance.mean()))
            record["standard_error"].append(float(error))
            record["predicted"].append(float(predicted.mean()))
            record["relative_difference"].append(float(variance.mean() / predicted.mean() - 1))
            record["mean_error"].append(float(deviation.mean()))
            record["mean_error_standard_error"].append(float(deviation.std() / math.sqrt(deviation.numel())))
        results[probe] = record
    return results


# ----------------------------------------------------------------------------------------------------------
# d. The roulette and the cost
# ----------------------------------------------------------------------------------------------------------
class _Counter:
    """Counts the gradients computed with respect to a tensor: one per vector-Jacobian product through g."""

    def __init__(self, tensor: Tensor) -> None:
        self.count = 0
        tensor.register_hook(self._hook)

    def _hook(self, grad: Tensor) -> None:
        self.count += 1


def _median_ms(call: Callable[[int], int], repeats: int) -> tuple[float, float]:
    """The median milliseconds of ``call(r)`` over ``repeats`` calls (after one warm-up call) and the mean of
    what it returns (its vector-Jacobian products)."""
    call(-1)
    times, counts = [], []
    for r in range(repeats):
        started = time.perf_counter()
        counts.append(call(r))
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times), sum(counts) / len(counts)


def _measure_roulette(settings: ResidualEstimatorsSettings, seed: int) -> dict[str, Any]:
    c, m, p = settings.roulette_coefficient, settings.roulette_terms, settings.roulette_p
    calls, repeats = settings.roulette_calls, settings.timing_repeats
    results: dict[str, Any] = {}
    for d in settings.roulette_dimensions:
        g, certificate = _branch(settings, d, c, _seed(seed, "roulette", d))
        x = _points(settings.roulette_batch, d, settings.input_scale, _seed(seed, "roulette points", d))
        jacobians = jacobian(g, x)
        exact = _exact_logdet(jacobians)
        norms = torch.linalg.matrix_norm(jacobians, ord=2)
        series = exact_truncated_series(jacobians, max(settings.series_terms))
        # unbiasedness: one truncation m + N per call, the batch mean of each call
        inner = x.clone().requires_grad_(True)
        counter = _Counter(inner)
        gx = g(inner)
        generator = torch.Generator().manual_seed(_seed(seed, "roulette calls", d))
        means, terms = [], []
        for _ in range(calls):
            estimate = logdet_power_series(gx, inner, terms=m, roulette_p=p, generator=generator)
            means.append(estimate.value.mean())
            terms.append(estimate.terms)
        means_tensor = torch.stack(means)
        mean, error = float(means_tensor.mean()), float(means_tensor.std() / math.sqrt(calls))
        exact_mean = float(exact.mean())

        def value_call(estimator: str, n: int = 0, *, x: Tensor = x, g: LipschitzNet = g) -> Callable[[int], int]:
            def run(r: int) -> int:
                leaf = x.clone().requires_grad_(True)
                count = _Counter(leaf)
                gx = g(leaf)
                if estimator == "exact":
                    logdet_exact(gx, leaf)
                else:
                    logdet_power_series(gx, leaf, terms=n, roulette_p=p if estimator == "roulette" else None,
                                        generator=torch.Generator().manual_seed(_seed(seed, "timing", r)))
                return count.count
            return run

        def training_call(gradient: str, *, x: Tensor = x, g: LipschitzNet = g) -> Callable[[int], int]:
            def run(r: int) -> int:
                g.zero_grad(set_to_none=True)
                leaf = x.clone().requires_grad_(True)
                estimate = logdet_power_series(g(leaf), leaf, terms=m, roulette_p=p, gradient=gradient,
                                               create_graph=True,
                                               generator=torch.Generator().manual_seed(_seed(seed, "timing", r)))
                estimate.value.mean().backward()
                return estimate.vjps
            return run

        cost: dict[str, dict[str, float]] = {}
        for name, call, expected in (
                [("exact", value_call("exact"), d)]
                + [(f"series n={n}", value_call("series", n), n) for n in settings.cost_series_terms]
                + [("roulette", value_call("roulette", m), m + (1 - p) / p)]):
            ms, vjps = _median_ms(call, repeats)
            cost[name] = {"ms": ms, "vjps": vjps, "expected_vjps": expected}
        cost["roulette"]["vjps"] = counter.count / calls  # the mean over every unbiasedness call
        training = {}
        for gradient in ("backprop", "neumann"):
            ms, vjps = _median_ms(training_call(gradient), repeats)
            training[gradient] = {"ms": ms, "vjps": vjps}
        g.zero_grad(set_to_none=True)
        results[str(d)] = {
            "d": d, "c": c, "batch": settings.roulette_batch, "lipschitz_certificate": certificate,
            "max_jacobian_norm": float(norms.max()),
            "max_spectral_radius": float(torch.linalg.eigvals(jacobians).abs().max()),
            "finite_variance_guaranteed": bool(float(norms.max()) ** 2 < 1 - p),
            "exact_mean_logdet": exact_mean,
            "roulette": {"calls": calls, "mean": mean, "standard_error": error,
                         "standard_errors_from_exact": (mean - exact_mean) / error if error > 0 else 0.0,
                         "mean_terms": sum(terms) / calls, "max_terms": max(terms),
                         "expected_terms": m + (1 - p) / p},
            "series_bias": {str(n): float(series[n - 1].mean()) - exact_mean for n in settings.series_terms},
            "series_mean_abs_bias": {str(n): float((series[n - 1] - exact).abs().mean())
                                     for n in settings.series_terms},
            "cost": cost, "training_step": training,
        }
    return results


# ----------------------------------------------------------------------------------------------------------
# The table, the figures and the run
# ----------------------------------------------------------------------------------------------------------
def _sci(value: float | None) -> str:
    return "—" if value is None else f"{value:.2e}"


def residual_estimators_table(results: Mapping[str, Any]) -> str:
    """The Markdown tables of :func:`run_residual_estimators` from its ``results.json`` contents: a. the
    inverse, b. the truncation bias, c. the probes' variance, d. the roulette and the cost."""
    settings = results["settings"]
    lines = [f"Every i-ResNet estimator against its exact value (float64, seed {results['seed']}"
             f"{', quick' if results['quick'] else ''}; branches g: {settings['layers']}-layer spectrally normalised "
             f"ELU MLPs of width {settings['hidden']}, Lip(g) <= c certified by SVD).", ""]
    inverse = results["inverse"]
    k = min(10, settings["inverse_iterations"])
    lines += [f"### a. Fixed-point inverse (d = {settings['inverse_dimension']}, {settings['inverse_examples']} "
              f"examples; error = Euclidean norm)", "",
              f"| c | mean error at k={k} | a-priori bound at k={k} | steps to {settings['inverse_tolerance']:g} "
              f"(measured) | (a-priori bound) | bound violations |", "|---:|---:|---:|---:|---:|---:|"]
    for record in inverse.values():
        lines.append(f"| {record['c']:g} | {_sci(record['mean_error'][k - 1])} | "
                     f"{_sci(record['mean_a_priori_bound'][k - 1])} | {record['steps_to_tolerance'] or '—'} | "
                     f"{record['steps_to_tolerance_a_priori']} | "
                     f"{record['a_priori_violations'] + record['a_posteriori_violations']} of "
                     f"{2 * record['checks']} |")
    bias = results["bias"]
    shown = [n for n in (1, 2, 5, 10, 20, 30) if n <= settings["bias_terms"]]
    lines += ["", f"### b. Truncation bias of the power series (d = {settings['bias_dimension']}, "
              f"{settings['bias_examples']} examples; mean |bias| in nats / bound d Σ_(k>n) c^k/k)", "",
              "| c | max ‖J‖₂ | " + " | ".join(f"n={n}" for n in shown) + " |",
              "|---:|---:|" + "---:|" * len(shown)]
    for record in bias.values():
        cells = [f"{_sci(record['mean_abs_bias'][n - 1])} / {_sci(record['truncation_bound'][n - 1])}"
                 for n in shown]
        lines.append(f"| {record['c']:g} | {record['max_jacobian_norm']:.3f} | " + " | ".join(cells) + " |")
    variance = results["variance"]
    lines += ["", f"### c. Variance of the one-probe estimate of the n-term series (c = {variance['c']:g}, d = "
              f"{variance['d']}, {variance['points']} points × {variance['probes_per_point']:,} probes; nats², "
              f"mean over points ± standard error)", "",
              "| n | Gaussian measured | predicted 2‖A_s‖²_F | Δ | Rademacher measured | predicted "
              "2(‖A_s‖²_F − Σ A_ii²) | Δ |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for index, n in enumerate(variance["terms"]):
        cells = []
        for probe in ("gaussian", "rademacher"):
            record = variance[probe]
            cells += [f"{record['measured'][index]:.4f} ± {record['standard_error'][index]:.4f}",
                      f"{record['predicted'][index]:.4f}", f"{100 * record['relative_difference'][index]:+.1f}%"]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    roulette = results["roulette"]
    series_terms = settings["series_terms"]
    lines += ["", f"### d. Russian roulette (m = {settings['roulette_terms']} terms + Geometric("
              f"{settings['roulette_p']:g}), c = {settings['roulette_coefficient']:g}, batch "
              f"{settings['roulette_batch']}; batch-mean ln det in nats)", "",
              "| d | max ‖J‖₂ | exact | roulette mean ± s.e. | (mean − exact)/s.e. | calls | "
              + " | ".join(f"series n={n} bias" for n in series_terms) + " |",
              "|---:|---:|---:|---:|---:|---:|" + "---:|" * len(series_terms)]
    for record in roulette.values():
        r = record["roulette"]
        lines.append(f"| {record['d']} | {record['max_jacobian_norm']:.3f} | {record['exact_mean_logdet']:.5f} | "
                     f"{r['mean']:.5f} ± {r['standard_error']:.5f} | {r['standard_errors_from_exact']:+.2f} | "
                     f"{r['calls']:,} | " + " | ".join(f"{_sci(record['series_bias'][str(n)])}"
                                                      for n in series_terms) + " |")
    names = list(next(iter(roulette.values()))["cost"])
    lines += ["", "Cost per batch: vector-Jacobian products / median ms (value only), and a training step (value + "
              "backward of the mean) with the roulette", "",
              "| d | " + " | ".join(names) + " | train backprop | train neumann |",
              "|---:|" + "---:|" * (len(names) + 2)]
    for record in roulette.values():
        cells = [f"{record['cost'][name]['vjps']:.3g} / {record['cost'][name]['ms']:.2f}" for name in names]
        cells += [f"{record['training_step'][gradient]['ms']:.2f} ms" for gradient in ("backprop", "neumann")]
        lines.append(f"| {record['d']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _figures(results: Mapping[str, Any]) -> dict[str, Any]:
    settings = results["settings"]
    inverse, bias, variance, roulette = (results[key] for key in ("inverse", "bias", "variance", "roulette"))
    dimensions = [record["d"] for record in roulette.values()]
    names = list(next(iter(roulette.values()))["cost"])
    return {
        "inverse_error.png": plots.inverse_error_curves(
            range(1, settings["inverse_iterations"] + 1),
            {r["c"]: r["mean_error"] for r in inverse.values()}, {r["c"]: r["max_error"] for r in inverse.values()},
            {r["c"]: r["mean_a_priori_bound"] for r in inverse.values()}, tolerance=settings["inverse_tolerance"],
            title=f"Fixed-point inverse of y = x + g(x), d = {settings['inverse_dimension']}: error against "
                  f"Banach's a-priori bound"),
        "logdet_bias.png": plots.logdet_bias_curves(
            range(1, settings["bias_terms"] + 1), {r["c"]: r["mean_abs_bias"] for r in bias.values()},
            {r["c"]: r["truncation_bound"] for r in bias.values()},
            {r["c"]: r["truncation_bound_measured_norm"] for r in bias.values()},
            title=f"Truncated series of ln det(I + J), d = {settings['bias_dimension']}: bias against the "
                  f"truncation bound"),
        "probe_variance.png": plots.probe_variance_curves(
            variance["terms"], {probe: variance[probe]["measured"] for probe in ("gaussian", "rademacher")},
            {probe: variance[probe]["predicted"] for probe in ("gaussian", "rademacher")},
            {probe: variance[probe]["standard_error"] for probe in ("gaussian", "rademacher")},
            title=f"One-probe Hutchinson estimate of the n-term series (c = {variance['c']:g}, d = "
                  f"{variance['d']}): variance against 2‖A_s‖²_F"),
        "estimator_cost.png": plots.estimator_cost_bars(
            dimensions, {name: [r["cost"][name]["vjps"] for r in roulette.values()] for name in names},
            {name: [r["cost"][name]["ms"] for r in roulette.values()] for name in names},
            {name: [r["cost"][name]["expected_vjps"] for r in roulette.values()] for name in names},
            {f"roulette, {gradient}": [r["training_step"][gradient]["ms"] for r in roulette.values()]
             for gradient in ("backprop", "neumann")},
            title=f"Cost of the log-determinant estimators per batch of {settings['roulette_batch']} "
                  f"(c = {settings['roulette_coefficient']:g}, one CPU thread)"),
    }


def _check_theorems(results: Mapping[str, Any]) -> dict[str, bool]:
    """The checks recorded in ``results.json``; a violated bound is a bug (each is a theorem): raise."""
    checks = {
        "lipschitz_certificate_at_most_c": all(
            r["lipschitz_certificate"] <= r["c"] * (1 + 1e-9)
            for section in ("inverse", "bias", "roulette") for r in results[section].values()),
        "inverse_error_within_a_priori_bound": all(r["a_priori_violations"] == 0 for r in results["inverse"].values()),
        "inverse_error_within_a_posteriori_bound": all(
            r["a_posteriori_violations"] == 0 for r in results["inverse"].values()),
        "bias_within_truncation_bound": all(r["bound_violations"] == 0 for r in results["bias"].values()),
        "bias_within_measured_norm_bound": all(
            r["measured_norm_bound_violations"] == 0 for r in results["bias"].values()),
    }
    failed = [name for name, passed in checks.items() if not passed]
    if failed:
        raise RuntimeError(f"run_residual_estimators: a theorem's bound is violated ({', '.join(failed)}): the "
                           f"estimators or the branches are wrong")
    return checks


def run_residual_estimators(out: str | Path, *, quick: bool = False, seed: int = 0, overwrite: bool = False,
                            log: Callable[[str], None] = print) -> Path:
    r"""Measure every estimator of the invertible residual block against its exact value (module docstring)
    and write into ``out``:

    * ``results.json``: every number (a. errors and bounds per iteration and :math:`c`, steps to the
      tolerance; b. mean and largest bias and both bounds per :math:`n`, :math:`\lVert J\rVert_2`; c. measured
      and predicted variances per :math:`n` and probe; d. roulette mean ± standard error, series biases, vector-
      Jacobian products and milliseconds), the checks of the bounds, units, settings, ``seed``, ``quick`` and
      the seconds taken;
    * ``table.md``: the summaries of :func:`residual_estimators_table`;
    * ``inverse_error.png``, ``logdet_bias.png``, ``probe_variance.png``, ``estimator_cost.png``
      (:mod:`dgmlab.plots.residual`).

    ``quick`` uses :data:`QUICK` (seconds; fewer probes, calls and timing repeats), else :data:`SETTINGS`.
    Everything runs on one CPU thread in float64. A violated bound raises ``RuntimeError`` (each is a
    theorem). ``out`` is locked while this runs (:func:`dgmlab.rundir.lock_run`), and one that holds any of the
    output files is refused with :class:`~dgmlab.errors.RunExistsError` unless ``overwrite``, which replaces
    them once the measurements are done. ``log`` receives a line per section and the table. Returns ``out``."""
    out = Path(out)
    seed = check_int(seed, "seed", minimum=0, owner="run_residual_estimators")
    settings = QUICK if quick else SETTINGS
    started = time.perf_counter()
    with lock_run(out):
        refuse_or_clear_results(out, OUTPUT_FILES, "residual-estimators", overwrite=overwrite, clear=False)
        sections: dict[str, Any] = {}
        with cpu_threads(1):
            for name, measure in (("inverse", _measure_inverse), ("bias", _measure_bias),
                                  ("variance", _measure_variance), ("roulette", _measure_roulette)):
                section_started = time.perf_counter()
                sections[name] = measure(settings, seed)
                log(f"{name}: {time.perf_counter() - section_started:.1f} s")
        results: dict[str, Any] = {
            "experiment": "Invertible residual blocks (Behrmann et al. 2019; Chen et al. 2019): every estimator "
                          "against its exact value",
            "units": {"error": "Euclidean norm of x", "logdet": "nats", "bias": "nats", "variance": "nats^2",
                      "ms": "milliseconds (median of repeats, one CPU thread)", "vjps": "vector-Jacobian products "
                      "per batch", "seconds": "s"},
            "quick": quick, "seed": seed, "dtype": "float64",
            "settings": {key: (list(value) if isinstance(value, tuple) else value)
                         for key, value in asdict(settings).items()},
            **sections,
        }
        results["checks"] = _check_theorems(results)
        table = residual_estimators_table(results)
        figures = _figures(results)
        results["seconds"] = round(time.perf_counter() - started, 1)
        refuse_or_clear_results(out, OUTPUT_FILES, "residual-estimators", overwrite=overwrite, clear=True)
        for filename, figure in figures.items():
            plots.save_figure(figure, out / filename)
        atomic_write_text(out / "table.md", table)
        atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    log(table + f"\n{results['seconds']:.0f} s; written to {out}")
    return out
