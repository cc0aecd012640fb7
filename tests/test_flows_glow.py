"""Glow's ActNorm and invertible 1x1 convolution, and RealNVP's squeeze and split: what the shared flow test
(tests/test_flows.py) does not check: ActNorm's data-dependent initialisation, the LU parametrisation against
the plain one, the squeeze's layout and errors, and the zero-initialised split."""

from __future__ import annotations

import pytest
import torch

from dgmlab.errors import ModelConfigError
from dgmlab.models.flows import ActNorm, Glow, InvertibleConv1x1, Split, Squeeze
from dgmlab.models.protocols import DataInitialized


def images(n: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    shift = torch.linspace(-2.0, 3.0, c).reshape(1, c, 1, 1)
    scale = torch.linspace(0.5, 4.0, c).reshape(1, c, 1, 1)
    return (shift + scale * torch.randn(n, c, h, w, generator=generator)).double()


@pytest.mark.parametrize("shape", [(32, 3, 4, 4), (200, 5)])
def test_actnorm_first_batch_comes_out_with_zero_mean_and_unit_variance(shape):
    layer = ActNorm(shape[1]).double()
    assert isinstance(layer, DataInitialized) and not bool(layer.initialized)
    x = images(shape[0], shape[1], 4, 4) if len(shape) == 4 else images(shape[0], shape[1], 1, 1)[:, :, 0, 0]
    layer.initialize_from_data(x)
    y, logdet = layer(x)
    over = [d for d in range(y.dim()) if d != 1]
    torch.testing.assert_close(y.mean(dim=over), torch.zeros(shape[1], dtype=torch.float64), atol=1e-10, rtol=0)
    torch.testing.assert_close(y.var(dim=over, unbiased=False), torch.ones(shape[1], dtype=torch.float64),
                               atol=1e-5, rtol=0)
    positions = 16 if len(shape) == 4 else 1
    torch.testing.assert_close(logdet, positions * layer.log_scale.sum().expand(shape[0]))


def test_actnorm_uses_at_most_512_examples():
    layer = ActNorm(2).double()
    x = torch.cat([images(512, 2, 2, 2), 100 + images(100, 2, 2, 2, seed=1)])
    layer.initialize_from_data(x)
    y, _ = layer(x[:512])
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(2, dtype=torch.float64), atol=1e-10, rtol=0)


def test_actnorm_initialises_once_and_the_flag_survives_a_state_dict_round_trip():
    layer = ActNorm(3).double()
    layer.initialize_from_data(images(16, 3, 2, 2))
    bias, log_scale = layer.bias.detach().clone(), layer.log_scale.detach().clone()
    layer.initialize_from_data(images(16, 3, 2, 2, seed=5) * 10)
    torch.testing.assert_close(layer.bias, bias)
    torch.testing.assert_close(layer.log_scale, log_scale)

    state = layer.state_dict()
    assert "initialized" in state and bool(state["initialized"])
    loaded = ActNorm(3).double()
    loaded.load_state_dict(state)
    assert bool(loaded.initialized)
    loaded.initialize_from_data(images(16, 3, 2, 2, seed=7) - 4)
    torch.testing.assert_close(loaded.bias, bias)
    torch.testing.assert_close(loaded.log_scale, log_scale)


def test_actnorm_is_the_identity_before_initialisation():
    x = images(4, 3, 2, 2)
    y, logdet = ActNorm(3).double()(x)
    torch.testing.assert_close(y, x)
    torch.testing.assert_close(logdet, torch.zeros(4, dtype=torch.float64))


def test_actnorm_bad_arguments_and_inputs():
    with pytest.raises(ModelConfigError, match="channels must be a positive integer"):
        ActNorm(0)
    with pytest.raises(ModelConfigError, match="eps must be a positive number"):
        ActNorm(3, eps=0.0)
    with pytest.raises(ValueError, match=r"expects images \[B, 3, H, W\].*got shape \(2, 4, 2, 2\)"):
        ActNorm(3)(torch.zeros(2, 4, 2, 2))
    with pytest.raises(ValueError, match="got shape"):
        ActNorm(3).initialize_from_data(torch.zeros(2, 3, 2))


