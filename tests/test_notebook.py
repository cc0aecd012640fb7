"""notebooks/pset1.ipynb: runs top to bottom with small settings, shows figures and numbers; stored without outputs.

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
