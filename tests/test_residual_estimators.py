"""The residual-estimators experiment (``dgmlab residual-estimators``): its branches are certified contractions,
its helpers agree with exact linear algebra, a quick run measures what the theorems predict, and a finished run
is never replaced without being asked."""

from __future__ import annotations

import json
import math

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

from dgmlab import plots  # noqa: E402
from dgmlab.errors import RunExistsError  # noqa: E402
from dgmlab.experiments.residual_estimators import (  # noqa: E402
    OUTPUT_FILES,
    dense_contraction,
    exact_truncated_series,
    jacobian,
    lipschitz_certificate,
    residual_estimators_table,
    run_residual_estimators,
)


@pytest.mark.parametrize("c", [0.5, 0.97])
def test_a_dense_contraction_is_certified_and_its_jacobian_is_autograds(c):
    g = dense_contraction(6, c, hidden=16, seed=3)
    certificate = lipschitz_certificate(g)
    assert certificate <= c * (1 + 1e-12)
    assert certificate == pytest.approx(c, rel=1e-9)  # the rescaling is active on every layer: the product is c
    x = torch.randn(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    jacobians = jacobian(g, x)
    for i in range(5):
        torch.testing.assert_close(jacobians[i], torch.autograd.functional.jacobian(g, x[i]))
    assert float(torch.linalg.matrix_norm(jacobians, ord=2).max()) <= c  # Lip(g) <= c at every point
    # the construction does not touch torch's global random state
    state = torch.random.get_rng_state()
    dense_contraction(6, c, hidden=16, seed=3)
    assert torch.equal(state, torch.random.get_rng_state())


def test_the_exact_truncated_series_converges_to_the_log_determinant():
    g = dense_contraction(5, 0.9, hidden=16, seed=2)
    x = torch.randn(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    jacobians = jacobian(g, x)
    series = exact_truncated_series(jacobians, 60)
    assert series.shape == (60, 4)
    torch.testing.assert_close(series[0], jacobians.diagonal(dim1=-2, dim2=-1).sum(-1))  # n = 1: tr J
    _, logdet = torch.linalg.slogdet(torch.eye(5, dtype=torch.float64) + jacobians)
    torch.testing.assert_close(series[-1], logdet, rtol=0, atol=1e-12)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("residual_estimators")
    lines: list[str] = []
    run_residual_estimators(out, quick=True, seed=0, log=lines.append)
    return out, json.loads((out / "results.json").read_text()), lines


def test_a_quick_run_writes_every_output_and_its_theorems_hold(quick_run):
    out, results, lines = quick_run
    for name in OUTPUT_FILES:
        assert (out / name).stat().st_size > 0, name
    assert all(results["checks"].values()), results["checks"]
    assert (out / "table.md").read_text() == residual_estimators_table(results)
    assert any("written to" in line for line in lines)
    for record in results["inverse"].values():
        errors = record["mean_error"]
        # the fixed-point error falls geometrically, at least as fast as c^k once past the first steps
        assert errors[-1] < 1e-9 < errors[0]
        assert record["steps_to_tolerance"] <= record["steps_to_tolerance_a_priori"]
    for record in results["bias"].values():
        bias = record["mean_abs_bias"]
        assert bias[0] > bias[9] > bias[-1] and bias[-1] < 1e-12  # the series converges to ln det(I + J)
        assert all(b <= bound for b, bound in zip(bias, record["truncation_bound"], strict=True))


def test_the_probe_variances_match_their_formulas_and_rademacher_is_smaller(quick_run):
    _, results, _ = quick_run
    variance = results["variance"]
    for probe in ("gaussian", "rademacher"):
        record = variance[probe]
        for measured, error, predicted in zip(record["measured"], record["standard_error"], record["predicted"],
                                              strict=True):
            assert abs(measured - predicted) < 4 * error, (probe, measured, predicted, error)
        # Hutchinson's estimate is unbiased for the truncated series: its mean error is within noise
        for mean_error, error in zip(record["mean_error"], record["mean_error_standard_error"], strict=True):
            assert abs(mean_error) < 4 * error
    assert all(r < g for r, g in zip(variance["rademacher"]["predicted"], variance["gaussian"]["predicted"],
                                     strict=True))


def test_the_roulette_is_unbiased_and_costs_what_it_should(quick_run):
    _, results, _ = quick_run
    p = results["settings"]["roulette_p"]
    m = results["settings"]["roulette_terms"]
    for key, record in results["roulette"].items():
        d = int(key)
        roulette = record["roulette"]
        assert abs(roulette["standard_errors_from_exact"]) < 3.5, roulette
        assert roulette["expected_terms"] == pytest.approx(m + (1 - p) / p)
        assert abs(roulette["mean_terms"] - roulette["expected_terms"]) < 0.25
        assert record["cost"]["exact"]["vjps"] == d  # the exact log-determinant: one backward pass per dimension
        for n in results["settings"]["cost_series_terms"]:
            assert record["cost"][f"series n={n}"]["vjps"] == n
        # the truncated series is biased, less so with more terms: the roulette's reason to exist
        assert abs(record["series_bias"]["2"]) > abs(record["series_bias"]["10"])
        assert record["series_mean_abs_bias"]["2"] > record["series_mean_abs_bias"]["5"] > 0


def test_a_finished_run_is_not_replaced_without_being_asked(quick_run):
    out, results, _ = quick_run
    before = (out / "results.json").read_text()
    with pytest.raises(RunExistsError, match="--overwrite"):
        run_residual_estimators(out, quick=True)
    assert (out / "results.json").read_text() == before
    assert math.isfinite(results["seconds"])


@pytest.mark.parametrize(
    ("draw", "message"),
    [
        (lambda: plots.inverse_error_curves([1, 2, 3], {0.5: [1, 0.5]}, {0.5: [1, 0.5, 0.2]}, {0.5: [2, 1, 0.5]}),
         r"must have shape \[3\]"),
        (lambda: plots.logdet_bias_curves([1, 2], {0.5: [0.1, 0.01]}, {0.9: [1, 0.5]}), "same keys"),
        (lambda: plots.estimator_cost_bars([2, 16], {"exact": [2, 16]}, {"exact": [0.1, 0.2]},
                                           expected_vjps={"roulette": [3, 3]}), "without measurements"),
    ],
)
def test_the_figures_reject_inconsistent_inputs(draw, message):
    with pytest.raises(ValueError, match=message):
        draw()
