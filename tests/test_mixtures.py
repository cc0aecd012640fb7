"""Gaussian mixtures and EM (dgmlab.models.mixtures): against scikit-learn from the same start, the ELBO identity
of the E-step, monotone log-likelihood, k-means as the zero-variance limit, normalisation and sampling."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from dgmlab.errors import CapabilityError
from dgmlab.models.mixtures import (
    GaussianMixture,
    _feature_weights,
    _features,
    adapt_to_noisy,
    em_fit,
    em_step,
    kmeans,
    kmeans_plus_plus,
    load_mixture,
    mixture_from_assignments,
    mixture_from_seeds,
    save_mixture,
)

sklearn_mixture = pytest.importorskip("sklearn.mixture")
sklearn_cluster = pytest.importorskip("sklearn.cluster")


def blobs(n=1200, dim=3, k=4, seed=0, spread=4.0):
    """Points from k correlated Gaussian clusters, float64."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, dim, generator=g, dtype=torch.float64) * spread
    mixing = torch.randn(k, dim, dim, generator=g, dtype=torch.float64) * 0.6
    labels = torch.randint(k, (n,), generator=g)
    noise = torch.randn(n, dim, 1, generator=g, dtype=torch.float64)
    return centres[labels] + (mixing[labels] @ noise).squeeze(-1)


def seeded_start(x, k, seed=0, reg_covar=1e-6):
    """Nearest-k-means++-seed assignment, then one M-step: the start both implementations are given."""
    return mixture_from_seeds(x, k, generator=torch.Generator().manual_seed(seed), reg_covar=reg_covar)


def sklearn_from(mixture, iterations, reg_covar=1e-6):
    precisions = mixture.precision_cholesky @ mixture.precision_cholesky.transpose(-1, -2)
    # copies: .numpy() shares memory with the buffers that EM then overwrites
    return sklearn_mixture.GaussianMixture(
        mixture.num_components, covariance_type="full", max_iter=iterations, tol=0.0, reg_covar=reg_covar,
        weights_init=mixture.weights.numpy().copy(), means_init=mixture.means.numpy().copy(),
        precisions_init=(0.5 * (precisions + precisions.transpose(-1, -2))).numpy().copy())


