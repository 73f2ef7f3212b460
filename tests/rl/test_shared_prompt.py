"""The shared-prompt forward (`prompt_group`): a GRPO group's prompt runs once.

Reference: the one-pass forward over [B, P+M] (itself checked against transformers in
tests/models). Log-probs, entropies, values, gradients and whole update steps must agree
within fp32 rounding (1e-5), with and without LoRA, for Llama- and Qwen-style layers.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pbrl_jax import rl
from pbrl_jax.models import decoder, lora as lora_lib
from pbrl_jax.models import sharding as shd
from pbrl_jax.models.config import DecoderConfig
from pbrl_jax.rl import steps

LLAMA = DecoderConfig(model_type="llama", vocab_size=64, hidden_size=32, intermediate_size=64,
                      num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8)
QWEN = DecoderConfig(model_type="qwen3", vocab_size=64, hidden_size=32, intermediate_size=64,
                     num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, qk_norm=True,
                     attention_bias=True)
G, GROUPS, P, M = 4, 4, 9, 6
B = G * GROUPS


def grouped_batch(seed: int, vocab: int) -> dict[str, np.ndarray]:
  """GROUPS prompts of different (left-padded) lengths, each with G ragged completions."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, vocab, (B, P + M)).astype(np.int32)
  valid = np.ones((B, P + M), np.int32)
  for i in range(GROUPS):
    rows = slice(i * G, (i + 1) * G)
    tokens[rows, :P] = tokens[i * G, :P]
    valid[rows, :P - int(rng.integers(2, P + 1))] = 0
  lengths = rng.integers(1, M + 1, B)
  lengths[0] = M  # one completion reaches the cap
  completion = (np.arange(M)[None] < lengths[:, None]).astype(np.int32)
  valid[:, P:] = completion
  return dict(tokens=tokens, valid=valid, completion_mask=completion,
              old_logp=(rng.normal(size=(B, M)) * 0.2 - 4.1).astype(np.float32),
              ref_logp=(rng.normal(size=(B, M)) * 0.2 - 4.1).astype(np.float32),
              advantages=rng.normal(size=(B,)).astype(np.float32),
              returns=rng.normal(size=(B, M)).astype(np.float32),
              old_values=(rng.normal(size=(B, M)) * 0.1).astype(np.float32))


@functools.lru_cache(maxsize=None)
def _params(config):
  return jax.device_get(decoder.init_params(config, jax.random.PRNGKey(0)))


def _assert_close(got, want, mask=None, tol=1e-5):
  got, want = np.asarray(got), np.asarray(want)
  if mask is not None:
    got, want = got[mask.astype(bool)], want[mask.astype(bool)]
  np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("config", [LLAMA, QWEN], ids=["llama", "qwen3"])
def test_outputs_equal_one_pass(config):
  batch = grouped_batch(0, config.vocab_size)
  params = {"policy": _params(config),
            "value_head": {"kernel": jnp.full((config.hidden_size,), 0.3), "bias": jnp.zeros(())}}
  run = jax.jit(lambda p, t, v, g: steps.completion_outputs(p, config, t, v, M, 0.7,
                                                            prompt_group=g),
                static_argnums=3)
  one = run(params, batch["tokens"], batch["valid"], 1)
  shared = run(params, batch["tokens"], batch["valid"], G)
  for a, b in zip(shared, one):
    _assert_close(a, b, batch["completion_mask"])
  assert np.std(np.asarray(one[0])[batch["completion_mask"] == 1]) > 0.05  # not degenerate


def test_prompt_keys_and_values_are_not_copied_per_row():
  # The completions attend to each group's prompt keys and values [L, B/G, P, K, H] as they
  # are; a copy per row ([L, B, P, K, H], what a repeat before the completions' pass made)
  # is G times the memory. Checked on the lowered program, gradient included.
  config, batch = LLAMA, grouped_batch(0, LLAMA.vocab_size)

  def loss(params, g):
    logp, _, _ = steps.completion_outputs({"policy": params}, config, batch["tokens"],
                                          batch["valid"], M, 1.0, prompt_group=g)
    return jnp.sum(logp)

  per_row = f"tensor<{config.num_layers}x{B}x{P}x{config.num_kv_heads}x{config.head_dim}xf32>"
  per_group = (f"tensor<{config.num_layers}x{GROUPS}x{P}x{config.num_kv_heads}"
               f"x{config.head_dim}xf32>")
  text = jax.jit(jax.grad(loss), static_argnums=1).lower(_params(config), G).as_text()
  assert per_group in text and per_row not in text


