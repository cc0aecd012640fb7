"""The planar-flow VAE (dgmlab.models.flow_vae): its log q_K against the autograd Jacobian of its flow, the planar
condition, K = 0 as the plain VAE, L_k against log p(x) by numerical integration over a 2-D latent, the objectives'
dispatch on the FlowPosterior capability, and the bundled config end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dgmlab.cli import main
from dgmlab.errors import CapabilityError, ModelConfigError
from dgmlab.models import VAE, PlanarVAE, build_model
from dgmlab.models.flow_vae import PlanarFlowParameters, planar_transform, planar_u_hat
from dgmlab.models.flows import Planar
from dgmlab.models.protocols import DataInitialized, FlowPosterior, LatentVariableModel, Sampler
from dgmlab.objectives import importance_weighted_bound, log_standard_normal, negative_elbo, pset_mse_kl

pytestmark = pytest.mark.usefixtures("single_thread")


def _model(flow_length: int = 3, seed: int = 0, flow_scale: float = 3.0) -> PlanarVAE:
    """A small float64 model whose flow head is scaled up, so the planar steps bend q_0 visibly and some raw
    w^T u fall below -1 (where the reparameterisation (F4) matters)."""
    torch.manual_seed(seed)
    model = PlanarVAE(7, [12, 6], flow_length=flow_length, activation="tanh").double()
    if model.flow_head is not None:
        with torch.no_grad():
            model.flow_head.weight.mul_(flow_scale)
            model.flow_head.bias.normal_(0.0, 1.0)
    return model


def _binary(n: int, d: int, seed: int = 1) -> torch.Tensor:
    return (torch.rand(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) < 0.5).double()


def test_log_q_is_log_q0_minus_the_log_abs_det_of_the_autograd_jacobian():
    model, x = _model(flow_length=4), _binary(3, 7)
    mean, logvar, flow = model.encode_posterior(x)
    assert bool((flow.w * flow.u).sum(-1).min() < -1)  # some raw u violate the planar condition
    torch.manual_seed(5)
    z, log_q = model.sample_posterior(x, n_samples=2)
    torch.manual_seed(5)
    z0 = model.reparameterize(mean, logvar, n_samples=2)  # the same base noise
    base = torch.distributions.Normal(mean, torch.exp(0.5 * logvar))
    for s in range(2):
        for i in range(len(x)):
            one = PlanarFlowParameters(w=flow.w[i:i + 1], u=flow.u[i:i + 1], b=flow.b[i:i + 1])

            def step_map(v, one=one):
                return model.flow(v[None], one)[0][0]

            jacobian = torch.autograd.functional.jacobian(step_map, z0[s, i])
            torch.testing.assert_close(step_map(z0[s, i]), z[s, i])
            expected = base.log_prob(z0[s])[i].sum() - torch.linalg.slogdet(jacobian).logabsdet
            torch.testing.assert_close(log_q[s, i], expected, rtol=1e-10, atol=1e-10)
    assert z.shape == (2, 3, 3) and log_q.shape == (2, 3)
    z_single, log_q_single = model.sample_posterior(x)
    assert z_single.shape == (3, 3) and log_q_single.shape == (3,)


@settings(max_examples=60, deadline=None)
@given(dim=st.integers(1, 6), scale=st.floats(0.01, 30.0), seed=st.integers(0, 2**16))
def test_u_hat_keeps_w_dot_u_hat_above_minus_one(dim, scale, seed):
    generator = torch.Generator().manual_seed(seed)
    w = scale * torch.randn(50, dim, generator=generator, dtype=torch.float64)
    u = scale * torch.randn(50, dim, generator=generator, dtype=torch.float64)
    w_u_hat = (w * planar_u_hat(w, u)).sum(-1)
    w_u = (w * u).sum(-1)
    # w^T u_hat = m(w^T u) = -1 + softplus(w^T u) >= -1, up to rounding of the size of w^T u
    torch.testing.assert_close(w_u_hat, -1 + torch.nn.functional.softplus(w_u), rtol=0, atol=1e-12 * (1 + scale**2))
    assert bool((w_u_hat >= -1 - 1e-12 * (1 + w_u.abs())).all())
    z = torch.randn(50, dim, generator=generator, dtype=torch.float64)
    _, log_det = planar_transform(z, w, u, torch.randn(50, generator=generator, dtype=torch.float64))
    assert bool(torch.isfinite(log_det).all())


@pytest.mark.parametrize("violating", [False, True])
def test_batched_planar_step_matches_the_planar_layer(violating):
    generator = torch.Generator().manual_seed(3)
    layer = Planar(4).double()
    with torch.no_grad():
        layer.w.copy_(torch.randn(4, generator=generator))
        layer.u.copy_(torch.randn(4, generator=generator))
        if violating:  # raw w^T u = -3 < -1
            layer.u.sub_((layer.w @ layer.u + 3) * layer.w / (layer.w @ layer.w))
        layer.b.fill_(0.4)
    z = torch.randn(6, 4, generator=generator, dtype=torch.float64)
    y_layer, log_det_layer = layer(z)
    y, log_det = planar_transform(z, layer.w.expand(6, 4), layer.u.expand(6, 4), layer.b.expand(6))
    torch.testing.assert_close(y, y_layer)
    torch.testing.assert_close(log_det, log_det_layer)
    torch.testing.assert_close(planar_u_hat(layer.w, layer.u), layer.u_hat())


def test_flow_length_zero_is_exactly_the_plain_vae():
    torch.manual_seed(0)
    vae = VAE(7, [12, 6], likelihood="bernoulli", activation="gelu")
    torch.manual_seed(0)
    planar = PlanarVAE(7, [12, 6], activation="gelu", flow_length=0)
    assert planar.state_dict().keys() == vae.state_dict().keys()
    for name, tensor in vae.state_dict().items():  # the same initialisation from the same seed
        assert torch.equal(planar.state_dict()[name], tensor), name
    x = _binary(5, 7).float()
    for kwargs in ({}, {"kl": "analytic"}, {"kl": "monte_carlo", "n_samples": 3}):
        torch.manual_seed(2)
        expected = negative_elbo(vae, x, **kwargs)
        torch.manual_seed(2)
        got = negative_elbo(planar, x, **kwargs)
        for term in ("neg_elbo", "recon_nll", "kl"):
            assert torch.equal(got.terms[term], expected.terms[term]), (kwargs, term)
    torch.manual_seed(3)
    expected_bound = importance_weighted_bound(vae, x, num_samples=40, chunk_size=15)
    torch.manual_seed(3)
    assert torch.equal(importance_weighted_bound(planar, x, num_samples=40, chunk_size=15), expected_bound)
    torch.manual_seed(4)  # and its posterior, asked directly, is the Gaussian of encode(x)
    z, log_q = planar.sample_posterior(x)
    torch.manual_seed(4)
    mean, logvar = vae.encode(x)
    z_vae = vae.reparameterize(mean, logvar)
    assert torch.equal(z, z_vae)
    torch.testing.assert_close(log_q, torch.distributions.Normal(mean, torch.exp(0.5 * logvar)).log_prob(z).sum(-1))


def test_a_flow_changes_only_the_posterior_and_the_elbo_is_its_monte_carlo_average():
    torch.manual_seed(0)
    vae = VAE(7, [12, 6], likelihood="bernoulli")
    torch.manual_seed(0)
    planar = PlanarVAE(7, [12, 6], flow_length=2)  # the head is built last: encoder and decoder as the VAE's
    for name, tensor in vae.state_dict().items():
        assert torch.equal(planar.state_dict()[name], tensor), name
    x = _binary(4, 7).float()
    torch.manual_seed(6)
    out = negative_elbo(planar, x, n_samples=5)
    torch.manual_seed(6)
    z, log_q = planar.sample_posterior(x, n_samples=5)
    recon_nll = -planar.log_likelihood(x, planar.decode(z)).mean(0)
    kl = (log_q - log_standard_normal(z)).mean(0)
    torch.testing.assert_close(out.terms["recon_nll"], recon_nll)
    torch.testing.assert_close(out.terms["kl"], kl)
    torch.testing.assert_close(out.loss, recon_nll + kl)
    forward = planar(x, n_samples=5)
    assert forward.z.shape == (5, 4, 6 // 2) and forward.log_q.shape == (5, 4) and forward.decoded.shape == (5, 4, 7)


def test_a_new_flow_starts_close_to_the_identity_away_from_w_zero():
    torch.manual_seed(0)
    model = PlanarVAE(20, [32, 8], flow_length=6, activation="gelu").requires_grad_(False)
    x = _binary(50, 20).float()
    mean, logvar, flow = model.encode_posterior(x)
    assert float(flow.w.norm(dim=-1).min()) > 0.3  # far from the divergence of u_hat at w = 0
    assert float(planar_u_hat(flow.w, flow.u).abs().max()) < 0.03  # u_hat = 0 up to the x-dependent part: 0.01
    torch.manual_seed(1)
    z, log_q = model.sample_posterior(x, n_samples=4)
    torch.manual_seed(1)
    z0 = model.reparameterize(mean, logvar, n_samples=4)
    assert float((z - z0).abs().max()) < 0.03  # measured 0.009
    log_q0 = torch.distributions.Normal(mean, torch.exp(0.5 * logvar)).log_prob(z0).sum(-1)
    assert float((log_q - log_q0).abs().max()) < 0.02  # measured 0.004


def _log_p_by_quadrature(model: PlanarVAE, x: torch.Tensor, half_width: float = 7.0, points: int = 401):
    """log p(x) = log sum over a grid of p(x | z) N(z; 0, I) dz, for a 2-D latent."""
    grid = torch.linspace(-half_width, half_width, points, dtype=torch.float64)
    z = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), dim=-1).reshape(-1, 2)
    with torch.no_grad():
        logits = model.decode(z)
        log_lik = model.log_likelihood(x[:, None].expand(-1, len(z), -1), logits[None].expand(len(x), -1, -1))
    return torch.logsumexp(log_lik + log_standard_normal(z), dim=1) + 2 * math.log(float(grid[1] - grid[0]))


def test_importance_weighted_bound_reaches_log_p_by_numerical_integration():
    torch.manual_seed(0)
    model = PlanarVAE(6, [16, 4], flow_length=4, activation="tanh").double()  # a 2-D latent
    with torch.no_grad():  # a decoder that depends strongly on z, so the posterior is far from the prior
        for parameter in model.decoder.parameters():
            parameter.mul_(3.0)
    x = _binary(4, 6, seed=0)
    # fit q (encoder and flow) to the fixed decoder, so the importance weights are well behaved
    optimizer = torch.optim.Adam([p for n, p in model.named_parameters() if not n.startswith("decoder")], lr=1e-2)
    for _ in range(120):
        loss = negative_elbo(model, x, kl="monte_carlo", n_samples=8).loss.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    log_p = _log_p_by_quadrature(model, x)
    torch.testing.assert_close(_log_p_by_quadrature(model, x, 9.0, 801), log_p, rtol=0, atol=1e-9)  # converged
    torch.manual_seed(1)
    with torch.no_grad():
        bound = importance_weighted_bound(model, x, num_samples=50_000, chunk_size=10_000)
        elbo = -negative_elbo(model, x, n_samples=20_000).loss
    assert float((bound - log_p).abs().max()) < 0.01  # measured: within 0.0015 nats
    # the ELBO is a bound: below log p(x) by 0.03-0.08 nats here, beyond its Monte-Carlo error (0.002-0.003)
    assert bool((elbo < log_p - 0.01).all())
    assert bool((elbo < bound).all())


def test_capabilities_are_declared_and_the_family_is_registered():
    planar = build_model("vae_planar", input_dim=7, hidden_dims=[12, 6])
    assert isinstance(planar, PlanarVAE) and planar.flow_length == 10 and planar.likelihood == "bernoulli"
    for protocol in (FlowPosterior, LatentVariableModel, Sampler, DataInitialized):
        assert isinstance(planar, protocol), protocol.__name__
    vae = build_model("vae", input_dim=7, hidden_dims=[12, 6])
    assert not isinstance(vae, FlowPosterior)
    assert planar.sample(3, generator=torch.Generator().manual_seed(0)).shape == (3, 7)
    one_layer = PlanarVAE(7, [6], flow_length=2)  # no hidden layer: the head reads x itself
    assert one_layer.flow_head.in_features == 7
    assert one_layer.sample_posterior(torch.zeros(2, 7))[1].shape == (2,)


def test_bad_inputs_say_what_to_do():
    with pytest.raises(ModelConfigError, match=r"PlanarVAE: flow_length must be an integer >= 0 \(the number of "
                                               r"planar steps; 0 is the plain VAE\), got -1"):
        PlanarVAE(7, [12, 6], flow_length=-1)
    with pytest.raises(ModelConfigError, match="flow_length"):
        PlanarVAE(7, [12, 6], flow_length=2.5)
    with pytest.raises(ModelConfigError, match="must be even"):
        PlanarVAE(7, [12, 5])
    model, x = _model(flow_length=2), _binary(2, 7)
    with pytest.raises(CapabilityError, match="no closed form; use kl=\"monte_carlo\""):
        negative_elbo(model, x, kl="analytic")
    with pytest.raises(ValueError, match="unknown KL estimator 'exact'"):
        negative_elbo(model, x, kl="exact")
    with pytest.raises(CapabilityError, match="train it on negative_elbo"):
        pset_mse_kl(model, x)
    with pytest.raises(ValueError, match="n_samples must be >= 1"):
        model.sample_posterior(x, n_samples=0)


def test_the_bundled_config_trains_and_evaluates_end_to_end(tmp_path, capsys):
    run = tmp_path / "vae_planar"
    assert main(["train", "--config", "vae_planar", "--out", str(run), "--set", "train.epochs=1",
                 "--set", "data.limit=512", "--set", "data.test_limit=200", "--set", "train.progress=false"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["name"] == "vae_planar" and config["model"]["flow_length"] == 10
    assert config["objective"] == {"name": "elbo", "kl": "monte_carlo"} and config["data"]["view"] == "dynamic"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["test"]["neg_elbo"] < 784 * math.log(2)  # better than coin flips from the data-mean start
    capsys.readouterr()
    assert main(["eval", str(run), "--iw-samples", "20"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    neg_elbo, nll = evaluated["test_neg_elbo_nats"], evaluated["test_nll_iw20_nats"]
    assert math.isfinite(neg_elbo) and math.isfinite(nll)
    assert nll < neg_elbo  # -L_20 <= -L_1 (on average; the gap of a barely trained model is nats wide)
