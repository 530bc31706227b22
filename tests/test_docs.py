"""The docs site builds in strict mode, its API reference names every public symbol, and the docstring examples run.

The site (mkdocs.yml, docs/) is built with ``mkdocs build --strict`` into a temporary folder: a broken
link, a missing page or a docstring mkdocstrings cannot render fails the build. The API reference must
hold an anchor for every name in the ``__all__`` of jaxconv, jaxconv.nn, jaxconv.models, jaxconv.training
and jaxconv.kernels. Every ``>>>`` example in the library's docstrings runs (doctest) and must print what
it shows.
"""

from __future__ import annotations

import doctest
import importlib
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import jaxconv

ROOT = Path(__file__).resolve().parent.parent
API_MODULES = ("jaxconv", "jaxconv.nn", "jaxconv.models", "jaxconv.training", "jaxconv.kernels")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
  """The built site (``mkdocs build --strict``); skipped where MkDocs is not installed (the dev extra has it)."""
  pytest.importorskip("mkdocs")
  pytest.importorskip("mkdocstrings_handlers.python")
  out = tmp_path_factory.mktemp("site")
  done = subprocess.run(
    [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
    env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
  )
  assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
  return out


def test_every_nav_page_is_built(site):
  """Each page of the nav becomes an HTML page (so a renamed source cannot drop out of the site)."""
  for page in sorted((ROOT / "docs").glob("*.md")):
    built = site / ("index.html" if page.stem == "index" else f"{page.stem}/index.html")
    assert built.is_file(), f"{page.name} was not built"


@pytest.mark.parametrize("module", API_MODULES)
def test_api_reference_names_every_public_symbol(site, module):
  """The API reference page has an anchor ``module.name`` for every name in ``module.__all__``."""
  html = (site / "reference" / "index.html").read_text()
  anchors = set(re.findall(r'id="([\w.]+)"', html))
  names = importlib.import_module(module).__all__
  missing = [name for name in names if f"{module}.{name}" not in anchors]
  assert not missing, f"the API reference lacks {module}: {missing}"


def _library_modules() -> list[str]:
  """Every module of the jaxconv package (the compiled extension aside)."""
  return [
    m.name for m in pkgutil.walk_packages(jaxconv.__path__, "jaxconv.") if not m.name.startswith("jaxconv._onednn")
  ]


# Modules whose examples compile the most run with the slow set (the ResNet's: 10 s on a 2-core AVX2 EPYC).
SLOW_MODULES = {"jaxconv.models.resnet"}


@pytest.mark.parametrize(
  "name", [pytest.param(m, marks=pytest.mark.slow) if m in SLOW_MODULES else m for m in _library_modules()]
)
def test_docstring_examples_run(name):
  """Each ``>>>`` example in the module's docstrings gives the output it shows."""
  module = importlib.import_module(name)
  finder = doctest.DocTestFinder(exclude_empty=True)
  runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  for test in finder.find(module, name):  # each with a copy of the module's globals
    runner.run(test)
  result = runner.summarize(verbose=False)
  assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples of {name} failed (see stdout)"


def test_the_public_functions_have_examples():
  """The functional API's docstrings carry runnable examples (so the doctest above checks something)."""
  finder = doctest.DocTestFinder()
  without = [name for name in jaxconv.__all__ if not finder.find(getattr(jaxconv, name))[0].examples]
  assert not without, f"no >>> example in the docstring of {without}"


def test_mkdocs_is_on_the_ci_path():
  """CI builds the site in strict mode (the docs cannot rot unnoticed)."""
  assert "mkdocs build --strict" in (ROOT / ".ci" / "run").read_text()


_DIARY = re.compile(
  r"\bsessions?\b|\bthis (?:VM|round)\b|\b(?:earlier|later|previous) (?:runs?|sessions?|rounds?|VMs?)\b", re.IGNORECASE
)


def test_pages_read_as_results_not_a_diary():
  """No page speaks of sessions, rounds or "this VM": results state their machine, date and command instead."""
  for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
    for number, line in enumerate(page.read_text().splitlines(), 1):
      assert not _DIARY.search(line), f"{page.name} line {number}: {line.strip()}"


def test_benchmarks_page_is_rendered_from_the_json():
  """docs/benchmarks.md is what experiments/bench/render_results.py writes from docs/bench/ (commit lines aside)."""
  sys.path.insert(0, str(ROOT / "experiments" / "bench"))
  try:
    import render_results
  finally:
    sys.path.remove(str(ROOT / "experiments" / "bench"))
  strip = lambda text: [line for line in text.splitlines() if not line.startswith("- file added in commit:")]
  assert strip((ROOT / "docs" / "benchmarks.md").read_text()) == strip(render_results.render()), (
    "docs/benchmarks.md is stale: run python experiments/bench/render_results.py"
  )
