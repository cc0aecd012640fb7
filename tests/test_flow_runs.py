"""Flows as density models of the run layer: Glow/RealNVP on dequantized 8-bit MNIST train, evaluate and sample
through the command line with no special case, and their NLL is the 8-bit bound -log p(y) + D log 256."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dgmlab.cli import main
from dgmlab.config import build_objective
from dgmlab.errors import CapabilityError, ModelConfigError
from dgmlab.evaluate import flow_nll_accounting, interpolate_in_base, temperature_samples
from dgmlab.models import build_model
from dgmlab.models.flows import Glow
from dgmlab.objectives import exact_nll


def test_the_8_bit_bound_adds_d_log_256():
    model = Glow(image_shape=[1, 4, 4], levels=1, steps=1, hidden=4).double()
    y = torch.rand(3, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 0.99
    continuous, discrete = exact_nll(model, y), exact_nll(model, y, levels=256)
    torch.testing.assert_close(discrete.terms["nll"], continuous.terms["nll"] + 16 * math.log(256))
    torch.testing.assert_close(discrete.terms["bits_per_dim"], continuous.terms["bits_per_dim"] + 8.0)
    config = {"data": {"view": "dequantized"}, "objective": {"name": "nll"}}
    terms = build_objective(config)(model, (y,))
    torch.testing.assert_close(terms.loss, discrete.loss)  # the dequantized view implies 256 levels


def test_glow_checks_its_shape():
    with pytest.raises(ModelConfigError, match="odd sides cannot be squeezed"):
        build_model("glow", image_shape=[1, 28, 28], levels=3)
    with pytest.raises(ModelConfigError, match=r"image_shape must be \[C, H, W\]"):
        build_model("glow", image_shape=[784])
    with pytest.raises(ModelConfigError, match="permutation must be one of conv1x1, shuffle, reverse"):
        build_model("glow", permutation="swap")


@pytest.mark.parametrize("config", ["glow", "realnvp"])
def test_a_flow_trains_evaluates_and_samples_through_the_cli(config, tmp_path, capsys, single_thread):
    run = tmp_path / config
    args = ["train", "--config", config, "--out", str(run), "--epochs", "2", "--no-progress",
            "--set", "model.steps=1", "--set", "model.hidden=8", "--set", "data.limit=512",
            "--set", "data.test_limit=128", "--set", "data.batch_size=64"]
    assert main(args) == 0, capsys.readouterr().err
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    test = records[-1]["test"]
    assert test["bits_per_dim"] == pytest.approx(test["nll"] / (784 * math.log(2)))
    assert 0.5 < test["bits_per_dim"] < records[0]["train"]["bits_per_dim"] + 1  # finite, learning, 8-bit scale
    assert records[-1]["train"]["nll"] < records[0]["train"]["nll"]
    assert {"loss_curves.png", "samples.png"} <= {p.name for p in run.glob("*.png")}
    capsys.readouterr()
    assert main(["eval", str(run), "--device", "cpu"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["test"]["nll"] == pytest.approx(test["nll"], rel=1e-5)
    assert evaluated["test_bits_per_dim"] == pytest.approx(evaluated["test"]["nll"] / (784 * math.log(2)))
    assert main(["sample", str(run), "--n", "4", "--out", str(tmp_path / "s.png")]) == 0
    capsys.readouterr()
    for temperature in ("0", "0.7"):
        out = tmp_path / f"t{temperature}.png"
        assert main(["sample", str(run), "--n", "4", "--temperature", temperature, "--out", str(out)]) == 0
        assert out.stat().st_size > 0
    with pytest.raises(SystemExit):
        main(["sample", str(run), "--temperature", "-1"])
    assert "must be a number >= 0" in capsys.readouterr().err


def test_a_model_without_a_temperature_refuses_one(tmp_path, capsys, single_thread):
    run = tmp_path / "made"
    assert main(["train", "--config", "made", "--out", str(run), "--epochs", "1", "--no-progress",
                 "--set", "model.hidden_dims=[16]", "--set", "data.limit=256", "--set", "data.test_limit=64"]) == 0
    capsys.readouterr()
    assert main(["sample", str(run), "--n", "4", "--temperature", "0.5"]) == 2
    assert "has no sampling temperature" in capsys.readouterr().err


def _small_glow() -> Glow:
    torch.manual_seed(0)
    model = Glow(image_shape=[1, 4, 4], levels=2, steps=1, hidden=8).double()
    # a non-trivial map: perturb every parameter (the couplings start as the identity)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_the_bits_per_dim_accounting_adds_up_to_the_objective():
    model = _small_glow()
    y = torch.rand(40, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 0.98 + 0.01
    accounting = flow_nll_accounting(model, y, levels=256, batch_size=16)
    assert set(accounting["logdet"]) == {"0:Logit", "1:MultiScale"}
    total = accounting["base_log_prob"] + sum(accounting["logdet"].values())
    assert total == pytest.approx(accounting["log_prob"], rel=1e-12)
    with torch.no_grad():
        reference = exact_nll(model, y, levels=256)
    assert accounting["nll_nats"] == pytest.approx(float(reference.terms["nll"].mean()), rel=1e-10)
    assert accounting["bits_per_dim"] == pytest.approx(float(reference.terms["bits_per_dim"].mean()), rel=1e-10)
    assert accounting["dequantization_nats"] == pytest.approx(16 * math.log(256))
    with pytest.raises(CapabilityError, match="needs a normalizing flow"):
        flow_nll_accounting(torch.nn.Linear(2, 2), y)


def test_temperature_scales_one_noise_and_zero_gives_the_mode_image():
    model = _small_glow()
    rows = temperature_samples(model, [0.0, 0.5, 1.0], n=3, seed=4)
    assert rows.shape == (3, 3, 1, 4, 4)
    mode, _ = model.transform.inverse(torch.zeros(1, 16, dtype=torch.float64))
    torch.testing.assert_close(rows[0], mode.clamp(0, 1).expand(3, -1, -1, -1))  # T = 0: every sample alike
    generator = torch.Generator().manual_seed(4)
    torch.testing.assert_close(rows[2], model.sample(3, generator=generator))  # T = 1: the model's own samples
    with pytest.raises(ValueError, match="numbers >= 0"):
        temperature_samples(model, [-0.5], n=2)


def test_interpolation_in_z_starts_and_ends_at_the_two_images():
    model = _small_glow()
    y = torch.rand(2, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 0.9 + 0.05
    path = interpolate_in_base(model, y[0], y[1], steps=5)
    assert path.shape == (5, 1, 4, 4)
    torch.testing.assert_close(path[0], y[0])
    torch.testing.assert_close(path[-1], y[1])
    z, _ = model.transform(path)
    middle = 0.5 * (z[0] + z[-1])
    torch.testing.assert_close(z[2], middle)  # the midpoint image maps to the midpoint in z


@pytest.mark.parametrize("config", ["iresnet_mnist", "residual_flow_mnist"])
def test_a_residual_flow_trains_and_its_eval_says_the_number_is_an_estimate(config, tmp_path, capsys, single_thread):
    from dgmlab.experiments.runs import evaluate_run

    run = tmp_path / config
    args = ["train", "--config", config, "--out", str(run), "--epochs", "2", "--no-progress",
            "--set", "model.blocks=1", "--set", "model.hidden=8", "--set", "data.limit=256",
            "--set", "data.test_limit=8", "--set", "data.batch_size=64"]
    assert main(args) == 0, capsys.readouterr().err
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["train"]["nll"] < records[0]["train"]["nll"]
    capsys.readouterr()
    assert main(["eval", str(run), "--device", "cpu"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    expected = "power series truncated at 5 terms" if config == "iresnet_mnist" else "Russian roulette"
    assert expected in evaluated["log_prob_estimator"]
    assert "test_exact" not in evaluated  # 784 values per image: the exact log-determinant only when asked
    assert main(["eval", str(run), "--device", "cpu", "--exact-logdet"]) == 0
    forced = json.loads(capsys.readouterr().out)
    assert forced == evaluate_run(run, device="cpu", exact_logdet=True)  # the flag is the argument
    assert forced["test_exact"]["nll"] != forced["test"]["nll"]
    # the estimate and the exact value of the same model on the same 8 images: close, not equal
    difference = abs(forced["test_bits_per_dim_exact"] - forced["test_bits_per_dim"])
    assert 0 < difference < 0.05
    assert main(["sample", str(run), "--n", "4", "--temperature", "0.7", "--out", str(tmp_path / "s.png")]) == 0
