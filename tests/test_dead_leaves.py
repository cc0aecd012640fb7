"""Dead leaves (dgmlab.data.dead_leaves): the size law, the occlusion, and the power spectrum it produces."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dgmlab.data.dead_leaves import dead_leaves, leaf_radii, power_spectrum, spectrum_slope


def test_leaf_radii_follow_the_power_law_cdf():
    r_min, r_max = 1.0, 50.0
    radii = leaf_radii(20000, r_min, r_max, generator=torch.Generator().manual_seed(0))
    assert float(radii.min()) >= r_min and float(radii.max()) <= r_max
    # P(R <= r) = (r_min^-2 - r^-2) / (r_min^-2 - r_max^-2), checked at a few radii to 4 standard errors
    for r in (1.2, 2.0, 5.0, 20.0):
        cdf = (r_min**-2 - r**-2) / (r_min**-2 - r_max**-2)
        assert abs(float((radii <= r).double().mean()) - cdf) < 4 * math.sqrt(cdf * (1 - cdf) / 20000)


def test_a_dead_leaves_image_is_covered_flat_pieces_and_reproducible():
    image = dead_leaves(64, r_min=2.0, r_max=32.0, generator=torch.Generator().manual_seed(1))
    assert image.shape == (64, 64) and not torch.isnan(image).any()
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    # opaque leaves of one grey level: far fewer distinct values than pixels, most neighbours equal
    assert len(torch.unique(image)) < 64 * 64 / 4
    assert float((image[:, 1:] == image[:, :-1]).double().mean()) > 0.6
    assert torch.equal(image, dead_leaves(64, r_min=2.0, r_max=32.0, generator=torch.Generator().manual_seed(1)))
    with pytest.raises(ValueError, match="0 < r_min <= r_max"):
        dead_leaves(16, r_min=5.0, r_max=2.0)


def test_power_spectrum_finds_a_sinusoid_and_white_noise_is_flat():
    n = 64
    x = torch.arange(n, dtype=torch.float64)
    wave = torch.sin(2 * math.pi * 8 * x / n)[None, :].expand(n, n)
    frequency, power = power_spectrum(wave)
    assert frequency[np.argmax(power)] == pytest.approx(8 / n)
    noise = torch.randn(256, 256, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert abs(spectrum_slope(noise)) < 0.2
    with pytest.raises(ValueError, match="at least 4x4"):
        power_spectrum(torch.zeros(2, 2))


def test_dead_leaves_have_a_scale_invariant_spectrum_near_minus_two():
    slopes = [spectrum_slope(dead_leaves(128, generator=torch.Generator().manual_seed(seed))) for seed in (0, 1)]
    assert all(-2.3 < slope < -1.5 for slope in slopes), slopes
