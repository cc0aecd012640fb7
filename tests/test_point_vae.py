"""Point-cloud VAEs of problem set 1, part 4: positional encoding, the three decoder heads, the surface."""

from __future__ import annotations

import math

import pytest
import torch

from dgmlab.config import ConfigError, build_model_from_config
from dgmlab.data import torus_surface_distance
from dgmlab.models import (
    MODELS,
    ModelConfigError,
    PointVAE,
    PositionalEncoding3D,
    build_model,
    count_parameters,
)
from dgmlab.models.point_vae import spherical_to_cartesian, torus_from_angle_vectors
from dgmlab.objectives import negative_elbo, pset_mse_kl

PSET_DIMS = [32, 20, 10, 6]


# ----------------------------------------------------------------------------------------------------------
# Positional encoding
# ----------------------------------------------------------------------------------------------------------
def test_encoding_shape_and_order_coordinate_frequency_sin_cos():
    encoding = PositionalEncoding3D(10)
    points = torch.tensor([[0.3, -0.7, 0.11], [1.2, 0.05, -0.4]])
    features = encoding(points)
    assert features.shape == (2, 60) and encoding.out_features == 60
    for n in range(2):
        expected = []
        for c in range(3):
            for k in range(10):
                expected += [math.sin(2**k * float(points[n, c])), math.cos(2**k * float(points[n, c]))]
        assert torch.allclose(features[n].double(), torch.tensor(expected, dtype=torch.float64), atol=2e-5)


def test_encoding_at_zero_alternates_zero_and_one():
    features = PositionalEncoding3D(10)(torch.zeros(1, 3))
    assert torch.equal(features[0], torch.tensor([0.0, 1.0] * 30))


def test_encoding_keeps_leading_dimensions():
    assert PositionalEncoding3D(4)(torch.zeros(5, 7, 3)).shape == (5, 7, 24)


def test_encoding_options_include_input_and_scale_pi():
    points = torch.tensor([[0.25, -0.5, 0.125]])
    with_input = PositionalEncoding3D(3, include_input=True)
    features = with_input(points)
    assert features.shape == (1, 21) and with_input.out_features == 21
    assert torch.equal(features[0, :3], points[0])
    assert torch.equal(features[:, 3:], PositionalEncoding3D(3)(points))
    scaled = PositionalEncoding3D(3, scale_pi=True)(points)
    # coordinate x, frequency k = 2: sin(pi * 4 * 0.25) = sin(pi) ~ 0 and cos = -1
    assert scaled[0, 4] == pytest.approx(0.0, abs=1e-6) and scaled[0, 5] == pytest.approx(-1.0, abs=1e-6)
    identity = PositionalEncoding3D(0, include_input=True)
    assert torch.equal(identity(points), points)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_frequencies": -1}, "integer >= 0"),
        ({"num_frequencies": 2.5}, "integer >= 0"),
        ({"num_frequencies": 0}, "include_input=True"),
        ({"num_frequencies": 40}, "at most 30"),
    ],
)
def test_encoding_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ModelConfigError, match=message):
        PositionalEncoding3D(**kwargs)


def test_encoding_rejects_points_that_are_not_3d():
    with pytest.raises(ValueError, match=r"shape \[\.\.\., 3\]"):
        PositionalEncoding3D(2)(torch.zeros(4, 2))


# ----------------------------------------------------------------------------------------------------------
# Architecture and heads
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"decoder": "polar"}, 3_919),  # the reference solution's PointVAE(PolarVAE)
        ({"decoder": "cartesian"}, 3_919),
        ({"decoder": "torus", "R": 1.0, "r": 0.5, "learn_radii": False}, 3_952),  # 4 outputs instead of 3
        ({"decoder": "torus"}, 3_954),  # + the two radius parameters
        ({"decoder": "torus", "include_input": True}, 4_050),  # + 3 x 32 encoder weights
    ],
)
def test_parameter_counts(kwargs, expected):
    assert count_parameters(PointVAE(PSET_DIMS, **kwargs)) == expected


