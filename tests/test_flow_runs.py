"""Flows as density models of the run layer: Glow/RealNVP on dequantized 8-bit MNIST train, evaluate and sample
through the command line with no special case, and their NLL is the 8-bit bound -log p(y) + D log 256."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dgmlab.cli import main
from dgmlab.config import build_objective
from dgmlab.errors import ModelConfigError
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
    assert main(["sample", str(run), "--n", "4", "--out", str(tmp_path / "s.png")]) == 0
