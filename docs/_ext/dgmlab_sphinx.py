"""Sphinx glue for the dgmlab documentation site. Four small pieces, each self-contained:

1. ``katex`` math renderer. Sphinx writes every formula (MyST ``$...$`` / ``$$...$$``, reST ``:math:``
   and ``.. math::``, docstrings included) into ``<span class="math">`` / ``<div class="math">`` holding
   the bare TeX. ``_static/render-math.js`` typesets exactly those elements with the KaTeX copy that ships
   in ``_static/katex`` (MIT licence, version in ``_static/katex/VERSION``), so the site needs no network.
2. ``dgmlab-automodules`` directive: API reference of a module, or of a package and all of its submodules
   found at build time, through ``sphinx.ext.autodoc``. New modules appear without editing the docs.
3. ``dgmlab-cli`` directive: the CLI reference, generated from ``dgmlab.cli.build_parser()``: the
   ``--help`` text of the program and of every subcommand, at a fixed width of 88 columns.
4. Strict cross-references: a ``py`` reference written in a note or guide (any page outside ``api/``)
   that does not resolve is a warning, so ``sphinx-build -W`` fails when code named by a note is renamed.
   It also reads ``$...$`` in dgmlab docstrings as math and ``|x|`` as text (see dgmlab_docstring_math).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pkgutil
import re
from collections.abc import Iterator
from typing import Any

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.math import get_node_equation_number
from sphinx.util.nodes import nested_parse_with_titles

logger = logging.getLogger(__name__)

CLI_COLUMNS = 88  # width of the generated --help text; tests render --help at the same width


# --------------------------------------------------------------------------------------------------------
# 1. KaTeX math renderer
# --------------------------------------------------------------------------------------------------------
def _display_tex(node: nodes.math_block) -> str:
    """The TeX of a display block; several blank-line-separated equations are stacked, and a bare ``\\\\``
    line break (no environment) is wrapped in ``aligned``, as Sphinx's MathJax renderer does."""
    parts = [part.strip() for part in node.astext().split("\n\n") if part.strip()]
    wrapped = []
    for part in parts:
        if "\\\\" in part and "\\begin" not in part:
            part = "\\begin{aligned}" + part + "\\end{aligned}"
        wrapped.append(part)
    if len(wrapped) > 1:
        return "\\begin{gathered}" + " \\\\ ".join(wrapped) + "\\end{gathered}"
    return wrapped[0] if wrapped else ""


def html_visit_math(self: Any, node: nodes.math) -> None:
    self.body.append(self.starttag(node, "span", "", CLASS="math notranslate nohighlight"))
    self.body.append(self.encode(node.astext()) + "</span>")
    raise nodes.SkipNode


def html_visit_displaymath(self: Any, node: nodes.math_block) -> None:
    self.body.append(self.starttag(node, "div", CLASS="math notranslate nohighlight"))
    if node.get("number"):
        number = get_node_equation_number(self, node)
        self.body.append(f'<span class="eqno">({number})')
        self.add_permalink_ref(node, "Link to this equation")
        self.body.append("</span>")
    self.body.append('<span class="math-tex">' + self.encode(_display_tex(node)) + "</span>")
    self.body.append("</div>\n")
    raise nodes.SkipNode


# --------------------------------------------------------------------------------------------------------
# 2. API reference: one module, or a package with every submodule
# --------------------------------------------------------------------------------------------------------
def iter_module_names(name: str) -> Iterator[str]:
    """``name`` and, if it is a package, every public submodule, depth first in sorted order."""
    yield name
    module = importlib.import_module(name)
    if hasattr(module, "__path__"):
        children = sorted(info.name for info in pkgutil.iter_modules(module.__path__) if not info.name.startswith("_"))
        for child in children:
            yield from iter_module_names(f"{name}.{child}")


class AutomodulesDirective(SphinxDirective):
    """``.. dgmlab-automodules:: dgmlab.data``: a section per module (the package, then each submodule,
    recursively), each holding ``automodule`` with the members *defined* in that module (``__all__`` is
    ignored, so a name re-exported by a package is documented once, where it is defined).
    ``:no-submodules:`` stops the recursion.
    The sections nest under the page's own title."""

    required_arguments = 1
    option_spec = {"no-submodules": directives.flag}

    def run(self) -> list[nodes.Node]:
        name = self.arguments[0]
        try:
            names = [name] if "no-submodules" in self.options else list(iter_module_names(name))
            files = [importlib.import_module(module_name).__file__ or "" for module_name in names]
        except Exception as error:  # an import error in the library is a build error of its reference
            logger.warning("dgmlab-automodules: cannot import %s: %s: %s", name, type(error).__name__, error,
                           location=self.get_location())
            return []
        lines: list[str] = []
        for module_name in names:
            title = f"``{module_name}``"
            lines += [title, "-" * len(title), "", f".. automodule:: {module_name}", "   :members:",
                      "   :ignore-module-all:", ""]
        container = nodes.section()
        container.document = self.state.document
        nested_parse_with_titles(self.state, StringList(lines, source=self.get_source_info()[0]), container)
        for file in files:
            self.env.note_dependency(file)
        return container.children


