"""notebooks/image_priors.ipynb: reading 1 (EPLL, dead leaves, the deep image prior) and lecture 2's EM, run top to
bottom with quick settings; stored without outputs.

Executed as ``tests/test_notebook_pset2.py`` executes pset2's notebook: with nbclient, in a kernel running this
interpreter and one OpenMP thread, with the ``parameters`` cell replaced by quick settings (4,000 patches, mixtures
with K <= 4, a 64x64 EPLL crop, 200 steps of a two-level deep image prior on a 32x32 crop of the moon) and a
temporary working directory. The numbers checked are the ones the notebook prints; each check is one the quick run
can fail.
"""

from __future__ import annotations

import itertools
import json
import re
import sys
from pathlib import Path

import pytest
from notebook_helpers import (
    assert_parameters_cell,
    assert_stored_without_outputs,
    execute,
    printed,
)

import dgmlab

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("skimage")  # the photographs are read from inside its wheel, and the baselines are its own

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "image_priors.ipynb"
SECTIONS = ("## 0.", "## 1.", "## 2.", "## 3.", "## 4.", "## 5.", "## 6.")
QUICK_PARAMETERS = """\
QUICK = True
EPOCHS_SCALE = 1.0
LIMIT = 0
OUT = {out!r}
DEVICE = "cpu"
SEED = 0
PROGRESS = False
"""
NUMBER = r"-?\d+\.\d+"
FIGURE_FILES = ("photographs", "em_toy", "log_likelihood_vs_K", "eigenvectors_K200", "dead_leaves", "power_spectra",
                "eigenvectors_dead_leaves", "denoised", "dip_psnr_vs_iterations")


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """The notebook executed with quick settings in a fresh folder, one OpenMP thread (small products and
    convolutions wait on both threads of a shared CPU); returns (notebook, printed text, folder, seconds)."""
    work = tmp_path_factory.mktemp("notebook_image_priors")
    notebook, seconds = execute(NOTEBOOK, QUICK_PARAMETERS.format(out=str(work / "out")), work, one_thread=True)
    return notebook, printed(notebook), work, seconds


def number(text: str, pattern: str) -> float:
    match = re.search(pattern, text, flags=re.M)
    assert match, pattern
    return float(match.group(1))


def figures_per_section(notebook) -> dict[str, int]:
    section, figures = None, {header: 0 for header in SECTIONS}
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            section = next((header for header in SECTIONS if cell.source.startswith(header)), section)
            if cell.source.startswith("## ") and not any(cell.source.startswith(h) for h in SECTIONS):
                section = None  # the summary and the exercises
        elif section is not None:
            figures[section] += sum("image/png" in output.get("data", {}) for output in cell.outputs)
    return figures


def test_committed_notebook_has_no_outputs():
    assert_stored_without_outputs(NOTEBOOK)


def test_parameters_cell_is_near_the_top_and_sets_the_knobs():
    source = assert_parameters_cell(NOTEBOOK)
    assert re.search(r"^QUICK = False", source, flags=re.M)  # the committed defaults are the full walk


def test_every_section_states_its_math_and_the_notebook_ends_with_exercises():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    markdown = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "markdown")
    for header in SECTIONS:
        assert re.search(rf"^{re.escape(header)} ", markdown, flags=re.M), header
    section, math_per_section = None, {header: 0 for header in SECTIONS}
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            section = next((header for header in SECTIONS if cell.source.startswith(header)), section)
            if section is not None:
                math_per_section[section] += cell.source.count("$$") // 2
    assert all(count >= 1 for count in math_per_section.values()), math_per_section
    assert math_per_section["## 2."] >= 3 and math_per_section["## 5."] >= 4, math_per_section
    # the papers' equations, with their symbols
    for phrase in (r"\mathrm{KL}\big(q\,\|\,p_\theta(z\mid x)\big)", r"c_{p,\beta}", r"\arg\max_k",
                   r"\Sigma_{k^\ast}\big(\Sigma_{k^\ast} + \beta^{-1}I\big)^{-1}", r"\beta\sum_jP_j^\top P_j",
                   r"p(r)\propto r^{-3}", r"|f|^{-\alpha}", r"\mathrm{EPLL}_p(x) = \sum_i\log p(P_ix)",
                   r"\theta^\ast = \arg\min_\theta E\big(f_\theta(z); x_0\big)"):
        assert phrase in markdown, phrase
    last = notebook.cells[-1]
    assert last.cell_type == "markdown" and last.source.startswith("## Exercises")
    assert len(re.findall(r"^\d+\. \*\*", last.source, flags=re.M)) >= 6


def test_notebook_runs_in_this_interpreter_without_errors(executed):
    notebook, text, _, seconds = executed
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    assert f"(prefix {sys.prefix})" in text  # the kernel is this virtual environment's python
    assert f"from {Path(dgmlab.__file__).parent}" in text  # and imports this dgmlab
    assert "1 CPU threads" in text  # the kernel got OMP_NUM_THREADS=1 (and QUICK sets one thread too)
    assert not [output for output in outputs if output.output_type == "stream" and output.name == "stderr"], \
        "the notebook printed warnings"
    print(f"image priors notebook executed in {seconds:.0f} s")


