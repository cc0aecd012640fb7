"""notebooks/pset1.ipynb: runs top to bottom with small settings, shows figures and numbers; stored without outputs.
The tests named ``test_flows_*`` do the same for notebooks/flows.ipynb (change of variables to Glow).

The notebook is executed with nbclient in a kernel running this interpreter (the ``python3`` kernel spec that
ipykernel installs into the virtual environment; jupyter_client starts its ``python`` with ``sys.executable``),
with its ``parameters`` cell replaced by quick settings and a temporary working directory.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from notebook_helpers import (
    assert_parameters_cell,
    assert_stored_without_outputs,
    execute,
    parameters_cell_index,
    printed,
    text_of,
)

import dgmlab

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "pset1.ipynb"
SECTIONS = ("## 0.", "## 1.", "## 2.", "## 3.", "## 4.")
QUICK_PARAMETERS = """\
QUICK = True
EPOCHS_SCALE = 1.0
LIMIT = 2048
OUT = {out!r}
DEVICE = "cpu"
SEED = 0
PROGRESS = False
"""


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """The notebook executed with quick settings in a fresh folder; returns (notebook, folder, seconds)."""
    work = tmp_path_factory.mktemp("notebook")
    notebook, seconds = execute(NOTEBOOK, QUICK_PARAMETERS.format(out=str(work / "runs")), work)
    return notebook, work, seconds


def test_committed_notebook_has_no_outputs():
    assert_stored_without_outputs(NOTEBOOK)


def test_parameters_cell_is_near_the_top_and_sets_the_knobs():
    source = assert_parameters_cell(NOTEBOOK)
    assert source


def test_every_section_is_explained_in_markdown():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    markdown = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "markdown")
    for header in SECTIONS:
        assert re.search(rf"^{re.escape(header)} ", markdown, flags=re.M), header
    assert "$$" in markdown  # the math is written out


def test_notebook_runs_in_this_interpreter_without_errors(executed):
    notebook, work, seconds = executed
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    text = "\n".join(text_of(output) for output in outputs)
    assert f"(prefix {sys.prefix})" in text  # the kernel is this virtual environment's python
    assert f"from {Path(dgmlab.__file__).parent}" in text  # and imports this dgmlab
    for key in ("ae", "vae_mc", "vae_analytic"):
        assert (work / "runs" / key / "metrics.jsonl").is_file(), key
    print(f"notebook executed in {seconds:.0f} s")


def test_every_section_shows_a_figure(executed):
    notebook, _, _ = executed
    section, figures = None, {header: 0 for header in SECTIONS}
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            section = next((header for header in SECTIONS if cell.source.startswith(header)), section)
        elif section is not None:
            figures[section] += sum("image/png" in output.get("data", {}) for output in cell.outputs)
    assert all(count >= 1 for count in figures.values()), figures
    assert sum(figures.values()) >= 15, figures


def test_numbers_are_printed_beside_the_reference(executed):
    notebook, _, _ = executed
    text = "\n".join(text_of(output) for cell in notebook.cells if cell.cell_type == "code"
                     for output in cell.outputs)
    number = r"\d+\.\d+"
    for reference in ("0.0386", "0.05", "0.027"):
        pattern = rf"final training loss \(true epoch mean\) {number} \| reference solution {re.escape(reference)}\b"
        assert re.search(pattern, text), reference
    assert re.search(rf"analytic KL, batch mean: {number} nats per image \| reference", text)
    assert re.search(rf"fitted slope of log RMS error against log n: -{number}", text)
    assert re.search(rf"^torus .*{number}.* about 0\.004", text, flags=re.M)
    summary = re.findall(rf"^(ae|vae_mc|vae_analytic) +({number}) +({number})$", text, flags=re.M)
    assert [row[0] for row in summary] == ["ae", "vae_mc", "vae_analytic"]
    assert all(0.0 < float(ours) < 0.3 for _, ours, _ in summary)  # one quick epoch: well under 0.3


# ----------------------------------------------------------------------------------------------------------
# notebooks/flows.ipynb: the change of variables to Glow, run with quick settings (a tiny Glow, short fits)
# ----------------------------------------------------------------------------------------------------------
FLOWS_NOTEBOOK = NOTEBOOK.parent / "flows.ipynb"
FLOWS_SECTIONS = ("## 1.", "## 2.", "## 3.", "## 4.", "## 5.", "## 6.", "## 7.", "## 8.")
FLOWS_QUICK_PARAMETERS = """\
QUICK = True
GLOW_STEPS = 0
LIMIT = 0
DEVICE = "cpu"
SEED = 0
PROGRESS = False
"""
NUMBER = r"-?\d+\.\d+"


@pytest.fixture(scope="module")
def flows_executed(tmp_path_factory):
    """The flows notebook executed with quick settings in one OpenMP thread (as pset2's: small layers wait on both
    threads of a shared CPU); returns (notebook, printed text, seconds)."""
    work = tmp_path_factory.mktemp("notebook_flows")
    notebook, seconds = execute(FLOWS_NOTEBOOK, FLOWS_QUICK_PARAMETERS, work, one_thread=True)
    return notebook, printed(notebook), seconds


def flows_number(text: str, pattern: str) -> float:
    match = re.search(pattern, text, flags=re.M)
    assert match, pattern
    return float(match.group(1))


def test_flows_notebook_is_stored_without_outputs_and_defaults_to_the_full_walk():
    assert_stored_without_outputs(FLOWS_NOTEBOOK)
    notebook = nbformat.read(FLOWS_NOTEBOOK, as_version=4)
    index = parameters_cell_index(notebook)
    assert index <= 2
    source = notebook.cells[index].source
    for name in ("QUICK", "GLOW_STEPS", "LIMIT", "DEVICE", "SEED", "PROGRESS"):
        assert re.search(rf"^{name} = ", source, flags=re.M), name
    assert re.search(r"^QUICK = False", source, flags=re.M)


def test_flows_every_section_states_its_math_and_the_notebook_ends_with_exercises():
    notebook = nbformat.read(FLOWS_NOTEBOOK, as_version=4)
    section, math_per_section = None, {header: 0 for header in FLOWS_SECTIONS}
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            section = next((header for header in FLOWS_SECTIONS if cell.source.startswith(header)), section)
            if section is not None:
                math_per_section[section] += cell.source.count("$$") // 2
    assert all(count >= 1 for count in math_per_section.values()), math_per_section
    last = notebook.cells[-1]
    assert last.cell_type == "markdown" and last.source.startswith("## Exercises")
    assert len(re.findall(r"^\d+\. \*\*", last.source, flags=re.M)) >= 6


def test_flows_notebook_runs_in_this_interpreter_and_shows_a_figure_per_section(flows_executed):
    notebook, text, seconds = flows_executed
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    assert f"(prefix {sys.prefix})" in text and f"from {Path(dgmlab.__file__).parent}" in text
    assert "1 CPU threads" in text  # the kernel got OMP_NUM_THREADS=1
    assert not [output for output in outputs if output.output_type == "stream" and output.name == "stderr"], \
        "the notebook printed warnings"
    section, figures = None, {header: 0 for header in FLOWS_SECTIONS}
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            section = next((header for header in FLOWS_SECTIONS if cell.source.startswith(header)), section)
        elif section is not None:
            figures[section] += sum("image/png" in output.get("data", {}) for output in cell.outputs)
    assert all(count >= 1 for count in figures.values()), figures
    assert figures["## 3."] >= 2 and figures["## 6."] >= 2 and figures["## 8."] >= 3, figures
    print(f"flows notebook executed in {seconds:.0f} s")


def test_flows_change_of_variables_and_log_determinants_check_out(flows_executed):
    text = flows_executed[1]
    assert flows_number(text, r"\(a\) max \|log p_Y by the flow - log N\(y; mu, sigma\^2\)\| = (\S+)") < 1e-10
    assert flows_number(text, r"\(b\) max \|p_X by the flow - the formula\| = (\S+)") < 1e-10
    assert abs(flows_number(text, rf"integral of p_X over \(0, 1\): ({NUMBER})") - 1) < 1e-3
    match = re.search(rf"largest \|z-score\| ({NUMBER}) over 50 bins, chi-square ({NUMBER})", text)
    assert match and float(match.group(1)) < 5 and float(match.group(2)) < 100
    match = re.search(rf"alpha = 0\.05: integral over \[0, 1\] ({NUMBER}) = base mass of the box ({NUMBER})", text)
    assert match and match.group(1) == match.group(2) and float(match.group(1)) < 0.99
    import dgmlab.models.flows as flows

    match = re.search(r"(\d+) registered transforms: largest log-det error (\S+) nats \(float64\)", text)
    assert match and int(match.group(1)) == len(flows.TRANSFORM_EXAMPLES) and float(match.group(2)) < 1e-8
    for name in flows.TRANSFORM_EXAMPLES:
        assert re.search(rf"^{re.escape(name)} +\d+ ", text, flags=re.M), name


def test_flows_planar_condition_fig1_and_the_potential_fit(flows_executed):
    text = flows_executed[1]
    assert re.search(r"1000 freshly initialised Planar\(2\): min w\.u_hat = \S+; w\.u_hat > -1 for all: True", text)
    assert re.search(r"raw w\.u < -1 in [1-9]\d*; min w\.u_hat = .*; w\.u_hat > -1 for all: True", text)
    assert re.search(r"w\.u = -3\.0: the projected map is increasing: False; with u_hat .*: True, log\|det\| finite "
                     r"on 10,000 points: True", text)
    integrals = re.findall(rf"^(planar|radial) K = +(\d+): integral of q_K over \[-4, 4\]\^2 = ({NUMBER})", text,
                           flags=re.M)
    assert [(kind, int(k)) for kind, k, _ in integrals] == [(kind, k) for kind in ("planar", "radial")
                                                            for k in (1, 2, 10)]
    assert all(0.8 < float(value) < 1.25 for _, _, value in integrals)
    match = re.search(rf"F = E_q\[log q \+ U1\] = ({NUMBER}) nats \(first step ({NUMBER})\); -log Z = ({NUMBER}) "
                      rf"\(grid\); KL\(q \|\| p\) = F \+ log Z = ({NUMBER}) nats", text)
    assert match
    final, first, minus_log_z, kl = map(float, match.groups())
    assert final < first and kl == pytest.approx(final - minus_log_z, abs=2e-3) and kl > -0.05
    assert abs(flows_number(text, rf"integral of q over \[-4, 4\]\^2 = ({NUMBER})") - 1) < 0.05


def test_flows_couplings_invert_exactly_with_triangular_jacobians(flows_executed):
    text = flows_executed[1]
    lines = re.findall(r"^(AdditiveCoupling|AffineCoupling) +(checkerboard|channel) *: "
                       r"\|f\^-1\(f\(x\)\) - x\| = (\S+); Jacobian blocks: \|upper right\| = (\S+), "
                       r"\|top left - I\| = (\S+), \|off-diagonal of bottom right\| = (\S+); "
                       r"log det (\S+) \(\|- slogdet\| = (\S+)\)", text, flags=re.M)
    assert len(lines) == 4
    for kind, _, inverse_error, upper, identity, off_diagonal, log_det, det_error in lines:
        assert float(inverse_error) < 1e-12 and float(det_error) < 1e-10
        assert float(upper) == 0 and float(identity) == 0 and float(off_diagonal) == 0
        assert (float(log_det) == 0) == (kind == "AdditiveCoupling")  # additive coupling preserves volume


def test_flows_glow_bits_per_dim_agree_two_ways_and_add_up(flows_executed):
    text = flows_executed[1]
    assert re.search(r"ActNorm output per-channel mean \[(-?0\.0, ){3}-?0\.0\], std \[(1\.0, ){3}1\.0\]", text)
    match = re.search(rf"sum log\|s\| = ({NUMBER}) = slogdet\(W\) ({NUMBER})", text)
    assert match and match.group(1) == match.group(2)
    by_hand = flows_number(text, rf"by hand, -log_prob / \(D ln 2\) \+ 8: +({NUMBER})")
    by_objective = flows_number(text, rf"exact_nll\(model, x, levels=256\): +({NUMBER})")
    assert by_hand == pytest.approx(by_objective, abs=2e-4) and 1.0 < by_hand < 9.0
    terms = [flows_number(text, rf"^  {label}.* +({NUMBER})$") for label in
             ("base density", "logit Jacobian", "flow Jacobian", "discretisation", "total")]
    assert terms[3] == 8.0 and sum(terms[:4]) == pytest.approx(terms[4], abs=2e-4)
    assert terms[4] == pytest.approx(by_objective, abs=1e-4) and terms[1] < 0  # the logit stretches [0, 1]
    match = re.search(rf"test bits/dim: ({NUMBER}) after initialisation -> ({NUMBER}) after training", text)
    assert match and float(match.group(2)) < float(match.group(1))
    temperatures = re.findall(r"^T = (\S+): 8 samples, pixel values in \[(\S+), (\S+)\], mean \S+, spread between "
                              r"samples (\S+)$", text, flags=re.M)
    assert [row[0] for row in temperatures] == ["0.0", "0.5", "0.7", "1.0"]
    assert float(temperatures[0][3]) == 0 and all(float(row[3]) > 0 for row in temperatures[1:])  # T = 0: one image
    assert all(0 <= float(low) <= float(high) <= 1 for _, low, high, _ in temperatures)


def test_flows_maf_and_iaf_each_have_one_single_pass_direction(flows_executed):
    text = flows_executed[1]
    rows = re.findall(r"^ *(\d+) (MAF|IAF) +(\d+) passes +\S+ ms +(\d+) passes +\S+ ms +"
                      r"\|inverse\(forward\(x\)\) - x\| = (\S+)$", text, flags=re.M)
    assert {(int(d), kind) for d, kind, *_ in rows} == {(d, kind) for d in (4, 16) for kind in ("MAF", "IAF")}
    for dims, kind, forward, inverse, error in rows:
        single, sequential = (forward, inverse) if kind == "MAF" else (inverse, forward)
        assert int(single) == 1 and int(sequential) == int(dims) and float(error) < 1e-5
    assert re.search(r"MAF Jacobian du/dx, D = 8: \|entries above the diagonal\| = 0e\+00", text)


def test_flows_residual_estimators_meet_their_exact_values(flows_executed):
    text = flows_executed[1]
    inverse = re.findall(r"^c = (\S+): mean error after 5, 10, 20 steps .*; within the bound at every step: (\w+) "
                         r"\((\d+) checks\)", text, flags=re.M)
    assert [c for c, _, _ in inverse] == ["0.5", "0.9", "0.97"] and all(ok == "True" for _, ok, _ in inverse)
    assert re.search(r"^c = 0\.9, d = 16: max \|\|J\|\|_2 = 0\.\d+; .*within the bound for every n: True", text,
                     flags=re.M)
    for probe in ("gaussian", "rademacher"):
        match = re.search(rf"^{probe} +probe, n = 10: variance ({NUMBER}), predicted ({NUMBER}); mean ({NUMBER}) ± "
                          rf"({NUMBER}), exact series ({NUMBER})", text, flags=re.M)
        assert match, probe
        variance, predicted, mean, error, exact = map(float, match.groups())
        assert abs(variance - predicted) < 0.3 * predicted  # 400 draws in the quick run: ~7% sampling error
        assert abs(mean - exact) < 4 * error  # Hutchinson is unbiased for the truncated series
    match = re.search(rf"roulette \(m = 2, p = 0\.5\), \d+ draws: batch-mean ln det ({NUMBER}) ± ({NUMBER}), exact "
                      rf"({NUMBER}): \S+ standard errors; ({NUMBER}) terms on average", text)
    assert match
    mean, error, exact, terms = map(float, match.groups())
    assert abs(mean - exact) < 4 * error and abs(terms - 3) < 0.5


def test_flows_residual_flows_fit_two_moons_with_exact_likelihoods(flows_executed):
    text = flows_executed[1]
    match = re.search(rf"E\[log p\] = ({NUMBER}) nats; of a Gaussian fitted to the points ({NUMBER})", text)
    assert match
    ceiling, gaussian = map(float, match.groups())
    assert ceiling > gaussian
    for name in ("i-ResNet", "Residual Flow"):
        match = re.search(rf"^{name}: [\d,]+ parameters, \d+ Adam steps in \d+ s; held-out log-likelihood ({NUMBER}) ± "
                          rf"({NUMBER}) nats \(exact\), ({NUMBER}) by the training estimator \((.+); mean of \d+ "
                          rf"calls\)$", text,
                          flags=re.M)
        assert match, name
        exact, error, estimate = map(float, match.groups()[:3])
        assert exact < ceiling + 4 * error  # no model beats the data's own density on average
        assert abs(estimate - exact) < 0.2  # the estimator is close to the exact value on 5,000 points
        assert ("Russian roulette" in match.group(4)) == (name == "Residual Flow")
        assert abs(flows_number(text, rf"^{name}: integral of the density over \[-4, 4\]\^2 = ({NUMBER})") - 1) < 0.05

