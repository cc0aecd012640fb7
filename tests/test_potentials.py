"""Rezende and Mohamed (2015) Figure 3 (dgmlab.experiments.potentials): the potentials against their formulas,
the quadrature normaliser against closed forms, q_K's density against the autograd change of variables and
against 1, reverse-KL fitting, the experiment's outputs and its config."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from dgmlab.cli import main
from dgmlab.config import ConfigError, bundled_config, bundled_configs, load_config
from dgmlab.errors import RunExistsError
from dgmlab.experiments.potentials import (
    POTENTIALS,
    U1,
    U2,
    U3,
    U4,
    Target,
    annealing_beta,
    box_wall,
    build_q,
    estimate_kl,
    fit_reverse_kl,
    free_energy_terms,
    learning_rate_at,
    log_density_on_grid,
    log_normalizer,
    q_log_density,
    read_settings,
    run_potentials,
)
from dgmlab.models.flows import Planar, Radial

pytestmark = pytest.mark.usefixtures("single_thread")

LOG_2PI = math.log(2 * math.pi)


# ----------------------------------------------------------------------------------------------------------
# The potentials
# ----------------------------------------------------------------------------------------------------------
# (z1, z2) -> U1..U4, worked out from Table 1, e.g. U1(0, 0) = 1/2 (2/0.4)^2 - ln 2 + 1/2 (2/0.6)^2,
# U2(1, -2) = 1/2 (3/0.4)^2 (w1(1) = 1), U4(1, -2) = -ln(e^{-28.125} + e^{-1/2 (1.5/0.35)^2}) (w3(1) = 1.5)
HAND_VALUES = {
    (0.0, 0.0): (12.5 - math.log(2) + 0.5 * (2 / 0.6) ** 2, 0.0, -0.09701079, -0.67159228),
    (2.0, 0.0): (0.0, 0.0, -0.09701079, 0.0),
    (1.0, 1.0): (2.46120441, 0.0, 0.0, -0.00010270),
    (1.0, -2.0): (1.56302422, 28.125, 0.0, -math.log(math.exp(-28.125) + math.exp(-0.5 * (1.5 / 0.35) ** 2))),
}


@pytest.mark.parametrize("point", list(HAND_VALUES))
def test_each_potential_matches_table_1_at_hand_computed_points(point):
    z = torch.tensor([point], dtype=torch.float64)
    for potential, expected in zip((U1, U2, U3, U4), HAND_VALUES[point], strict=True):
        assert float(potential(z)) == pytest.approx(expected, abs=1e-7), (potential.__name__, point)


def _reference(name: str, z1: float, z2: float) -> float:
    # Table 1 with the math module, the naive -ln(e^a + e^b)
    w1 = math.sin(2 * math.pi * z1 / 4)
    w2 = 3 * math.exp(-0.5 * ((z1 - 1) / 0.6) ** 2)
    w3 = 3 / (1 + math.exp(-(z1 - 1) / 0.3))
    if name == "U1":
        ring = 0.5 * ((math.hypot(z1, z2) - 2) / 0.4) ** 2
        return ring - math.log(math.exp(-0.5 * ((z1 - 2) / 0.6) ** 2) + math.exp(-0.5 * ((z1 + 2) / 0.6) ** 2))
    if name == "U2":
        return 0.5 * ((z2 - w1) / 0.4) ** 2
    if name == "U3":
        return -math.log(math.exp(-0.5 * ((z2 - w1) / 0.35) ** 2) + math.exp(-0.5 * ((z2 - w1 + w2) / 0.35) ** 2))
    return -math.log(math.exp(-0.5 * ((z2 - w1) / 0.4) ** 2) + math.exp(-0.5 * ((z2 - w1 + w3) / 0.35) ** 2))


def test_the_potentials_match_the_formulas_on_a_batch_in_float32_and_float64():
    z = torch.tensor([[-3.1, 2.2], [0.4, -0.7], [3.9, -3.5], [-1.0, 1.0], [2.5, 0.3]], dtype=torch.float64)
    for name, potential in POTENTIALS.items():
        expected = torch.tensor([_reference(name, *point) for point in z.tolist()], dtype=torch.float64)
        torch.testing.assert_close(potential(z), expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(potential(z.float()), expected.float(), rtol=1e-5, atol=1e-5)
        assert potential(z.reshape(5, 1, 2)).shape == (5, 1)


def test_the_log_sum_exp_stays_finite_where_both_exponentials_underflow():
    # at z2 = 40 both terms of U3 and U4 underflow: -ln(0) naively, the smaller quadratic with logsumexp
    z = torch.tensor([[0.0, 40.0]], dtype=torch.float64)
    assert float(U3(z)) == pytest.approx(0.5 * (40 / 0.35) ** 2 - math.log1p(math.exp(
        0.5 * (40 / 0.35) ** 2 - 0.5 * ((40 + 3 * math.exp(-0.5 / 0.36)) / 0.35) ** 2)), rel=1e-12)
    assert math.isfinite(float(U4(z))) and math.isfinite(float(U1(torch.tensor([[60.0, 0.0]]))))


def test_the_wall_vanishes_on_the_figure_strip_and_rises_as_a_gaussian_outside():
    z = torch.tensor([[-4.0, 3.0], [3.99, -9.0], [4.4, 0.0], [-5.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(box_wall(z), torch.tensor([0.0, 0.0, 0.5, 0.5 * (1 / 0.4) ** 2], dtype=torch.float64))
    torch.testing.assert_close(Target("U2")(z), U2(z) + box_wall(z))


def test_bad_points_and_names_are_refused():
    with pytest.raises(ValueError, match=r"shape \[\.\.\., 2\], got \[4, 3\]"):
        U1(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="unknown potential 'U5'; choose one of U1, U2, U3, U4"):
        Target("U5")
    with pytest.raises(ValueError, match="unknown flow 'affine'; choose one of planar, radial"):
        build_q("affine", 2)


# ----------------------------------------------------------------------------------------------------------
# The normaliser
# ----------------------------------------------------------------------------------------------------------
def test_log_normalizer_of_a_standard_gaussian_is_log_two_pi():
    result = log_normalizer(lambda z: 0.5 * (z**2).sum(-1))
    assert result.log_z == pytest.approx(LOG_2PI, abs=1e-6)
    assert result.border_ratio < 1e-12 and abs(result.log_z - result.log_z_coarse) < 1e-10


def test_log_normalizer_of_the_walled_sine_wave_has_its_closed_form():
    # int e^{-U2} dz2 = 0.4 sqrt(2 pi) at every z1, and int e^{-W} dz1 = 2a + s sqrt(2 pi): the quadrature checks
    # the wall's kink too
    expected = math.log(0.4 * math.sqrt(2 * math.pi) * (8 + 0.4 * math.sqrt(2 * math.pi)))
    assert log_normalizer(Target("U2")).log_z == pytest.approx(expected, abs=1e-9)
    # U1 is normalisable by itself, and the wall outside |z1| <= 4 leaves its ln Z alone
    assert log_normalizer(Target("U1")).log_z == pytest.approx(log_normalizer(U1).log_z, abs=1e-9)


def test_log_normalizer_refuses_a_box_too_small_or_a_grid_too_coarse():
    with pytest.raises(ConfigError, match="on the border of .* widen the box"):
        log_normalizer(lambda z: 0.5 * (z**2).sum(-1), limit=2.0, points=201)
    with pytest.raises(ConfigError, match=r"apart by more than 0.0001 nats\): use more points"):
        log_normalizer(lambda z: 0.5 * (z**2).sum(-1) / 0.03**2, limit=1.0, points=41)
    with pytest.raises(ConfigError, match="points must be odd"):
        log_normalizer(U1, points=400)


# ----------------------------------------------------------------------------------------------------------
# q_K
# ----------------------------------------------------------------------------------------------------------
def _random_q(flow: str, length: int, seed: int) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    q = build_q(flow, length).double()
    with torch.no_grad():
        for layer in q.transform.transform.transforms:
            for parameter in layer.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=torch.float64))
    return q


def _paper_map(q: torch.nn.Module, z0: torch.Tensor) -> torch.Tensor:
    """z_K = f_K o ... o f_1(z_0) with the paper's formulas written out, f_1 first."""
    z = z0
    for layer in q.transform.transform.transforms:
        if isinstance(layer, Planar):
            z = z + layer.u_hat() * torch.tanh(layer.w @ z + layer.b)
        else:
            assert isinstance(layer, Radial)
            r = torch.linalg.vector_norm(z - layer.z0)
            z = z + layer.beta() / (layer.alpha() + r) * (z - layer.z0)
    return z