def test_every_section_shows_a_figure_and_saves_the_main_ones(executed):
    notebook, _, work, _ = executed
    figures = figures_per_section(notebook)
    assert all(count >= 1 for header, count in figures.items() if header != "## 0."), figures
    assert figures["## 1."] >= 3 and figures["## 3."] >= 3 and figures["## 4."] >= 3, figures
    assert figures["## 5."] >= 2 and figures["## 6."] >= 2, figures
    assert sum(figures.values()) >= 14, figures
    for name in FIGURE_FILES:
        path = work / "out" / f"{name}.png"
        assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_photographs_and_patches_are_read_and_described(executed):
    text = executed[1]
    assert "8 training and 3 test photographs, grey levels in [0.0, 1.0], torch.float64" in text
    assert re.search(r"^test : camera 512x512, coins 303x384, moon 512x512$", text, flags=re.M)
    assert "training patches [4000, 64], test patches [2000, 64]" in text
    assert number(text, r"largest \|patch mean\| after removal (\S+)$") < 1e-12
    assert "stride 8: [16, 64] (4 x 4 patch positions)" in text
    median = number(text, rf"patch contrast \(std of the 64 values\): median ({NUMBER})")
    assert 0.0 < median < 0.2
    assert number(text, rf"kurtosis of the mean-removed pixel values ({NUMBER}) \(a Gaussian: 3\)") > 4  # heavy tails


def test_em_closes_the_elbo_gap_and_never_decreases_the_log_likelihood(executed):
    text = executed[1]
    match = re.search(rf"EM on 500 points, K = 3, 20 iterations: mean log-likelihood ({NUMBER}) -> ({NUMBER}) nats",
                      text)
    assert match and float(match.group(2)) > float(match.group(1))
    assert number(text, r"right after each E-step, max \|ELBO\(q_t, theta_t\) - log p_theta_t\(x\)\| = (\S+) nats") \
        < 1e-10
    assert number(text, r"M-step gain ELBO\(q_t, theta_t\+1\) - ELBO\(q_t, theta_t\) >= (\S+);") > -1e-10
    assert number(text, r"bound log p_theta_t\+1 - ELBO\(q_t, theta_t\+1\) >= (\S+)$") > -1e-10
    assert re.search(r"^log-likelihood never decreases: True \(smallest step (\S+) nats", text, flags=re.M)
    assert number(text, r"^log-likelihood never decreases: True \(smallest step (\S+) nats") > -1e-12
    assert number(text, r"em_fit from the same start, 20 iterations: max \|history - the loop above\| = (\S+);") < 1e-9
    match = re.search(rf"uniform q: log p\(x\) - ELBO = ({NUMBER}) nats per point = KL\(q \|\| p\(k \| x\)\) by hand "
                      rf"({NUMBER}) \(max difference (\S+), smallest gap (\S+) >= 0\)", text)
    assert match and match.group(1) == match.group(2) and float(match.group(1)) > 0
    assert float(match.group(3)) < 1e-9 and float(match.group(4)) >= 0
    match = re.search(r"inertia never increases: True; it agrees with EM's most responsible component on "
                      r"(\d+\.\d)% of the points", text)
    assert match and float(match.group(1)) > 85


def test_mixture_likelihood_grows_with_k_and_the_bundled_prior_is_best(executed):
    text = executed[1]
    rows = re.findall(rf"^ +(\d+) +(\d+) +({NUMBER}) +({NUMBER}) +([+-]\d\.\de[+-]\d+) +{NUMBER}$", text, flags=re.M)
    assert [int(row[0]) for row in rows] == [1, 4]
    assert all(1 <= int(row[1]) <= 15 for row in rows)
    assert all(float(row[4]) > -1e-6 for row in rows)  # EM never decreased the log-likelihood
    test_ll = [float(row[3]) for row in rows]
    assert 100 < test_ll[0] < 140  # one Gaussian: 119.91 in the measured table
    assert test_ll[1] > test_ll[0] + 20  # the step from one Gaussian to a mixture is the largest
    bundled = re.search(rf"^ +200 +\(bundled\) +({NUMBER}) +({NUMBER})$", text, flags=re.M)
    assert bundled and test_ll[1] < float(bundled.group(2)) < 260  # 198.69 in the measured table
    assert "EM log-likelihood never decreased in any fit: True" in text
    assert "bundled prior: K = 200, D = 64, torch.float64" in text
    match = re.search(r"the 8 heaviest of the 200 components carry (\d+\.\d)% of the weight", text)
    assert match and 0 < float(match.group(1)) < 100
    assert number(text, r"spans \S+ to \S+: a factor of (\d+) in contrast") > 100  # a scale mixture


