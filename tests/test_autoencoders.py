"""AE and VAE: architecture as the problem set defines it, the model surface, and error messages."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dgmlab.models import AE, VAE, ModelConfigError, build_model, count_parameters


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (lambda: AE(784, [128, 32, 16, 2]), 211_122),
        (lambda: VAE(784, [128, 32, 16, 4]), 211_156),
        (lambda: VAE(784, [128, 64, 8]), 219_032),
    ],
)
def test_parameter_counts_match_the_problem_set(model, expected):
    assert count_parameters(model()) == expected


def test_ae_layers_relu_between_linear_code_sigmoid_output():
    ae = AE(784, [128, 32, 16, 2])
    kinds = [type(m).__name__ for m in ae.encoder]
    assert kinds == ["Linear", "ReLU", "Linear", "ReLU", "Linear", "ReLU", "Linear"]  # linear code
    widths = [m.out_features for m in ae.decoder.modules() if isinstance(m, nn.Linear)]
    assert widths == [16, 32, 128, 784]
    assert isinstance(list(ae.decoder.modules())[-1], nn.Sigmoid)
    out = ae(torch.randn(3, 784))
    assert out.code.shape == (3, 2) and out.reconstruction.shape == (3, 784)
    assert ((out.reconstruction > 0) & (out.reconstruction < 1)).all()


def test_vae_split_mean_logvar_and_decoder_starts_at_latent():
    vae = VAE(784, [128, 32, 16, 4])
    assert vae.latent_dim == 2
    x = torch.randn(5, 784)
    mean, logvar = vae.encode(x)
    full = vae.encoder(x)
    assert torch.equal(mean, full[:, :2]) and torch.equal(logvar, full[:, 2:])
    first = next(m for m in vae.decoder.modules() if isinstance(m, nn.Linear))
    assert first.in_features == 2 and first.out_features == 16


def test_reparameterize_is_mean_plus_sigma_eps_and_differentiable():
    vae = VAE(8, [4])
    mean = torch.tensor([[1.0, -2.0]], requires_grad=True)
    logvar = torch.tensor([[0.0, 2.0 * torch.log(torch.tensor(3.0))]], requires_grad=True)
    torch.manual_seed(0)
    z = vae.reparameterize(mean, logvar)
    torch.manual_seed(0)
    eps = torch.randn(1, 2)
    torch.testing.assert_close(z, mean + torch.tensor([[1.0, 3.0]]) * eps)
    z.sum().backward()
    assert mean.grad is not None and logvar.grad is not None
    many = vae.reparameterize(mean.detach(), logvar.detach(), n_samples=20_000)
    assert many.shape == (20_000, 1, 2)
    torch.testing.assert_close(many.std(0), torch.tensor([[1.0, 3.0]]), rtol=0.03, atol=0)


def test_forward_with_several_samples_keeps_a_sample_dimension():
    vae = VAE(16, [8, 6])
    out = vae(torch.rand(4, 16), n_samples=3)
    assert out.z.shape == (3, 4, 3) and out.decoded.shape == (3, 4, 16)
    assert out.mean.shape == (4, 3)
    single = vae(torch.rand(4, 16))
    assert single.z.shape == (4, 3) and single.decoded.shape == (4, 16)


def test_likelihood_choices():
    x = torch.rand(2, 16)
    bern = VAE(16, [8, 4], likelihood="bernoulli")
    z = torch.randn(2, 2)
    assert torch.equal(bern.decode_mean(z), torch.sigmoid(bern.decode(z)))  # decoder returns logits
    gauss = VAE(16, [8, 4], likelihood="gaussian", decoder_variance=0.5)
    assert gauss.log_likelihood(x, gauss.decode(z)).shape == (2,)
    learned = VAE(16, [8, 4], likelihood="gaussian_learned")
    assert count_parameters(learned) == count_parameters(gauss) + 16
    loss = -learned.log_likelihood(x, learned.decode(z)).sum()
    loss.backward()
    assert learned.decoder_logvar.grad is not None


def test_sample_and_output_bias_initialisation():
    vae = VAE(16, [8, 4], likelihood="bernoulli")
    samples = vae.sample(7, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (7, 16) and ((samples >= 0) & (samples <= 1)).all()
    mean_image = torch.linspace(0.05, 0.95, 16)
    vae.set_output_bias(mean_image)
    last = [m for m in vae.decoder.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
    torch.testing.assert_close(vae.decode_mean(torch.zeros(1, 2))[0], mean_image)


def test_odd_last_width_says_it_holds_mean_and_logvar():
    with pytest.raises(ModelConfigError, match="mean and log-variance.*must be even"):
        VAE(784, [128, 32, 16, 3])


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: AE(784, []), "non-empty list"),
        (lambda: AE(0, [2]), "input_dim"),
        (lambda: AE(784, [128, -2]), "positive integer"),
        (lambda: VAE(784, [4], likelihood="poisson"), "bernoulli, gaussian, gaussian_learned"),
        (lambda: VAE(784, [4], activation="swish"), "relu"),
        (lambda: VAE(784, [4], decoder_variance=0.0), "decoder_variance"),
        (lambda: VAE(784, [4], likelihood="bernoulli", output_activation="sigmoid"), "logits"),
        (lambda: build_model("gan"),
         "choose one of ae, bengio, fvsbn, gated_pixelcnn, glow, iresnet, made, nade, pixelcnn"),
        (lambda: build_model("vae", input_dim=4, widths=[2]), "widths"),
    ],
)
def test_bad_arguments_give_clear_errors(build, message):
    with pytest.raises(ModelConfigError, match=message):
        build()