def test_reference_architecture_widths():
    model = PointVAE(PSET_DIMS, decoder="polar")
    encoder = [(m.in_features, m.out_features) for m in model.encoder if isinstance(m, torch.nn.Linear)]
    decoder = [(m.in_features, m.out_features) for m in model.decoder if isinstance(m, torch.nn.Linear)]
    assert encoder == [(60, 32), (32, 20), (20, 10), (10, 6)]
    assert decoder == [(3, 10), (10, 20), (20, 32), (32, 3)]
    assert model.latent_dim == 3 and model.input_dim == 3


def test_polar_head_maps_rho_theta_phi_to_cartesian():
    assert torch.allclose(spherical_to_cartesian(torch.tensor([1.0, math.pi / 2, 0.0])),
                          torch.tensor([1.0, 0.0, 0.0]), atol=1e-6)
    pole = spherical_to_cartesian(torch.tensor([2.0, 0.0, 1.3]))
    assert torch.allclose(pole, torch.tensor([0.0, 0.0, 2.0]))
    # through the model: a decoder whose raw output is the constant (1, pi/2, 0) decodes to (1, 0, 0)
    model = PointVAE(PSET_DIMS, decoder="polar")
    last = model.decoder[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([1.0, math.pi / 2, 0.0]))
    decoded = model.decode(torch.randn(4, 3))
    assert torch.allclose(decoded, torch.tensor([[1.0, 0.0, 0.0]] * 4), atol=1e-6)


def test_torus_head_formula_and_scale_invariance():
    u, v, R, r = 0.7, 2.1, 1.0, 0.5
    raw = torch.tensor([math.cos(u), math.sin(u), math.cos(v), math.sin(v)], dtype=torch.float64)
    expected = torch.tensor([(R + r * math.cos(v)) * math.cos(u), (R + r * math.cos(v)) * math.sin(u),
                             r * math.sin(v)], dtype=torch.float64)
    assert torch.allclose(torus_from_angle_vectors(raw, R, r), expected)
    scaled = raw * torch.tensor([3.0, 3.0, 0.2, 0.2], dtype=torch.float64)  # only directions matter
    assert torch.allclose(torus_from_angle_vectors(scaled, R, r), expected)


def test_torus_decoder_with_given_radii_lands_exactly_on_the_torus():
    torch.manual_seed(0)
    model = PointVAE(PSET_DIMS, decoder="torus", R=1.0, r=0.5, learn_radii=False)
    decoded = model.decode(3 * torch.randn(2000, 3))
    assert torus_surface_distance(decoded, 1.0, 0.5).max() < 1e-6
    radius = torch.hypot(decoded[:, 0], decoded[:, 1])
    assert radius.min() >= 0.5 - 1e-6 and radius.max() <= 1.5 + 1e-6


def test_learned_radii_start_where_asked_and_stay_a_ring_torus():
    model = PointVAE(PSET_DIMS, decoder="torus", R=0.8, r=0.2)
    R, r = (float(value.detach()) for value in model.radii())
    assert R == pytest.approx(0.8, rel=1e-6) and r == pytest.approx(0.2, rel=1e-6)
    with torch.no_grad():  # wherever the optimiser takes the parameters, 0 < r < R
        model.major_radius_alpha.fill_(-0.3)
        model.minor_radius_beta.fill_(0.5)
    R, r = (float(value.detach()) for value in model.radii())
    assert 0 < r < R
    decoded = model.decode(torch.randn(500, 3))
    assert torus_surface_distance(decoded, R, r).max() < 1e-5


def test_gradients_reach_every_parameter():
    torch.manual_seed(1)
    points = torch.randn(64, 3)
    for decoder in ("cartesian", "polar", "torus"):
        model = PointVAE(PSET_DIMS, decoder=decoder)
        pset_mse_kl(model, points).loss.mean().backward()
        for name, parameter in model.named_parameters():
            assert parameter.grad is not None, f"{decoder}: no gradient for {name}"
            assert torch.isfinite(parameter.grad).all(), f"{decoder}: non-finite gradient for {name}"
        assert model.major_radius_alpha.grad.abs() > 0 if decoder == "torus" else True


