"""The Python blocks of README.md and of the docs pages (docs/*.md), run: signature lists match the code,
examples give what they say.

A block under ``<!-- test: signatures -->`` is a list of signatures, ``name(params)`` one a line (imports
aside): each must equal ``inspect.signature`` of the object it names, parameter by parameter (kinds, order
of the positional ones, defaults); each signature is one test. Every other ```python block of a page runs,
in the order of the page, statement by statement, in one namespace per page (a later block uses what an
earlier one defined) and a temporary working directory; one test per page. A statement whose line ends in
a comment starting with a bracketed value (``# [3 5 7 9]``, ``# (28, 28)``) must give that value; a block
that prints, followed by a markdown table, must print that table.

A block under ``<!-- test: skip -->`` is not run. A block under ``<!-- test: requires NAME -->`` (a dotted
name such as ``jaxconv.training.fit``) runs when NAME exists; without it the block is left out, the page's
other blocks still run, and the test reports the skip.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import importlib
import inspect
import io
import itertools
import re
import tokenize
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from jaxconv.kernels import registry

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(
  r"(?:<!-- test: (?P<marker>[\w-]+)(?: (?P<arg>[\w.]+))? -->\s*\n)?```python\n(?P<code>.*?)^```",
  re.DOTALL | re.MULTILINE,
)
_EXPECTED = re.compile(r"#\s*(\[[^\[\]]*\]|\([^()]*\))")
_NON_LITERAL = object()  # a README default that is an expression (``lecun_normal()``): any default matches


@dataclasses.dataclass(frozen=True)
class Block:
  """One ```python block: page, first line of code, code, marker and its argument, the text after it."""

  page: str
  line: int
  code: str
  marker: str | None
  arg: str | None
  after: str


def page_blocks(page: Path) -> list[Block]:
  """Every ```python block of ``page``, in order."""
  text = page.read_text()
  name = page.relative_to(ROOT).as_posix()
  return [
    Block(
      name,
      text.count("\n", 0, m.start("code")) + 1,
      m.group("code"),
      m.group("marker"),
      m.group("arg"),
      text[m.end() :],
    )
    for m in _BLOCK.finditer(text)
  ]


def readme_blocks() -> list[Block]:
  """Every ```python block of the README and the docs pages, page by page, in order."""
  return [b for page in PAGES for b in page_blocks(page)]


def signature_lines() -> list[tuple[str, str]]:
  """``("page:line", text)`` of every signature in the signature blocks."""
  lines = []
  for block in readme_blocks():
    if block.marker == "signatures":
      for i, line in enumerate(block.code.splitlines()):
        if line.strip() and not line.startswith(("import ", "from ")):
          lines.append((f"{block.page}:{block.line + i}", line))
  return lines


def split_signature(line: str) -> tuple[str, str]:
  """``"jc.conv(x, w, *, impl=None)  # ..."`` -> ``("jc.conv", "x, w, *, impl=None")``."""
  name, paren, rest = line.partition("(")
  depth = 1
  for i, char in enumerate(rest):
    depth += {"(": 1, ")": -1}.get(char, 0)
    if depth == 0:
      return name.strip(), rest[:i]
  raise ValueError(f"README signature {line!r} has no closing parenthesis")


def _default(node: ast.expr | None) -> Any:
  """A README default: its literal value, ``_NON_LITERAL`` for an expression, ``empty`` for none."""
  if node is None:
    return inspect.Parameter.empty
  try:
    return ast.literal_eval(node)
  except ValueError:
    return _NON_LITERAL


def readme_parameters(params: str) -> list[tuple[str, inspect._ParameterKind, Any]]:
  """The parameters of a README signature as ``(name, kind, default)``, parsed as a ``def``'s."""
  args = ast.parse(f"def _f({params}): pass").body[0].args  # type: ignore[attr-defined]
  positional = [*args.posonlyargs, *args.args]
  defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
  out: list[tuple[str, inspect._ParameterKind, Any]] = []
  for i, (arg, default) in enumerate(zip(positional, defaults)):
    kind = inspect.Parameter.POSITIONAL_ONLY if i < len(args.posonlyargs) else inspect.Parameter.POSITIONAL_OR_KEYWORD
    out.append((arg.arg, kind, _default(default)))
  if args.vararg:
    out.append((args.vararg.arg, inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.empty))
  out += [(a.arg, inspect.Parameter.KEYWORD_ONLY, _default(d)) for a, d in zip(args.kwonlyargs, args.kw_defaults)]
  if args.kwarg:
    out.append((args.kwarg.arg, inspect.Parameter.VAR_KEYWORD, inspect.Parameter.empty))
  return out


def code_parameters(obj: Any) -> list[tuple[str, inspect._ParameterKind, Any]]:
  """``(name, kind, default)`` of a function's parameters, or of a class's ``__init__`` less ``self``."""
  params = list(inspect.signature(obj.__init__ if inspect.isclass(obj) else obj).parameters.values())
  if inspect.isclass(obj):
    params = params[1:]
  return [(p.name, p.kind, p.default) for p in params]


def same_default(readme: Any, code: Any) -> bool:
  """A README default matches the code's: equal value and type, or any default for an expression."""
  if readme is _NON_LITERAL:
    return code is not inspect.Parameter.empty
  if readme is inspect.Parameter.empty or code is inspect.Parameter.empty:
    return readme is code
  return type(readme) is type(code) and readme == code


def signature_namespace() -> dict[str, Any]:
  """The names the signature blocks import (``jc``, ``nn``, ``LeNet``, ...)."""
  namespace: dict[str, Any] = {}
  for block in readme_blocks():
    if block.marker == "signatures":
      imports = [line for line in block.code.splitlines() if line.startswith(("import ", "from "))]
      exec("\n".join(imports), namespace)
  return namespace


_SIGNATURES = signature_lines()


@pytest.mark.parametrize(
  ("line", "text"), _SIGNATURES, ids=[f"{where}:{split_signature(t)[0]}" for where, t in _SIGNATURES]
)
def test_readme_signature_matches_the_code(line, text):
  """Each signature listed in the README is the code's: same parameters, kinds, keyword-only split, defaults."""
  name, params = split_signature(text)
  try:
    obj = eval(name, signature_namespace())
  except AttributeError as e:
    obj, missing = None, str(e)
  if obj is None:
    pytest.fail(f"{line} lists {name}, which the package lacks ({missing})")
  readme, code = readme_parameters(params), code_parameters(obj)
  where = f"{line}: {name}"
  in_code = ", ".join(f"{n}" if k != inspect.Parameter.KEYWORD_ONLY else f"*{n}" for n, k, _ in code)
  positional = [(n, k) for n, k, _ in readme if k != inspect.Parameter.KEYWORD_ONLY]
  assert positional == [(n, k) for n, k, _ in code if k != inspect.Parameter.KEYWORD_ONLY], (
    f"{where}: positional parameters differ from the code's ({in_code})"
  )
  readme_kw = {n for n, k, _ in readme if k == inspect.Parameter.KEYWORD_ONLY}
  code_kw = {n for n, k, _ in code if k == inspect.Parameter.KEYWORD_ONLY}
  assert readme_kw == code_kw, (
    f"{where}: keyword-only parameters only in the README {sorted(readme_kw - code_kw)}, "
    f"only in the code {sorted(code_kw - readme_kw)}"
  )
  code_defaults = {n: d for n, _, d in code}
  for n, _, d in readme:
    assert same_default(d, code_defaults[n]), f"{where}: {n}={d!r} in the README, {code_defaults[n]!r} in the code"


def _comments(code: str) -> dict[int, str]:
  """Line number (1-based, within the block) -> the comment on that line."""
  tokens = tokenize.generate_tokens(io.StringIO(code).readline)
  return {t.start[0]: t.string for t in tokens if t.type == tokenize.COMMENT}


def check_value(value: Any, expected: str, where: str) -> None:
  """``value`` equals the bracketed README value ``expected``: ``[1 2 3]`` (an array) or a tuple literal."""
  if expected.startswith("("):
    assert tuple(value) == ast.literal_eval(expected), f"{where}: got {value!r}, the README says {expected}"
  else:
    want = np.array(expected[1:-1].split(), float)
    got = np.asarray(value)
    assert got.shape == want.shape and np.allclose(got, want, atol=1e-5), (
      f"{where}: got {got}, the README says {expected}"
    )


def following_table(after: str) -> str | None:
  """The markdown table right after a block (blank lines between allowed), or None."""
  lines = after.lstrip("\n").splitlines()
  table = list(itertools.takewhile(lambda line: line.startswith("|"), lines))
  return "\n".join(table) if table else None


def resolves(dotted: str) -> bool:
  """Whether ``a.b.c`` names something: the longest importable module prefix, then attributes."""
  parts = dotted.split(".")
  for i in range(len(parts), 0, -1):
    try:
      obj: Any = importlib.import_module(".".join(parts[:i]))
    except ImportError:
      continue
    try:
      for attr in parts[i:]:
        obj = getattr(obj, attr)
    except AttributeError:
      return False
    return True
  return False


def runnable(block: Block) -> bool:
  """A block the page test runs (not a signature list, not marked skip)."""
  return block.marker not in ("signatures", "skip")


RUN_PAGES = [p.relative_to(ROOT).as_posix() for p in PAGES if any(runnable(b) for b in page_blocks(p))]


def run_block(block: Block, namespace: dict[str, Any]) -> None:
  """Run ``block`` statement by statement in ``namespace``; check the bracketed values and a printed table."""
  comments = _comments(block.code)
  printed = io.StringIO()
  for node in ast.parse(block.code).body:
    where = f"{block.page} line {block.line + node.lineno - 1}"
    with contextlib.redirect_stdout(printed):
      if isinstance(node, ast.Expr):
        value = eval(compile(ast.Expression(node.value), where, "eval"), namespace)
      else:
        exec(compile(ast.Module([node], type_ignores=[]), where, "exec"), namespace)
        targets = node.targets if isinstance(node, ast.Assign) else []
        value = namespace[targets[0].id] if len(targets) == 1 and isinstance(targets[0], ast.Name) else None
    expected = _EXPECTED.match(comments.get(node.end_lineno or node.lineno, ""))
    if expected:
      check_value(value, expected.group(1), where)
  table = following_table(block.after)
  if printed.getvalue().strip() and table is not None:
    assert printed.getvalue().strip() == table.strip(), f"{block.page} line {block.line}: the printed table differs"


# The pages whose examples train or compile the most run with the slow set (CI runs both).
SLOW_PAGES = {
  "docs/layers.md",
  "docs/training.md",
  "docs/custom-kernels.md",
  "docs/speed.md",
  "docs/sharding.md",
  "docs/kernels.md",
}


@pytest.mark.parametrize("page", [pytest.param(p, marks=pytest.mark.slow) if p in SLOW_PAGES else p for p in RUN_PAGES])
def test_page_snippets_run_and_say_true(page, tmp_path, monkeypatch):
  """A page's blocks run in order in one namespace, from a fresh folder; their commented values and tables are right."""
  monkeypatch.chdir(tmp_path)
  # A page's kernel registrations (custom-kernels.md's "tap_sum") are undone after it, so that the tests
  # run later in this process see the registry as it was.
  monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
  namespace: dict[str, Any] = {"__name__": "__docs__"}
  left_out = []
  for block in page_blocks(ROOT / page):
    if not runnable(block):
      continue
    if block.marker == "requires" and not resolves(block.arg or ""):
      left_out.append(f"line {block.line} (needs {block.arg})")
      continue
    run_block(block, namespace)
  if left_out:
    pytest.skip(f"{page}: the other blocks ran; left out {', '.join(left_out)}")


def test_readme_has_snippets_and_signatures():
  """The parsing finds the blocks (so an edit of the markers cannot silently skip them all)."""
  assert sum(runnable(b) for b in page_blocks(README)) >= 3
  assert len(signature_lines()) >= 10
  assert "README.md" in RUN_PAGES and "docs/functional.md" in RUN_PAGES


def test_markers_are_known():
  """Every ``<!-- test: ... -->`` marker is one this test understands (a typo would run or skip a block silently)."""
  for block in readme_blocks():
    assert block.marker in (None, "signatures", "skip", "requires"), f"{block.page} line {block.line}: {block.marker}"
    assert (block.marker == "requires") == bool(block.arg), f"{block.page} line {block.line}: 'requires' needs a name"
