"""Planar, radial, elementwise-affine and logit transforms beyond the shared test (tests/test_flows.py):
the parameter constraints over their whole space, the logit's error and its log-determinant against an
independent float64 formula, gradients through the planar root solve, and flows whose densities integrate
to 1 on a grid."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dgmlab.errors import ModelConfigError
from dgmlab.models.flows import Compose, ElementwiseAffine, Flow, Inverse, Logit, Planar, Radial, StandardNormal

finite = st.floats(min_value=-10, max_value=10, allow_nan=False)


def set_parameters(transform: torch.nn.Module, **values) -> torch.nn.Module:
    with torch.no_grad():
        for name, value in values.items():
            getattr(transform, name).copy_(torch.as_tensor(value, dtype=torch.float64))
    return transform


@settings(max_examples=60, deadline=None)
@given(dim=st.integers(1, 5), data=st.data(), b=finite)
def test_planar_reparameterisation_keeps_w_u_hat_above_minus_one_and_the_map_invertible(dim, data, b):
    w = data.draw(st.lists(finite, min_size=dim, max_size=dim).filter(lambda v: sum(x * x for x in v) > 1e-2))
    u = data.draw(st.lists(finite, min_size=dim, max_size=dim))
    planar = set_parameters(Planar(dim).double(), w=w, u=u, b=b)
    w_u_hat = float((planar.w @ planar.u_hat()).detach())
    # w^T u_hat = -1 + softplus(w^T u) > -1 exactly; up to rounding of the size of w^T u
    assert w_u_hat >= -1 - 1e-13 * (1 + abs(float((planar.w @ planar.u).detach())))
    z = torch.randn(7, dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        y, logdet = planar(z)
        back, logdet_inverse = planar.inverse(y)
    assert torch.isfinite(logdet).all()
    torch.testing.assert_close(back, z, rtol=0, atol=1e-8)
    torch.testing.assert_close(logdet_inverse, -logdet, rtol=1e-8, atol=1e-8)  # |log det| reaches ~10 here


@settings(max_examples=60, deadline=None)
@given(dim=st.integers(1, 4), alpha_raw=finite, beta_raw=finite)
def test_radial_keeps_alpha_positive_and_beta_at_least_minus_alpha(dim, alpha_raw, beta_raw):
    radial = set_parameters(Radial(dim).double(), alpha_raw=alpha_raw, beta_raw=beta_raw)
    alpha, beta = float(radial.alpha().detach()), float(radial.beta().detach())
    assert alpha > 0 and beta >= -alpha
    z = 3 * torch.randn(7, dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        y, logdet = radial(z)
        back, logdet_inverse = radial.inverse(y)
    torch.testing.assert_close(back, z, rtol=0, atol=1e-8)
    torch.testing.assert_close(logdet_inverse, -logdet, rtol=0, atol=1e-8)


@pytest.mark.parametrize("bad", [-0.01, 1.01, float("nan")])
def test_logit_rejects_inputs_outside_the_unit_interval(bad):
    x = torch.full((2, 3), 0.5)
    x[1, 2] = bad
    with pytest.raises(ValueError, match=r"Logit: inputs must lie in \[0, 1\]"):
        Logit()(x)


@pytest.mark.parametrize("alpha", [-0.1, 0.5, "0.05", True])
def test_logit_rejects_alpha_outside_its_range(alpha):
    with pytest.raises(ModelConfigError, match=r"Logit: alpha must be a number in \[0, 0.5\)"):
        Logit(alpha)


@pytest.mark.parametrize(("build", "message"), [
    (lambda: Planar(0), "Planar: dim must be a positive integer"),
    (lambda: Radial(2.5), "Radial: dim must be a positive integer"),
    (lambda: ElementwiseAffine(()), "ElementwiseAffine: shape must hold at least one dimension"),
    (lambda: ElementwiseAffine((3, 0)), "ElementwiseAffine: shape entries must be a positive integer"),
])
def test_constructors_reject_bad_sizes(build, message):
    with pytest.raises(ModelConfigError, match=message):
        build()


@pytest.mark.parametrize("transform", [Planar(3), Radial(3), ElementwiseAffine((3,))])
def test_transforms_reject_inputs_of_the_wrong_shape(transform):
    with pytest.raises(ValueError, match=r"inputs must have shape \[B, 3\]"):
        transform(torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"inputs must have shape \[B, 3\]"):
        transform.inverse(torch.zeros(4, 2))


@pytest.mark.parametrize("alpha", [0.0, 0.05, 0.3])
def test_logit_log_determinant_matches_a_float64_formula(alpha):
    x = 0.001 + 0.998 * torch.rand(4, 6, generator=torch.Generator().manual_seed(2))
    y, logdet = Logit(alpha)(x)
    expected = []
    for row in x.double().tolist():
        total = 0.0
        for value in row:
            p = alpha + (1 - 2 * alpha) * value
            # d/dx logit(alpha + (1 - 2 alpha) x) = (1 - 2 alpha) / (p (1 - p))
            total += math.log((1 - 2 * alpha) / (p * (1 - p)))
        expected.append(total)
    torch.testing.assert_close(logdet.double(), torch.tensor(expected, dtype=torch.float64), rtol=2e-6, atol=1e-5)
    back, logdet_inverse = Logit(alpha).inverse(y)
    torch.testing.assert_close(back, x, rtol=0, atol=1e-5)
    torch.testing.assert_close(logdet_inverse, -logdet, rtol=1e-5, atol=1e-4)


def test_gradients_through_the_planar_solve_follow_the_implicit_function():
    planar = set_parameters(Planar(2).double(), w=[1.3, -0.4], u=[-2.0, 0.7], b=0.3)
    y = torch.randn(5, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64, requires_grad=True)

    def recovered(y, w, u, b):
        planar.w, planar.u, planar.b = w, u, b  # plain tensors in place of the parameters, for gradcheck
        z, logdet = planar.inverse(y)
        return z, logdet

    parameters = [planar.w.detach().clone().requires_grad_(), planar.u.detach().clone().requires_grad_(),
                  planar.b.detach().clone().requires_grad_()]
    del planar.w, planar.u, planar.b
    assert torch.autograd.gradcheck(recovered, (y, *parameters))


def test_reverse_kl_use_samples_in_the_cheap_direction_with_consistent_log_density():
    torch.manual_seed(4)
    flow = Flow(StandardNormal((2,)), Inverse(Compose(Planar(2), Radial(2), Planar(2)))).double()
    x, log_p = flow.sample_and_log_prob(16, generator=torch.Generator().manual_seed(5))
    (-log_p.mean()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in flow.parameters())
    torch.testing.assert_close(log_p.detach(), flow.log_prob(x.detach()).detach(), rtol=1e-9, atol=1e-9)


def grid_integral(log_prob, low: float, high: float, points: int, dim: int) -> float:
    """Midpoint rule for the integral of exp(log_prob) over [low, high]^dim (dim 1 or 2)."""
    step = (high - low) / points
    axis = low + step * (torch.arange(points, dtype=torch.float64) + 0.5)
    grid = axis.unsqueeze(1) if dim == 1 else torch.cartesian_prod(axis, axis)
    with torch.no_grad():
        return float(torch.exp(log_prob(grid)).sum()) * step**dim


def two_dimensional_transforms() -> list[torch.nn.Module]:
    # moderate parameters: as w^T u_hat nears -1 the generating-direction density grows a spike that a
    # 400-point grid cannot resolve (the transforms stay exact; the quadrature does not)
    affine = set_parameters(ElementwiseAffine((2,)).double(), log_scale=[0.4, -0.2], shift=[0.5, -0.3])
    planar = set_parameters(Planar(2).double(), w=[1.5, -1.0], u=[-1.0, 0.5], b=0.4)  # raw w^T u = -2
    radial = set_parameters(Radial(2).double(), z0=[0.3, -0.6], alpha_raw=-0.3, beta_raw=1.5)
    return [affine, planar, radial]


@pytest.mark.parametrize("swap", [False, True], ids=["normalizing", "generating"])
def test_a_two_dimensional_flow_density_integrates_to_one(swap):
    transform = Compose(*two_dimensional_transforms())
    flow = Flow(StandardNormal((2,)), Inverse(transform) if swap else transform).double()
    assert abs(grid_integral(flow.log_prob, -8.0, 8.0, 400, dim=2) - 1) < 1e-3


def test_a_one_dimensional_planar_flow_density_integrates_to_one():
    affine = set_parameters(ElementwiseAffine((1,)).double(), log_scale=[-0.5], shift=[1.0])
    planar = set_parameters(Planar(1).double(), w=[2.0], u=[-1.0], b=-0.5)  # raw w^T u = -2
    flow = Flow(StandardNormal((1,)), Inverse(Compose(affine, planar))).double()
    assert abs(grid_integral(flow.log_prob, -12.0, 12.0, 20000, dim=1) - 1) < 1e-3


@pytest.mark.parametrize("alpha", [0.0, 0.05])
def test_a_flow_on_the_unit_interval_through_the_logit_holds_the_mass_of_the_logit_image(alpha):
    affine = set_parameters(ElementwiseAffine((1,)).double(), log_scale=[-0.3], shift=[0.4])
    planar = set_parameters(Planar(1).double(), w=[1.2], u=[0.8], b=0.2)
    transform = Compose(Logit(alpha), affine, planar)
    flow = Flow(StandardNormal((1,)), transform).double()
    # alpha = 0: the plain logit, a bijection onto the real line, so the mass is 1; alpha > 0: the base mass
    # between the images of 0 and 1 (every layer here is increasing)
    with torch.no_grad():
        ends, _ = transform(torch.tensor([[0.0], [1.0]], dtype=torch.float64))
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0)
    expected = 1.0 if alpha == 0 else float(normal.cdf(ends[1, 0]) - normal.cdf(ends[0, 0]))
    assert alpha == 0 or expected < 0.999
    assert abs(grid_integral(flow.log_prob, 0.0, 1.0, 20000, dim=1) - expected) < 1e-3


def test_planar_stays_finite_in_float32_when_w_u_is_very_negative():
    # w^T u = -20: w^T u_hat = -1 + softplus(-20) rounds to -1 in float32, but the log-determinant is
    # log softplus(-20) = -20.0 at w^T z + b = 0 (the form h^2 + (1 - h^2) softplus(w^T u) has no cancellation)
    layer = Planar(2)
    with torch.no_grad():
        layer.w.copy_(torch.tensor([1.0, 0.0]))
        layer.u.copy_(torch.tensor([-20.0, 0.0]))
        layer.b.zero_()
    y, logdet = layer(torch.zeros(1, 2))
    assert logdet.item() == pytest.approx(-20.0, abs=1e-4)
    z, inverse_logdet = layer.inverse(y)
    assert torch.isfinite(z).all() and inverse_logdet.item() == pytest.approx(20.0, abs=1e-4)
