"""Invertible residual networks and Residual Flows: every estimator against its exact value.

The block's log-determinant (exact mode) and inverse are also checked by the shared transform tests in
``test_flows.py`` (``residual_block_mlp``, ``residual_block_conv``); here: the fixed-point inverse against
Banach's bounds, the power series against its truncation bound, Hutchinson's estimator for bias and variance,
the Russian roulette estimator and the Neumann-series gradient for unbiasedness, and the whole flows.
"""

from __future__ import annotations

import math

import pytest
import torch

from dgmlab.errors import ModelConfigError
from dgmlab.models.flows.lipschitz import lipschitz_mlp
from dgmlab.models.flows.residual import (
    InvertibleResNet,
    ResidualBlock,
    ResidualFlow,
    a_posteriori_bound,
    a_priori_bound,
    fixed_point_inverse,
    logdet_exact,
    logdet_power_series,
    truncation_bound,
)

F64 = torch.float64


def contraction(d: int, c: float, hidden: int = 32, seed: int = 0, layers: int = 2):
    """A dense branch g with Lip(g) <= c (power iteration converged, then frozen), in float64."""
    torch.manual_seed(seed)
    g = lipschitz_mlp(d, hidden, layers=layers, coefficient=c ** (1 / layers), activation="elu").to(F64)
    with torch.no_grad():
        # scale the weights up so that every layer is really normalised (sigma > c^(1/L))
        for p in g.parameters():
            p.mul_(3.0)
        x = torch.randn(64, d, dtype=F64)
        for _ in range(300):
            g(x)
    return g.eval()


def jacobian_of(g, x):
    """J_g at every example of x [B, d]: [B, d, d] by autograd, one example at a time."""
    return torch.stack([torch.autograd.functional.jacobian(lambda v: g(v[None])[0], xi) for xi in x])


def exact_truncated_series(jacobian: torch.Tensor, n: int) -> torch.Tensor:
    """sum_{k=1}^n (-1)^(k+1) tr(J^k) / k per example, from the explicit matrix."""
    power, total = torch.eye(jacobian.shape[-1], dtype=jacobian.dtype).expand_as(jacobian), 0.0
    for k in range(1, n + 1):
        power = power @ jacobian
        total = total + (-1) ** (k + 1) * power.diagonal(dim1=-2, dim2=-1).sum(-1) / k
    return total


def g_and_input(g, x):
    x = x.clone().requires_grad_(True)
    return g(x), x


@pytest.mark.parametrize("c", [0.5, 0.9])
def test_fixed_point_inverse_obeys_the_a_priori_and_a_posteriori_bounds(c):
    g = contraction(4, c)
    x_true = torch.randn(8, 4, dtype=F64, generator=torch.Generator().manual_seed(1)) * 2
    with torch.no_grad():
        y = x_true + g(x_true)
        x, steps, iterates = fixed_point_inverse(g, y, iterations=60, atol=0.0, history=True)
    assert len(iterates) == steps + 1 and steps >= 20  # stops early only at an exact fixed point
    first_step = (iterates[1] - iterates[0]).norm(dim=1)
    for k in range(1, steps + 1):
        error = (iterates[k] - x_true).norm(dim=1)
        assert (error <= a_priori_bound(c, k, first_step) + 1e-12).all(), k
        last_step = (iterates[k] - iterates[k - 1]).norm(dim=1)
        assert (error <= a_posteriori_bound(c, last_step) + 1e-12).all(), k
    # and it converges: geometrically, to float64 rounding
    assert float((x - x_true).abs().max()) < 1e-10
    assert float((iterates[10] - x_true).norm(dim=1).max()) > 1e-12  # not already exact after 10 steps


def test_fixed_point_inverse_stops_at_its_tolerance():
    g = contraction(3, 0.5)
    y = torch.randn(5, 3, dtype=F64)
    x, steps = fixed_point_inverse(g, y, iterations=1000)
    assert steps < 100
    torch.testing.assert_close(x + g(x).detach(), y, rtol=0, atol=1e-12)


