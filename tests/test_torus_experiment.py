"""The torus experiment: seeded golden runs of the decoders, the interpolation property, the quick end-to-end
experiment, the config files and ``dgmlab train`` on them."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dgmlab.cli import main
from dgmlab.config import load_config
from dgmlab.data import torus_point_cloud
from dgmlab.evaluate import point_cloud_metrics
from dgmlab.experiments.runs import load_run
from dgmlab.experiments.torus import (
    DATA_TABLE,
    DECODERS,
    ENDPOINTS,
    MODEL_TABLES,
    OBJECTIVE_TABLE,
    TRAIN_TABLE,
    _train_all,
    interpolate,
    ring_metrics,
    run_torus,
    torus_config,
    train_decoder,
)

R, r = 1.0, 0.5


@pytest.fixture(scope="module")
def points() -> torch.Tensor:
    return torus_point_cloud()[0]


@pytest.fixture(scope="module")
def golden(single_thread, points):
    """The problem set's full 1,000 steps, seed 0, for the torus and the polar (reference) decoders."""
    runs = {}
    for decoder in ("torus", "polar"):
        model, history = train_decoder(decoder, seed=0, steps=1000, device="cpu", points=points)
        with torch.no_grad():
            decoded = model.decode(model.encode(points)[0])
        runs[decoder] = (model, history, point_cloud_metrics(decoded, points, R, r))
    return runs


def test_golden_torus_decoder_reconstructs_the_surface(golden):
    model, history, metrics = golden["torus"]
    assert history.records[-1]["step"] == 1000
    assert history.last() < 0.006  # MSE + 1e-4 KL; the reference's polar model ended near 0.004
    assert metrics["surface_distance_mean"] <= 0.02  # the experiment's target (measured: 0.001-0.006)
    assert metrics["chamfer_l2"] < 0.006  # against an oracle of 0.0043 for a fresh sample
    learned_R, learned_r = (float(value.detach()) for value in model.radii())
    assert learned_R == pytest.approx(1.0, abs=0.02) and learned_r == pytest.approx(0.5, abs=0.02)


def test_golden_torus_decoder_beats_the_polar_decoder(golden):
    torus, polar = golden["torus"][2], golden["polar"][2]
    assert torus["surface_distance_mean"] < polar["surface_distance_mean"]
    assert torus["chamfer_l2"] < polar["chamfer_l2"]
    # the polar decoder's final loss depends much on the initialisation (measured 0.004-0.026 over seeds and
    # optimiser kernels); the reference reports 0.004-0.011 with other initialisations
    assert golden["polar"][1].last() < 0.04


@pytest.mark.parametrize("pair", sorted(ENDPOINTS))
def test_torus_interpolation_stays_in_the_ring(golden, pair):
    model = golden["torus"][0]
    start, end = ENDPOINTS[pair]
    path = interpolate(model, start, end)
    assert path.shape == (100, 3)
    radius = torch.hypot(path[:, 0], path[:, 1])
    learned_R, learned_r = (float(value.detach()) for value in model.radii())
    # by construction: sqrt(x^2 + y^2) = R' + r' cos v >= R' - r' for the learned radii
    assert float(radius.min()) >= learned_R - learned_r - 1e-5
    # and, trained, in the true ring up to the radii's error: never through the hole (which starts at 0)
    assert abs(learned_R - learned_r - (R - r)) < 0.005
    assert float(radius.min()) >= R - r - 0.01
    assert ring_metrics(path, R, r)["in_ring_fraction"] == 1.0  # with its tolerance of 0.01


def test_interpolation_is_deterministic_and_runs_from_start_to_end(golden):
    model = golden["polar"][0]
    first = interpolate(model, (0.0, 1.0, 0.0), (0.0, -1.0, 0.0), steps=7)
    assert torch.equal(first, interpolate(model, (0.0, 1.0, 0.0), (0.0, -1.0, 0.0), steps=7))
    with torch.no_grad():
        ends = model.decode(model.encode(torch.tensor([[0.0, 1.0, 0.0], [0.0, -1.0, 0.0]]))[0])
    assert torch.allclose(first[[0, -1]], ends, atol=1e-6)
    with pytest.raises(ValueError, match="steps >= 2"):
        interpolate(model, (0, 1, 0), (0, -1, 0), steps=1)
    with pytest.raises(ValueError, match="3-D points"):
        interpolate(model, (0, 1), (0, -1))


