"""The documentation site (docs/): it builds strictly and offline, every Python snippet on it runs, the CLI
reference is the parser's own --help, every module is in the API reference, and a real browser (headless
Chromium) shows the notes with every formula typeset.

The build needs the ``docs`` extra (Sphinx, MyST, Furo; Selenium for the browser test). Where a tool is
missing the tests that need it skip and say why, except under CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import contextlib
import doctest
import functools
import html
import http.server
import importlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SRC = ROOT / "src" / "dgmlab"
IN_CI = os.environ.get("CI", "").strip().lower() == "true"
NOTES = [
    "notes/lecture1-introduction",
    "notes/lecture2-vae",
    "notes/lecture3-autoregressive",
    "notes/reading1-image-priors",
    "notes/reading1.1-vae-paper",
    "notes/reading2.1-flows-and-glow",
    "notes/reading2.2-invertible-resnets",
    "notes/reading3.1-bengio-1999",
]
CLI_COLUMNS = 88  # the width docs/_ext/dgmlab_sphinx.py renders --help at
PYTHON_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
OTHER_PYTHON_FENCE = re.compile(r"^(```|~~~|:::)\s*(\{code-block\}\s*)?(py|python3|pycon|ipython|ipython3)\b", re.M)


def missing(reason: str) -> None:
    """Skip, or fail under CI, where a documentation tool is not installed."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: the documentation tests must run in CI)")
    pytest.skip(reason)


def require_modules(*names: str) -> None:
    absent = [name for name in names if importlib.util.find_spec(name) is None]
    if absent:
        missing(f"documentation tools not installed: {', '.join(absent)} (pip install -e '.[docs]')")


# ----------------------------------------------------------------------------------------------------------
# The strict build
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def built_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the site once per session: ``sphinx-build -W --keep-going`` (every warning is an error)."""
    require_modules("sphinx", "myst_parser", "furo")
    out = tmp_path_factory.mktemp("site") / "html"
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-E", "-q", "-b", "html", str(DOCS), str(out)]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - started
    assert result.returncode == 0, (
        f"strict documentation build failed (exit {result.returncode}, {seconds:.0f} s):\n"
        f"{result.stderr[-6000:]}\n{result.stdout[-2000:]}")
    print(f"\ndocumentation built strictly in {seconds:.1f} s into {out}")
    return out


def test_site_builds_strictly_with_every_page(built_site: Path) -> None:
    for page in ["index", "getting-started", "loss-conventions", "cli", "api/index", *NOTES]:
        assert (built_site / f"{page}.html").is_file(), f"{page}.html was not built"


def test_site_needs_no_network(built_site: Path) -> None:
    """Scripts, style sheets, fonts and images all come from the site itself (no CDN)."""
    remote = re.compile(r"""<(script|link|img|iframe|source)\b[^>]*\b(src|href)\s*=\s*["']?(https?:)?//""", re.I)
    offenders = {}
    for page in built_site.rglob("*.html"):
        found = [m.group(0) for m in remote.finditer(page.read_text(encoding="utf-8"))]
        if found:
            offenders[str(page.relative_to(built_site))] = found[:3]
    assert not offenders, f"pages load remote resources: {offenders}"
    css = (built_site / "_static" / "katex" / "katex.min.css").read_text(encoding="utf-8")
    assert "url(http" not in css and (built_site / "_static" / "katex" / "fonts" / "KaTeX_Main-Regular.woff2").is_file()


# ----------------------------------------------------------------------------------------------------------
# Every Python snippet on the site runs
# ----------------------------------------------------------------------------------------------------------
def markdown_pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.parts)


def python_snippets(page: Path) -> list[tuple[int, str]]:
    text = page.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start()) + 2, m.group(1)) for m in PYTHON_FENCE.finditer(text)]


PAGES_WITH_SNIPPETS = [p for p in markdown_pages() if python_snippets(p)]


def test_snippets_are_fenced_as_python() -> None:
    """Only ```python fences are executed, so no page may spell a Python block another way."""
    odd = {str(p.relative_to(DOCS)): m.group(0) for p in markdown_pages()
           for m in [OTHER_PYTHON_FENCE.search(p.read_text(encoding="utf-8"))] if m}
    assert not odd, f"write Python blocks as ```python so that the tests run them: {odd}"
    assert len(PAGES_WITH_SNIPPETS) >= 8


