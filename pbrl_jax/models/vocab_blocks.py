"""Log-probs and entropies of chosen tokens, blockwise over the vocabulary.

Scoring and the update need, per position, log softmax(z)[target] and the entropy of
softmax(z), where z = h W^T / temperature are the logits. Computing z whole holds a float32
[N, V] tensor (with Qwen3's 151,936-token vocabulary, 8 x 2048 positions are 10 GB), and its
gradient another. Here the vocabulary is walked in blocks of K rows of W: the forward pass keeps
a running maximum m, a running sum s = sum exp(z - m) and t = sum exp(z - m) z (the softmax
mean of z, for the entropy), and the picked logit; the backward pass recomputes each block's
logits and applies

  d logp / dz_v = [v = target] - p_v
  d H / dz_v    = -p_v (z_v - E_p[z])            (H = logsumexp(z) - E_p[z])

so no [N, V] tensor exists in either pass, only [N, K] ones. The last block starts at V - K
(overlapping the one before it) and its already-counted rows are masked, so V needs no
padding and W is never copied.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

Array = jax.Array


def _block_logits(h: Array, w: Array, b: Array, block: int, temperature: float
                  ) -> tuple[Array, Array, Array, Array, Array]:
  """Block b: logits [N, K] (float32), vocabulary ids [K], which are new [K], its first row
  and its rows of W [K, D]."""
  start = jnp.minimum(b * block, w.shape[0] - block)
  wb = jax.lax.dynamic_slice_in_dim(w, start, block, axis=0)
  z = jnp.einsum("ND,KD->NK", h, wb, preferred_element_type=jnp.float32) / temperature
  ids = start + jnp.arange(block)
  # The last block's first rows belong to the one before.
  return z, ids, ids >= b * block, start, wb


def _forward_stats(h: Array, w: Array, targets: Array, block: int, temperature: float
                   ) -> tuple[Array, Array, Array]:
  """(logsumexp [N], softmax mean of z [N], picked logit [N]), one block at a time."""
  n = h.shape[0]

  def body(b, carry):
    m, s, t, picked = carry
    z, ids, new, _, _ = _block_logits(h, w, b, block, temperature)
    z_new = jnp.where(new, z, -jnp.inf)
    m_next = jnp.maximum(m, z_new.max(axis=-1))
    scale = jnp.exp(m - m_next)
    e = jnp.where(new, jnp.exp(z - m_next[:, None]), 0.0)
    s = s * scale + e.sum(axis=-1)
    t = t * scale + jnp.where(new, e * z, 0.0).sum(axis=-1)
    hit = new & (ids[None, :] == targets[:, None])
    picked = picked + jnp.where(hit, z, 0.0).sum(axis=-1)
    return m_next, s, t, picked

  zeros = jnp.zeros((n,), jnp.float32)
  init = (jnp.full((n,), -jnp.inf, jnp.float32), zeros, zeros, zeros)
  m, s, t, picked = jax.lax.fori_loop(0, -(-w.shape[0] // block), body, init)
  return m + jnp.log(s), t / s, picked


def _fwd(h, w, targets, block, temperature):
  lse, mean_z, picked = _forward_stats(h, w, targets, block, temperature)
  return (picked - lse, lse - mean_z), (h, w, targets, lse, mean_z)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _logp_entropy(h: Array, w: Array, targets: Array, block: int, temperature: float
                  ) -> tuple[Array, Array]:
  return _fwd(h, w, targets, block, temperature)[0]


def _bwd(block, temperature, residuals, cotangents):
  h, w, targets, lse, mean_z = residuals
  g_logp, g_entropy = cotangents

  def body(b, carry):
    dh, dw = carry
    z, ids, new, start, wb = _block_logits(h, w, b, block, temperature)
    p = jnp.where(new, jnp.exp(z - lse[:, None]), 0.0)
    onehot = (new & (ids[None, :] == targets[:, None])).astype(jnp.float32)
    dz = g_logp[:, None] * (onehot - p) - g_entropy[:, None] * p * (z - mean_z[:, None])
    dz = dz / temperature  # [N, K], zero on the rows an earlier block counted
    dh = dh + jnp.einsum("NK,KD->ND", dz.astype(w.dtype), wb,
                         preferred_element_type=jnp.float32)
    dwb = jnp.einsum("NK,ND->KD", dz.astype(h.dtype), h, preferred_element_type=jnp.float32)
    dw = jax.lax.dynamic_update_slice_in_dim(
        dw, jax.lax.dynamic_slice_in_dim(dw, start, block, axis=0) + dwb, start, axis=0)
    return dh, dw

  init = (jnp.zeros(h.shape, jnp.float32), jnp.zeros(w.shape, jnp.float32))
  dh, dw = jax.lax.fori_loop(0, -(-w.shape[0] // block), body, init)
  return dh.astype(h.dtype), dw.astype(w.dtype), None


_logp_entropy.defvjp(_fwd, _bwd)


def token_logp_entropy(hidden: Array, weight: Array, targets: Array, *, block: int,
                       temperature: float = 1.0) -> tuple[Array, Array]:
  """log softmax(h W^T / T)[target] and the entropy of softmax(h W^T / T), blockwise.

  Args:
    hidden: [..., D] hidden states in the compute dtype.
    weight: [V, D] output embedding in the compute dtype (the tied embedding, or lm_head
      transposed).
    targets: [...] int token ids.
    block: vocabulary rows per block (K); a vocabulary of at most K rows is one block.
    temperature: the logits are divided by it.

  Returns:
    (log-probs [...], entropies [...]), float32; differentiable in `hidden` and `weight`.
  """
  lead = hidden.shape[:-1]
  h = hidden.reshape((-1, hidden.shape[-1]))
  k = min(int(block), weight.shape[0])
  logp, entropy = _logp_entropy(h, weight, targets.reshape(-1).astype(jnp.int32), k,
                                float(temperature))
  return logp.reshape(lead), entropy.reshape(lead)