@pytest.mark.parametrize("flow", ["planar", "radial"])
def test_the_training_log_density_is_the_change_of_variables_with_autograd_jacobians(flow):
    q = _random_q(flow, 4, seed=3)
    z, log_q = q.sample_and_log_prob(6, generator=torch.Generator().manual_seed(11))
    z0 = torch.randn(6, 2, generator=torch.Generator().manual_seed(11), dtype=torch.float64)  # the same base draws
    for i in range(6):
        jacobian = torch.autograd.functional.jacobian(lambda x: _paper_map(q, x), z0[i])
        # ln q_K(z_K) = ln N(z_0) - ln|det dz_K/dz_0|
        expected = -0.5 * float(z0[i] @ z0[i]) - LOG_2PI - math.log(abs(float(torch.linalg.det(jacobian))))
        torch.testing.assert_close(z[i], _paper_map(q, z0[i]).detach(), rtol=1e-12, atol=1e-12)
        assert float(log_q[i].detach()) == pytest.approx(expected, abs=1e-10)
    # the grid's density (through the inverses) is the same function
    torch.testing.assert_close(q_log_density(q)(z.detach()), log_q.detach(), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("flow", ["planar", "radial"])
def test_the_density_of_a_random_q_integrates_to_one(flow):
    q = _random_q(flow, 4, seed=6)  # planar: w.u_hat from -0.68 (contracting) to 1.98 (expanding)
    limit, points = 8.0, 401
    density = log_density_on_grid(q_log_density(q), limit, points).exp()
    spacing = 2 * limit / (points - 1)
    assert float(density.sum()) * spacing**2 == pytest.approx(1.0, abs=1e-3)


def test_the_kl_estimate_is_zero_for_q_equal_to_p_and_matches_a_gaussian_closed_form():
    q = build_q("radial", 2).double()
    with torch.no_grad():
        for layer in q.transform.transform.transforms:  # beta = -alpha + softplus(beta_raw) = 0: the identity
            layer.beta_raw.copy_(torch.log(torch.expm1(layer.alpha())))
    standard = estimate_kl(q, lambda z: 0.5 * (z**2).sum(-1), LOG_2PI, samples=4000)
    assert abs(standard.kl) < 1e-9 and standard.standard_error < 1e-9
    # KL(N(0, I) || N(0, s^2 I)) in 2-D = 2 (ln s + 1 / (2 s^2) - 1/2)
    s = 1.5
    wide = estimate_kl(q, lambda z: 0.5 * (z**2).sum(-1) / s**2, LOG_2PI + 2 * math.log(s), samples=40_000,
                       generator=torch.Generator().manual_seed(0))
    assert wide.kl == pytest.approx(2 * (math.log(s) + 0.5 / s**2 - 0.5), abs=4 * wide.standard_error)
    assert wide.free_energy == pytest.approx(wide.kl - LOG_2PI - 2 * math.log(s))


def test_the_schedules_follow_the_paper_and_the_cosine():
    assert annealing_beta(0, 10_000) == pytest.approx(0.01)
    assert annealing_beta(4950, 10_000) == pytest.approx(0.505)
    assert annealing_beta(9900, 10_000) == annealing_beta(20_000, 10_000) == 1.0
    assert annealing_beta(0, 0) == 1.0
    assert learning_rate_at(0, 100, 0.1, "cosine") == 0.1
    assert learning_rate_at(50, 100, 0.1, "cosine") == pytest.approx(0.05)
    assert learning_rate_at(99, 100, 0.1, "constant") == 0.1
    with pytest.raises(ValueError, match="schedule 'linear'; choose one of constant, cosine"):
        fit_reverse_kl(build_q("planar", 1), U1, iterations=1, schedule="linear")


def test_reverse_kl_fitting_reduces_the_kl_to_u1_and_the_estimate_stays_nonnegative():
    target = Target("U1")
    log_z = log_normalizer(target, points=801).log_z
    torch.manual_seed(0)
    q = build_q("planar", 8)
    generator = torch.Generator().manual_seed(1)
    before = estimate_kl(q, target, log_z, samples=20_000, generator=generator)
    history = fit_reverse_kl(q, target, iterations=300, batch_size=256, learning_rate=0.05, schedule="cosine",
                             annealing_iterations=100, generator=generator)
    after = estimate_kl(q, target, log_z, samples=20_000, generator=generator)
    assert before.kl > 2.0
    assert after.kl < 0.6 and after.kl < 0.25 * before.kl
    assert after.kl + 3 * after.standard_error >= 0
    assert history.beta[0] == pytest.approx(0.01) and history.beta[-1] == 1.0 and len(history.free_energy) == 300
    # the training objective ends near the fresh-sample free energy F = KL - ln Z >= -ln Z
    assert sum(history.free_energy[-30:]) / 30 == pytest.approx(after.free_energy, abs=0.1)
    with torch.no_grad():
        assert float(free_energy_terms(q, target, 10).mean()) > -log_z - 1.0


# ----------------------------------------------------------------------------------------------------------
# The experiment and its config
# ----------------------------------------------------------------------------------------------------------
def _small_config(tmp_path: Path) -> Path:
    text = bundled_config("planar_potentials")
    text = text.replace('potentials = ["U1", "U2", "U3", "U4"]', 'potentials = ["U1", "U3"]')
    text = re.sub(r"(?m)^planar = \[.*\]", "planar = [2]", text)
    text = re.sub(r"(?m)^radial = \[.*\]", "radial = [3]", text)
    path = tmp_path / "small.toml"
    path.write_text(text)
    return path


def test_run_potentials_writes_results_table_and_figure_and_refuses_to_overwrite(tmp_path):
    config, out, messages = _small_config(tmp_path), tmp_path / "run", []
    returned = run_potentials(out, quick=True, config=config, seed=3, progress=True, log=messages.append)
    assert returned == out
    results = json.loads((out / "results.json").read_text())
    assert results["quick"] is True and results["seed"] == 3 and results["units"]["kl"] == "nats"
    assert results["settings"]["iterations"] == 10 and results["settings"]["potentials"] == ["U1", "U3"]
    assert set(results["potentials"]) == {"U1", "U3"}
    for name, entry in results["potentials"].items():
        assert entry["log_z"] == pytest.approx(log_normalizer(Target(name), points=401).log_z)
        assert set(entry["fits"]) == {"planar", "radial"}
        assert set(entry["fits"]["planar"]) == {"2"} and set(entry["fits"]["radial"]) == {"3"}
        for fit in (entry["fits"]["planar"]["2"], entry["fits"]["radial"]["3"]):
            assert set(fit) >= {"kl", "kl_standard_error", "free_energy", "final_training_free_energy",
                                "iterations", "seconds"}
            assert fit["iterations"] == 10 and fit["kl_standard_error"] > 0
            assert fit["kl"] == pytest.approx(fit["free_energy"] + entry["log_z"])
            assert fit["kl"] + 4 * fit["kl_standard_error"] > 0
    table = (out / "table.md").read_text().splitlines()
    assert "| potential | planar K=2 | radial K=3 |" in table
    rows = [line for line in table if line.startswith("| U")]
    assert [row.split(" | ")[0] for row in rows] == ["| U1", "| U3"]
    kl = results["potentials"]["U3"]["fits"]["radial"]["3"]["kl"]
    assert f"{kl:.3f} ± " in rows[1]
    png = (out / "figure.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width > height > 300  # 2 rows of 3 panels
    assert len(messages) == 5 and any("U1 planar K=2: KL" in message for message in messages[:4])
    assert "| U3 |" in messages[-1] and "4 fits in" in messages[-1]

    before = (out / "results.json").read_text()
    with pytest.raises(RunExistsError, match=r"already holds a potentials run \(results.json, table.md, "
                                             r"figure.png\); replace it with --overwrite"):
        run_potentials(out, quick=True, config=config, seed=3, progress=False, log=messages.append)
    assert (out / "results.json").read_text() == before
    run_potentials(out, quick=True, config=config, seed=3, overwrite=True, progress=False, log=lambda _: None)
    again = json.loads((out / "results.json").read_text())["potentials"]
    for name, entry in results["potentials"].items():  # the same numbers: each fit has its own seed
        for flow, fits in entry["fits"].items():
            for length, fit in fits.items():
                assert again[name]["fits"][flow][length]["kl"] == fit["kl"]


def test_the_fits_are_the_same_in_two_processes(tmp_path):
    config = _small_config(tmp_path)
    runs = {}
    for workers in (0, 2):
        out = run_potentials(tmp_path / f"w{workers}", quick=True, config=config, workers=workers, progress=False,
                             log=lambda _: None)
        runs[workers] = json.loads((out / "results.json").read_text())["potentials"]
    for name in runs[0]:
        for flow in runs[0][name]["fits"]:
            for length, fit in runs[0][name]["fits"][flow].items():
                assert runs[2][name]["fits"][flow][length]["kl"] == pytest.approx(fit["kl"], abs=1e-5)


def test_the_config_is_listed_for_dgmlab_potentials_and_refused_by_dgmlab_train(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    summary = bundled_configs()["planar_potentials"]
    assert summary.startswith("[run with dgmlab potentials] Rezende and Mohamed (2015) Figure 3")
    assert main(["configs"]) == 0
    assert re.search(r"(?m)^planar_potentials +\[run with dgmlab potentials\] Rezende", capsys.readouterr().out)
    with pytest.raises(ConfigError, match="config of the experiment command dgmlab potentials, not a training "
                                          "config for dgmlab train: run dgmlab potentials instead"):
        load_config("planar_potentials")
    assert main(["train", "--config", "planar_potentials"]) == 2
    error = capsys.readouterr().err
    assert "run dgmlab potentials instead" in error and len(error.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()
    assert load_config("planar_potentials", command="potentials")["command"] == "potentials"
    with pytest.raises(ConfigError, match='needs the top-level key command = "potentials" .it looks like a training'):
        load_config("vae_mc", command="potentials")


def test_the_bundled_settings_are_valid_and_quick_replaces_only_what_it_names():
    config = load_config("planar_potentials", command="potentials")
    full, quick = read_settings(config), read_settings(config, quick=True)
    assert full.potentials == ("U1", "U2", "U3", "U4")
    assert full.flows == (("planar", (2, 8, 32)), ("radial", (2, 8, 32)))
    assert quick.iterations < full.iterations and quick.learning_rate == full.learning_rate
    assert quick.flows == full.flows


@pytest.mark.parametrize(("change", "message"), [
    (lambda c: c.update(extra=1), r"unknown key\(s\) or table\(s\) extra; valid ones are command"),
    (lambda c: c["fit"].update(steps=5), r"\[fit\] has unknown key\(s\) steps; valid keys are iterations"),
    (lambda c: c["fit"].pop("batch_size"), r"\[fit\] needs the key batch_size"),
    (lambda c: c["fit"].update(iterations=0), r"\[fit\] iterations must be a positive integer, got 0"),
    (lambda c: c["fit"].update(optimizer="sgd"), r"optimizer must be one of adam, rmsprop, got 'sgd'"),
    (lambda c: c["target"].update(potentials=["U1", "U9"]), r"distinct potentials among U1, U2, U3, U4"),
    (lambda c: c["flows"].update(affine=[2]), r"\[flows\] maps flow families .planar, radial.* got affine"),
    (lambda c: c["flows"].update(planar=[]), r"\[flows\] planar must be a non-empty list of flow lengths"),
    (lambda c: c["quick"].update(train={}), r"\[quick\] may only hold the tables target, fit, normalizer, figure"),
    (lambda c: c["quick"]["fit"].update(lr=1), r"\[quick.fit\] has unknown key\(s\) lr"),
    (lambda c: c["normalizer"].update(points=400), r"\[normalizer\] points must be odd, got 400"),
    (lambda c: c.pop("figure"), r"needs a \[figure\] table"),
])
def test_bad_settings_are_refused_with_a_clear_message(change, message):
    config = load_config("planar_potentials", command="potentials")
    change(config)
    with pytest.raises(ConfigError, match=message):
        read_settings(config, source="my.toml")


@pytest.mark.slow  # about 6 s of fits and 2 s of figure, 10 s on a busy machine
def test_the_bundled_quick_run_fills_the_whole_grid(tmp_path):
    out = run_potentials(tmp_path / "quick", quick=True, progress=False, log=lambda _: None)
    results = json.loads((out / "results.json").read_text())
    assert results["config"] == "planar_potentials" and results["settings"]["iterations"] == 10
    for entry in results["potentials"].values():
        assert {flow: sorted(fits, key=int) for flow, fits in entry["fits"].items()} == {
            "planar": ["2", "8", "32"], "radial": ["2", "8", "32"]}
    rows = [line for line in (out / "table.md").read_text().splitlines() if line.startswith("| U")]
    assert len(rows) == 4 and all(row.count("±") == 6 for row in rows)
