"""The 2-D toy densities: seeded samplers, exact log-densities that integrate to 1 and agree with independent
formulas, the toy2d data source of the run layer, and the errors of bad input."""

from __future__ import annotations

import math

import pytest
import torch

from dgmlab.config import ConfigError, build_data
from dgmlab.data import TOY2D, toy2d_dataset
from dgmlab.data.toy2d import Checkerboard, EightGaussians, Rings, TwoMoons, noisy_arc_log_prob, noisy_circle_log_prob

NAMES = ["checkerboard", "eight_gaussians", "two_moons", "rings"]


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _cell_centres(limit: float, spacing: float) -> tuple[torch.Tensor, float]:
    cells = round(2 * limit / spacing)
    axis = -limit + (torch.arange(cells, dtype=torch.float64) + 0.5) * spacing
    return torch.stack(torch.meshgrid(axis, axis, indexing="xy"), dim=-1).reshape(-1, 2), spacing


def test_the_registry_holds_the_four_densities():
    assert list(TOY2D) == NAMES
    for name in NAMES:
        assert toy2d_dataset(name).name == name


@pytest.mark.parametrize("name", NAMES)
def test_samples_are_seeded_shaped_and_leave_the_global_rng_alone(name):
    distribution = toy2d_dataset(name)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    x = distribution.sample(500, generator=_generator(7))
    assert torch.equal(torch.get_rng_state(), before)
    assert x.shape == (500, 2) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert torch.equal(x, distribution.sample(500, generator=_generator(7)))
    assert not torch.equal(x, distribution.sample(500, generator=_generator(8)))
    assert (x.abs() < 5).float().mean() > 0.999  # mostly inside [-4, 4]^2
    assert torch.isfinite(distribution.log_prob(x)).all()  # every sample has positive density


@pytest.mark.parametrize("name", NAMES)
def test_each_exact_density_integrates_to_one(name):
    # the midpoint rule on cells of side 0.04 over [-6, 6]^2 (whose edges lie on the checkerboard's)
    points, spacing = _cell_centres(6.0, 0.04)
    log_p = toy2d_dataset(name).log_prob(points)
    assert log_p.dtype == torch.float64 and log_p.shape == (len(points),)
    assert float(log_p.exp().sum()) * spacing**2 == pytest.approx(1.0, abs=1e-3)


def test_the_checkerboard_is_uniform_on_its_eight_squares():
    board = Checkerboard()
    x = board.sample(20_000, generator=_generator(0)).double()
    assert torch.equal(board.log_prob(x), torch.full((20_000,), -math.log(32), dtype=torch.float64))
    squares = torch.floor(x / 2).long() + 2  # indices 0..3
    counts = torch.bincount(squares[:, 0] * 4 + squares[:, 1], minlength=16).reshape(4, 4)
    occupied = (torch.arange(4)[:, None] + torch.arange(4)[None]) % 2 == 0
    assert (counts[~occupied] == 0).all()
    assert counts[occupied].min() > 2500 * 0.9 and counts[occupied].max() < 2500 * 1.1
    outside = torch.tensor([[1.0, -0.5], [-3.0, -0.5], [4.0, 0.0], [0.5, 5.0]])  # odd squares and beyond the board
    assert torch.isneginf(board.log_prob(outside)).all()


def test_eight_gaussians_match_the_mixture_formula():
    mixture = EightGaussians()
    x = mixture.sample(20_000, generator=_generator(1)).double()
    angles = torch.arange(8, dtype=torch.float64) * math.pi / 4
    centres = 2 * math.sqrt(2) * torch.stack([angles.cos(), angles.sin()], 1)
    components = torch.distributions.MultivariateNormal(centres, covariance_matrix=torch.eye(2, dtype=torch.float64)
                                                        .expand(8, 2, 2) / 8)
    reference = torch.logsumexp(components.log_prob(x[:, None, :]), dim=1) - math.log(8)
    torch.testing.assert_close(mixture.log_prob(x), reference)
    # the sample mean of log p estimates E_p[log p] = -H(p): between the mixture's bounds H(one component) and
    # H(one component) + log 8 (the components barely overlap, so close to the upper one)
    component_entropy = 1 + math.log(2 * math.pi / 8)
    expected = float(mixture.log_prob(x).mean())
    assert -(component_entropy + math.log(8)) - 0.05 < expected < -component_entropy
    assert expected == pytest.approx(-(component_entropy + math.log(8)), abs=0.05)