@pytest.mark.parametrize("use_lora", [False, True], ids=["full", "lora"])
def test_gradients_equal_one_pass(use_lora):
  config = LLAMA
  batch = grouped_batch(1, config.vocab_size)
  base = _params(config)
  spec = params = None
  if use_lora:
    spec = lora_lib.LoraSpec(rank=4, alpha=8.0, targets=("q_proj", "v_proj", "down_proj"))
    adapters = lora_lib.init_lora(config, spec.targets, spec.rank, jax.random.PRNGKey(3))
    # B = 0 at init would zero every adapter gradient but B's; move B off zero.
    params = {"lora": jax.tree.map(lambda x: x + 0.05, adapters)}
  else:
    params = {"policy": base}
  m = jnp.asarray(batch["completion_mask"], jnp.float32)
  adv = jnp.asarray(batch["advantages"])[:, None]

  @functools.partial(jax.jit, static_argnums=1)
  def value_and_grad(params, g):
    def objective(params):
      logp, entropy, _ = steps.completion_outputs(params, config, batch["tokens"],
                                                  batch["valid"], M, 1.0, base, spec, g)
      return jnp.sum((logp * adv + 0.1 * entropy) * m)
    return jax.value_and_grad(objective)(params)

  (v1, g1), (vg, gg) = value_and_grad(params, 1), value_and_grad(params, G)
  np.testing.assert_allclose(vg, v1, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(gg), jax.tree.leaves(g1)):
    # Relative to the leaf's largest entry: near-zero entries carry only rounding.
    scale = max(float(np.abs(np.asarray(b)).max()), 1e-6)
    np.testing.assert_allclose(np.asarray(a) / scale, np.asarray(b) / scale, atol=1e-5)
  assert float(optax.global_norm(g1)) > 1e-2


def test_minibatches_hold_whole_groups():
  hp = rl.UpdateHParams(num_epochs=2, num_minibatches=2, num_microbatches=2, shuffle=True,
                        prompt_group=G)
  idx = np.asarray(steps._minibatch_indices(jax.random.PRNGKey(0), B, hp))  # pylint: disable=protected-access
  assert idx.shape == (2, 2, 2, B // 4)
  for epoch in idx:
    assert sorted(epoch.ravel().tolist()) == list(range(B))  # every row once per epoch
    for micro in epoch.reshape(-1, B // 4):
      groups = micro.reshape(-1, G)
      assert (groups == groups[:, :1] + np.arange(G)).all() and (groups[:, 0] % G == 0).all()
  assert not (idx[0] == idx[1]).all()  # shuffled per epoch, as groups
  with pytest.raises(ValueError, match="3 groups of 4 rows"):
    steps._minibatch_indices(jax.random.PRNGKey(0), 12, hp)  # pylint: disable=protected-access


def _one_pass_hidden(pol, config, tokens, valid, completion_len, g, adapters, scale):
  """What `completion_outputs` computes without sharing (the reference)."""
  del g
  hidden, _ = decoder.forward(pol, config, tokens, decoder.positions_from_mask(valid),
                              decoder.causal_mask(valid), lora=adapters, lora_scale=scale)
  return hidden[:, -completion_len - 1:-1]


@pytest.mark.parametrize("mesh_shape", [(1, 1, 1), pytest.param((2, 2, 2),
                                                                  marks=pytest.mark.slow)])
def test_ppo_update_equals_one_pass(mesh_shape, monkeypatch):
  """Two epochs x two minibatches x two micro-batches of whole groups, value head, shuffle:
  the shared-prompt update equals the same update (same minibatches) with one-pass forwards."""
  config = LLAMA
  mesh = shd.make_mesh(*mesh_shape, devices=jax.devices()[:int(np.prod(mesh_shape))])
  # SGD: linear in the gradient (Adam's normalisation turns rounding in near-zero gradient
  # entries into lr-sized differences).
  opt = optax.sgd(0.5)
  fns = rl.make_state_fns(config, opt, mesh, with_value_head=True)
  batch = grouped_batch(2, config.vocab_size)
  hp = rl.UpdateHParams(num_epochs=2, num_minibatches=2, num_microbatches=2, shuffle=True,
                        with_value_head=True, kl_coef_in_loss=0.04,
                        aggregation=rl.Aggregation.TOKEN_MEAN, prompt_group=G)

  def run():
    state = fns.from_params(_params(config), jax.random.PRNGKey(9))
    return rl.make_update_fn(config, hp, opt, mesh, fns.shardings)(state, batch)

  s_g, m_g = run()
  monkeypatch.setattr(steps, "_grouped_hidden", _one_pass_hidden)
  s_1, m_1 = run()
  for a, b in zip(jax.tree.leaves(s_g.params), jax.tree.leaves(s_1.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
  for k in m_1:
    # Clip counts are indicators: a ratio within rounding of 1 +- eps may flip (one token).
    atol = 1.0 / float(m_1["num_tokens"]) if k.startswith("clip") else 1e-5
    np.testing.assert_allclose(m_g[k], m_1[k], rtol=1e-5, atol=atol, err_msg=k)
  moved = max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in
              zip(jax.tree.leaves(s_1.params["policy"]), jax.tree.leaves(_params(config))))
  assert moved > 1e-3
