"""What the notebook tests share: find the parameters cell, execute a notebook with quick settings, read outputs."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

CELL_TIMEOUT = 240  # seconds per cell: generous, because the CPU may be shared


def parameters_cell_index(notebook: Any) -> int:
    tagged = [i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, f"expected exactly one cell tagged 'parameters', found {len(tagged)}"
    return tagged[0]


def text_of(output: Any) -> str:
    if output.output_type == "stream":
        return output.text
    return output.get("data", {}).get("text/plain", "")


def printed(notebook: Any) -> str:
    """Everything the code cells printed or displayed as text."""
    return "\n".join(text_of(output) for cell in notebook.cells if cell.cell_type == "code"
                     for output in cell.outputs)


def execute(path: Path, parameters: str, work: Path, one_thread: bool = False) -> tuple[Any, float]:
    """Execute the notebook at ``path`` in ``work`` with its parameters cell replaced by ``parameters``, in a
    kernel running this interpreter; returns (the executed notebook, seconds). A failing cell raises
    nbclient's CellExecutionError, naming the cell; the executed notebook is kept in ``work`` for inspection."""
    import nbclient
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    notebook.cells[parameters_cell_index(notebook)].source = parameters
    client = nbclient.NotebookClient(notebook, timeout=CELL_TIMEOUT, kernel_name="python3",
                                     resources={"metadata": {"path": str(work)}})
    started = time.perf_counter()
    # one OpenMP thread: 784 sampling steps of small convolutions wait for both threads at every step on a
    # shared, oversubscribed CPU (16 quick samples once took 223 s instead of 0.5 s)
    if one_thread:
        client.execute(env={**os.environ, "OMP_NUM_THREADS": "1"})
    else:
        client.execute()
    seconds = time.perf_counter() - started
    nbformat.write(notebook, work / "executed.ipynb")
    return notebook, seconds


def assert_stored_without_outputs(path: Path) -> None:
    """A committed notebook is valid, has no outputs or execution counts, and names the python3 kernel."""
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"cell {index} has stored outputs: strip them before committing"
            assert cell.execution_count is None, f"cell {index} has an execution count"
    assert notebook.metadata["kernelspec"]["name"] == "python3"


def assert_parameters_cell(path: Path) -> str:
    """The parameters cell is among the first three and sets every knob; returns its source."""
    import re

    import nbformat

    notebook = nbformat.read(path, as_version=4)
    index = parameters_cell_index(notebook)
    assert index <= 2
    source = notebook.cells[index].source
    for name in ("QUICK", "EPOCHS_SCALE", "LIMIT", "OUT", "DEVICE", "SEED", "PROGRESS"):
        assert re.search(rf"^{name} = ", source, flags=re.M), name
    return source