def test_lu_and_plain_1x1_convolutions_start_from_the_same_rotation():
    plain = InvertibleConv1x1(5, seed=3).double()
    lu = InvertibleConv1x1(5, lu=True, seed=3).double()
    torch.testing.assert_close(lu.matrix(), plain.matrix(), atol=1e-6, rtol=0)
    eye = torch.eye(5, dtype=torch.float64)
    torch.testing.assert_close(plain.matrix() @ plain.matrix().T, eye, atol=1e-6, rtol=0)
    x = images(2, 5, 3, 3)
    torch.testing.assert_close(lu(x)[0], plain(x)[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("lu", [False, True])
def test_1x1_convolution_log_determinant_is_hw_times_slogdet_of_w(lu):
    torch.manual_seed(0)
    layer = InvertibleConv1x1(4, lu=lu).double()
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.add_(0.5 * torch.randn_like(parameter))
    x = images(3, 4, 2, 3)
    _, logdet = layer(x)
    expected = 6 * torch.linalg.slogdet(layer.matrix()).logabsdet
    torch.testing.assert_close(logdet, expected.expand(3), rtol=1e-12, atol=1e-12)
    assert abs(expected.item()) > 1e-3  # moved off the rotation


def test_1x1_convolution_on_vectors_and_bad_arguments():
    layer = InvertibleConv1x1(3, seed=0).double()
    v = torch.randn(4, 3, dtype=torch.float64)
    torch.testing.assert_close(layer(v)[0], v @ layer.matrix().T)
    with pytest.raises(ModelConfigError, match="channels must be a positive integer"):
        InvertibleConv1x1(0)
    with pytest.raises(ModelConfigError, match="lu must be True or False"):
        InvertibleConv1x1(3, lu="yes")


def test_squeeze_layout_and_exact_inverse():
    x = torch.arange(2 * 2 * 4 * 6, dtype=torch.float64).reshape(2, 2, 4, 6)
    y, logdet = Squeeze()(x)
    assert y.shape == (2, 8, 2, 3)
    torch.testing.assert_close(logdet, torch.zeros(2, dtype=torch.float64))
    # y_{4k + 2a + b, i, j} = x_{k, 2i + a, 2j + b}
    for k in range(2):
        for a in range(2):
            for b in range(2):
                torch.testing.assert_close(y[:, 4 * k + 2 * a + b], x[:, k, a::2, b::2])
    back, logdet_inverse = Squeeze().inverse(y)
    assert torch.equal(back, x)
    torch.testing.assert_close(logdet_inverse, torch.zeros(2, dtype=torch.float64))


@pytest.mark.parametrize("shape", [(2, 3, 5, 4), (2, 3, 4, 3), (2, 3, 3, 3)])
def test_squeeze_rejects_odd_sides_naming_the_shape_and_the_fix(shape):
    with pytest.raises(ModelConfigError, match=rf"got shape \({shape[0]}, 3, {shape[2]}, {shape[3]}\).*pad or crop"):
        Squeeze()(torch.zeros(shape))


@pytest.mark.parametrize("shape", [(2, 16), (2, 3, 4), (1, 2, 3, 4, 4)])
def test_squeeze_rejects_inputs_that_are_not_images(shape):
    with pytest.raises(ModelConfigError, match=r"takes images \[B, C, H, W\]"):
        Squeeze()(torch.zeros(shape))


def test_squeeze_inverse_rejects_channels_that_are_not_a_multiple_of_4():
    with pytest.raises(ModelConfigError, match="multiple of 4 channels"):
        Squeeze().inverse(torch.zeros(1, 6, 2, 2))


def test_zero_initialised_split_keeps_z1_and_standardises_z2_under_the_identity_prior():
    split = Split(6).double()
    x = images(3, 6, 2, 2)
    y, logdet = split(x)
    torch.testing.assert_close(y, x)  # mu = 0, sigma = 1: the identity
    torch.testing.assert_close(logdet, torch.zeros(3, dtype=torch.float64))


def test_split_standardises_z2_under_its_learned_prior():
    torch.manual_seed(0)
    split = Split(4).double()
    with torch.no_grad():
        for parameter in split.prior.parameters():
            parameter.normal_(0.0, 0.3)
    x = images(3, 4, 3, 3)
    y, logdet = split(x)
    z1, z2 = x[:, :2], x[:, 2:]
    mu, log_sigma = split.prior_parameters(z1)
    torch.testing.assert_close(y[:, :2], z1)
    torch.testing.assert_close(y[:, 2:], (z2 - mu) / log_sigma.exp())
    torch.testing.assert_close(logdet, -log_sigma.sum(dim=(1, 2, 3)))
    # log N(eps2; 0, I) + logdet = log N(z2; mu, sigma^2): Glow's learned-prior term
    normal = torch.distributions.Normal(mu, log_sigma.exp())
    standard = torch.distributions.Normal(0.0, 1.0)
    torch.testing.assert_close(standard.log_prob(y[:, 2:]).sum(dim=(1, 2, 3)) + logdet,
                               normal.log_prob(z2).sum(dim=(1, 2, 3)))


def test_split_bad_arguments_and_inputs():
    with pytest.raises(ModelConfigError, match="channels must be an integer >= 2"):
        Split(1)
    with pytest.raises(ModelConfigError, match="kernel_size must be odd"):
        Split(4, kernel_size=2)
    with pytest.raises(ValueError, match="built for 4 channels, got shape"):
        Split(4)(torch.zeros(1, 6, 2, 2))
    with pytest.raises(ModelConfigError, match="takes images"):
        Split(4)(torch.zeros(1, 4))


def test_under_bf16_autocast_only_the_networks_run_in_bf16():
    # the activations, log-determinants and base log-density stay fp32 (dtype checked), only the convolutions of
    # the coupling and prior networks and the 1x1 products see bf16
    torch.manual_seed(0)
    model = Glow(image_shape=[1, 8, 8], levels=2, steps=2, hidden=16)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    y = torch.rand(6, 1, 8, 8) * 0.98 + 0.01
    with torch.no_grad():
        exact = model.log_prob(y)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            z, logdet = model.transform(y)
            mixed = model.log_prob(y)
    assert z.dtype == logdet.dtype == mixed.dtype == torch.float32
    # bf16 rounds the networks' inputs to 8 significant bits: about 0.01 nats per dimension here (evaluation in
    # the trainer is always fp32)
    assert (mixed - exact).abs().max() / 64 < 0.02
