"""`dgmlab pset1 --quick`: the report, its numbers and its figures; the KL-estimator check."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch

from dgmlab.cli import main
from dgmlab.experiments.pset1 import kl_estimator_check
from dgmlab.models import VAE

EXPECTED_FIGURES = {
    "ae": ["loss_curves", "reconstructions", "latent_scatter", "latent_manifold", "reconstructions_train_0_4",
           "interpolation"],
    "vae_mc": ["loss_curves", "reconstructions", "latent_scatter", "latent_manifold", "samples",
               "reconstructions_train_0_4", "interpolation"],
    "vae_analytic": ["loss_curves", "reconstructions", "latent_scatter", "samples", "reconstructions_train_0_4",
                     "interpolation"],
    "kl_check": ["kl_estimator_convergence"],
}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pset1")
    assert main(["pset1", "--quick", "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    return out


def test_report_embeds_every_promised_figure(quick_run):
    html = (quick_run / "report.html").read_text()
    sections = re.findall(r"<section id='(\w+)'>(.*?)</section>", html, flags=re.S)
    by_key = dict(sections)
    for key, figures in EXPECTED_FIGURES.items():
        assert key in by_key, key
        embedded = re.findall(r'<img alt="([\w-]+)" src="data:image/png;base64,', by_key[key])
        assert set(figures) <= set(embedded), (key, embedded)
        for name in figures:
            assert (quick_run / key / f"{name}.png").is_file()
    # self-contained: no external scripts, images or style sheets
    assert not re.search(r"""(src|href)=["']?https?:""", html)
    assert "<script src" not in html


def test_metrics_pass_sanity_bounds(quick_run):
    metrics = json.loads((quick_run / "metrics.json").read_text())
    assert metrics["quick"] is True
    # predicting the mean test image has MSE 0.0674: the lr 1e-3 models beat it after 3 quick epochs
    for key in ("ae", "vae_analytic"):
        assert 0.0 < metrics[key]["test"]["mse"] < 0.0674, key
    assert 0.0 < metrics["vae_mc"]["test"]["mse"] < 0.2  # lr 1e-4 learns slowly; the full run reaches ~0.05
    for key in ("ae", "vae_mc", "vae_analytic"):
        m = metrics[key]
        history = [json.loads(line) for line in (quick_run / key / "metrics.jsonl").read_text().splitlines()]
        assert history[-1]["train"]["loss"] < history[0]["train"]["loss"], key
        assert m["units"]["mse"] == "squared error per dimension"
        assert m["reference"]["true"] > m["reference"]["printed"]  # the reference printed 0.376x the truth
    assert metrics["vae_mc"]["train"]["kl"] > 0 and metrics["vae_analytic"]["train"]["kl"] > 0
    kl = metrics["kl_check"]
    assert 0.01 < kl["analytic_kl_nats"] < 0.2  # about 0.058 for an untrained encoder
    assert -0.75 < kl["slope"] < -0.3


def test_kl_estimator_check_error_falls_like_inverse_sqrt_n():
    torch.manual_seed(0)
    model = VAE(784, [128, 32, 16, 4]).eval()
    x = torch.rand(64, 784)
    result = kl_estimator_check(model, x, [1, 10, 100, 1000], trials=48, seed=1)
    assert result["estimates"].shape == (4, 48)
    assert result["rms_error"][0] > 5 * result["rms_error"][-1]
    assert -0.65 < result["slope"] < -0.35
    # unbiased: the mean over trials at n = 1000 is close to the analytic value
    assert abs(result["estimates"][-1].mean() - result["analytic"]) < 3 * result["rms_error"][-1]


def test_pset1_rejects_a_bad_device(capsys):
    with pytest.raises(SystemExit):
        main(["pset1", "--device", "tpu"])
    assert "invalid choice" in capsys.readouterr().err


def test_parallel_and_in_order_runs_agree(quick_run, tmp_path):
    # the default on this CPU runs the parts in two processes; --workers 0 runs them in order here
    parallel = json.loads((quick_run / "metrics.json").read_text())
    assert parallel["workers"] == (2 if (os.cpu_count() or 1) >= 2 else 0)
    assert main(["pset1", "--quick", "--out", str(tmp_path), "--no-progress", "--device", "cpu",
                 "--workers", "0"]) == 0
    in_order = json.loads((tmp_path / "metrics.json").read_text())
    assert in_order["workers"] == 0
    for key in ("ae", "vae_mc", "vae_analytic"):
        for split in ("train", "test"):
            assert in_order[key][split]["loss"] == pytest.approx(parallel[key][split]["loss"], rel=2e-3), (key, split)
    assert in_order["kl_check"]["analytic_kl_nats"] == pytest.approx(parallel["kl_check"]["analytic_kl_nats"])
    html = (tmp_path / "report.html").read_text()
    assert [k for k in re.findall(r"<section id='(\w+)'>", html)] == ["ae", "vae_mc", "vae_analytic", "kl_check",
                                                                      "torus"]
