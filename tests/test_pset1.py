"""`dgmlab pset1 --quick`: the report, its numbers and its figures; the KL-estimator check."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch

from dgmlab.cli import main
from dgmlab.data import mnist_tensors
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


def constant_decoder_mse(data: dict) -> float:
    """Test MSE of the best decoder that ignores its code: the mean training image, on a run's data slices
    (``data`` is a run's ``config.json`` "data" table). About 0.064 on the quick run's 2,000 test images
    (0.0675 on all 10,000)."""
    x_train, _, _ = mnist_tensors("train", view="grey", limit=data.get("limit") or None)
    x_test, _, _ = mnist_tensors("test", view="grey", limit=data.get("test_limit") or None)
    return float(((x_test - x_train.mean(0)) ** 2).mean())


def run_records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


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
    constant = constant_decoder_mse(json.loads((quick_run / "ae" / "config.json").read_text())["data"])
    # The lr 1e-3 models beat a decoder that ignores its code after 3 quick epochs (measured: AE 0.955x,
    # VAE with analytic KL 0.90x of it).
    for key in ("ae", "vae_analytic"):
        assert 0.0 < metrics[key]["test"]["mse"] < constant, key
    # The problem set's lr 1e-4 does not get there in 3 quick epochs (0.153, worse than the constant; the
    # full run reaches 0.75x of it, and test_vae_with_monte_carlo_kl_beats_a_constant_decoder checks it):
    # here, only that the test error falls (measured: 0.221 -> 0.153, 0.69x).
    vae_mc = run_records(quick_run / "vae_mc")
    assert 0.0 < vae_mc[-1]["test"]["mse"] < 0.85 * vae_mc[0]["test"]["mse"]
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


@pytest.mark.slow
def test_vae_with_monte_carlo_kl_beats_a_constant_decoder(tmp_path, single_thread):
    """The problem set's VAE (2-D latent, MSE + 1e-4 KL with the Monte-Carlo KL) on the quick run's data, at
    lr 1e-3 for 10 epochs (470 steps): its decoder must use the code. A decoder that ignores it scores at
    best the constant below; the full problem-set run reaches 0.75x of it (0.0504 vs 0.0675) and this run
    measures 0.82x. 0.87x leaves room for rounding across machines and is out of reach without the code."""
    out = tmp_path / "vae_mc"
    assert main(["train", "--config", "vae_mc", "--out", str(out), "--epochs", "10", "--lr", "1e-3",
                 "--set", "data.limit=12000", "--set", "data.test_limit=2000", "--device", "cpu",
                 "--no-progress"]) == 0
    constant = constant_decoder_mse(json.loads((out / "config.json").read_text())["data"])
    records = run_records(out)
    assert len(records) == 10
    assert records[-1]["test"]["mse"] < 0.87 * constant, (records[-1]["test"]["mse"], constant)


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