@pytest.mark.parametrize("seed, dim, k", [(0, 3, 4), (1, 6, 5), (2, 2, 7)])
def test_em_matches_scikit_learn_from_the_same_start(seed, dim, k):
    x = blobs(dim=dim, k=4, seed=seed)
    ours = seeded_start(x, k, seed)
    theirs = sklearn_from(ours, iterations=15)
    history = em_fit(ours, x, max_iter=15, tol=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn warns that 15 iterations did not converge
        theirs.fit(x.numpy())
    assert history.iterations == 15 and not history.converged
    assert history.final_log_likelihood == pytest.approx(theirs.score(x.numpy()), abs=1e-4)
    np.testing.assert_allclose(ours.means.numpy(), theirs.means_, atol=1e-6)
    np.testing.assert_allclose(ours.covariances.numpy(), theirs.covariances_, atol=1e-6)
    np.testing.assert_allclose(ours.weights.numpy(), theirs.weights_, atol=1e-8)
    np.testing.assert_allclose(ours.log_prob(x).numpy(), theirs.score_samples(x.numpy()), atol=1e-5)


@pytest.mark.parametrize("seed", range(6))
def test_the_log_likelihood_never_decreases(seed):
    x = blobs(n=800, dim=4, k=5, seed=seed)
    mixture = seeded_start(x, 6, seed, reg_covar=0.0)
    history = em_fit(mixture, x, max_iter=40, tol=0.0)
    steps = np.diff([*history.log_likelihood, history.final_log_likelihood])
    assert (steps >= -1e-10).all(), steps.min()
    assert history.final_log_likelihood > history.log_likelihood[0] + 0.01  # and EM did move


def test_tol_stops_em_when_the_log_likelihood_settles():
    x = blobs(seed=3)
    history = em_fit(seeded_start(x, 4, 3), x, max_iter=500, tol=1e-6)
    assert history.converged and history.iterations < 500
    assert abs(history.log_likelihood[-1] - history.log_likelihood[-2]) < 1e-6


def test_after_the_e_step_the_elbo_is_the_log_likelihood_and_otherwise_below_it_by_the_kl():
    x = blobs(n=300, seed=4)
    mixture = seeded_start(x, 4, 4)
    em_fit(mixture, x, max_iter=3, tol=0.0)
    log_px = mixture.log_prob(x)
    posterior = mixture.responsibilities(x)
    torch.testing.assert_close(mixture.elbo(x, posterior), log_px, atol=1e-10, rtol=0)
    # any other q: log p(x) - ELBO(q) = KL(q || p(k | x)) > 0
    q = torch.softmax(torch.randn(len(x), 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64), -1)
    log_posterior = mixture.log_joint(x) - log_px[:, None]  # exact where the posterior underflows to 0
    kl = (q * (q.log() - log_posterior)).sum(-1)
    torch.testing.assert_close(log_px - mixture.elbo(x, q), kl, atol=1e-7, rtol=1e-10)
    assert (kl > 0).all()
    # a one-hot q (a hard assignment) is allowed: 0 log 0 = 0
    hard = torch.nn.functional.one_hot(posterior.argmax(-1), 4).double()
    assert torch.isfinite(mixture.elbo(x, hard)).all()


def test_the_sufficient_statistic_form_of_the_log_density_equals_the_cholesky_form():
    x = blobs(n=200, dim=5, seed=5)
    mixture = seeded_start(x, 3, 5)
    features = _features(x)
    assert features.shape == (200, 5 * 6 // 2 + 5 + 1)
    via_features = (_feature_weights(mixture.weights, mixture.means, mixture.precision_cholesky) @ features.T).T
    torch.testing.assert_close(via_features, mixture.log_joint(x), atol=1e-9, rtol=1e-12)


def test_float32_products_give_the_same_fit_on_well_conditioned_data():
    x = blobs(n=2000, dim=4, k=3, seed=6, spread=1.0)
    start = seeded_start(x, 3, 6, reg_covar=1e-3)
    exact, fast = (mixture_from_assignments(x, torch.zeros(len(x), dtype=torch.long), 3) for _ in range(2))
    for target in (exact, fast):
        target.set_parameters(start.weights, start.means, start.covariances)
    one = em_fit(exact, x, max_iter=10, tol=0.0)
    other = em_fit(fast, x, max_iter=10, tol=0.0, compute_dtype=torch.float32)
    assert other.final_log_likelihood == pytest.approx(one.final_log_likelihood, abs=1e-3)
    assert fast.means.dtype == torch.float64  # parameters stay in the mixture's dtype


def test_kmeans_is_em_in_the_zero_variance_limit():
    x = blobs(n=500, dim=2, k=3, seed=7)
    centres = x[kmeans_plus_plus(x, 3, generator=torch.Generator().manual_seed(1))]
    # pi_k = 1/K, Sigma_k = sigma^2 I with sigma -> 0: the responsibilities become the nearest-centre assignment
    sigma2 = 1e-4
    mixture = GaussianMixture(3, 2, reg_covar=0.0)
    mixture.set_parameters(torch.full((3,), 1 / 3), centres, sigma2 * torch.eye(2).expand(3, 2, 2))
    nearest = torch.cdist(x, centres).argmin(1)
    r = mixture.responsibilities(x)
    assert torch.equal(r.argmax(1), nearest) and r.max(1).values.min() > 1 - 1e-6
    # ... and the M-step's means are one step of Lloyd's algorithm from the same centres
    em_step(mixture, x)
    lloyd = kmeans(x, 3, max_iter=1, centres=centres.clone())
    after_one = torch.stack([x[nearest == k].mean(0) for k in range(3)])
    torch.testing.assert_close(mixture.means, after_one, atol=1e-6, rtol=0)
    assert torch.equal(lloyd.labels, nearest)


def test_kmeans_matches_scikit_learn_from_the_same_centres_and_its_inertia_never_increases():
    x = blobs(n=900, dim=3, k=5, seed=8)
    start = x[kmeans_plus_plus(x, 5, generator=torch.Generator().manual_seed(2))]
    ours = kmeans(x, 5, max_iter=300, centres=start.clone())
    theirs = sklearn_cluster.KMeans(5, init=start.numpy(), n_init=1, max_iter=300, tol=0.0, algorithm="lloyd")
    theirs.fit(x.numpy())
    assert ours.inertia[-1] == pytest.approx(theirs.inertia_, rel=1e-9)
    assert (np.diff(ours.inertia) <= 1e-9).all()
    order = lambda c: c[np.lexsort(c.T)]  # noqa: E731  (the same centres, maybe in another order)
    np.testing.assert_allclose(order(ours.centres.numpy()), order(theirs.cluster_centers_), atol=1e-9)


def test_the_seeded_start_is_one_m_step_from_the_nearest_seed_labels():
    x = blobs(n=300, seed=10)
    seeds = x[kmeans_plus_plus(x, 4, generator=torch.Generator().manual_seed(3))]
    labels = ((x[:, None, :] - seeds[None]) ** 2).sum(-1).argmin(1)
    expected = mixture_from_assignments(x, labels, 4)
    started = mixture_from_seeds(x, 4, generator=torch.Generator().manual_seed(3), chunk_size=64)
    for name in ("weights", "means", "covariances"):
        torch.testing.assert_close(getattr(started, name), getattr(expected, name))


def test_kmeans_plus_plus_is_reproducible_and_picks_distinct_points():
    x = blobs(n=400, seed=9)
    one = kmeans_plus_plus(x, 8, generator=torch.Generator().manual_seed(5))
    two = kmeans_plus_plus(x, 8, generator=torch.Generator().manual_seed(5))
    assert torch.equal(one, two) and len(set(one.tolist())) == 8
    # fewer distinct points than centres: still K distinct rows, no division by zero
    repeated = torch.zeros(5, 2, dtype=torch.float64)
    assert len(set(kmeans_plus_plus(repeated, 3).tolist())) == 3


def test_a_two_dimensional_mixture_integrates_to_one():
    mixture = GaussianMixture(3, 2)
    covariances = torch.tensor([[[1.0, 0.6], [0.6, 0.8]], [[0.3, -0.1], [-0.1, 0.2]], [[0.5, 0.0], [0.0, 1.5]]])
    mixture.set_parameters(torch.tensor([0.2, 0.5, 0.3]), torch.tensor([[0.0, 0.0], [2.0, -1.0], [-2.0, 1.5]]),
                           covariances)
    grid = torch.linspace(-9, 9, 601, dtype=torch.float64)
    step = float(grid[1] - grid[0])
    points = torch.cartesian_prod(grid, grid)
    assert float(mixture.log_prob(points).exp().sum()) * step**2 == pytest.approx(1.0, abs=1e-3)


def test_samples_have_the_mixtures_mean_and_covariance():
    mixture = GaussianMixture(2, 2)
    means = torch.tensor([[1.0, 0.0], [-2.0, 3.0]], dtype=torch.float64)
    covariances = torch.tensor([[[1.0, 0.5], [0.5, 1.0]], [[0.2, 0.0], [0.0, 0.4]]], dtype=torch.float64)
    weights = torch.tensor([0.3, 0.7], dtype=torch.float64)
    mixture.set_parameters(weights, means, covariances)
    draws = mixture.sample(40000, generator=torch.Generator().manual_seed(0))
    mean = weights @ means
    second = (weights[:, None, None] * (covariances + means[:, :, None] * means[:, None, :])).sum(0)
    standard_error = draws.std(0) / math.sqrt(len(draws))
    assert ((draws.mean(0) - mean).abs() < 4 * standard_error).all()
    torch.testing.assert_close(torch.cov(draws.T), second - torch.outer(mean, mean), atol=0.05, rtol=0)
    assert torch.equal(draws, mixture.sample(40000, generator=torch.Generator().manual_seed(0)))


def test_a_saved_mixture_loads_back_identical_and_foreign_files_are_refused(tmp_path):
    from safetensors.torch import save_file

    x = blobs(n=600, dim=3, k=3)
    mixture = seeded_start(x, 3, reg_covar=1e-4)
    em_fit(mixture, x, max_iter=5)
    path = save_mixture(mixture, tmp_path / "prior.safetensors", metadata={"patch_size": "8"})
    loaded = load_mixture(path)
    assert loaded.reg_covar == mixture.reg_covar
    for name in ("weights", "means", "covariances", "precision_cholesky"):
        assert torch.equal(getattr(loaded, name), getattr(mixture, name)), name
    assert torch.equal(loaded.log_prob(x), mixture.log_prob(x))
    assert not list(tmp_path.glob("*.tmp")), "the atomic write left a temporary file"
    with pytest.raises(ValueError, match="does not exist; fit a mixture first"):
        load_mixture(tmp_path / "absent.safetensors")
    save_file({"weight": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match=r"holds \['weight'\], not a mixture's"):
        load_mixture(tmp_path / "other.safetensors")
    (tmp_path / "garbage.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_mixture(tmp_path / "garbage.safetensors")


def copy_of(mixture):
    return GaussianMixture(mixture.num_components, mixture.dim, reg_covar=mixture.reg_covar).set_parameters(
        mixture.weights.clone(), mixture.means.clone(), mixture.covariances.clone())


def test_adaptation_without_noise_or_prior_strength_is_em():
    x = blobs(n=600, dim=3, k=3, seed=2)
    start = seeded_start(x, 3, 2, reg_covar=1e-6)
    adapted, history = adapt_to_noisy(start, x, 0.0, relevance=0.0, iterations=3)
    reference = copy_of(start)
    log_likelihoods = [em_step(reference, x) for _ in range(3)]
    assert history.log_likelihood == pytest.approx(log_likelihoods, abs=1e-10)
    for name in ("weights", "means", "covariances"):
        assert torch.allclose(getattr(adapted, name), getattr(reference, name), atol=1e-10), name
    assert torch.equal(start.means, seeded_start(x, 3, 2, reg_covar=1e-6).means)  # the prior is left as it was


@pytest.mark.parametrize("seed", range(4))
def test_noisy_em_never_decreases_the_likelihood_of_the_noisy_points(seed):
    clean = blobs(n=800, dim=4, k=4, seed=seed)
    y = clean + 0.7 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    start = seeded_start(clean, 5, seed, reg_covar=0.0)
    _, history = adapt_to_noisy(start, y, 0.49, relevance=0.0, iterations=30)
    steps = np.diff([*history.log_likelihood, history.final_log_likelihood])
    assert (steps >= -1e-10).all(), steps.min()
    assert history.final_log_likelihood > history.log_likelihood[0] + 0.01


def test_noisy_em_recovers_the_clean_covariances_that_plain_em_inflates_by_the_noise():
    # two well separated 3-D Gaussians observed through noise of variance s = 0.5
    g = torch.Generator().manual_seed(0)
    truth = GaussianMixture(2, 3).set_parameters(
        torch.tensor([0.3, 0.7], dtype=torch.float64), torch.tensor([[-6.0, 0, 0], [6.0, 1, 0]], dtype=torch.float64),
        torch.stack([torch.diag(torch.tensor([1.0, 0.3, 2.0], dtype=torch.float64)),
                     torch.tensor([[1.5, 0.6, 0], [0.6, 1.0, 0.2], [0, 0.2, 0.8]], dtype=torch.float64)]))
    x = truth.sample(40_000, generator=g)
    s = 0.5
    y = x + s**0.5 * torch.randn(x.shape, generator=g, dtype=torch.float64)
    start = GaussianMixture(2, 3, reg_covar=0.0).set_parameters(
        torch.tensor([0.5, 0.5], dtype=torch.float64), torch.tensor([[-5.0, 1, 1], [5.0, 0, -1]], dtype=torch.float64),
        torch.eye(3, dtype=torch.float64).expand(2, 3, 3).clone())
    adapted, _ = adapt_to_noisy(start, y, s, relevance=0.0, iterations=60)
    plain = copy_of(start)
    em_fit(plain, y, max_iter=60, tol=0.0)
    eye = torch.eye(3, dtype=torch.float64)
    # sampling error of a covariance from ~12,000-28,000 points is about 0.02-0.03
    assert torch.allclose(adapted.covariances, truth.covariances, atol=0.06)
    assert torch.allclose(plain.covariances, truth.covariances + s * eye, atol=0.06)  # plain EM fits Sigma + s I
    assert torch.allclose(adapted.means, truth.means, atol=0.05)
    assert torch.allclose(adapted.weights, truth.weights, atol=0.01)


def test_a_strong_relevance_keeps_the_prior_and_an_unused_component_stays_as_it_was():
    x = blobs(n=600, dim=3, k=3, seed=3)
    prior = seeded_start(x, 3, 3)
    kept, _ = adapt_to_noisy(prior, x + 0.1, 0.01, relevance=1e12, iterations=2)
    for name in ("weights", "means", "covariances"):
        assert torch.allclose(getattr(kept, name), getattr(prior, name), atol=1e-6), name
    # a fourth component far from every point: N_k ~ 0, alpha_k ~ 0, its mean and covariance unchanged
    far = GaussianMixture(4, 3).set_parameters(
        torch.cat([prior.weights, torch.tensor([0.2], dtype=torch.float64)]),
        torch.cat([prior.means, torch.full((1, 3), 1e3, dtype=torch.float64)]),
        torch.cat([prior.covariances, torch.eye(3, dtype=torch.float64)[None]]))
    adapted, _ = adapt_to_noisy(far, x, 0.01, relevance=1.0, iterations=3)
    ridge = far.reg_covar * torch.eye(3, dtype=torch.float64)  # added once to every adapted covariance
    assert torch.allclose(adapted.means[3], far.means[3])
    assert torch.allclose(adapted.covariances[3], far.covariances[3] + ridge)
    assert not torch.allclose(adapted.means[:3], far.means[:3], atol=1e-3)  # the used ones did move


def test_bad_inputs_get_one_clear_error():
    mixture = GaussianMixture(2, 3)
    with pytest.raises(ValueError, match=r"points \[N, D\]"):
        mixture.log_prob(torch.zeros(3))
    with pytest.raises(ValueError, match="3 values per point but the mixture is over"):
        em_fit(GaussianMixture(2, 4), torch.zeros(10, 3))
    with pytest.raises(ValueError, match="NaN or infinite"):
        em_fit(mixture, torch.full((10, 3), float("nan")))
    with pytest.raises(ValueError, match="component 1 is not positive definite; raise reg_covar"):
        mixture.set_parameters(torch.ones(2), torch.zeros(2, 3), torch.stack([torch.eye(3), -torch.eye(3)]))
    with pytest.raises(ValueError, match=r"expected weights \[2\], means \[2, 3\]"):
        mixture.set_parameters(torch.ones(3), torch.zeros(2, 3), torch.eye(3).expand(2, 3, 3))
    with pytest.raises(ValueError, match="5 centres need at least as many points"):
        kmeans_plus_plus(torch.zeros(4, 2), 5)
    with pytest.raises(ValueError, match="reg_covar must be a number >= 0"):
        GaussianMixture(2, 3, reg_covar=-1.0)
    with pytest.raises(ValueError, match=r"labels must be \[N\]"):
        mixture_from_assignments(torch.zeros(4, 2), torch.tensor([0, 1, 2, 3]), 2)
    with pytest.raises(CapabilityError, match="unconditional"):
        mixture.log_prob(torch.zeros(2, 3), context=torch.zeros(2))
    with pytest.raises(ValueError, match="adapt_to_noisy: noise_variance must be a number >= 0"):
        adapt_to_noisy(mixture, torch.zeros(10, 3), -0.1)
    with pytest.raises(ValueError, match="adapt_to_noisy: relevance must be a number >= 0"):
        adapt_to_noisy(mixture, torch.zeros(10, 3), 0.1, relevance=float("inf"))
    with pytest.raises(ValueError, match="3 values per point but the mixture is over"):
        adapt_to_noisy(GaussianMixture(2, 4), torch.zeros(10, 3), 0.1)
