"""Tests of dgmlab.numerics: PCA against the SVD and known variances, power-law fits, first-harmonic R^2."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dgmlab import numerics, plots


def rotation(angle: float) -> np.ndarray:
    return np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])


# ----------------------------------------------------------------------------------------------------
# array conversion
# ----------------------------------------------------------------------------------------------------
def test_as_float_array_converts_tensors_arrays_and_lists():
    from_tensor = numerics.as_float_array(torch.tensor([[1.5, 2.0]], dtype=torch.float32), "codes")
    assert from_tensor.dtype == np.float64 and from_tensor.tolist() == [[1.5, 2.0]]
    assert numerics.as_float_array([[1, 2], [3, 4]], "codes").dtype == np.float64
    assert numerics.as_numpy(torch.tensor([1, 2]), "labels").dtype == np.int64  # integers stay integers


def test_as_float_array_bad_inputs():
    with pytest.raises(ValueError, match="codes must be a rectangular array"):
        numerics.as_float_array([[1, 2], [3]], "codes")
    with pytest.raises(ValueError, match="codes must hold numbers"):
        numerics.as_float_array(["a", "b"], "codes")
    with pytest.raises(ValueError, match="codes contains NaN or infinite"):
        numerics.as_float_array([1.0, float("nan")], "codes")


# ----------------------------------------------------------------------------------------------------
# principal components
# ----------------------------------------------------------------------------------------------------
def test_principal_components_match_torch_svd():
    generator = torch.Generator().manual_seed(0)
    codes = torch.randn(300, 6, generator=generator, dtype=torch.float64) @ torch.randn(
        6, 6, generator=generator, dtype=torch.float64
    )
    projected, ratio = numerics.principal_components(codes, 4)
    centred = codes - codes.mean(dim=0)
    left, singular_values, _ = torch.linalg.svd(centred, full_matrices=False)
    # C V_k = U_k S_k, up to the sign of each component
    expected = (left[:, :4] * singular_values[:4]).numpy()
    np.testing.assert_allclose(np.abs(projected), np.abs(expected), atol=1e-9)
    np.testing.assert_allclose(ratio, (singular_values[:4] ** 2 / (singular_values**2).sum()).numpy(), rtol=1e-12)
    assert projected.shape == (300, 4) and ratio.shape == (4,)


def test_principal_components_recover_known_directions_and_variances():
    # four points at +-3 along one direction and +-1 along the orthogonal one, rotated by 0.4 rad and shifted
    frame = rotation(0.4)
    along = np.array([[3.0, 0.0], [-3.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    codes = along @ frame.T + np.array([5.0, -2.0])
    projected, ratio = numerics.principal_components(codes, 2)
    np.testing.assert_allclose(ratio, [9.0 / 10.0, 1.0 / 10.0], rtol=1e-12)
    # signs: each direction's largest-magnitude loading is positive, which both columns of the frame,
    # (0.92, 0.39) and (-0.39, 0.92), already have: the projections are the original coordinates
    np.testing.assert_allclose(projected, along, atol=1e-12)
    flipped, _ = numerics.principal_components(-along @ frame.T, 2)
    np.testing.assert_allclose(flipped, -along, atol=1e-12)
    np.testing.assert_allclose(projected.var(axis=0, ddof=1), [18.0 / 3.0, 2.0 / 3.0], rtol=1e-12)


def test_principal_components_match_covariance_eigendecomposition():
    rng = np.random.default_rng(3)
    codes = rng.normal(size=(500, 5)) @ rng.normal(size=(5, 5)) + 7.0
    projected, ratio = numerics.principal_components(codes, 3)
    eigenvalues = np.sort(np.linalg.eigvalsh(np.cov(codes, rowvar=False)))[::-1]
    np.testing.assert_allclose(ratio, eigenvalues[:3] / eigenvalues.sum(), rtol=1e-10)
    np.testing.assert_allclose(projected.var(axis=0, ddof=1), eigenvalues[:3], rtol=1e-10)
    np.testing.assert_allclose(projected.mean(axis=0), 0.0, atol=1e-9)
    # signs are deterministic: the same result for a row permutation of the data
    permuted, _ = numerics.principal_components(codes[::-1], 3)
    np.testing.assert_allclose(permuted[::-1], projected, atol=1e-9)


def test_principal_components_bad_inputs():
    with pytest.raises(ValueError, match=r"codes must have shape \[N, d\] with N >= 2"):
        numerics.principal_components(np.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"components must lie in \[1, d=3\], got 4"):
        numerics.principal_components(np.random.rand(10, 3), 4)
    with pytest.raises(ValueError, match="components must be an integer"):
        numerics.principal_components(np.random.rand(10, 3), True)
    with pytest.raises(ValueError, match="zero variance"):
        numerics.principal_components(np.ones((10, 3)))


def test_plots_reexports_the_numerics():
    assert plots.principal_components is numerics.principal_components
    assert plots.fit_power_law is numerics.fit_power_law


# ----------------------------------------------------------------------------------------------------
# power laws
# ----------------------------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(slope=st.floats(-3, 3), intercept=st.floats(-5, 5))
def test_fit_power_law_recovers_exact_power_laws(slope, intercept):
    x = np.geomspace(1, 5000, 20)
    fitted_slope, fitted_intercept = numerics.fit_power_law(x, np.exp(intercept) * x**slope)
    assert fitted_slope == pytest.approx(slope, abs=1e-8)
    assert fitted_intercept == pytest.approx(intercept, abs=1e-7)


def test_fit_power_law_recovers_the_monte_carlo_exponent():
    # RMSE of the mean of n standard normals is n^(-1/2); measured over 400 repeats at each n
    generator = torch.Generator().manual_seed(0)
    counts = np.array([4, 16, 64, 256, 1024])
    rmse = [float(torch.randn(400, n, generator=generator).mean(dim=1).pow(2).mean().sqrt()) for n in counts]
    slope, intercept = numerics.fit_power_law(counts, rmse)
    assert slope == pytest.approx(-0.5, abs=0.05)
    assert math.exp(intercept) == pytest.approx(1.0, rel=0.1)  # sigma = 1


def test_power_law_intercept_for_a_fixed_slope():
    x = np.geomspace(1, 1000, 12)
    assert numerics.power_law_intercept(x, 2.5 * x**-0.5, -0.5) == pytest.approx(math.log(2.5), abs=1e-12)
    # with the fitted slope it is the fitted intercept (least squares in the intercept alone)
    y = np.exp(np.random.default_rng(1).normal(size=12)) * x**0.3
    slope, intercept = numerics.fit_power_law(x, y)
    assert numerics.power_law_intercept(x, y, slope) == pytest.approx(intercept, abs=1e-10)


def test_power_law_bad_inputs():
    with pytest.raises(ValueError, match="x and y must be positive"):
        numerics.fit_power_law([1, 2, 3], [1, 0, 2])
    with pytest.raises(ValueError, match="the same length >= 2"):
        numerics.fit_power_law([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="slope is undefined"):
        numerics.fit_power_law([2, 2, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="slope must be a finite number"):
        numerics.power_law_intercept([1, 2], [1, 2], float("inf"))
    with pytest.raises(ValueError, match="slope must be a finite number"):
        numerics.power_law_intercept([1, 2], [1, 2], "-0.5")


# ----------------------------------------------------------------------------------------------------
# first-harmonic R^2
# ----------------------------------------------------------------------------------------------------
def test_first_harmonic_r2():
    angles = np.linspace(0, 2 * np.pi, 360, endpoint=False)
    assert numerics.first_harmonic_r2(5 + 2 * np.cos(angles - 0.7), angles) == pytest.approx(1.0, abs=1e-12)
    # the second harmonic is orthogonal to the first on a full circle: nothing explained
    assert numerics.first_harmonic_r2(np.cos(2 * angles), angles) == pytest.approx(0.0, abs=1e-12)
    # half signal, half independent noise of the same variance
    rng = np.random.default_rng(0)
    noise = rng.normal(scale=math.sqrt(0.5), size=angles.shape)
    assert numerics.first_harmonic_r2(np.sin(angles) + noise, angles) == pytest.approx(0.5, abs=0.1)
    assert math.isnan(numerics.first_harmonic_r2(np.ones(10), angles[:10]))
    with pytest.raises(ValueError, match="the same length"):
        numerics.first_harmonic_r2(np.ones(10), angles)