def test_the_arc_quadrature_matches_the_closed_form_of_whole_circles():
    x = 2.5 * torch.randn(3000, 2, dtype=torch.float64, generator=_generator(2))
    for radius, std in ((2.0, 0.2), (0.75, 0.08), (3.0, 0.08)):
        halves = torch.stack([noisy_arc_log_prob(x, radius, std, 0.0, math.pi),
                              noisy_arc_log_prob(x, radius, std, math.pi, 2 * math.pi)])
        whole = noisy_circle_log_prob(x, radius, std)
        # (1/2)(upper half + lower half) = the whole circle
        torch.testing.assert_close(torch.logsumexp(halves, 0) - math.log(2), whole, rtol=1e-8, atol=1e-9)


def test_the_moons_agree_with_a_midpoint_rule_over_the_angle():
    # an independent quadrature of each half circle: the midpoint rule on 10,000 angles, summed directly
    x = 2.0 * torch.randn(64, 2, dtype=torch.float64, generator=_generator(3))
    nodes = (torch.arange(10_000, dtype=torch.float64) + 0.5) / 10_000

    def midpoint(centre, radius, std, start, stop):
        angles = start + (stop - start) * nodes
        means = torch.tensor(centre, dtype=torch.float64) + radius * torch.stack([angles.cos(), angles.sin()], 1)
        squared = ((x[:, None] - means[None]) ** 2).sum(-1)
        return (torch.exp(-squared / (2 * std**2)) / (2 * math.pi * std**2)).mean(1)

    moons = 0.5 * sum(midpoint(centre, 2.0, 0.2, start, stop) for centre, start, stop in TwoMoons.arcs)
    torch.testing.assert_close(TwoMoons().log_prob(x).exp(), moons, rtol=1e-5, atol=1e-12)
    rings = 0.25 * sum(midpoint((0.0, 0.0), radius, 0.08, 0.0, 2 * math.pi) for radius in Rings.radii)
    torch.testing.assert_close(Rings().log_prob(x).exp(), rings, rtol=1e-5, atol=1e-12)


def test_log_prob_keeps_leading_dimensions_and_the_dtype():
    board = Checkerboard()
    values = EightGaussians().log_prob(torch.zeros(3, 4, 2))
    assert values.shape == (3, 4) and values.dtype == torch.float32
    assert board.log_prob(torch.zeros(5, 2, dtype=torch.float64)).shape == (5,)


def test_bad_input_gets_one_clear_error():
    with pytest.raises(ValueError, match="unknown 2-D toy dataset 'spiral'; choose one of checkerboard, "
                                         "eight_gaussians, two_moons, rings"):
        toy2d_dataset("spiral")
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        Rings().sample(10, generator=None)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        Rings().sample(10, generator=3)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        Checkerboard().sample(0, generator=_generator(0))
    with pytest.raises(ValueError, match=r"x must be a float tensor of points \[N, 2\]"):
        TwoMoons().log_prob(torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"x must be a float tensor of points \[N, 2\]"):
        TwoMoons().log_prob(torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="std must be a positive number"):
        EightGaussians(std=0.0)
    with pytest.raises(ValueError, match="start < stop"):
        noisy_arc_log_prob(torch.zeros(1, 2), 1.0, 0.1, 1.0, 1.0)


def test_the_toy2d_data_source_of_the_run_layer():
    config = {"data": {"name": "toy2d", "dataset": "two_moons", "num_points": 300, "test_points": 120, "seed": 5,
                       "batch_size": 64}}
    data = build_data(config, seed=0)
    assert data.kind == "points" and data.spec.example_shape == (2,) and data.input_dim == 2
    assert data.spec.view == "toy2d two_moons"
    train = data.train_examples
    assert train.shape == (300, 2) and data.test_x.shape == (120, 2)
    torch.testing.assert_close(train, TwoMoons().sample(300, generator=_generator(5)))
    torch.testing.assert_close(data.test_x, TwoMoons().sample(120, generator=_generator(5 + 10_000)))
    assert [len(batch[0]) for batch in data.train] == [64, 64, 64, 64, 44]
    assert sum(len(batch[0]) for batch in data.test) == 120
    assert torch.equal(build_data(config, seed=0).train_examples, train)  # the points depend on data.seed alone


@pytest.mark.parametrize(("key", "value", "message"), [
    ("dataset", "spiral", "data.dataset: unknown 2-D toy dataset 'spiral'; choose one of checkerboard"),
    ("num_points", 0, "data.num_points must be an integer >= 1, got 0"),
    ("test_points", 2.5, "data.test_points must be an integer >= 1, got 2.5"),
    ("seed", -1, "data.seed must be an integer >= 0, got -1"),
    ("noise", 0.1, r"\[data\] has unknown key\(s\): noise"),
])
def test_the_data_source_refuses_bad_keys(key, value, message):
    with pytest.raises(ConfigError, match=message):
        build_data({"data": {"name": "toy2d", "num_points": 10, key: value}})
