"""No unsafe deserialisation anywhere in the package: an AST scan of pbrl_jax/.

Loading a pickle (or anything that unpickles: torch.load, np.load(allow_pickle=True),
yaml.load with a full loader, joblib/dill/shelve/marshal) or running a model repository's own
code (trust_remote_code=True) executes whatever the file says. Users point pbrl_jax at model
and data files they downloaded, so none of these may appear. The allow-list is empty; an
entry needs a reason written next to it.
"""

import ast
import os

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "pbrl_jax")

UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "joblib", "shelve", "marshal",
                  "cloudpickle", "jsonpickle"}
# (module alias, function) pairs that deserialise executable content.
UNSAFE_CALLS = {("torch", "load"), ("pickle", "load"), ("pickle", "loads"),
                ("pd", "read_pickle"), ("pandas", "read_pickle"), ("yaml", "unsafe_load"),
                ("yaml", "full_load"), ("yaml", "unsafe_load_all"), ("yaml", "full_load_all")}
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader"}

# (relative path, finding) -> reason. Empty on purpose.
ALLOWED: dict = {}


def _dotted(node: ast.AST) -> str:
  if isinstance(node, ast.Name):
    return node.id
  if isinstance(node, ast.Attribute):
    return f"{_dotted(node.value)}.{node.attr}"
  return ""


def _is_false(node: ast.AST) -> bool:
  return isinstance(node, ast.Constant) and node.value in (False, None)


def scan_source(source: str, name: str = "<src>") -> list:
  """Findings `line: what` of unsafe loading in one Python source."""
  found = []
  for node in ast.walk(ast.parse(source, name)):
    if isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name.split(".")[0] in UNSAFE_MODULES:
          found.append(f"{node.lineno}: import {alias.name}")
    elif isinstance(node, ast.ImportFrom):
      if (node.module or "").split(".")[0] in UNSAFE_MODULES:
        found.append(f"{node.lineno}: from {node.module} import ...")
      for alias in node.names:
        if (node.module or "").split(".")[-1] == "torch" and alias.name == "load":
          found.append(f"{node.lineno}: from torch import load")
    elif isinstance(node, ast.Call):
      func = _dotted(node.func)
      parts = func.split(".")
      kwargs = {k.arg: k.value for k in node.keywords if k.arg}
      if len(parts) >= 2 and (parts[-2], parts[-1]) in UNSAFE_CALLS:
        found.append(f"{node.lineno}: {func}()")
      if "trust_remote_code" in kwargs and not _is_false(kwargs["trust_remote_code"]):
        found.append(f"{node.lineno}: {func}(trust_remote_code=...)")
      if parts[-1] == "load" and parts[0] in ("np", "numpy", "jnp"):
        if "allow_pickle" in kwargs and not _is_false(kwargs["allow_pickle"]):
          found.append(f"{node.lineno}: {func}(allow_pickle=...)")
      if parts[-1] in ("load", "load_all") and parts[0] == "yaml":
        loader = kwargs.get("Loader", node.args[1] if len(node.args) > 1 else None)
        if loader is None or _dotted(loader).split(".")[-1] not in SAFE_YAML_LOADERS:
          found.append(f"{node.lineno}: {func}() without a safe Loader")
  return found


def test_scanner_catches_each_pattern():
  bad = """
import pickle
from dill import loads
import torch, numpy as np, yaml
torch.load(path)
np.load(path, allow_pickle=True)
yaml.load(open(path))
yaml.load(text, Loader=yaml.FullLoader)
AutoModel.from_pretrained(path, trust_remote_code=True)
pd.read_pickle(path)
"""
  lines = [int(f.split(":")[0]) for f in scan_source(bad)]
  assert lines == [2, 3, 5, 6, 7, 8, 9, 10], scan_source(bad)
  good = """
import numpy as np, yaml, json
np.load(path)
np.load(path, allow_pickle=False)
yaml.safe_load(text)
yaml.load(text, Loader=yaml.SafeLoader)
AutoTokenizer.from_pretrained(path, trust_remote_code=False)
json.load(f)
"""
  assert scan_source(good) == []


def test_package_has_no_unsafe_loading():
  findings = {}
  files = 0
  for root, _, names in os.walk(PACKAGE):
    for name in names:
      if not name.endswith(".py"):
        continue
      path = os.path.join(root, name)
      rel = os.path.relpath(path, os.path.dirname(PACKAGE))
      with open(path, encoding="utf-8") as f:
        hits = [h for h in scan_source(f.read(), path)
                if (rel, h.split(": ", 1)[1]) not in ALLOWED]
      files += 1
      if hits:
        findings[rel] = hits
  for entry, reason in ALLOWED.items():
    assert len(reason) > 20, f"{entry}: the allow-list entry needs a reason"
  assert files > 20, f"scanned only {files} files under {PACKAGE}"
  assert not findings, f"unsafe loading in the package: {findings}"