def test_the_exact_log_determinant_matches_slogdet_of_the_autograd_jacobian():
    g = contraction(5, 0.8)
    x = torch.randn(6, 5, dtype=F64)
    gx, inner = g_and_input(g, x)
    expected = torch.linalg.slogdet(torch.eye(5, dtype=F64) + jacobian_of(g, x)).logabsdet
    torch.testing.assert_close(logdet_exact(gx, inner), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("c", [0.5, 0.9])
def test_truncation_bias_is_within_the_bound_and_shrinks_with_terms(c):
    d = 6
    g = contraction(d, c, seed=2)
    x = torch.randn(10, d, dtype=F64)
    jacobian = jacobian_of(g, x)
    assert float(torch.linalg.matrix_norm(jacobian, ord=2).max()) <= c * (1 + 1e-6)
    exact = torch.linalg.slogdet(torch.eye(d, dtype=F64) + jacobian).logabsdet
    previous = math.inf
    for n in (1, 2, 4, 8, 16, 32):
        bias = (exact_truncated_series(jacobian, n) - exact).abs()
        assert (bias <= truncation_bound(d, c, n) + 1e-12).all(), n
        assert float(bias.max()) <= previous * 1.5 + 1e-14  # shrinks (up to the series' alternation)
        previous = float(bias.max())
    assert previous < 1e-2 * float((exact_truncated_series(jacobian, 1) - exact).abs().max())


@pytest.mark.parametrize("probe", ["gaussian", "rademacher"])
def test_hutchinson_is_unbiased_for_the_truncated_series(probe):
    d, n, draws = 5, 4, 20_000
    g = contraction(d, 0.8, seed=3)
    point = torch.randn(1, d, dtype=F64)
    x = point.expand(draws, d).clone()
    gx, inner = g_and_input(g, x)
    estimate = logdet_power_series(gx, inner, terms=n, probe=probe, generator=torch.Generator().manual_seed(4))
    assert estimate.terms == n and estimate.vjps == n
    target = exact_truncated_series(jacobian_of(g, point), n)[0]
    mean, standard_error = estimate.value.mean(), estimate.value.std() / math.sqrt(draws)
    assert abs(float(mean - target)) < 3 * float(standard_error)


def test_the_probe_variance_follows_the_frobenius_norm_of_the_symmetric_part():
    d, draws = 6, 40_000
    g = contraction(d, 0.8, seed=5)
    point = torch.randn(1, d, dtype=F64)
    jacobian = jacobian_of(g, point)[0]
    symmetric = (jacobian + jacobian.T) / 2
    expected = {"gaussian": 2 * float((symmetric**2).sum()),
                "rademacher": 2 * float((symmetric**2).sum() - (symmetric.diagonal() ** 2).sum())}
    x = point.expand(draws, d).clone()
    for probe, variance in expected.items():
        gx, inner = g_and_input(g, x)
        one_term = logdet_power_series(gx, inner, terms=1, probe=probe, generator=torch.Generator().manual_seed(6))
        assert float(one_term.value.var()) == pytest.approx(variance, rel=0.06), probe
    assert expected["rademacher"] < expected["gaussian"]


def _roulette_draws(g, point, calls, batch, seed, terms=2, p=0.5, gradient="backprop", differentiable=False):
    values, term_counts = [], []
    generator = torch.Generator().manual_seed(seed)
    for _ in range(calls):
        x = point.expand(batch, -1).clone()
        gx, inner = g_and_input(g, x)
        estimate = logdet_power_series(gx, inner, terms=terms, roulette_p=p, generator=generator,
                                       gradient=gradient, create_graph=differentiable)
        values.append(estimate.value)
        term_counts.append(estimate.terms)
    return values, term_counts


def test_russian_roulette_is_unbiased_for_the_whole_series():
    d = 5
    g = contraction(d, 0.9, seed=7)
    point = torch.randn(1, d, dtype=F64)
    exact = torch.linalg.slogdet(torch.eye(d, dtype=F64) + jacobian_of(g, point)[0]).logabsdet
    values, term_counts = _roulette_draws(g, point, calls=800, batch=16, seed=8)
    # one random truncation per call: the calls are the independent draws
    per_call = torch.stack([v.mean() for v in values])
    mean, standard_error = per_call.mean(), per_call.std() / math.sqrt(len(per_call))
    assert abs(float(mean - exact)) < 3 * float(standard_error)
    assert float(standard_error) < 0.05 * abs(float(exact))  # a test that can see a bias of 15%
    mean_terms = sum(term_counts) / len(term_counts)
    assert mean_terms == pytest.approx(2 + 1.0, abs=0.15)  # 2 + E[Geometric(0.5)] = 3 terms on average


def test_the_neumann_gradient_is_unbiased_and_the_value_is_the_same_estimate():
    d = 4
    g = contraction(d, 0.85, seed=9)
    parameters = [p for p in g.parameters()]
    direction = [torch.randn_like(p) for p in parameters]
    point = torch.randn(1, d, dtype=F64)

    def projected_gradient(value):
        grads = torch.autograd.grad(value, parameters, allow_unused=True)  # the last bias leaves J_g alone
        return sum((gr * u).sum() for gr, u in zip(grads, direction, strict=True) if gr is not None)

    gx, inner = g_and_input(g, point)
    exact = projected_gradient(logdet_exact(gx, inner, create_graph=True).sum())
    generator_a, generator_b = torch.Generator().manual_seed(10), torch.Generator().manual_seed(10)
    draws, same_value = [], True
    for _ in range(1500):
        x = point.expand(8, -1).clone()
        gx, inner = g_and_input(g, x)
        neumann = logdet_power_series(gx, inner, terms=2, roulette_p=0.5, generator=generator_a,
                                      gradient="neumann", create_graph=True)
        draws.append(projected_gradient(neumann.value.mean()))
        gx, inner = g_and_input(g, x)
        backprop = logdet_power_series(gx, inner, terms=2, roulette_p=0.5, generator=generator_b,
                                       gradient="backprop", create_graph=True)
        same_value &= bool(torch.allclose(neumann.value, backprop.value, rtol=1e-12, atol=1e-12))
        assert neumann.vjps == backprop.vjps + 1  # one more product: the surrogate's
    draws = torch.stack(draws)
    mean, standard_error = draws.mean(), draws.std() / math.sqrt(len(draws))
    assert same_value
    assert abs(float(mean - exact)) < 3 * float(standard_error)


def test_a_block_is_lipschitz_below_its_bound_on_random_pairs():
    g = contraction(3, 0.7, seed=11)
    block = ResidualBlock(g, logdet="exact")
    assert block.lipschitz_bound() <= 0.7 + 1e-9
    a, b = torch.randn(4000, 3, dtype=F64) * 3, torch.randn(4000, 3, dtype=F64) * 3
    b[:2000] = a[:2000] + 1e-3 * torch.randn(2000, 3, dtype=F64)  # near pairs probe the local slope
    with torch.no_grad():
        ratio = (g(a) - g(b)).norm(dim=1) / (a - b).norm(dim=1)
    assert float(ratio.max()) <= block.lipschitz_bound() * (1 + 1e-6)


def test_a_two_dimensional_residual_flow_integrates_to_one():
    torch.manual_seed(12)
    flow = ResidualFlow(features=2, blocks=2, hidden=16, coefficient=0.9, logdet="exact").to(F64)
    with torch.no_grad():  # a flow away from the identity: bigger weights, then the power iteration
        for block in flow.residual_blocks():
            for p in block.g.parameters():
                p.mul_(3.0)
        for _ in range(50):
            flow.log_prob(torch.randn(32, 2, dtype=F64))
    flow.eval()
    side = torch.linspace(-7, 7, 281, dtype=F64)
    grid = torch.cartesian_prod(side, side)
    with torch.no_grad():
        density = flow.log_prob(grid).exp().reshape(281, 281)
    mass = torch.trapezoid(torch.trapezoid(density, side, dim=1), side)
    assert float(mass) == pytest.approx(1.0, abs=1e-3)
    standard = torch.distributions.Normal(0.0, 1.0).log_prob(grid).sum(1).exp().reshape(281, 281)
    assert float((density - standard).abs().max()) > 1e-2  # not the base density itself


def test_an_image_flow_log_prob_equals_the_whole_jacobian_and_samples_invert_base_samples():
    torch.manual_seed(13)
    flow = InvertibleResNet(image_shape=[1, 4, 4], levels=1, blocks=2, hidden=4, coefficient=0.8,
                            logdet="exact").to(F64)
    x = torch.rand(3, 1, 4, 4, dtype=F64) * 0.9 + 0.05
    flow.initialize_from_data(torch.rand(64, 1, 4, 4, dtype=F64))
    flow.eval()
    with torch.no_grad():
        log_prob = flow.log_prob(x)
    for i in range(len(x)):
        jacobian = torch.autograd.functional.jacobian(
            lambda v: flow.transform(v.reshape(1, 1, 4, 4))[0].reshape(-1), x[i].reshape(-1))
        z = flow.transform(x[i:i + 1])[0].detach()
        expected = flow.base.log_prob(z)[0] + torch.linalg.slogdet(jacobian).logabsdet
        torch.testing.assert_close(log_prob[i], expected, rtol=1e-9, atol=1e-9)
    generator = torch.Generator().manual_seed(14)
    samples = flow.sample(4, generator=generator)
    z = flow.base.sample(4, generator=torch.Generator().manual_seed(14))
    inverted = flow.transform.inverse(z)[0]
    torch.testing.assert_close(samples, inverted.clamp(0, 1))
    assert samples.shape == (4, 1, 4, 4)


def test_the_estimator_is_a_setting_and_is_described():
    flow = InvertibleResNet(features=2, blocks=3, hidden=8)
    assert len(flow.residual_blocks()) == 3
    assert "truncated at 5 terms" in flow.log_prob_estimator()
    flow.set_estimator("roulette", terms=1)
    assert "Russian roulette" in flow.log_prob_estimator() and flow.estimator_settings()["terms"] == 1
    flow.set_estimator("exact")
    assert flow.log_prob_estimator() == "exact" and flow.exact_dimension() == 2
    assert ResidualFlow(features=2).estimator_settings()["gradient"] == "neumann"


def test_series_and_roulette_estimates_agree_with_the_exact_log_prob_on_average():
    torch.manual_seed(15)
    flow = InvertibleResNet(features=3, blocks=2, hidden=16, coefficient=0.7, terms=12).to(F64)
    flow.eval()
    x = torch.randn(1, 3, dtype=F64).expand(4000, 3).clone()
    flow.set_estimator("exact")
    with torch.no_grad():
        exact = flow.log_prob(x[:1])[0]
        flow.set_estimator("series", terms=12)
        series = flow.log_prob(x)
    assert abs(float(series.mean() - exact)) < 3 * float(series.std()) / math.sqrt(len(series)) + 2e-3


def test_bad_settings_get_one_clear_error():
    g = lipschitz_mlp(2, 4, layers=2)
    with pytest.raises(ModelConfigError, match="logdet must be one of exact, series, roulette"):
        ResidualBlock(g, logdet="taylor")
    with pytest.raises(ModelConfigError, match="probe must be one of gaussian, rademacher"):
        ResidualBlock(g, probe="uniform")
    with pytest.raises(ModelConfigError, match="roulette_p is a probability"):
        ResidualBlock(g, logdet="roulette", roulette_p=2.0)
    with pytest.raises(ModelConfigError, match="gradient must be one of"):
        ResidualBlock(g, gradient="adjoint")
    with pytest.raises(ModelConfigError, match="give features = d for vectors or image_shape"):
        InvertibleResNet()
    with pytest.raises(ModelConfigError, match="cannot be squeezed"):
        InvertibleResNet(image_shape=[1, 6, 6], levels=2)
    with pytest.raises(ModelConfigError, match="does not match image_shape"):
        InvertibleResNet(features=10, image_shape=[1, 4, 4])
