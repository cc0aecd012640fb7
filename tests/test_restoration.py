"""EPLL restoration (dgmlab.restoration): each half-quadratic step against its own definition, then whole
denoising and inpainting runs on small synthetic images."""

from __future__ import annotations

import math

import pytest
import torch

from dgmlab.models.mixtures import (
    GaussianMixture,
    adapt_to_noisy,
    em_fit,
    mixture_from_assignments,
    most_likely_component,
)
from dgmlab.restoration import _patches, adapted_epll, add_noise, annealed_betas, epll, psnr, wiener_patches, x_step


def smooth_image(n=48, seed=0):
    """White noise blurred twice: an image whose neighbouring pixels are strongly correlated, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(1, 1, n + 8, n + 8, generator=g, dtype=torch.float64)
    kernel = torch.exp(-torch.linspace(-2, 2, 9, dtype=torch.float64) ** 2)
    kernel = (kernel / kernel.sum())[None, None]
    image = torch.nn.functional.conv2d(torch.nn.functional.conv2d(noise, kernel[..., None, :]), kernel[..., :, None])
    image = image[0, 0, :n, :n]
    return ((image - image.mean()) / image.std() * 0.15 + 0.5).clamp(0, 1)


def patch_prior(k=3, size=4, seed=0):
    """A mixture fitted by EM to the mean-removed patches of other smooth images."""
    patches = torch.cat([_patches(smooth_image(48, seed=s), size) for s in (seed + 10, seed + 11)])
    patches = patches - patches.mean(1, keepdim=True)
    labels = torch.randint(k, (len(patches),), generator=torch.Generator().manual_seed(seed))
    mixture = mixture_from_assignments(patches, labels, k, reg_covar=1e-6)
    em_fit(mixture, patches, max_iter=20, tol=1e-6)
    return mixture


def test_psnr_of_a_known_error():
    clean = torch.zeros(10, 10)
    assert psnr(clean + 0.1, clean) == pytest.approx(20.0)
    assert psnr(clean, clean) == math.inf
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(clean, torch.zeros(5, 5))


def test_the_z_step_with_one_gaussian_is_the_exact_map_patch():
    # argmin_z beta/2 ||y - z||^2 + 1/2 (z - mu)^T Sigma^-1 (z - mu) = (Sigma^-1 + beta I)^-1 (Sigma^-1 mu + beta y)
    g = torch.Generator().manual_seed(0)
    root = torch.randn(9, 9, generator=g, dtype=torch.float64)
    sigma, mu = root @ root.T / 9 + 0.1 * torch.eye(9, dtype=torch.float64), torch.randn(9, generator=g).double()
    prior = GaussianMixture(1, 9).set_parameters(torch.ones(1), mu[None], sigma[None])
    y, beta = torch.randn(20, 9, generator=g, dtype=torch.float64), 3.0
    z, components = wiener_patches(prior, y, 1 / beta)
    precision = torch.linalg.inv(sigma)
    exact = torch.linalg.solve(precision + beta * torch.eye(9, dtype=torch.float64), (precision @ mu)[:, None]
                               + beta * y.T).T
    torch.testing.assert_close(z, exact)
    assert (components == 0).all()


def test_the_z_step_picks_the_component_that_best_explains_the_noisy_patch():
    mixture = patch_prior(k=4)
    patches = _patches(add_noise(smooth_image(seed=3), 0.05), 4)
    patches = patches - patches.mean(1, keepdim=True)
    noisy = GaussianMixture(4, 16, reg_covar=0.0)
    noisy.set_parameters(mixture.weights, mixture.means, mixture.covariances + 0.01 * torch.eye(16))
    expected = noisy.log_joint(patches).argmax(1)
    assert torch.equal(most_likely_component(mixture, patches, added_variance=0.01), expected)
    fast = most_likely_component(mixture, patches, added_variance=0.01, compute_dtype=torch.float32)
    assert float((fast == expected).double().mean()) > 0.99
    with pytest.raises(ValueError, match="added_variance must be a number >= 0"):
        most_likely_component(mixture, patches, added_variance=-1.0)


def test_the_x_step_minimises_the_quadratic_in_x():
    g = torch.Generator().manual_seed(1)
    y = torch.rand(9, 11, generator=g, dtype=torch.float64)
    observed = (torch.rand(9, 11, generator=g) > 0.3).double()
    z = torch.rand(_patches(y, 3).shape, generator=g, dtype=torch.float64)
    lam, beta = 5.0, 2.0
    x = x_step(y, z, observed, lam, beta, 3).requires_grad_(True)
    cost = lam / 2 * (observed * (x - y)).square().sum() + beta / 2 * (_patches(x, 3) - z).square().sum()
    (gradient,) = torch.autograd.grad(cost, x)
    assert float(gradient.abs().max()) < 1e-10


def test_epll_denoises_far_beyond_the_noise_and_improves_round_by_round_at_first():
    clean = smooth_image(seed=1)
    sigma = 25 / 255
    noisy = add_noise(clean, sigma, seed=5)
    result = epll(noisy, patch_prior(), sigma, clean=clean)
    assert len(result.psnr) == 6 and result.betas[0] == pytest.approx(1 / sigma**2)
    assert result.psnr[-1] > psnr(noisy, clean) + 6.0
    # every larger beta helped here (the schedule is not guaranteed to, but should on a smooth image) ...
    assert all(later > earlier for earlier, later in zip(result.psnr[:-1], result.psnr[1:], strict=True))
    # ... and the result beats a 3x3 box blur, which suits this smooth image well
    box = torch.nn.functional.conv2d(torch.nn.functional.pad(noisy[None, None], (1, 1, 1, 1), mode="replicate"),
                                     torch.full((1, 1, 3, 3), 1 / 9, dtype=torch.float64))[0, 0]
    assert result.psnr[-1] > psnr(box, clean)
    assert result.image.min() >= 0 and result.image.max() <= 1


def test_epll_inpaints_missing_pixels_from_their_neighbours():
    clean = smooth_image(seed=2)
    mask = (torch.rand(clean.shape, generator=torch.Generator().manual_seed(0)) > 0.5).double()
    sigma = 2 / 255
    noisy = add_noise(clean, sigma, seed=1) * mask
    result = epll(noisy, patch_prior(), sigma, mask=mask, betas=[b / (25 / 255) ** 2 for b in (1, 4, 8, 16, 32, 64)])
    missing = mask == 0
    mean_fill = torch.full_like(clean, float(clean[~missing].mean()))
    assert psnr(result.image[missing], clean[missing]) > psnr(mean_fill[missing], clean[missing]) + 8.0
    # observed pixels stay close to what was observed
    assert float((result.image - noisy)[~missing].abs().max()) < 0.05


def test_annealed_betas_fall_geometrically_in_sigma_and_start_from_the_given_image():
    betas = annealed_betas(0.1, 0.001, 5)
    sigmas = [b**-0.5 for b in betas]
    assert sigmas[0] == pytest.approx(0.1) and sigmas[-1] == pytest.approx(0.001)
    ratios = [b / a for a, b in zip(sigmas[:-1], sigmas[1:], strict=True)]
    assert ratios == pytest.approx([0.1 ** 0.5] * 4)
    assert annealed_betas(0.2, 0.05, 1) == [pytest.approx(400.0)]
    with pytest.raises(ValueError, match="need 0 < last_sigma <= first_sigma"):
        annealed_betas(0.01, 0.1, 4)
    with pytest.raises(ValueError, match="rounds must be an integer >= 1"):
        annealed_betas(0.1, 0.01, 0)
    # a start from the clean image keeps the observed pixels and needs nothing filled in
    clean = smooth_image(seed=3)
    mask = (torch.rand(clean.shape, generator=torch.Generator().manual_seed(1)) > 0.5).double()
    sigma = 0.5 / 255
    from_clean = epll(clean * mask, patch_prior(), sigma, mask=mask, betas=annealed_betas(2 / 255, 0.5 / 255, 3),
                      initial=clean, clean=clean)
    from_mean = epll(clean * mask, patch_prior(), sigma, mask=mask, betas=annealed_betas(2 / 255, 0.5 / 255, 3),
                     clean=clean)
    assert from_clean.psnr[-1] > from_mean.psnr[-1] + 3.0
    with pytest.raises(ValueError, match=r"initial image \[4, 4\] must have the image's shape"):
        epll(clean, patch_prior(), sigma, initial=torch.zeros(4, 4))


def test_epll_refuses_what_it_cannot_restore():
    prior = patch_prior()
    with pytest.raises(ValueError, match=r"grey levels \[H, W\]"):
        epll(torch.zeros(1, 8, 8), prior, 0.1)
    with pytest.raises(ValueError, match="smaller than the prior's 4x4 patches"):
        epll(torch.zeros(3, 8), prior, 0.1)
    with pytest.raises(ValueError, match="sigma must be the noise's standard deviation"):
        epll(torch.zeros(8, 8), prior, 0.0)
    with pytest.raises(ValueError, match="mask .* must have the image's shape"):
        epll(torch.zeros(8, 8), prior, 0.1, mask=torch.ones(4, 4))
    with pytest.raises(ValueError, match="not a square patch"):
        epll(torch.zeros(8, 8), GaussianMixture(2, 5), 0.1)
    with pytest.raises(ValueError, match="adapted_epll: denoising only"):
        adapted_epll(torch.zeros(8, 8), prior, 0.1, mask=torch.ones(8, 8))
    with pytest.raises(ValueError, match="smaller than the prior's 4x4 patches"):
        adapted_epll(torch.zeros(3, 8), prior, 0.1)


def test_adapted_epll_is_epll_with_the_prior_adapted_to_the_noisy_patches_then_to_the_first_restoration():
    clean = smooth_image(seed=2)
    sigma = 25 / 255
    noisy = add_noise(clean, sigma, seed=3)
    prior = patch_prior()

    def adapted_to(image, noise_variance):
        patches = torch.nn.functional.unfold(image[None, None], 4, stride=2)[0].T
        return adapt_to_noisy(prior, patches - patches.mean(1, keepdim=True), noise_variance, iterations=4)

    one = adapted_epll(noisy, prior, sigma, iterations=4, stride=2, second_pass=None, compute_dtype=None, clean=clean)
    adapted, history = adapted_to(noisy, sigma**2)
    first = epll(noisy, adapted, sigma, compute_dtype=None)
    assert torch.allclose(one.image, first.image, atol=1e-12)
    assert history.final_log_likelihood > history.log_likelihood[0]  # the adapted prior explains these patches better
    assert len(one.psnr) == 6  # epll's options pass through (here: clean, to record the PSNR per round)
    two = adapted_epll(noisy, prior, sigma, iterations=4, stride=2, compute_dtype=None, clean=clean)
    again, _ = adapted_to(first.image, 0.2 * sigma**2)  # the default second pass: error variance 0.2 sigma^2
    assert torch.allclose(two.image, epll(noisy, again, sigma, compute_dtype=None).image, atol=1e-12)
    assert len(two.psnr) == 6 and two.psnr[-1] == psnr(two.image, clean)
    with pytest.raises(ValueError, match="second_pass is the first restoration's error variance"):
        adapted_epll(noisy, prior, sigma, second_pass=0.0)