def test_dead_leaves_are_scale_invariant_like_photographs(executed):
    text = executed[1]
    assert -3.3 < number(text, rf"the histogram's density falls as r\^({NUMBER}) \(p\(r\) ~ r\^-3\)") < -2.7
    slopes, kurtoses = {}, {}
    for label in ("dead leaves", "camera \\(photograph\\)", "white noise"):
        match = re.search(rf"^{label} +power spectrum slope ([+-]\d+\.\d+) on 0\.01\.\.0\.25 cycles per pixel; "
                          rf"kurtosis of horizontal differences ({NUMBER})$", text, flags=re.M)
        assert match, label
        slopes[label], kurtoses[label] = float(match.group(1)), float(match.group(2))
    assert -3.5 < slopes["dead leaves"] < -1.5 and -3.5 < slopes["camera \\(photograph\\)"] < -1.5
    assert abs(slopes["white noise"]) < 0.3
    assert kurtoses["dead leaves"] > 4 and kurtoses["camera \\(photograph\\)"] > 4 and kurtoses["white noise"] < 4
    match = re.search(rf"mixture trained on photographs ({NUMBER}), on dead leaves ({NUMBER})$", text, flags=re.M)
    assert match and float(match.group(1)) > float(match.group(2))  # the structure carries over, the likelihood not


def test_epll_matches_its_equations_and_denoises(executed):
    text = executed[1]
    assert number(text, r"against epll\(betas=\[1/sigma\^2\]\): max difference (\S+)$") < 1e-10
    noisy = number(text, rf"sigma = 25/255: noisy PSNR ({NUMBER}) dB")
    assert abs(noisy - 20.17) < 0.3
    table = dict(re.findall(rf"^  (noisy|EPLL, bundled K = 200|EPLL, fitted K = 4|total variation \(weight 0\.08\)|"
                            rf"non-local means \(h = 0\.6 sigma\)) +({NUMBER})$", text, flags=re.M))
    assert len(table) == 5, table
    psnrs = {name: float(value) for name, value in table.items()}
    assert psnrs["noisy"] == noisy
    assert psnrs["EPLL, bundled K = 200"] > noisy + 5 and psnrs["EPLL, fitted K = 4"] > noisy + 5
    assert psnrs["EPLL, bundled K = 200"] > psnrs["EPLL, fitted K = 4"]  # the better prior restores better
    assert all(value > noisy + 5 for value in psnrs.values() if value != noisy)
    rounds = re.search(r"PSNR round by round \(beta = sigma\^-2 x 1, 4, 8, 16, 32, 64\): (.+)$", text, flags=re.M)
    assert rounds
    by_round = [float(value) for value in rounds.group(1).split(", ")]
    assert len(by_round) == 6 and all(b > a for a, b in itertools.pairwise(by_round))
    assert by_round[-1] == psnrs["EPLL, bundled K = 200"]
    # the prior adapted to the noisy crop by EM explains its patches better, and still restores
    match = re.search(rf"adapted prior: noisy log-likelihood ({NUMBER}) -> ({NUMBER}) nats per patch", text)
    assert match and float(match.group(2)) > float(match.group(1))
    adapted = number(text, rf"EPLL with the adapted prior: ({NUMBER}) dB")
    assert adapted > noisy + 5


def test_deep_image_prior_peaks_early_then_fits_the_noise(executed):
    text = executed[1]
    assert re.search(r"SkipNet\(8, 1, \[16, 16\], skip_channels=4\): [\d,]+ parameters; 200 Adam steps", text)
    match = re.search(rf"PSNR of the averaged output peaks at ({NUMBER}) dB after (\d+) steps and ends at ({NUMBER}) "
                      rf"dB after 200; noisy ({NUMBER}) dB; EPLL on the same crop ({NUMBER}) dB", text)
    assert match
    peak, peak_step, last, noisy, epll = map(float, match.groups())
    assert peak > noisy + 5 and peak > last + 1 and peak_step < 200  # stopping at the end costs more than 1 dB
    assert epll > noisy + 5
    match = re.search(rf"at the peak, ({NUMBER}) at the end; the noise alone would give sigma\^2 = ({NUMBER})", text)
    assert match and float(match.group(1)) < float(match.group(2))  # by the end it has fitted part of the noise


def test_results_json_holds_the_printed_numbers(executed):
    _, text, work, _ = executed
    results = json.loads((work / "out" / "results.json").read_text())
    assert results["quick"] is True and results["seed"] == 0
    assert results["patch_prior"]["components"] == [1, 4]
    assert f"{results['patch_prior']['bundled_test_log_likelihood']:.2f}" in text
    assert results["epll"]["psnr"]["EPLL, bundled K = 200"] == pytest.approx(
        number(text, rf"^  EPLL, bundled K = 200 +({NUMBER})$"), abs=0.006)
    dip = results["deep_image_prior"]
    assert dip["iterations"] == 200 and dip["crop"] == [32, 32] and dip["peak_psnr"] > dip["last_psnr"]
    assert f"{dip['peak_psnr']:.2f}, {dip['last_psnr']:.2f}" in text  # the summary line
    assert re.search(r"results\.json and \d+ figures in ", text)
