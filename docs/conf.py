"""Sphinx configuration of the dgmlab documentation site.

Build it strictly (every warning is an error), offline, from the repository root:

    .venv/bin/sphinx-build -W --keep-going -b html docs site

and serve it with ``.venv/bin/python -m http.server --directory site --bind 127.0.0.1 8000``.
The notes are Markdown (MyST) with ``$...$`` / ``$$...$$`` math; the API reference is generated from the
docstrings by autodoc; the CLI reference from ``dgmlab.cli.build_parser()``. Math is typeset in the browser
by the KaTeX copy in ``_static/katex``, so nothing is fetched from the network.
"""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(DOCS.parent / "src"))  # document the working tree even if dgmlab is not installed

from dgmlab import __version__  # noqa: E402

project = "dgmlab"
author = "the dgmlab authors"
copyright = "the dgmlab authors; notes on MIT 6.S978 (Fall 2024), written in our own words"
version = release = __version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",  # Google-style "Args:" / "Returns:" sections in docstrings
    "dgmlab_sphinx",
]
html_math_renderer = "katex"

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "_ext"]
templates_path: list[str] = []

# MyST: $...$ and $$...$$ math, ::: fences, definition lists, anchors for ## and ### headings
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist", "attrs_inline"]
myst_heading_anchors = 3
myst_dmath_double_inline = True

# autodoc: members in source order, types in the signature, no import of anything but dgmlab and its
# dependencies (torch, numpy, matplotlib)
autodoc_default_options = {"members": True, "member-order": "bysource", "show-inheritance": True}
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
autodoc_type_aliases = {"ArrayLike": "dgmlab.plots.ArrayLike"}  # keep the alias short in signatures
add_module_names = False
python_display_short_literal_types = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False

# HTML: Furo theme, offline assets only
html_theme = "furo"
html_title = f"dgmlab {release}"
html_static_path = ["_static"]
html_css_files = ["katex/katex.min.css", "dgmlab.css"]
html_js_files = ["katex/katex.min.js", "render-math.js"]
html_show_sourcelink = False
html_last_updated_fmt = None
html_theme_options = {
    "navigation_with_keys": True,
    "sidebar_hide_name": False,
}
