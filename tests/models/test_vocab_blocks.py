"""Blockwise log-probs and entropies: the dense softmax's numbers without its [N, V] logits.

References: float64 NumPy for the values, JAX autodiff of the dense formula (log_softmax of
the whole logits) for the gradients. Relative errors are max|ours - ref| / max|ref| (fp32).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pbrl_jax.models import decoder, vocab_blocks
from pbrl_jax.models.config import DecoderConfig

TOL = 1e-5
V, D = 211, 24  # V is no multiple of the block: the last block overlaps the one before


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.abs(a - b).max() / np.abs(b).max())


def _inputs(seed=0, n=(3, 7)):
  rng = np.random.default_rng(seed)
  h = rng.normal(0, 1.0, n + (D,)).astype(np.float32)
  w = rng.normal(0, 0.6, (V, D)).astype(np.float32)  # peaked enough that entropy varies
  t = rng.integers(0, V, n)
  return h, w, t


def _numpy_reference(h, w, t, temperature):
  z = np.einsum("...d,vd->...v", h.astype(np.float64), w.astype(np.float64)) / temperature
  m = z.max(-1, keepdims=True)
  lse = (m + np.log(np.exp(z - m).sum(-1, keepdims=True)))[..., 0]
  logp_all = z - lse[..., None]
  logp = np.take_along_axis(logp_all, t[..., None], -1)[..., 0]
  entropy = -(np.exp(logp_all) * logp_all).sum(-1)
  return logp, entropy


def _dense(h, w, t, temperature):
  z = jnp.einsum("...d,vd->...v", h, w) / temperature
  logp_all = jax.nn.log_softmax(z, axis=-1)
  logp = jnp.take_along_axis(logp_all, t[..., None], -1)[..., 0]
  return logp, -(jnp.exp(logp_all) * logp_all).sum(-1)


@pytest.mark.parametrize("block", [64, 100, 211, 4096])
def test_values_match_float64(block):
  h, w, t = _inputs()
  logp, ent = vocab_blocks.token_logp_entropy(jnp.asarray(h), jnp.asarray(w), jnp.asarray(t),
                                              block=block, temperature=0.7)
  ref_logp, ref_ent = _numpy_reference(h, w, t, 0.7)
  assert logp.shape == ent.shape == t.shape
  assert _rel(logp, ref_logp) <= TOL and _rel(ent, ref_ent) <= TOL
  assert np.ptp(ref_ent) > 0.5  # entropies differ across positions: a constant would fail


@pytest.mark.parametrize("block", [64, 100])
def test_gradients_match_dense_autodiff(block):
  h, w, t = _inputs(1)
  rng = np.random.default_rng(2)
  a, b = (jnp.asarray(rng.normal(size=t.shape), jnp.float32) for _ in range(2))

  def loss(fn):
    def f(h, w):
      logp, ent = fn(h, w)
      return jnp.sum(a * logp) + jnp.sum(b * ent)
    return jax.jit(jax.grad(f, argnums=(0, 1)))

  ours = loss(lambda h, w: vocab_blocks.token_logp_entropy(h, w, jnp.asarray(t), block=block,
                                                           temperature=0.7))(h, w)
  ref = loss(lambda h, w: _dense(h, w, jnp.asarray(t), 0.7))(h, w)
  for g, r in zip(ours, ref):
    assert g.shape == r.shape and _rel(g, r) <= TOL, _rel(g, r)


def test_no_full_logits_in_the_compiled_gradient():
  n = 64
  h = jnp.zeros((n, D), jnp.float32)
  w = jnp.zeros((V, D), jnp.float32)
  t = jnp.zeros((n,), jnp.int32)

  def hlo(fn):
    f = lambda h, w: jnp.sum(sum(fn(h, w)))
    return jax.jit(jax.grad(f, argnums=(0, 1))).lower(h, w).as_text()

  full = f"{n}x{V}xf32"  # an [N, V] float32 tensor in the StableHLO text
  assert full in hlo(lambda h, w: _dense(h, w, t, 1.0))  # the check can see one
  assert full not in hlo(lambda h, w: vocab_blocks.token_logp_entropy(h, w, t, block=64))


@pytest.mark.parametrize("tied", [False, True])
def test_decoder_path_blockwise_equals_whole(tied):
  cfg = DecoderConfig(model_type="qwen3", vocab_size=V, hidden_size=D, intermediate_size=32,
                      num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, qk_norm=True,
                      tie_word_embeddings=tied)
  params = decoder.init_params(cfg, jax.random.PRNGKey(0))
  params = jax.tree.map(lambda x: x * 8.0 if x.ndim == 2 and V in x.shape else x, params)
  tokens = jnp.asarray(np.random.default_rng(3).integers(0, V, (2, 9)))
  valid = jnp.ones_like(tokens)

  def outputs(c):
    def f(p):
      hidden, _ = decoder.forward(p, c, tokens, decoder.positions_from_mask(valid),
                                  decoder.causal_mask(valid))
      logp, ent = decoder.token_logp_entropy(p, c, hidden[:, :-1], tokens[:, 1:], 0.8)
      return jnp.sum(logp) + 0.3 * jnp.sum(ent), (logp, ent)
    return jax.jit(jax.value_and_grad(f, has_aux=True))(params)

  (_, (logp_b, ent_b)), g_b = outputs(cfg.replace(vocab_block=64))
  (_, (logp_w, ent_w)), g_w = outputs(cfg)  # vocab_block 0: the whole logits
  assert _rel(logp_b, logp_w) <= TOL and _rel(ent_b, ent_w) <= TOL
  flat_b, flat_w = jax.tree.leaves(g_b), jax.tree.leaves(g_w)
  assert len(flat_b) == len(flat_w)
  for gb, gw in zip(flat_b, flat_w):
    assert _rel(gb, gw) <= TOL