@pytest.mark.parametrize("page", PAGES_WITH_SNIPPETS, ids=lambda p: str(p.relative_to(DOCS)))
def test_python_snippets_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The snippets of one page run in order in one namespace, as a reader pasting them would run them."""
    import matplotlib
    import torch

    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)  # a snippet that writes files writes them here
    namespace: dict[str, object] = {"__name__": "__docs_snippet__"}
    dtype = torch.get_default_dtype()
    with torch.random.fork_rng(devices=[]):  # snippets seed torch; the tests after them keep their RNG state
        try:
            for line, code in python_snippets(page):
                source = f"{page.relative_to(ROOT)}:{line}"
                try:
                    exec(compile(code, source, "exec"), namespace)  # noqa: S102 - running the docs is the test
                except Exception as error:
                    raise AssertionError(
                        f"the snippet at {source} failed: {type(error).__name__}: {error}") from error
        finally:
            torch.set_default_dtype(dtype)


def documented_modules() -> list[str]:
    sys.path.insert(0, str(DOCS / "_ext"))
    try:
        from dgmlab_sphinx import iter_module_names
    finally:
        sys.path.remove(str(DOCS / "_ext"))
    return list(iter_module_names("dgmlab"))


def test_docstring_examples_run() -> None:
    """Examples (>>>) in the docstrings shown in the API reference run too."""
    finder, failures = doctest.DocTestFinder(exclude_empty=True), []
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for name in documented_modules():
        for test in finder.find(importlib.import_module(name)):
            if test.examples and runner.run(test, out=lambda _: None).failed:
                failures.append(test.name)
    assert not failures, f"docstring examples fail: {failures} (run python -m doctest on them)"


# ----------------------------------------------------------------------------------------------------------
# CLI and API reference
# ----------------------------------------------------------------------------------------------------------
def help_output(*args: str) -> str:
    env = {**os.environ, "COLUMNS": str(CLI_COLUMNS), "NO_COLOR": "1", "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run([sys.executable, "-m", "dgmlab.cli", *args, "--help"], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def page_text(path: Path) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", path.read_text(encoding="utf-8")))


def test_cli_reference_is_the_parsers_help(built_site: Path) -> None:
    from dgmlab.cli import build_parser

    parser = build_parser()
    commands = [action for action in parser._actions if action.__class__.__name__ == "_SubParsersAction"]
    assert commands, "dgmlab.cli.build_parser() has no subcommands"
    text = page_text(built_site / "cli.html")
    for command in ["", *commands[0].choices]:
        expected = help_output(*([command] if command else []))
        assert expected.strip() in text, f"the CLI reference does not show `dgmlab {command} --help` as printed"


def test_every_module_is_in_the_api_reference() -> None:
    modules = set()
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if not any(part.startswith("_") for part in parts) and "__pycache__" not in parts:
            modules.add(".".join(parts))
    directive = re.compile(r"dgmlab-automodules::\s*([\w.]+)(\s*\n\s*:no-submodules:)?")
    covered: set[str] = set()
    for page in [*DOCS.joinpath("api").glob("*.rst"), *DOCS.joinpath("api").glob("*.md")]:
        for match in directive.finditer(page.read_text(encoding="utf-8")):
            name, flat = match.group(1), bool(match.group(2))
            covered |= {m for m in modules if m == name or (not flat and m.startswith(name + "."))}
    assert modules - covered == set(), (
        f"modules missing from the API reference: {sorted(modules - covered)}; add "
        f"'.. dgmlab-automodules:: NAME' to a page in docs/api/")


def test_each_note_ties_its_ideas_to_dgmlab() -> None:
    for note in NOTES:
        text = (DOCS / f"{note}.md").read_text(encoding="utf-8")
        assert "\n## In dgmlab\n" in text, f"{note} has no 'In dgmlab' section"
        assert "$$" in text, f"{note} has no displayed derivation"


# ----------------------------------------------------------------------------------------------------------
# A real browser
# ----------------------------------------------------------------------------------------------------------
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,1600"]
# what a page's visible prose must not contain once KaTeX has run (code blocks and KaTeX's hidden MathML excluded)
RAW_TEX = re.compile(r"\$\$|\\begin\{|\\frac|\\mathbb|\\mathcal|\\sum_|\\log\b|\\\[|\\\(")
VISIBLE_PROSE_JS = """
const clone = document.querySelector('article').cloneNode(true);
clone.querySelectorAll('pre, code, script, style, .katex-mathml, annotation').forEach(e => e.remove());
return clone.textContent;
"""
MATH_STATE_JS = """
return {
  state: document.documentElement.getAttribute('data-math'),
  formulas: document.querySelectorAll('.math').length,
  rendered: document.querySelectorAll('.katex').length,
  errors: Array.from(document.querySelectorAll('.katex-error')).map(e => e.title || e.textContent).slice(0, 5),
  untypeset: Array.from(document.querySelectorAll('span.math, div.math'))
      .filter(e => e.querySelector('.katex') === null).length,
  brokenImages: Array.from(document.images).filter(i => i.complete && i.naturalWidth === 0).map(i => i.src),
};
"""


@contextlib.contextmanager
def serve(directory: Path) -> Iterator[str]:
    """Serve ``directory`` on 127.0.0.1 at an ephemeral port, in a thread."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    chromium = next((found for name in ("chromium", "chromium-browser") if (found := shutil.which(name))), None)
    driver_path = shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        missing("headless Chromium is not installed (Debian: apt-get install -y chromium chromium-driver)")
    require_modules("selenium")
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager look for a driver online
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def open_and_check(driver: object, url: str) -> dict:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, 30).until(
        lambda d: d.execute_script("return document.documentElement.getAttribute('data-math')") is not None)
    state = driver.execute_script(MATH_STATE_JS)
    assert state["state"] == "rendered", f"{url}: KaTeX did not run (data-math={state['state']!r})"
    assert not state["errors"], f"{url}: formulas KaTeX could not parse: {state['errors']}"
    assert state["untypeset"] == 0, f"{url}: {state['untypeset']} formulas were left untypeset"
    assert not state["brokenImages"], f"{url}: images that did not load: {state['brokenImages']}"
    leftover = RAW_TEX.findall(driver.execute_script(VISIBLE_PROSE_JS))
    assert not leftover, f"{url}: raw TeX left in the visible text: {sorted(set(leftover))}"
    return state


