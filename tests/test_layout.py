"""The package's layering and size rules (issue: one path for each thing), checked on the AST.

Every import counts, also those inside functions: a lazy import is still a dependency.
"""

import ast
import os

import pytest

PKG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pbrl_jax")
MAX_MODULE_LINES = 700
MAX_FUNCTION_LINES = 120


def _modules():
  for root, _, files in os.walk(PKG):
    for name in sorted(files):
      if name.endswith(".py"):
        path = os.path.join(root, name)
        yield os.path.relpath(path, os.path.dirname(PKG)).replace(os.sep, "/"), path


def _imports(path):
  tree = ast.parse(open(path, encoding="utf-8").read())
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      out.add(node.module)
      out.update(f"{node.module}.{a.name}" for a in node.names)
  return {m for m in out if m.startswith("pbrl_jax")}


def _hits(imports, banned):
  return sorted(m for m in imports for b in banned if m == b or m.startswith(b + "."))


RULES = [
    ("pbrl_jax/models/", ("pbrl_jax.sampling", "pbrl_jax.data", "pbrl_jax.rewards",
                          "pbrl_jax.rl", "pbrl_jax.cli")),
    ("pbrl_jax/sampling.py", ("pbrl_jax.data", "pbrl_jax.cli")),
    ("pbrl_jax/padding.py", ("pbrl_jax.models", "pbrl_jax.sampling", "pbrl_jax.data")),
]


@pytest.mark.parametrize("prefix,banned", RULES, ids=[r[0] for r in RULES])
def test_layers_import_downwards_only(prefix, banned):
  bad = {rel: _hits(_imports(path), banned) for rel, path in _modules() if rel.startswith(prefix)}
  assert not {k: v for k, v in bad.items() if v}


def test_nothing_outside_cli_imports_cli():
  bad = {rel: _hits(_imports(path), ("pbrl_jax.cli",)) for rel, path in _modules()
         if not rel.startswith("pbrl_jax/cli/")}
  assert not {k: v for k, v in bad.items() if v}


def test_modules_and_functions_stay_small():
  long_modules, long_functions = [], []
  for rel, path in _modules():
    text = open(path, encoding="utf-8").read()
    if text.count("\n") > MAX_MODULE_LINES:
      long_modules.append((rel, text.count("\n")))
    for node in ast.walk(ast.parse(text)):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        n = node.end_lineno - node.lineno + 1
        if n > MAX_FUNCTION_LINES:
          long_functions.append((rel, node.name, n))
  assert not long_modules and not long_functions, (long_modules, long_functions)
