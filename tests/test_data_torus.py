"""The torus sampler of problem set 1 (section 3a), its area-uniform and noisy variants, and the distance."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dgmlab.data import torus_point_cloud, torus_surface_distance


def problem_set_sampler(R, r, num_points, seed):
    """The problem set's generator, global seeding and all (the global state is restored afterwards)."""
    saved = np.random.get_state()
    try:
        np.random.seed(seed)
        u = np.random.uniform(0, 2 * np.pi, num_points)
        np.random.seed(seed + 1)
        v = np.random.uniform(0, 2 * np.pi, num_points)
    finally:
        np.random.set_state(saved)
    x = (R + r * np.cos(v)) * np.cos(u)
    y = (R + r * np.cos(v)) * np.sin(u)
    z = r * np.sin(v)
    return np.stack([x, y, z], axis=1)


def test_reproduces_the_problem_set_exactly():
    points, angles = torus_point_cloud()
    assert points.shape == (3000, 3) and points.dtype == torch.float32
    assert angles.shape == (3000, 2) and angles.dtype == torch.float32
    assert torch.allclose(points[0], torch.tensor([0.5313, 1.3803, -0.1432]), atol=1e-4)
    expected = torch.from_numpy(problem_set_sampler(1.0, 0.5, 3000, 1234).astype(np.float32))
    assert torch.equal(points, expected)
    other = torch.from_numpy(problem_set_sampler(2.0, 0.3, 17, 99).astype(np.float32))
    assert torch.equal(torus_point_cloud(2.0, 0.3, 17, 99)[0], other)


def test_points_lie_on_the_surface_and_match_their_angles():
    R, r = 1.0, 0.5
    points, angles = torus_point_cloud(R, r)
    p = points.double()
    residual = (torch.sqrt(p[:, 0] ** 2 + p[:, 1] ** 2) - R) ** 2 + p[:, 2] ** 2 - r**2
    assert residual.abs().max() < 1e-6
    assert torus_surface_distance(points, R, r).max() < 1e-6
    u, v = angles.double().unbind(1)
    rebuilt = torch.stack([(R + r * v.cos()) * u.cos(), (R + r * v.cos()) * u.sin(), r * v.sin()], 1)
    assert torch.allclose(rebuilt, p, atol=1e-6)
    assert angles.min() >= 0 and angles.max() < 2 * math.pi + 1e-6
    lo, hi = points.min(0).values, points.max(0).values
    assert torch.allclose(lo, torch.tensor([-1.4998, -1.4969, -0.5000]), atol=1e-4)
    assert torch.allclose(hi, torch.tensor([1.5000, 1.4967, 0.5000]), atol=1e-4)


def test_global_numpy_rng_is_untouched():
    np.random.seed(42)
    before = np.random.get_state()
    torus_point_cloud(area_uniform=True, noise_std=0.1)
    after = np.random.get_state()
    assert np.array_equal(before[1], after[1]) and before[2:] == after[2:]


def test_area_uniform_weights_the_outer_side():
    R, r, n = 1.0, 0.5, 20_000
    points, angles = torus_point_cloud(R, r, n, seed=3, area_uniform=True)
    v = angles[:, 1].double()
    # density (R + r cos v) / (2 pi R): P(cos v > 0) = 1/2 + r / (pi R), E[cos v] = r / (2 R)
    expected = 0.5 + r / (math.pi * R)
    outer = float((v.cos() > 0).double().mean())
    assert abs(outer - expected) < 4 * math.sqrt(expected * (1 - expected) / n)
    cos_std = math.sqrt(0.5 - (r / (2 * R)) ** 2)  # E[cos^2 v] = 1/2 under this density
    assert abs(float(v.cos().mean()) - r / (2 * R)) < 4 * cos_std / math.sqrt(n)
    uniform_angles = torus_point_cloud(R, r, n, seed=3)[1]
    assert abs(float((uniform_angles[:, 1].double().cos() > 0).double().mean()) - 0.5) < 4 * 0.5 / math.sqrt(n)
    assert torch.equal(angles[:, 0], uniform_angles[:, 0])  # u keeps its stream
    assert torus_surface_distance(points, R, r).max() < 1e-6
    assert torch.equal(points, torus_point_cloud(R, r, n, seed=3, area_uniform=True)[0])


def test_noise_adds_the_right_variance():
    R, r, n, std = 1.0, 0.5, 20_000, 0.05
    noisy, angles = torus_point_cloud(R, r, n, seed=8, noise_std=std)
    clean, same_angles = torus_point_cloud(R, r, n, seed=8)
    assert torch.equal(angles, same_angles)
    noise = (noisy.double() - clean.double()).numpy()
    assert np.all(np.abs(noise.mean(0)) < 4 * std / math.sqrt(n))
    # the sample variance of n Gaussians has relative standard error sqrt(2 / n) (1% here)
    assert np.all(np.abs(noise.var(0) / std**2 - 1) < 5 * math.sqrt(2 / n))
    assert abs(np.corrcoef(noise.T)[0, 1]) < 0.05
    assert torus_surface_distance(noisy, R, r).mean() > 0.02


def test_surface_distance_of_known_points():
    points = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [2.5, 0.0, 0.0], [0.0, 1.0, 0.5], [0.0, 0.0, 2.0]])
    expected = torch.tensor([0.5, 0.5, 1.0, 0.0, math.sqrt(5) - 0.5])
    assert torch.allclose(torus_surface_distance(points, 1.0, 0.5), expected, atol=1e-6)
    batched = torus_surface_distance(points.double().reshape(1, 5, 3), 1.0, 0.5)
    assert batched.shape == (1, 5) and batched.dtype == torch.float64


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"R": 0.5, "r": 0.5}, "R > r > 0"),
        ({"R": 1.0, "r": 0.0}, "R > r > 0"),
        ({"R": 1.0, "r": -0.1}, "R > r > 0"),
        ({"R": float("nan")}, "finite"),
        ({"num_points": 0}, "num_points must be an integer >= 1"),
        ({"num_points": 2.0}, "num_points must be an integer >= 1"),
        ({"noise_std": -0.1}, "noise_std must be a finite number >= 0"),
        ({"seed": -1}, "seed must be an integer"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        torus_point_cloud(**kwargs)


def test_surface_distance_bad_arguments():
    with pytest.raises(ValueError, match=r"shape \[N, 3\]"):
        torus_surface_distance(torch.zeros(4, 2), 1.0, 0.5)
    with pytest.raises(ValueError, match="R > r > 0"):
        torus_surface_distance(torch.zeros(4, 3), 0.5, 1.0)
