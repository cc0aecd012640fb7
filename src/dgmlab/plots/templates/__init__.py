"""HTML templates of the interactive figures, shipped as package data and read with :mod:`importlib.resources`.

``torus_viewer.html``: a self-contained page (no network, no library) that draws switchable layers of 3-D
points and paths on a canvas, rotated by dragging and zoomed by scrolling. It holds two placeholders:
``__TITLE__`` (HTML-escaped text) and ``__DATA__`` (a JSON list of layers ``{"name", "color", "points",
"path", "visible"}``), filled by :func:`dgmlab.experiments.torus.interactive_html`.
"""

from __future__ import annotations

from importlib import resources

__all__ = ["read_template"]


def read_template(name: str) -> str:
    """The text (UTF-8) of the template file ``name`` of this package, e.g. ``"torus_viewer.html"``.

    Raises:
        FileNotFoundError: there is no such template; the message lists those there are.
    """
    folder = resources.files(__name__)
    template = folder.joinpath(name)
    if "/" in name or "\\" in name or not template.is_file():
        available = sorted(entry.name for entry in folder.iterdir() if entry.name.endswith(".html"))
        raise FileNotFoundError(f"no plot template {name!r}; the templates are {', '.join(available)}")
    return template.read_text(encoding="utf-8")