# --------------------------------------------------------------------------------------------------------
# 3. CLI reference from dgmlab.cli.build_parser()
# --------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _fixed_columns(columns: int) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in ("COLUMNS", "NO_COLOR")}
    os.environ["COLUMNS"] = str(columns)
    os.environ["NO_COLOR"] = "1"
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def cli_help_texts(columns: int = CLI_COLUMNS) -> list[tuple[str, str, str]]:
    """``(command line, one-line help, --help text)`` for ``dgmlab`` and each subcommand, in order."""
    import argparse

    from dgmlab.cli import build_parser

    with _fixed_columns(columns):
        parser = build_parser()
        texts = [(parser.prog, parser.description or "", parser.format_help())]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
                for command, subparser in action.choices.items():
                    texts.append((subparser.prog, helps.get(command, ""), subparser.format_help()))
    return texts


class CliDirective(SphinxDirective):
    """``.. dgmlab-cli::``: a section per command with its ``--help`` output, generated at build time."""

    def run(self) -> list[nodes.Node]:
        try:
            texts = cli_help_texts()
        except Exception as error:
            logger.warning("dgmlab-cli: cannot build the parser of dgmlab.cli: %s: %s", type(error).__name__,
                           error, location=self.get_location())
            return []
        self.env.note_dependency(importlib.import_module("dgmlab.cli").__file__ or "")
        sections = []
        for prog, summary, help_text in texts:
            section_id = nodes.make_id(prog)
            section = nodes.section(ids=[section_id], names=[nodes.fully_normalize_name(prog)])
            section += nodes.title("", "", nodes.literal(prog, prog))
            if summary:
                sentence = summary[0].upper() + summary[1:] + ("" if summary.endswith(".") else ".")
                section += nodes.paragraph(sentence, sentence)
            block = nodes.literal_block(help_text, help_text, classes=["cli-help"])
            block["language"] = "text"
            section += block
            self.state.document.note_implicit_target(section, section)
            sections.append(section)
        return sections


# --------------------------------------------------------------------------------------------------------
# 4. Strict references from the notes, and $...$ in docstrings
# --------------------------------------------------------------------------------------------------------
def warn_unresolved_note_reference(app: Sphinx, env: Any, node: Any, contnode: Any) -> None:
    if node.get("refdomain") != "py" or str(node.get("refdoc", "")).startswith("api/"):
        return None
    logger.warning("unresolved reference to %r: the code a note names must exist (is it documented in api/?)",
                   node.get("reftarget"), location=node)
    return None


_DOLLAR_MATH = re.compile(r"(?<![\\$\w`])\$(?=\S)([^$`]{1,400}?)(?<=\S)\$(?![\w$])")
# spans left alone: ``literals``, :role:`text`, `interpreted text`
_PROTECTED = re.compile(r"(``.*?``|:[\w:.-]+:`[^`]*`|`[^`]*`_{0,2})", re.S)
# |x| written for an absolute value or a norm (reST would read it as a substitution reference)
_BARS = re.compile(r"(?<![\\|\w])\|(?=[^\s|])([^|\n]{1,80}?)(?<=[^\s|])\|(?![\w|])")


def _prose_only(text: str, change: Any) -> str:
    return "".join(piece if _PROTECTED.fullmatch(piece) else change(piece) for piece in _PROTECTED.split(text))


def dgmlab_docstring_math(app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    """Docstrings of dgmlab use three spellings of math: ``:math:`...``` (reST), ``$...$`` (Markdown habit)
    and ``|x|`` for absolute values. The last two become a ``:math:`` role and escaped bars, in prose only."""
    if not name.startswith("dgmlab"):
        return
    text = "\n".join(lines)
    if "$" in text:
        text = _prose_only(text, lambda piece: _DOLLAR_MATH.sub(
            lambda m: ":math:`" + m.group(1).replace("\n", " ") + "`", piece))
    if "|" in text:
        text = _prose_only(text, lambda piece: _BARS.sub(lambda m: "\\|" + m.group(1) + "\\|", piece))
    lines[:] = text.split("\n")


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_html_math_renderer("katex", (html_visit_math, None), (html_visit_displaymath, None))
    app.add_directive("dgmlab-automodules", AutomodulesDirective)
    app.add_directive("dgmlab-cli", CliDirective)
    app.connect("missing-reference", warn_unresolved_note_reference)
    app.connect("autodoc-process-docstring", dgmlab_docstring_math)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
