"""Objectives against independent references: torch.distributions, closed forms, and a linear-Gaussian
model whose log p(x) is known exactly."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.distributions import MultivariateNormal, Normal, kl_divergence

from dgmlab.distributed import derived_seed
from dgmlab.evaluate import importance_weighted_nll, importance_weighted_nll_per_example
from dgmlab.objectives import (
    bernoulli_log_likelihood,
    gaussian_log_likelihood,
    importance_weighted_bound,
    kl_analytic,
    kl_monte_carlo,
    log_mean_exp,
    log_normal_pdf,
    log_standard_normal,
    negative_elbo,
    pset_mse_kl,
)


@pytest.fixture(autouse=True)
def _float64():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 6), st.integers(1, 5), st.integers(0, 10_000))
def test_log_normal_pdf_matches_torch_distributions(batch, dim, seed):
    g = torch.Generator().manual_seed(seed)
    mean, logvar, s = (torch.randn(batch, dim, generator=g) * 2 for _ in range(3))
    expected = Normal(mean, torch.exp(0.5 * logvar)).log_prob(s).sum(-1)
    torch.testing.assert_close(log_normal_pdf(s, mean, logvar), expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(log_standard_normal(s), Normal(0.0, 1.0).log_prob(s).sum(-1))


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 6), st.integers(1, 5), st.integers(0, 10_000))
def test_analytic_kl_matches_torch_distributions(batch, dim, seed):
    g = torch.Generator().manual_seed(seed)
    mean, logvar = torch.randn(batch, dim, generator=g) * 2, torch.randn(batch, dim, generator=g)
    q = Normal(mean, torch.exp(0.5 * logvar))
    expected = kl_divergence(q, Normal(torch.zeros_like(mean), torch.ones_like(mean))).sum(-1)
    torch.testing.assert_close(kl_analytic(mean, logvar), expected)
    assert (kl_analytic(mean, logvar) >= 0).all()


def test_kl_is_zero_only_at_the_prior():
    zeros = torch.zeros(3, 4)
    assert torch.equal(kl_analytic(zeros, zeros), torch.zeros(3))
    assert (kl_analytic(zeros + 0.1, zeros) > 0).all()


def test_monte_carlo_kl_converges_to_analytic_like_one_over_sqrt_n():
    g = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g) * 0.5
    exact = kl_analytic(mean, logvar)
    rms = []
    for n in (10, 1000):
        trials = []
        for _ in range(200):
            z = mean + torch.exp(0.5 * logvar) * torch.randn(n, 4, 3, generator=g)
            trials.append(kl_monte_carlo(z, mean, logvar).mean(0))
        errors = torch.stack(trials) - exact
        assert errors.mean(0).abs().max() < 4 * errors.std(0).max() / math.sqrt(200)  # unbiased
        rms.append(errors.pow(2).mean().sqrt())
    # 100x the samples: 10x smaller error, within sampling noise
    assert 7 < rms[0] / rms[1] < 14


def test_bernoulli_log_likelihood_matches_torch_distributions():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 7, generator=g) * 3
    x = torch.bernoulli(torch.full((5, 7), 0.4), generator=g)
    expected = torch.distributions.Bernoulli(logits=logits).log_prob(x).sum(-1)
    torch.testing.assert_close(bernoulli_log_likelihood(x, logits), expected)
    # extreme logits stay finite
    assert torch.isfinite(bernoulli_log_likelihood(torch.ones(1, 2), torch.tensor([[-200.0, 200.0]]))).all()


def test_gaussian_log_likelihood_fixed_and_learned_variance():
    x, mean = torch.rand(3, 4), torch.rand(3, 4)
    expected = Normal(mean, math.sqrt(0.05)).log_prob(x).sum(-1)
    torch.testing.assert_close(gaussian_log_likelihood(x, mean, math.log(0.05)), expected)
    logvar = torch.linspace(-2, 1, 4)
    expected = Normal(mean, torch.exp(0.5 * logvar)).log_prob(x).sum(-1)
    torch.testing.assert_close(gaussian_log_likelihood(x, mean, logvar), expected)


def test_log_mean_exp_is_stable():
    v = torch.tensor([[1000.0, 1000.0], [-1000.0, -1000.0]])
    torch.testing.assert_close(log_mean_exp(v, dim=1), torch.tensor([1000.0, -1000.0]))


# ----------------------------------------------------------------------------------------------------------
# A linear-Gaussian model: p(z) = N(0, I_d), p(x|z) = N(Wz + b, s2 I_D), so p(x) = N(b, W W^T + s2 I) exactly.
# ----------------------------------------------------------------------------------------------------------
class LinearGaussian(nn.Module):
    def __init__(self, D=4, d=2, s2=0.3, exact_posterior=False, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = torch.randn(D, d, generator=g)
        self.b = torch.randn(D, generator=g)
        self.s2 = s2
        self.exact_posterior = exact_posterior
        # an amortised Gaussian q that is NOT the posterior: a fixed random linear map
        self.A = torch.randn(d, D, generator=g) * 0.3
        self.c = torch.randn(d, generator=g) * 0.1
        self.q_logvar = torch.full((d,), -1.0)

    def log_px(self, x):
        cov = self.W @ self.W.T + self.s2 * torch.eye(len(self.b))
        return MultivariateNormal(self.b, cov).log_prob(x)

    def encode(self, x):
        if self.exact_posterior:
            d = self.W.shape[1]
            precision = torch.eye(d) + self.W.T @ self.W / self.s2
            cov = torch.linalg.inv(precision)
            mean = (x - self.b) @ self.W @ cov.T / self.s2
            # the posterior covariance is not diagonal in general; use W with orthogonal columns (see test)
            return mean, torch.log(torch.diagonal(cov)).expand_as(mean)
        mean = x @ self.A.T + self.c
        return mean, self.q_logvar.expand_as(mean)

    def reparameterize(self, mean, logvar, n_samples=None):
        shape = mean.shape if n_samples is None else (n_samples, *mean.shape)
        return mean + torch.exp(0.5 * logvar) * torch.randn(shape)

    def decode(self, z):
        return z @ self.W.T + self.b

    decode_mean = decode

    def log_likelihood(self, x, decoded):
        return gaussian_log_likelihood(x, decoded, math.log(self.s2))

    def exact_elbo(self, x):
        mean, logvar = self.encode(x)
        resid = x - self.decode(mean)
        trace = (self.W**2 @ torch.exp(logvar).T).sum(0)  # tr(W diag(s) W^T) per example
        D = len(self.b)
        expected_loglik = -0.5 * D * math.log(2 * math.pi * self.s2) - 0.5 * (resid.pow(2).sum(-1) + trace) / self.s2
        return expected_loglik - kl_analytic(mean, logvar)


@pytest.fixture
def xs():
    return torch.randn(6, 4, generator=torch.Generator().manual_seed(5)) * 1.5


def test_negative_elbo_matches_closed_form(xs):
    torch.manual_seed(0)
    model = LinearGaussian()
    for kl in ("analytic", "monte_carlo"):
        runs = [negative_elbo(model, xs, kl=kl, n_samples=1000) for _ in range(40)]
        estimates = torch.stack([-out.loss for out in runs])
        standard_error = estimates.std(0) / math.sqrt(len(runs))
        assert ((estimates.mean(0) - model.exact_elbo(xs)).abs() < 5 * standard_error + 1e-9).all()
        out = runs[0]
        torch.testing.assert_close(out.loss, out.terms["recon_nll"] + out.terms["kl"])
    assert out.loss.shape == (6,)


def test_bound_ordering_elbo_le_lk_le_log_px(xs):
    torch.manual_seed(0)
    model = LinearGaussian()
    log_px = model.log_px(xs)
    elbo = model.exact_elbo(xs)
    trials = {k: torch.stack([importance_weighted_bound(model, xs, num_samples=k, chunk_size=7)
                              for _ in range(400 if k < 100 else 40)]) for k in (1, 10, 1000)}
    bounds = {k: t.mean(0) for k, t in trials.items()}
    standard_error = trials[1].std(0) / math.sqrt(len(trials[1]))
    assert ((bounds[1] - elbo).abs() < 5 * standard_error).all()  # E[L_1] = ELBO
    assert (elbo < log_px).all()
    assert (bounds[1] < bounds[10] + 0.02).all() and (bounds[10] < bounds[1000] + 0.02).all()
    assert (bounds[1000] <= log_px + 0.02).all()
    # L_k approaches log p(x) as k grows
    gap_1, gap_1000 = (log_px - bounds[1]).mean(), (log_px - bounds[1000]).mean()
    assert gap_1 > 0.5 and gap_1000 < 0.2 * gap_1


def test_exact_posterior_makes_every_bound_tight(xs):
    # with orthogonal columns of W the posterior covariance is diagonal, so q can be exact: then every
    # importance weight equals p(x) and L_1 = log p(x) with zero variance
    torch.manual_seed(0)
    model = LinearGaussian(exact_posterior=True)
    q, _ = torch.linalg.qr(torch.randn(4, 2, generator=torch.Generator().manual_seed(3)))
    model.W = q * torch.tensor([1.5, 0.7])
    torch.testing.assert_close(importance_weighted_bound(model, xs, num_samples=3), model.log_px(xs))


def test_importance_weighted_bound_chunking_is_exact(xs):
    model = LinearGaussian()
    torch.manual_seed(7)
    one = importance_weighted_bound(model, xs, num_samples=100, chunk_size=100)
    torch.manual_seed(7)
    chunks = importance_weighted_bound(model, xs, num_samples=100, chunk_size=100)
    torch.testing.assert_close(one, chunks)
    with pytest.raises(ValueError, match="num_samples"):
        importance_weighted_bound(model, xs, num_samples=0)


def test_importance_weighted_nll_per_example_bounds_each_row_and_averages_to_the_mean(xs):
    model = LinearGaussian()
    torch.manual_seed(1)
    before = torch.rand(1)
    torch.manual_seed(1)
    per_example = importance_weighted_nll_per_example(model, xs, num_samples=2000, batch_size=4, chunk_size=300)
    assert torch.rand(1) == before  # the caller's stream is untouched (forked RNG)
    assert per_example.shape == (len(xs),) and per_example.dtype == torch.float64
    # row i is -L_k of x_i from importance_weighted_bound, batch j under a seed derived from (123, j)
    reference = []
    for j, i in enumerate(range(0, len(xs), 4)):
        torch.manual_seed(derived_seed(123, j))
        reference.append(-importance_weighted_bound(model, xs[i:i + 4], num_samples=2000, chunk_size=300))
    reference = torch.cat(reference)
    torch.testing.assert_close(per_example, reference.double())
    # with the exact posterior every row is its own -log p(x) (orthogonal columns of W: a diagonal posterior)
    exact = LinearGaussian(exact_posterior=True)
    q, _ = torch.linalg.qr(torch.randn(4, 2, generator=torch.Generator().manual_seed(3)))
    exact.W = q * torch.tensor([1.5, 0.7])
    torch.testing.assert_close(importance_weighted_nll_per_example(exact, xs, num_samples=5, batch_size=4),
                               -exact.log_px(xs).double())
    # the mean is importance_weighted_nll with the same draws; a different seed gives different draws
    assert importance_weighted_nll(model, xs, num_samples=2000, batch_size=4, chunk_size=300) == pytest.approx(
        float(per_example.mean()), abs=1e-12)
    other = importance_weighted_nll_per_example(model, xs, num_samples=2000, batch_size=4, chunk_size=300, seed=9)
    assert not torch.equal(other, per_example)


def test_pset_objective_equals_the_problem_sets_formula():
    from dgmlab.models import VAE

    torch.set_default_dtype(torch.float32)
    torch.manual_seed(0)
    model = VAE(16, [8, 4])
    x = torch.rand(5, 16)
    torch.manual_seed(1)
    out = pset_mse_kl(model, x, coeff=1e-3, kl="analytic")
    torch.manual_seed(1)
    mean, logvar = model.encode(x)
    z = model.reparameterize(mean, logvar)
    expected = nn.MSELoss()(model.decode(z), x) + 1e-3 * kl_analytic(mean, logvar).mean()
    torch.testing.assert_close(out.loss.mean(), expected)
    with pytest.raises(ValueError, match="coeff"):
        pset_mse_kl(model, x, coeff=-1.0)


def test_pset_objective_is_a_rescaled_gaussian_elbo():
    # MSE + c KL = (2 s2 / D) (-ELBO) + const  with s2 = c D / 2, for the same sample z
    from dgmlab.models import VAE

    torch.set_default_dtype(torch.float64)
    D, c = 16, 1e-2
    model = VAE(D, [8, 4], likelihood="gaussian", decoder_variance=c * D / 2).double()
    x = torch.rand(5, D)
    torch.manual_seed(3)
    pset = pset_mse_kl(model, x, coeff=c).loss
    torch.manual_seed(3)
    nelbo = negative_elbo(model, x, n_samples=1).loss
    s2 = c * D / 2
    const = 0.5 * D * math.log(2 * math.pi * s2) * (2 * s2 / D)
    torch.testing.assert_close(pset, (2 * s2 / D) * nelbo - const)


def test_unknown_kl_estimator_is_a_clear_error(xs):
    with pytest.raises(ValueError, match="analytic, monte_carlo"):
        negative_elbo(LinearGaussian(), xs, kl="exact")


class FactorizedBernoulli(nn.Module):
    """p(x) = prod_i Bernoulli(x_i; sigmoid(l_i)), optionally with one logit vector per class."""

    def __init__(self, dim, num_classes=0):
        super().__init__()
        self.logits = nn.Parameter(torch.randn(max(num_classes, 1), dim))

    def log_prob(self, x, *, context=None):
        logits = self.logits[0] if context is None else self.logits[context]
        return torch.distributions.Bernoulli(logits=logits).log_prob(x).sum(-1)


def test_exact_nll_is_minus_log_prob_in_nats_and_bits():
    from dgmlab.objectives import exact_nll

    torch.manual_seed(0)
    model = FactorizedBernoulli(6, num_classes=3)
    x = torch.bernoulli(torch.full((5, 6), 0.5))
    y = torch.tensor([0, 1, 2, 1, 0])
    out = exact_nll(model, x)
    torch.testing.assert_close(out.loss, -model.log_prob(x))
    torch.testing.assert_close(out.terms["bits_per_dim"], out.terms["nll"] / (6 * math.log(2)))
    conditional = exact_nll(model, x, context=y)
    torch.testing.assert_close(conditional.loss, -model.log_prob(x, context=y))
    assert not torch.allclose(conditional.loss, out.loss)
    assert out.units["nll"] == "nats"
