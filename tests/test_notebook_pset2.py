"""notebooks/pset2.ipynb: runs top to bottom with quick settings, shows figures and numbers; stored without outputs.

Executed as ``tests/test_notebook.py`` executes pset1's notebook: with nbclient, in a kernel running this
interpreter, with the ``parameters`` cell replaced by quick settings (tiny networks, one epoch on 1,024 images) and
a temporary working directory.
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
    printed,
)

import dgmlab

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "pset2.ipynb"
SECTIONS = ("## 0.", "## 1.", "## 2.", "## 3.", "## 4.")
QUICK_PARAMETERS = """\
QUICK = True
EPOCHS_SCALE = 1.0
LIMIT = 1024
OUT = {out!r}
DEVICE = "cpu"
SEED = 0
PROGRESS = False
"""
NUMBER = r"\d+\.\d+"


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """The notebook executed with quick settings in a fresh folder; returns (notebook, folder, seconds)."""
    work = tmp_path_factory.mktemp("notebook_pset2")
    notebook, seconds = execute(NOTEBOOK, QUICK_PARAMETERS.format(out=str(work / "runs")), work, one_thread=True)
    return notebook, work, seconds


def test_committed_notebook_has_no_outputs():
    assert_stored_without_outputs(NOTEBOOK)


def test_parameters_cell_is_near_the_top_and_sets_the_knobs():
    source = assert_parameters_cell(NOTEBOOK)
    assert re.search(r"^QUICK = False", source, flags=re.M)  # the committed defaults are the problem set's


def test_every_section_is_explained_in_markdown():
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
    assert all(count >= 1 for count in math_per_section.values()), math_per_section  # the math is written out
    for phrase in ("37 minutes per epoch on 2 CPU cores", "model.eval()", r"\lambda = \frac1{2\sigma^2}"):
        assert phrase in markdown, phrase


def test_notebook_runs_in_this_interpreter_without_errors(executed):
    notebook, work, seconds = executed
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    text = printed(notebook)
    assert f"(prefix {sys.prefix})" in text  # the kernel is this virtual environment's python
    assert f"from {Path(dgmlab.__file__).parent}" in text  # and imports this dgmlab
    for key in ("pixelcnn", "pixelcnn_conditional"):
        assert (work / "runs" / key / "metrics.jsonl").is_file(), key
    assert "1 CPU threads" in text  # the kernel got OMP_NUM_THREADS=1
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
    assert figures["## 2."] >= 6, figures  # loss, receptive fields, reconstructions, samples, completions, heat map
    assert sum(figures.values()) >= 11, figures


def test_data_masks_and_parameter_count_areprinted(executed):
    text = printed(executed[0])
    assert "batch shapes [128, 1, 28, 28] and [128]" in text
    assert "pixel values [0.0, 1.0]" in text
    assert re.search(r"max \|NLL - summed BCE\| = \d\.\d\de-?\d+ nats over 16 images", text)
    assert "0.0673 per pixel = 52.76 nats per image" in text
    assert "  1 1 1 1 1 1 1\n" * 3 + "  1 1 1 0 0 0 0\n" + "  0 0 0 0 0 0 0\n" * 3 in text  # the 7 x 7 type A mask
    assert "  1 1 1\n  1 1 0\n  0 0 0" in text  # the 3 x 3 type B mask
    assert "PixelCNN parameters 1,337,345 | problem set about 1.337M" in text
    assert "conditional PixelCNN parameters 1,350,145 (+12,800 for V) | problem set about 12.8k more" in text


def test_nll_is_printed_in_nats_beside_the_reference(executed):
    text = printed(executed[0])
    for reference in ("52.8 nats = 0.0673", "48.8 nats = 0.0623"):
        pattern = (rf"train NLL ({NUMBER}) nats per image = BCE ({NUMBER}) per pixel \(epoch mean, training mode\) "
                   rf"\| reference {re.escape(reference)} per pixel")
        match = re.search(pattern, text)
        assert match, reference
        nats, bce = map(float, match.groups())
        assert bce == pytest.approx(nats / 784, abs=1e-4)
        assert 40 < nats < 784 * 0.7  # one quick epoch: between the reference and a coin flip per pixel
    tests = re.findall(rf"test NLL ({NUMBER}) nats per image = BCE {NUMBER} per pixel, {NUMBER} bits/dim", text)
    assert len(tests) == 2 and all(0 < float(value) < 784 for value in tests)
    summary = re.findall(rf"^(pixelcnn|pixelcnn_conditional) +({NUMBER}) +({NUMBER}) +(52\.8|48\.8) nats", text,
                         flags=re.M)
    assert [row[0] for row in summary] == ["pixelcnn", "pixelcnn_conditional"]


def test_evaluations_and_map_illustration_areprinted(executed):
    text = printed(executed[0])
    assert re.search(r"16 samples: pixel values \[0\.0, 1\.0\].* evaluation mode", text)
    assert re.search(rf"per-pixel NLL map over 256 test images: total {NUMBER} nats per image", text)
    assert re.search(r"PixelCNN \(problem set 2\): reads \d+ of the 406 earlier pixels, none later \(True\); on the "
                     r"row above, columns \+0\.\.\+3", text)
    assert re.search(r"gated PixelCNN \(2016b\): .* none later \(True\); on the row above, columns \+0\.\.\+1[0-3]\b",
                     text)
    assert re.search(rf"mixture over labels {NUMBER} \(at most true \+ ln 10", text)
    assert re.search(r"accuracy \d+\.\d%", text)
    assert "60 samples, labels [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]" in text
    assert "sigma^2 = 1/(2 lambda) = 5.0" in text
    assert re.search(r"test digits get probability 0 \(infinite NLL\)", text)
    assert len(re.findall(r"MAP, lambda .*all finite: True", text)) == 5
    assert re.search(r"best lambda 0\.0?1 \(sigma\^2 = 50?\)", text)  # an interior optimum: the U-shape
