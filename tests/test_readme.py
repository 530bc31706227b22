"""The README's Python snippets, run: its signature lists match the code, its examples print what they say.

Every ```python block of README.md is one test. A block under ``<!-- test: signatures -->`` is a list of
signatures, ``name(params)`` one a line (imports aside): each must equal ``inspect.signature`` of the
object it names, parameter by parameter (kinds, order of the positional ones, defaults). Any other block
runs, statement by statement, in a fresh namespace and a temporary working directory; a statement
whose line ends in a comment starting with a bracketed value (``# [3 5 7 9]``, ``# (28, 28)``) must
give that value; a block that prints, followed by a markdown table, must print that table.
A block under ``<!-- test: skip -->`` is not run.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import inspect
import io
import itertools
import re
import tokenize
from pathlib import Path
from typing import Any

import numpy as np
import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
_BLOCK = re.compile(
  r"(?:<!-- test: (?P<marker>[\w-]+) -->\s*\n)?```python\n(?P<code>.*?)^```", re.DOTALL | re.MULTILINE
)
_EXPECTED = re.compile(r"#\s*(\[[^\[\]]*\]|\([^()]*\))")
_NON_LITERAL = object()  # a README default that is an expression (``lecun_normal()``): any default matches


@dataclasses.dataclass(frozen=True)
class Block:
  """One ```python block: the README line its code starts on, the code, its marker, the text after it."""

  line: int
  code: str
  marker: str | None
  after: str


def readme_blocks() -> list[Block]:
  """Every ```python block of the README, in order."""
  text = README.read_text()
  return [
    Block(text.count("\n", 0, m.start("code")) + 1, m.group("code"), m.group("marker"), text[m.end() :])
    for m in _BLOCK.finditer(text)
  ]


def signature_lines() -> list[tuple[int, str]]:
  """``(README line, text)`` of every signature in the signature blocks."""
  lines = []
  for block in readme_blocks():
    if block.marker == "signatures":
      for i, line in enumerate(block.code.splitlines()):
        if line.strip() and not line.startswith(("import ", "from ")):
          lines.append((block.line + i, line))
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


@pytest.mark.parametrize(
  ("line", "text"), signature_lines(), ids=lambda v: split_signature(v)[0] if isinstance(v, str) else f"L{v}"
)
def test_readme_signature_matches_the_code(line, text):
  """Each signature listed in the README is the code's: same parameters, kinds, keyword-only split, defaults."""
  name, params = split_signature(text)
  try:
    obj = eval(name, signature_namespace())
  except AttributeError as e:
    obj, missing = None, str(e)
  if obj is None:
    pytest.fail(f"README line {line} lists {name}, which the package lacks ({missing})")
  readme, code = readme_parameters(params), code_parameters(obj)
  where = f"README line {line}: {name}"
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


SNIPPETS = [b for b in readme_blocks() if b.marker not in ("signatures", "skip")]


@pytest.mark.parametrize("block", SNIPPETS, ids=[f"line{b.line}" for b in SNIPPETS])
def test_readme_snippet_runs_and_says_true(block, tmp_path, monkeypatch):
  """A README snippet runs from a fresh folder; the values in its comments and the table it prints are right."""
  monkeypatch.chdir(tmp_path)
  comments = _comments(block.code)
  namespace: dict[str, Any] = {"__name__": "__readme__"}
  printed = io.StringIO()
  for node in ast.parse(block.code).body:
    where = f"README line {block.line + node.lineno - 1}"
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
    assert printed.getvalue().strip() == table.strip(), f"README line {block.line}: the printed table differs"


def test_readme_has_snippets_and_signatures():
  """The parsing finds the README's blocks (so an edit of the markers cannot silently skip them all)."""
  assert len(SNIPPETS) >= 3 and len(signature_lines()) >= 10