def test_browser_shows_a_note_with_its_math_typeset(built_site: Path, browser: object, tmp_path: Path) -> None:
    """Headless Chromium opens the VAE note, every formula is typeset by KaTeX, no raw $$ is left, and a
    screenshot of the first derivation is saved."""
    from selenium.webdriver.common.by import By

    with serve(built_site) as base:
        state = open_and_check(browser, f"{base}/notes/lecture2-vae.html")
        assert state["formulas"] >= 50 and state["rendered"] >= state["formulas"]
        text = browser.execute_script("return document.body.innerText")
        assert "$$" not in text and "Lecture 2" in text
        # the first derivation of the ELBO: the display whose TeX source has an underbrace
        derivation = next(e for e in browser.find_elements(By.CSS_SELECTOR, "div.math")
                          if "underbrace" in e.get_attribute("textContent"))
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", derivation)
        width, height = browser.execute_script(
            "const r = arguments[0].querySelector('.katex-display').getBoundingClientRect();"
            "return [r.width, r.height];", derivation)
        assert width > 100 and height > 20, "the displayed formula has no size: fonts or CSS did not load"
        page_shot, formula_shot = tmp_path / "lecture2-vae.png", tmp_path / "lecture2-vae-formula.png"
        assert browser.save_screenshot(str(page_shot)) and derivation.screenshot(str(formula_shot))
        assert page_shot.stat().st_size > 10_000
        print(f"\nscreenshots: {page_shot} and {formula_shot}")


def test_browser_typesets_every_page_with_math(built_site: Path, browser: object) -> None:
    pages = sorted(p for p in built_site.rglob("*.html")
                   if 'class="math' in p.read_text(encoding="utf-8") and "_static" not in p.parts)
    assert len(pages) >= 10
    with serve(built_site) as base:
        for page in pages:
            open_and_check(browser, f"{base}/{page.relative_to(built_site).as_posix()}")
