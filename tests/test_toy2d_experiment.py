"""The toy2d experiment (an i-ResNet, a residual flow and a RealNVP of matched size fitted to the 2-D toy
densities): its quick run writes every output with finite exact log-likelihoods, densities that integrate to 1 on
the grid and estimates that agree with the exact values; its models match in size and match the bundled configs,
which train and evaluate through the command line."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dgmlab.cli import main
from dgmlab.config import build_model_from_config, load_bundled_config
from dgmlab.errors import ModelConfigError, RunExistsError
from dgmlab.experiments.toy2d import (
    MODELS,
    OUTPUT_FILES,
    QUICK,
    SETTINGS,
    build_toy2d_model,
    gaussian_log_likelihood,
    grid_centres,
    realnvp_2d,
    run_toy2d,
)
from dgmlab.models import count_parameters

DATASETS = ["checkerboard", "eight_gaussians", "two_moons", "rings"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy2d")
    lines: list[str] = []
    assert run_toy2d(out, quick=True, log=lines.append) == out
    return out, lines


def test_the_quick_run_writes_every_output(quick_run):
    out, lines = quick_run
    assert all((out / name).is_file() for name in OUTPUT_FILES)
    results = json.loads((out / "results.json").read_text())
    assert results["quick"] is True and results["seed"] == 0 and results["settings"]["steps"] == QUICK.steps
    assert list(results["datasets"]) == DATASETS
    table = (out / "table.md").read_text()
    assert "| data set | data E[log p] | Gaussian | i-ResNet | Residual Flow | RealNVP |" in table
    assert sum(line.startswith(tuple(DATASETS)) for line in lines) == 12  # a line per finished fit
    assert "written to" in lines[-1]


def test_the_quick_runs_numbers_are_finite_and_honest(quick_run):
    out, _ = quick_run
    results = json.loads((out / "results.json").read_text())
    for name, record in results["datasets"].items():
        data = record["data"]
        assert math.isfinite(data["expected_log_prob"]) and data["standard_error"] >= 0
        if name == "checkerboard":  # p = 1/32 on its squares: E[log p] = -log 32 exactly
            assert data["expected_log_prob"] == pytest.approx(-math.log(32))
        assert math.isfinite(record["gaussian"]["log_likelihood"])
        for model, fit in record["models"].items():
            assert math.isfinite(fit["log_likelihood"]) and fit["standard_error"] > 0
            assert math.isfinite(fit["kl"]) and math.isfinite(fit["final_training_loss"])
            # every model is a normalised density: its integral on the grid of [-8, 8]^2 is about 1
            assert fit["grid_integral"] == pytest.approx(1.0, abs=0.05), (name, model)
            if model == "realnvp":
                assert fit["estimator"] == "exact" and "estimate" not in fit
                continue
            estimate = fit["estimate"]
            assert estimate["batches"] == QUICK.test_points // QUICK.estimate_batch
            # the training-time estimator against the exact value: the roulette is unbiased, the series is
            # biased by at most its truncation bound
            allowance = 4 * estimate["standard_error"] + (estimate["series_bias_bound"] or 0.0)
            assert abs(estimate["minus_exact"]) <= allowance, (name, model, estimate)
            assert ("Russian roulette" if model == "residual_flow" else "power series") in fit["estimator"]
            assert (estimate["series_bias_bound"] is None) == (model == "residual_flow")


def test_an_existing_run_is_refused_without_overwrite(quick_run):
    out, _ = quick_run
    before = (out / "results.json").read_text()
    with pytest.raises(RunExistsError, match="already holds a toy2d run .*results.json.*--overwrite"):
        run_toy2d(out, quick=True, log=lambda line: None)
    assert (out / "results.json").read_text() == before


def test_the_models_are_of_matched_size():
    for settings in (SETTINGS, QUICK):
        counts = {name: count_parameters(build_toy2d_model(name, settings)) for name in MODELS}
        assert max(counts.values()) <= 1.1 * min(counts.values()), counts
    # RealNVP: H^2 + 5H + 6 parameters per step of ActNorm and coupling (D = 2)
    assert count_parameters(realnvp_2d(steps=3, hidden=10)) == 3 * (100 + 50 + 6)


@pytest.mark.parametrize("config", ["iresnet_toy2d", "residual_flow_toy2d"])
def test_the_bundled_configs_build_the_experiments_models(config):
    table = load_bundled_config(config)
    model = build_model_from_config(table, input_dim=2)
    reference = build_toy2d_model(table["model"]["name"], SETTINGS)
    assert count_parameters(model) == count_parameters(reference)
    assert model.estimator_settings() == reference.estimator_settings()
    assert model.log_prob_estimator() == reference.log_prob_estimator()
    assert table["data"]["name"] == "toy2d"


@pytest.mark.parametrize("config", ["iresnet_toy2d", "residual_flow_toy2d"])
def test_a_toy2d_config_trains_and_evaluates_through_the_cli(config, tmp_path, capsys, single_thread):
    run = tmp_path / config
    args = ["train", "--config", config, "--out", str(run), "--epochs", "2", "--no-progress",
            "--set", "model.blocks=2", "--set", "model.hidden=8", "--set", "data.dataset=eight_gaussians",
            "--set", "data.num_points=600", "--set", "data.test_points=200", "--set", "data.batch_size=100"]
    assert main(args) == 0, capsys.readouterr().err
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["train"]["nll"] < records[0]["train"]["nll"]
    recorded = json.loads((run / "config.json").read_text())
    assert recorded["data_spec"]["kind"] == "points" and recorded["data_spec"]["example_shape"] == [2]
    capsys.readouterr()
    assert main(["eval", str(run), "--device", "cpu"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    # two values per point: dgmlab eval adds the exact log-likelihood beside the training-time estimate
    assert "test_exact" in evaluated and math.isfinite(evaluated["test_exact"]["nll"])
    assert abs(evaluated["test_exact"]["nll"] - evaluated["test"]["nll"]) < 0.1
    # samples of a 2-D density: a scatter on the plane (the fixed-point inverse of every block)
    assert main(["sample", str(run), "--n", "50", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 0


def test_the_realnvp_config_is_the_experiments_and_trains_evaluates_and_samples(tmp_path, capsys, single_thread):
    table = load_bundled_config("realnvp_toy2d")
    model = build_model_from_config(table, input_dim=2)
    assert count_parameters(model) == count_parameters(build_toy2d_model("realnvp", SETTINGS))
    run = tmp_path / "realnvp"
    args = ["train", "--config", "realnvp_toy2d", "--out", str(run), "--epochs", "2", "--no-progress",
            "--set", "model.steps=2", "--set", "model.hidden=8", "--set", "data.dataset=two_moons",
            "--set", "data.num_points=600", "--set", "data.test_points=200", "--set", "data.batch_size=100"]
    assert main(args) == 0, capsys.readouterr().err
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["train"]["nll"] < records[0]["train"]["nll"]
    capsys.readouterr()
    assert main(["eval", str(run), "--device", "cpu"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert math.isfinite(evaluated["test"]["nll"])
    assert "log_prob_estimator" not in evaluated and "test_exact" not in evaluated  # exact already
    assert main(["sample", str(run), "--n", "50", "--out", str(tmp_path / "s.png")]) == 0


def test_the_gaussian_floor_and_the_grid():
    train = torch.randn(20_000, 2, generator=torch.Generator().manual_seed(0)) * torch.tensor([1.0, 3.0])
    test = torch.randn(5000, 2, generator=torch.Generator().manual_seed(1)) * torch.tensor([1.0, 3.0])
    # E[log N(x; 0, diag(1, 9))] = -(1 + log 2 pi) - log 3
    assert float(gaussian_log_likelihood(train, test).mean()) == pytest.approx(-(1 + math.log(2 * math.pi))
                                                                               - math.log(3), abs=0.05)
    torch.testing.assert_close(grid_centres(1.0, 0.5), torch.tensor([-0.75, -0.25, 0.25, 0.75], dtype=torch.float64))


def test_bad_arguments_get_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="run_toy2d: seed must be an integer >= 0, got -1"):
        run_toy2d(tmp_path / "x", quick=True, seed=-1)
    with pytest.raises(ValueError, match="unknown model 'glow'; choose one of iresnet, residual_flow, realnvp"):
        build_toy2d_model("glow", QUICK)
    with pytest.raises(ModelConfigError, match="RealNVP: steps must be a positive integer, got 0"):
        realnvp_2d(steps=0)
    with pytest.raises(ValueError, match="integral_limit = 1.1 must be a positive multiple of grid_spacing = 0.5"):
        grid_centres(1.1, 0.5)