def test_model_surface_works_with_the_objectives():
    torch.manual_seed(2)
    x = torch.randn(8, 3)
    model = PointVAE(PSET_DIMS, decoder="torus")
    mean, logvar = model.encode(x)
    assert mean.shape == logvar.shape == (8, 3)
    z = model.reparameterize(mean, logvar, n_samples=5)
    assert z.shape == (5, 8, 3)
    decoded = model.decode(z)
    assert decoded.shape == (5, 8, 3) and torch.equal(model.decode_mean(z), decoded)
    assert model.log_likelihood(x, decoded).shape == (5, 8)
    assert model(x).decoded.shape == (8, 3)
    assert model.sample(11).shape == (11, 3)
    elbo = negative_elbo(model, x, n_samples=3)
    assert elbo.loss.shape == (8,) and torch.isfinite(elbo.loss).all()
    # the Gaussian decoder variance is the problem set's c D / 2 = 1e-4 * 3 / 2
    assert model.decoder_variance == pytest.approx(1.5e-4)


def test_state_dict_round_trip_keeps_learned_radii():
    model = PointVAE(PSET_DIMS, decoder="torus")
    with torch.no_grad():
        model.major_radius_alpha.add_(0.01)
    copy = PointVAE(PSET_DIMS, decoder="torus")
    copy.load_state_dict(model.state_dict())
    assert torch.equal(torch.stack(copy.radii()), torch.stack(model.radii()))
    assert "encoding.frequencies" not in model.state_dict()  # a non-persistent buffer


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"decoder": "spherical"}, "unknown decoder 'spherical'; choose one of cartesian, polar, torus"),
        ({"decoder": "polar", "R": 1.0}, "belong to the torus decoder"),
        ({"decoder": "cartesian", "learn_radii": True}, "belong to the torus decoder"),
        ({"decoder": "torus", "R": 0.5, "r": 0.5}, "R > r > 0"),
        ({"decoder": "torus", "R": 1.0, "r": -0.1}, "R > r > 0"),
        ({"decoder": "torus", "R": float("nan")}, "finite number"),
        ({"decoder": "torus", "learn_radii": False, "radius_rate": 5.0}, "applies to learned radii"),
        ({"decoder": "torus", "radius_rate": 0.0}, "radius_rate must be a positive number"),
        ({"input_dim": 784}, "encodes 3-D points"),
        ({"hidden_dims": [32, 20, 10, 5]}, "must be even"),
        ({"hidden_dims": []}, "non-empty list"),
    ],
)
def test_bad_arguments_have_clear_messages(kwargs, message):
    arguments = {"hidden_dims": PSET_DIMS, **kwargs}
    with pytest.raises(ModelConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        PointVAE(**arguments)


def test_encode_rejects_points_that_are_not_3d():
    with pytest.raises(ValueError, match=r"\[B, 3\]"):
        PointVAE(PSET_DIMS).encode(torch.zeros(2, 4))


def test_radii_only_exist_for_the_torus_decoder():
    with pytest.raises(AttributeError, match="no radii"):
        PointVAE(PSET_DIMS, decoder="polar").radii()


def test_registered_and_built_from_a_config():
    assert MODELS["point_vae"] is PointVAE
    model = build_model("point_vae", hidden_dims=PSET_DIMS, decoder="polar")
    assert isinstance(model, PointVAE) and model.decoder_kind == "polar"
    config = {"model": {"name": "point_vae", "hidden_dims": PSET_DIMS, "decoder": "torus"}}
    assert build_model_from_config(config, input_dim=3).decoder_kind == "torus"
    with pytest.raises((ModelConfigError, ConfigError), match="encodes 3-D points"):
        build_model_from_config(config, input_dim=784)  # a point model on MNIST
