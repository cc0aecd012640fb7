"""Shared test configuration: the ``single_thread`` fixture, and which tests count as ``slow``.

A test is ``slow`` when it trains or builds for more than about ten seconds on two CPU cores. ``make test``
(and CI) runs every test, slow ones included; ``pytest -m "not slow"`` leaves them out while iterating.
Tests that need one of the fixtures below (each trains models, executes a notebook or builds the
documentation site) are marked here; a slow test without such a fixture carries ``@pytest.mark.slow``.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread for the tests of a module, restored after them: tiny models train fastest on one
    thread, and two threads that wait on each other are many times slower on a shared machine (same numbers
    either way); child processes that train get one thread too."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


SLOW_FIXTURES = {
    "quick_run",  # test_pset1.py: `dgmlab pset1 --quick`
    "golden",  # test_torus_experiment.py: the problem set's 1,000 steps for two decoders
    "executed",  # test_notebook.py, test_notebook_pset2.py: a notebook run top to bottom
    "built_site",  # test_docs.py: the strict Sphinx build
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