def test_ring_metrics_on_hand_made_paths():
    angles = torch.linspace(0, math.pi, 50)
    arc = torch.stack([angles.cos(), angles.sin(), torch.zeros(50)], dim=1)  # the tube's centre circle
    ring = ring_metrics(arc, R, r)
    assert ring["min_radius"] == pytest.approx(1.0) and ring["in_ring_fraction"] == 1.0
    assert ring["max_surface_distance"] == pytest.approx(0.5)
    # straight through the hole
    line = torch.stack([torch.zeros(50), torch.linspace(1, -1, 50), torch.zeros(50)], dim=1)
    assert ring_metrics(line, R, r)["in_ring_fraction"] == pytest.approx(0.52)
    assert ring_metrics(line, R, r)["min_radius"] < 0.03


@pytest.mark.slow
def test_quick_experiment_end_to_end(tmp_path):
    result = run_torus(tmp_path, quick=True, device="cpu", progress=False)
    metrics = result.metrics
    json.dumps(metrics)  # JSON-serialisable
    assert set(metrics["decoders"]) == set(DECODERS)
    for name, row in metrics["decoders"].items():
        numbers = {k for k, v in row.items() if isinstance(v, (int, float))}
        assert numbers <= set(row["units"]), f"{name}: every number has a unit"
        assert row["per_seed"]["0"]["steps"] == 100 and row["seeds"] == 1
        assert row["final_loss_min"] <= row["final_loss_mean"] <= row["final_loss_max"]
        assert (tmp_path / f"{name}_seed0" / "config.json").is_file()
        assert (tmp_path / f"{name}_seed0" / "metrics.jsonl").read_text().count("\n") == 100
    assert metrics["decoders"]["polar"]["parameters"] == 3919
    assert 0.0038 < metrics["oracle"]["chamfer_l2"] < 0.0048
    assert set(metrics["oracle"]["units"]) >= {"chamfer_l2", "chamfer_l1", "surface_distance_mean"}
    assert metrics["reference"]["printed_final_loss"] == 0.0002
    assert all(isinstance(value, bool) for value in metrics["targets"].values())
    assert "\n" not in result.summary and "oracle" in result.summary
    for name, path in result.figures.items():
        assert path.is_file() and path.stat().st_size > 1000, name
    assert set(result.figures) == {"training_data", "decoded_cartesian", "decoded_polar", "decoded_torus",
                                   "interpolation_cartesian_pset", "interpolation_polar_pset",
                                   "interpolation_torus_pset", "latent_vs_angles_torus"}
    assert all(path.suffix == ".png" for path in result.figures.values())
    page = result.pages["interactive"].read_text()
    assert "<canvas" in page and "http" not in page  # self-contained
    assert json.loads((tmp_path / "metrics.json").read_text())["decoders"]["torus"]["seeds"] == 1
    # a run directory's config reruns the same model
    model, config = load_run(tmp_path / "torus_seed0")
    assert config["model"] == MODEL_TABLES["torus"] and model.decoder_kind == "torus"


def test_run_torus_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="subset of cartesian, polar, torus"):
        run_torus(tmp_path, quick=True, decoders=["spherical"])
    with pytest.raises(ValueError, match="distinct integers"):
        run_torus(tmp_path, quick=True, seeds=[1, 1])
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        run_torus(tmp_path, quick=True, workers=0)
    with pytest.raises(ValueError, match="unknown decoder"):
        torus_config("spherical")


def test_training_in_two_processes_gives_the_same_runs(tmp_path, points, single_thread):
    held_out = torus_point_cloud(seed=11234)[0]
    jobs = [("torus", 0), ("polar", 1), ("cartesian", 2)]
    reported = []
    forked = _train_all(jobs, 20, "cpu", tmp_path / "forked", points, held_out, 2, reported.append)
    here = _train_all(jobs, 20, "cpu", tmp_path / "here", points, held_out, 1, lambda run: None)
    assert sorted((run.decoder, run.seed) for run in reported) == sorted(jobs)
    for job in jobs:
        assert forked[job].metrics["final_loss"] == here[job].metrics["final_loss"]
        assert torch.equal(forked[job].decoded, here[job].decoded)


@pytest.mark.parametrize("decoder", DECODERS)
def test_config_files_match_the_experiment(decoder):
    config = load_config(f"torus_{decoder}")
    expected = torus_config(decoder)
    assert config["model"] == expected["model"]
    assert config["data"] == DATA_TABLE
    assert config["objective"] == OBJECTIVE_TABLE
    assert {k: config["train"][k] for k in TRAIN_TABLE} == TRAIN_TABLE
    assert config["name"] == f"torus_{decoder}"


def test_dgmlab_train_on_the_torus_config(tmp_path, single_thread):
    out = tmp_path / "run"
    config = "torus_torus"
    status = main(["train", "--config", config, "--out", str(out), "--epochs", "20", "--device", "cpu"])
    assert status == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 20 and records[-1]["step"] == 20
    assert "test" in records[-1] and math.isfinite(records[-1]["train"]["loss"])
    model, _ = load_run(out)
    assert model.decoder_kind == "torus" and (out / "checkpoint").is_dir()

