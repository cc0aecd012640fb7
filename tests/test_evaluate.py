"""Point-cloud metrics: Chamfer distance against a brute-force reference, its properties, the distance to the
torus surface, and the oracle row against values computed independently (NumPy and SciPy, same seeds)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from dgmlab.evaluate import (
    METRIC_UNITS,
    chamfer_distance,
    nearest_neighbour_distances,
    oracle_metrics,
    point_cloud_metrics,
    surface_distance,
)


def brute_force_chamfer(a: np.ndarray, b: np.ndarray, squared: bool) -> float:
    """Every pair, by explicit loops over a full distance matrix, in float64."""
    distances = np.zeros((len(a), len(b)))
    for i in range(len(a)):
        for j in range(len(b)):
            distances[i, j] = math.sqrt(sum((a[i, c] - b[j, c]) ** 2 for c in range(3)))
    power = 2 if squared else 1
    return float((distances.min(axis=1) ** power).mean() + (distances.min(axis=0) ** power).mean())


coordinates = st.floats(min_value=-10, max_value=10, allow_nan=False, allow_infinity=False, width=64)
point_sets = st.integers(min_value=1, max_value=12).flatmap(
    lambda n: arrays(np.float64, (n, 3), elements=coordinates))


@pytest.mark.parametrize("squared", [True, False])
@pytest.mark.parametrize("chunk_size", [1, 3, 1000])
def test_matches_brute_force(squared, chunk_size):
    generator = np.random.default_rng(0)
    a, b = generator.normal(size=(17, 3)), generator.normal(size=(9, 3))
    value = chamfer_distance(torch.from_numpy(a), torch.from_numpy(b), squared=squared, chunk_size=chunk_size)
    assert float(value) == pytest.approx(brute_force_chamfer(a, b, squared), rel=1e-12)


@settings(max_examples=40, deadline=None)
@given(point_sets, point_sets)
def test_symmetric_and_chunk_independent(a, b):
    a_t, b_t = torch.from_numpy(a), torch.from_numpy(b)
    forward = chamfer_distance(a_t, b_t)
    assert float(forward) == pytest.approx(float(chamfer_distance(b_t, a_t)), rel=1e-12, abs=1e-12)
    chunked = chamfer_distance(a_t, b_t, chunk_size=2)
    assert float(forward) == pytest.approx(float(chunked), rel=1e-12, abs=1e-12)
    assert float(forward) == pytest.approx(brute_force_chamfer(a, b, squared=True), rel=1e-9, abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(point_sets)
def test_zero_for_identical_sets(a):
    a_t = torch.from_numpy(a)
    assert float(chamfer_distance(a_t, a_t.clone())) == 0.0
    assert float(chamfer_distance(a_t, a_t.clone(), squared=False)) == 0.0


@settings(max_examples=40, deadline=None)
@given(point_sets, point_sets, arrays(np.float64, (3,), elements=coordinates))
def test_translation(a, b, shift):
    a_t, b_t, t = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(shift)
    # moving both sets together changes nothing
    together = chamfer_distance(a_t + t, b_t + t)
    assert float(together) == pytest.approx(float(chamfer_distance(a_t, b_t)), rel=1e-9, abs=1e-9)
    # moving one copy by t costs at most 2 |t|^2 (each point's own copy is a candidate neighbour)
    assert float(chamfer_distance(a_t, a_t + t)) <= 2 * float((t**2).sum()) * (1 + 1e-9) + 1e-12


def test_single_points():
    p, q = torch.tensor([[0.0, 1.0, 2.0]]), torch.tensor([[3.0, 1.0, -2.0]])
    assert float(chamfer_distance(p, q)) == pytest.approx(2 * 25.0)
    assert float(chamfer_distance(p, q, squared=False)) == pytest.approx(2 * 5.0)


def test_nearest_neighbour_distances_in_both_directions():
    a = torch.tensor([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0]])
    b = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0]])
    to_b, to_a = nearest_neighbour_distances(a, b)
    assert torch.allclose(to_b, torch.tensor([1.0, 9.0]))
    assert torch.allclose(to_a, torch.tensor([1.0, 2.0, 3.0]))


def test_memory_is_bounded_by_chunking():
    # 6,000 x 6,000 pairs would need 144 MB of float32 distances at once; chunks of 256 rows need 6 MB
    a = torch.zeros(6_000, 3)
    b = torch.zeros(6_000, 3)
    b[:, 0] = 1.0
    assert float(chamfer_distance(a, b, chunk_size=256)) == pytest.approx(2.0)


def test_surface_distance_of_known_points():
    points = torch.tensor([[1.5, 0.0, 0.0], [0.0, -0.5, 0.0], [1.0, 0.0, 0.5], [1.0, 0.0, 0.0],
                           [0.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    expected = torch.tensor([0.0, 0.0, 0.0, 0.5, 0.5, 0.5])
    assert torch.allclose(surface_distance(points, 1.0, 0.5), expected, atol=1e-7)


def test_point_cloud_metrics_keys_units_and_values():
    a = torch.tensor([[1.5, 0.0, 0.0], [0.0, 1.5, 0.0]])
    b = torch.tensor([[1.5, 0.0, 0.0], [0.0, 1.0, 0.0]])
    metrics = point_cloud_metrics(a, b, R=1.0, r=0.5)
    assert set(metrics) == set(METRIC_UNITS)
    # directional squared NN distances: a -> b: (0, 0.25); b -> a: (0, 0.25)
    assert metrics["chamfer_l2"] == pytest.approx(0.125 + 0.125)
    assert metrics["chamfer_l1"] == pytest.approx((0.25 + 0.25) / 2)
    assert metrics["surface_distance_mean"] == pytest.approx(0.0, abs=1e-12)
    assert metrics["num_points"] == 2 and metrics["num_reference"] == 2
    assert all(isinstance(value, (int, float)) for value in metrics.values())


@pytest.mark.parametrize(
    ("num_points", "chamfer_l2", "chamfer_l1"),
    [(3000, 0.0042, 0.0400), (1000, 0.0122, 0.0685)],  # computed independently with NumPy/SciPy, seeds 1234, 99
)
def test_oracle_matches_the_independently_computed_reference(num_points, chamfer_l2, chamfer_l1):
    oracle = oracle_metrics(1.0, 0.5, num_points, seeds=(1234, 99))
    assert oracle["chamfer_l2"] == pytest.approx(chamfer_l2, abs=6e-5)
    assert oracle["chamfer_l1"] == pytest.approx(chamfer_l1, abs=6e-5)
    assert oracle["surface_distance_max"] < 1e-6  # both samples lie on the surface


def test_oracle_default_seeds_are_the_training_and_held_out_samples():
    oracle = oracle_metrics()
    assert 0.0038 < oracle["chamfer_l2"] < 0.0048 and 0.038 < oracle["chamfer_l1"] < 0.042


@pytest.mark.parametrize(
    ("a", "b", "kwargs", "message"),
    [
        (torch.zeros(4, 2), torch.zeros(4, 3), {}, r"a must be a tensor of shape \[N, 3\]"),
        (torch.zeros(4, 3), [[0.0, 0.0, 0.0]], {}, r"b must .* \(x, y, z per point\), got list"),
        (torch.zeros(0, 3), torch.zeros(4, 3), {}, "empty"),
        (torch.full((2, 3), float("nan")), torch.zeros(4, 3), {}, "NaN or infinite"),
        (torch.zeros(2, 3), torch.zeros(4, 3), {"chunk_size": 0}, "chunk_size must be a positive integer"),
    ],
)
def test_bad_inputs(a, b, kwargs, message):
    with pytest.raises(ValueError, match=message):
        chamfer_distance(a, b, **kwargs)


def test_oracle_needs_two_seeds():
    with pytest.raises(ValueError, match="two different seeds"):
        oracle_metrics(seeds=(1, 1))


def test_integer_points_are_accepted():
    assert float(chamfer_distance(torch.tensor([[0, 0, 0]]), torch.tensor([[0, 0, 2]]))) == pytest.approx(8.0)
