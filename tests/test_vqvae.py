"""VQ-VAE (dgmlab.models.vqvae) and its objective: shapes, the loss as the sum of its terms, the straight-through
gradient into the encoder, every quantizer, clear errors, and training through the run layer with a bit-exact
resume of the codebook's state."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from dgmlab.cli import main
from dgmlab.data import TensorBatches
from dgmlab.errors import ModelConfigError
from dgmlab.models import VQVAE, VQVAEPrior, build_model
from dgmlab.models.protocols import Autoencoder, DensityModel, ImageModel, Sampler
from dgmlab.objectives import vqvae_loss, vqvae_prior_nll
from dgmlab.train import TrainSettings, fit


def images(n=6, seed=0):
    return torch.bernoulli(torch.full((n, 1, 28, 28), 0.3), generator=torch.Generator().manual_seed(seed))


def small(quantizer="vq", **kwargs):
    torch.manual_seed(0)
    defaults = {"num_codes": 16, "code_dim": 4} if quantizer in ("vq", "vq_ema") else {}
    return VQVAE(quantizer, hidden=8, residual_blocks=1, **{**defaults, **kwargs})


def test_shapes_and_the_autoencoder_surface():
    model, x = small(), images()
    out = model(x)
    assert out.logits.shape == (6, 1, 28, 28) and out.quantized.indices.shape == (6, 7, 7)
    assert out.quantized.z_q.shape == (6, 4, 7, 7)
    assert model.code_dim == 4 * 49 and model.encode(x).shape == (6, 196)
    assert model.decode(model.encode(x)).shape == (6, 1, 28, 28)
    assert torch.equal(model.codes(x), out.quantized.indices)
    assert torch.allclose(torch.sigmoid(model.decode_codes(model.codes(x))), model.decode(model.encode(x)))
    assert isinstance(model, Autoencoder) and isinstance(model, ImageModel)
    assert not isinstance(model, (Sampler, DensityModel))  # samples need a prior over the codes


def test_the_loss_is_the_reconstruction_plus_the_quantizer_terms():
    model, x = small(), images()
    out = vqvae_loss(model, x)
    expected = F.binary_cross_entropy_with_logits(model(x).logits, x, reduction="none").sum((1, 2, 3))
    assert torch.allclose(out.terms["reconstruction"], expected, atol=1e-4)
    assert set(out.terms) == {"reconstruction", "codebook", "commitment", "perplexity", "usage"}
    total = out.terms["reconstruction"] + out.terms["codebook"] + out.terms["commitment"]
    assert torch.allclose(out.loss, total)
    # beta = 0.25: right after the forward pass the two squared distances are the same number
    assert torch.allclose(out.terms["commitment"], 0.25 * out.terms["codebook"])
    assert 1 <= float(out.terms["perplexity"][0]) <= 16 and 0 < float(out.terms["usage"][0]) <= 1


def test_the_gradient_reaches_the_encoder_and_the_codebook():
    model, x = small(), images()
    vqvae_loss(model, x).loss.mean().backward()
    assert model.encoder[0].weight.grad.abs().sum() > 0  # straight through the quantizer
    assert model.quantizer.codebook.grad.abs().sum() > 0  # from the codebook term only


@pytest.mark.parametrize("quantizer, kwargs, codes, channels", [
    ("vq", {"num_codes": 32, "code_dim": 3}, 32, 3),
    ("vq_ema", {"num_codes": 32, "code_dim": 3}, 32, 3),
    ("fsq", {"levels": [5, 3], "num_codes": None, "code_dim": None}, 15, 2),
    ("lfq", {"code_dim": 5, "num_codes": None}, 32, 5),
])
def test_every_quantizer_builds_and_trains_a_step(quantizer, kwargs, codes, channels):
    model = build_model("vqvae", quantizer=quantizer, hidden=8, residual_blocks=0, **kwargs)
    assert model.num_codes == codes and model.latent_channels == channels
    x = images()
    out = vqvae_loss(model, x)
    assert torch.isfinite(out.loss).all()
    out.loss.mean().backward()
    assert model.encoder[0].weight.grad.abs().sum() > 0
    assert int(model.codes(x).max()) < codes


@pytest.mark.parametrize("kwargs, message", [
    ({"quantizer": "pq"}, "unknown quantizer 'pq'; choose one of vq, vq_ema, fsq, lfq"),
    ({"quantizer": "fsq"}, "the fsq quantizer needs levels, e.g. levels = \\[8, 5, 5, 5\\]"),
    ({"quantizer": "fsq", "levels": [8, 5], "num_codes": 512}, "with fsq, num_codes follows from levels"),
    ({"quantizer": "vq", "levels": [8, 5]}, "levels belong to the fsq quantizer"),
    ({"quantizer": "lfq", "code_dim": 4, "num_codes": 512}, "lfq has K = 2\\*\\*code_dim = 16 codes"),
    ({"image_size": 30}, "image_size must be a multiple of 4"),
    ({"quantizer_options": {"gamma": 0.9}}, "quantizer 'vq' has no option gamma"),
])
def test_bad_arguments_are_one_clear_error(kwargs, message):
    with pytest.raises(ModelConfigError, match=message):
        VQVAE(**kwargs)


def test_images_of_the_wrong_shape_are_refused():
    with pytest.raises(ValueError, match=r"expected images \[B, 1, 28, 28\], got \[6, 784\]"):
        small()(images().flatten(1))


@pytest.fixture(autouse=True, scope="module")
def _one_thread(single_thread):
    """Tiny convolutions train fastest on one thread of a shared machine."""


@pytest.mark.slow
def test_resume_with_an_ema_codebook_and_restarts_is_bit_exact(tmp_path):
    x = images(64, seed=1)

    def run(epochs, run_dir, resume=False):
        model = small("vq_ema", quantizer_options={"restart_after": 2})
        settings = TrainSettings(epochs=epochs, lr=1e-3, seed=3, progress=False)
        fit(model, lambda m, b: vqvae_loss(m, b[0]), TensorBatches(x, batch_size=16, seed=3), settings=settings,
            run_dir=run_dir, resume=resume)
        return model

    straight = run(2, tmp_path / "a")
    run(1, tmp_path / "b")
    resumed = run(2, tmp_path / "b", resume=True)
    state, other = straight.state_dict(), resumed.state_dict()
    assert {"quantizer.codebook", "quantizer.ema_count", "quantizer.ema_sum", "quantizer.steps_unused"} <= set(state)
    for name in state:
        assert torch.equal(state[name], other[name]), name
    assert int(state["quantizer.steps"]) == 8  # 2 epochs of 4 steps


@pytest.mark.slow
def test_the_bundled_config_trains_and_evaluates_through_the_cli(tmp_path, capsys):
    run = tmp_path / "vq"
    assert main(["train", "--config", "vqvae", "--out", str(run), "--epochs", "1", "--set", "data.limit=256",
                 "--set", "data.test_limit=128", "--set", "model.hidden=8", "--no-progress"]) == 0
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert set(record["test"]) == {"loss", "reconstruction", "commitment", "perplexity", "usage"}  # EMA: no codebook
    assert record["units"]["reconstruction"] == "nats per image"
    for figure in ("loss_curves.png", "reconstructions.png", "latent_scatter.png"):
        assert (run / figure).read_bytes()[:4] == b"\x89PNG", figure
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    results = json.loads(capsys.readouterr().out)
    assert results["objective"] == "vqvae" and results["test"]["reconstruction"] > 0
    assert main(["sample", str(run)]) == 2
    assert "cannot sample (it has no prior)" in capsys.readouterr().err

    # the second stage: a prior over the frozen VQ-VAE's codes, then samples and the bound
    prior_run = tmp_path / "prior"
    assert main(["train", "--config", "vqvae_prior", "--out", str(prior_run), "--epochs", "1",
                 "--set", f"model.vqvae_run={str(run)!r}", "--set", "model.channels=8", "--set", "model.num_layers=2",
                 "--set", "data.limit=256", "--set", "data.test_limit=128", "--no-progress"]) == 0
    record = json.loads((prior_run / "metrics.jsonl").read_text().splitlines()[0])
    test = record["test"]
    assert test["nll"] == pytest.approx(test["reconstruction"] + test["prior_nll"])
    assert test["bits_per_dim"] == pytest.approx(test["nll"] / (784 * math.log(2)))
    capsys.readouterr()
    assert main(["eval", str(prior_run)]) == 0
    assert json.loads(capsys.readouterr().out)["test"]["nll"] == pytest.approx(test["nll"], rel=1e-5)
    assert main(["sample", str(prior_run), "--n", "4", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


def _trained_vqvae_run(tmp_path, quantizer="vq_ema"):
    from dgmlab.checkpoint import save_checkpoint

    model = small(quantizer, quantizer_options={"restart_after": 1} if quantizer != "fsq" else None,
                  **({"levels": [3, 2], "num_codes": None, "code_dim": None} if quantizer == "fsq" else {}))
    run = tmp_path / "stage1"
    run.mkdir()
    table = {"name": "vqvae", "quantizer": quantizer, "hidden": 8, "residual_blocks": 1}
    table.update({"levels": [3, 2], "num_codes": None, "code_dim": None} if quantizer == "fsq" else
                 {"num_codes": 16, "code_dim": 4, "quantizer_options": {"restart_after": 1}})
    (run / "config.json").write_text(json.dumps({"model": {k: v for k, v in table.items() if v is not None}}))
    optimizer = torch.optim.Adam(model.parameters())
    save_checkpoint(run / "checkpoint", model, optimizer, epoch=1, step=0)
    return model, run


def test_the_prior_stage_keeps_the_vqvae_frozen_and_bounds_the_likelihood(tmp_path):
    stage1, run = _trained_vqvae_run(tmp_path)
    model = VQVAEPrior(str(run), channels=8, num_layers=2)
    before = {k: v.clone() for k, v in model.vqvae.state_dict().items()}
    assert all(torch.equal(before[k], v) for k, v in stage1.state_dict().items())  # the run's weights
    x = images(16, seed=2)
    prior_before = {k: v.clone() for k, v in model.prior.state_dict().items()}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(3):
        optimizer.zero_grad()
        vqvae_prior_nll(model, x).loss.mean().backward()
        optimizer.step()
    after = model.vqvae.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # no EMA update, no restart, no gradient step
    assert not model.vqvae.training and model.prior.training
    assert any(not torch.equal(prior_before[k], v) for k, v in model.prior.state_dict().items())
    reconstruction, prior = model.bound_terms(x)
    assert torch.allclose(model.log_prob(x), reconstruction + prior)
    assert torch.allclose(prior, model.prior.log_prob(model.vqvae.codes(x)))
    terms = vqvae_prior_nll(model, x)
    assert torch.allclose(terms.loss, -prior) and torch.allclose(terms.terms["nll"], -(reconstruction + prior))
    assert bool((terms.terms["nll"] > 0).all())


def test_prior_samples_are_decoded_code_grids(tmp_path):
    _, run = _trained_vqvae_run(tmp_path, quantizer="fsq")
    model = VQVAEPrior(str(run), channels=8, num_layers=2).eval()
    first = model.sample(3, generator=torch.Generator().manual_seed(1))
    again = model.sample(3, generator=torch.Generator().manual_seed(1))
    assert first.shape == (3, 1, 28, 28) and torch.equal(first, again)
    assert 0 <= float(first.min()) and float(first.max()) <= 1
    assert isinstance(model, DensityModel) and isinstance(model, Sampler)


def test_the_prior_stage_needs_a_vqvae_run(tmp_path):
    with pytest.raises(ModelConfigError, match="is not a run directory \\(no config.json\\); train the VQ-VAE first"):
        VQVAEPrior(str(tmp_path / "missing"))
    (tmp_path / "config.json").write_text(json.dumps({"model": {"name": "vae"}}))
    with pytest.raises(ModelConfigError, match="holds no VQ-VAE"):
        VQVAEPrior(str(tmp_path))
