"""``make lab``: the steps it runs (read with ``make -n``, nothing is installed) and the ``lab`` extra's pins.

``make lab`` installs the ``lab`` extra of pyproject.toml into ``.venv`` with the pins of constraints.txt,
registers the project's interpreter as the Jupyter kernel "dgmlab (.venv)" and opens ``jupyter lab
notebooks/`` with ``LAB_ARGS`` passed through.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def dry_run(*arguments: str) -> list[str]:
    """The commands ``make -n -B lab`` would run (``-B``: as on a fresh checkout, whatever is already set up)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    # run under `make test`, a child make would inherit MAKEFLAGS/MAKELEVEL and print "Entering directory" lines
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    result = subprocess.run(["make", "--no-print-directory", "-n", "-B", "lab", *arguments], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [line.strip() for line in result.stdout.splitlines() if line.strip()]


def index_of(lines: list[str], pattern: str) -> int:
    matches = [i for i, line in enumerate(lines) if re.search(pattern, line)]
    assert matches, f"no step matches {pattern!r} in:\n" + "\n".join(lines)
    return matches[0]


def pins() -> dict[str, str]:
    """constraints.txt as {canonical name: version}; a name pinned twice is a conflict."""
    pinned: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, _, version = line.partition("==")
        assert version, f"constraints.txt pins exact versions, got {line!r}"
        key = canonicalize_name(name)
        assert key not in pinned, f"{name} is pinned twice in constraints.txt"
        pinned[key] = version.strip()
    return pinned


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_make_lab_installs_the_extra_registers_the_kernel_then_opens_the_notebooks():
    lines = dry_run()
    setup = index_of(lines, r"pip install .*-c constraints\.txt -e '\.\[dev,docs,bench,images\]'")
    install = index_of(lines, r"\.venv/bin/python -m pip install .*-c constraints\.txt -e '\.\[lab\]'")
    kernel = index_of(lines, r'\.venv/bin/python -m ipykernel install --sys-prefix --name dgmlab '
                             r'--display-name "dgmlab \(\.venv\)"')
    lab = index_of(lines, r"^\.venv/bin/jupyter lab\s+notebooks/$")
    assert setup < install < kernel < lab, "\n".join(lines)


def test_make_lab_passes_lab_args_to_jupyter():
    lines = dry_run("LAB_ARGS=--no-browser --port 8889")
    assert lines[-1] == ".venv/bin/jupyter lab --no-browser --port 8889 notebooks/"


def test_the_lab_extra_is_pinned_and_every_pin_satisfies_its_range():
    pinned = pins()
    lab = [Requirement(text) for text in project()["optional-dependencies"]["lab"]]
    assert any(canonicalize_name(r.name) == "jupyterlab" for r in lab)
    for requirement in lab:
        assert canonicalize_name(requirement.name) in pinned, f"{requirement.name} (lab extra) is not pinned"
    everything = [Requirement(text) for text in project()["dependencies"]]
    everything += [Requirement(text) for extra in project()["optional-dependencies"].values() for text in extra]
    for requirement in everything:
        version = pinned.get(canonicalize_name(requirement.name))
        if version is not None:
            assert requirement.specifier.contains(version, prereleases=True), (
                f"constraints.txt pins {requirement.name}=={version}, outside pyproject's {requirement}")


def test_readme_documents_make_lab():
    text = (ROOT / "README.md").read_text()
    assert "make lab" in text and "LAB_ARGS" in text
