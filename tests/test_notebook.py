"""notebooks/pset1.ipynb: runs top to bottom with small settings, shows figures and numbers; stored without outputs.

The notebook is executed with nbclient in a kernel running this interpreter (the ``python3`` kernel spec that
ipykernel installs into the virtual environment; jupyter_client starts its ``python`` with ``sys.executable``),
with its ``parameters`` cell replaced by quick settings and a temporary working directory.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest

import dgmlab

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "pset1.ipynb"
SECTIONS = ("## 0.", "## 1.", "## 2.", "## 3.", "## 4.")
CELL_TIMEOUT = 240  # seconds per cell: generous, because the CPU may be shared
QUICK_PARAMETERS = """\
QUICK = True
EPOCHS_SCALE = 1.0
LIMIT = 2048
OUT = {out!r}
DEVICE = "cpu"
SEED = 0
PROGRESS = False
"""


def _parameters_cell_index(notebook) -> int:
    tagged = [i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, f"expected exactly one cell tagged 'parameters', found {len(tagged)}"
    return tagged[0]


def _text_of(output) -> str:
    if output.output_type == "stream":
        return output.text
    return output.get("data", {}).get("text/plain", "")


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """The notebook executed with quick settings in a fresh folder; returns (notebook, folder, seconds)."""
    work = tmp_path_factory.mktemp("notebook")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    index = _parameters_cell_index(notebook)
    notebook.cells[index].source = QUICK_PARAMETERS.format(out=str(work / "runs"))
    client = nbclient.NotebookClient(notebook, timeout=CELL_TIMEOUT, kernel_name="python3",
                                     resources={"metadata": {"path": str(work)}})
    started = time.perf_counter()
    client.execute()  # raises CellExecutionError, naming the cell, if any cell fails
    seconds = time.perf_counter() - started
    nbformat.write(notebook, work / "executed.ipynb")  # kept for inspection when a test fails
    return notebook, work, seconds


def test_committed_notebook_has_no_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"cell {index} has stored outputs: strip them before committing"
            assert cell.execution_count is None, f"cell {index} has an execution count"
    assert notebook.metadata["kernelspec"]["name"] == "python3"


def test_parameters_cell_is_near_the_top_and_sets_the_knobs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    index = _parameters_cell_index(notebook)
    assert index <= 2
    source = notebook.cells[index].source
    for name in ("QUICK", "EPOCHS_SCALE", "LIMIT", "OUT", "DEVICE", "SEED", "PROGRESS"):
        assert re.search(rf"^{name} = ", source, flags=re.M), name


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
    text = "\n".join(_text_of(output) for output in outputs)
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
    text = "\n".join(_text_of(output) for cell in notebook.cells if cell.cell_type == "code"
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
