"""Properties of the train state, scoring and update steps on a tiny decoder.

KL is 0 when policy == reference; accumulated gradients equal single-shot ones; the update on
a (2,2,2) mesh of 8 fake CPU devices equals the 1-device update; new content of the same
shapes does not recompile; non-finite updates are skipped and counted.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pbrl_jax import rl
from pbrl_jax.models import decoder
from pbrl_jax.models import sharding as shd
from pbrl_jax.models.config import DecoderConfig
from pbrl_jax.rl import shaping
from pbrl_jax.rl import steps

CFG = DecoderConfig(model_type="llama", vocab_size=48, hidden_size=32, intermediate_size=64,
                    num_layers=1, num_heads=4, num_kv_heads=2, head_dim=8)
B, P, M = 16, 3, 5


def _batch(seed: int, value_head: bool = False) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, CFG.vocab_size, (B, P + M)).astype(np.int32)
  prompt = np.ones((B, P), np.int32)
  prompt[::3, :1] = 0  # some left padding
  completion = (np.arange(M)[None] < rng.integers(1, M + 1, (B, 1))).astype(np.int32)
  batch = dict(tokens=tokens, valid=np.concatenate([prompt, completion], 1),
               completion_mask=completion,
               old_logp=(rng.normal(size=(B, M)) * 0.2 - 3.8).astype(np.float32),
               ref_logp=(rng.normal(size=(B, M)) * 0.2 - 3.8).astype(np.float32),
               advantages=rng.normal(size=(B,)).astype(np.float32))
  if value_head:
    batch.update(returns=rng.normal(size=(B, M)).astype(np.float32),
                 old_values=(rng.normal(size=(B, M)) * 0.1).astype(np.float32))
  return batch


def _one_device_mesh():
  return shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])


@functools.lru_cache(maxsize=None)
def _params():
  return jax.device_get(decoder.init_params(CFG, jax.random.PRNGKey(0)))


def test_score_kl_zero_when_policy_is_reference():
  mesh = _one_device_mesh()
  opt = optax.sgd(0.1)
  fns = rl.make_state_fns(CFG, opt, mesh, with_value_head=True)
  state = fns.init_random(jax.random.PRNGKey(1))
  score = rl.make_score_fn(CFG, mesh, params_shardings=fns.shardings.params)
  batch = _batch(0)
  out = score(state.params, state.params["policy"],
              {k: batch[k] for k in ("tokens", "valid", "completion_mask")})
  np.testing.assert_array_equal(out["logp"], out["ref_logp"])
  for est in rl.KLEstimator:
    np.testing.assert_array_equal(rl.kl_estimate(est, out["logp"], out["ref_logp"]), 0.0)
  assert np.all(np.asarray(out["logp"])[batch["completion_mask"] == 0] == 0.0)
  assert np.all(np.asarray(out["logp"])[batch["completion_mask"] == 1] < 0.0)
  np.testing.assert_array_equal(out["values"], 0.0)  # zero-initialised value head
  # And in the update: with old = ref = current log-probs, KL is 0 and nothing is clipped.
  hp = rl.UpdateHParams(kl_coef_in_loss=0.04, with_value_head=True)
  update = rl.make_update_fn(CFG, hp, opt, mesh, fns.shardings)
  batch.update(old_logp=np.asarray(out["logp"]), ref_logp=np.asarray(out["ref_logp"]),
               returns=np.ones((B, M), np.float32), old_values=np.zeros((B, M), np.float32))
  state, metrics = update(state, batch)
  assert float(metrics["kl"]) == 0.0
  np.testing.assert_allclose(metrics["ratio_mean"], 1.0, atol=1e-6)
  assert float(metrics["clip_frac_low"]) == 0.0 == float(metrics["clip_frac_high"])
  assert float(metrics["value_loss"]) == pytest.approx(0.5)  # 1/2 (0 - 1)^2
  assert np.abs(np.asarray(state.params["value_head"]["kernel"])).max() > 0


def test_without_a_kl_term_the_reference_forward_is_skipped():
  """`reference_outputs=False` (nothing reads the reference at beta 0) runs no reference
  forward; the update without ref_logp equals the update with it at kl_coef_in_loss 0, logs
  no `kl`, and refuses a positive KL coefficient."""
  mesh = _one_device_mesh()
  opt = optax.sgd(0.1)
  fns = rl.make_state_fns(CFG, opt, mesh, with_value_head=False)
  state = fns.init_random(jax.random.PRNGKey(1))
  batch = _batch(0)
  inputs = {k: batch[k] for k in ("tokens", "valid", "completion_mask")}
  kw = dict(params_shardings=fns.shardings.params)
  full = rl.make_score_fn(CFG, mesh, **kw)(state.params, state.params["policy"], inputs)
  lean_fn = rl.make_score_fn(CFG, mesh, reference_outputs=False, **kw)
  lean = lean_fn(state.params, state.params["policy"], inputs)
  assert set(full) - set(lean) == {"ref_logp"} and "ref_logp" not in lean
  np.testing.assert_array_equal(lean["logp"], full["logp"])
  # One decoder forward in the compiled program instead of two (plus the policy's entropy).
  cost = lambda f: f.lower(state.params, state.params["policy"], inputs).compile(
      ).cost_analysis()["flops"]
  assert cost(lean_fn) < 0.6 * cost(rl.make_score_fn(CFG, mesh, **kw))

  update = rl.make_update_fn(CFG, rl.UpdateHParams(kl_coef_in_loss=0.0), opt, mesh,
                             fns.shardings)
  without = {k: v for k, v in batch.items() if k != "ref_logp"}
  s_with, m_with = update(state, batch)
  state = fns.init_random(jax.random.PRNGKey(1))  # the first update donated it
  s_without, m_without = update(state, without)
  assert "kl" in m_with and "kl" not in m_without
  np.testing.assert_allclose(m_without["loss"], m_with["loss"], rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               s_without.params, s_with.params)
  refuses = rl.make_update_fn(CFG, rl.UpdateHParams(kl_coef_in_loss=0.04), opt, mesh,
                              fns.shardings)
  with pytest.raises(ValueError, match="ref_logp"):
    refuses(fns.init_random(jax.random.PRNGKey(1)), without)


def test_score_with_reward_encoder():
  mesh = _one_device_mesh()
  fns = rl.make_state_fns(CFG, optax.sgd(0.1), mesh, with_value_head=False)
  state = fns.init_random(jax.random.PRNGKey(1))
  embed_fn = lambda w, x: x @ w / jnp.linalg.norm(x @ w, axis=-1, keepdims=True)
  score = rl.make_score_fn(CFG, mesh, params_shardings=fns.shardings.params, embed_fn=embed_fn)
  rng = np.random.default_rng(3)
  w = rng.normal(size=(6, 4)).astype(np.float32)
  feats = rng.normal(size=(B, 6)).astype(np.float32)
  batch = _batch(0)
  out = score(state.params, state.params["policy"],
              dict(tokens=batch["tokens"], valid=batch["valid"],
                   completion_mask=batch["completion_mask"], enc_batch=feats), w)
  e = feats.astype(np.float64) @ w
  want = e / np.linalg.norm(e, axis=-1, keepdims=True)
  np.testing.assert_allclose(out["embeddings"], want, rtol=1e-5, atol=1e-6)
  assert "values" not in out


@pytest.mark.parametrize("aggregation", [
    rl.Aggregation.TOKEN_MEAN,
    pytest.param(rl.Aggregation.SEQ_MEAN_TOKEN_MEAN, marks=pytest.mark.slow),
    pytest.param(rl.Aggregation.CONSTANT, marks=pytest.mark.slow)])
def test_accumulated_gradient_equals_single_shot(aggregation):
  params = {"policy": _params(), "value_head": steps.init_value_head(CFG, jax.random.PRNGKey(2))}
  # A non-zero value head so value-loss gradients reach the trunk.
  params["value_head"]["kernel"] = jnp.full((CFG.hidden_size,), 0.1)
  hp = rl.UpdateHParams(aggregation=aggregation, kl_coef_in_loss=0.04, entropy_coef=0.01,
                        with_value_head=True, max_completion_length=7)
  loss_fn = rl.make_loss_fn(CFG, hp)
  batch = {k: jnp.asarray(v) for k, v in _batch(1, value_head=True).items()}
  batch["advantages"] = jnp.broadcast_to(batch["advantages"][:, None], (B, M))
  m = batch["completion_mask"].astype(jnp.float32)
  dens = {"policy": rl.aggregation_denominator(m, aggregation, 7), "tokens": jnp.sum(m)}

  def grads_with(n_micro):
    micro = jax.tree.map(lambda x: x.reshape((B // n_micro, n_micro) + x.shape[1:])
                         .swapaxes(0, 1), batch)
    return jax.jit(steps.accumulate_gradients, static_argnums=0)(loss_fn, params, micro, dens)

  loss1, g1, sums1 = grads_with(1)
  loss4, g4, sums4 = grads_with(4)
  np.testing.assert_allclose(loss4, loss1, rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(g4), jax.tree.leaves(g1)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  for k in sums1:
    # Clip counts are indicators: a ratio within float noise of 1 +- eps may flip between
    # batch shapes, so they may differ by one token.
    atol = 1.0 if k.startswith("clip") else 1e-5
    np.testing.assert_allclose(sums4[k], sums1[k], rtol=1e-5, atol=atol, err_msg=k)
  assert float(optax.global_norm(g1)) > 1e-3


@functools.lru_cache(maxsize=None)
def _single_device_update():
  mesh = _one_device_mesh()
  opt = optax.sgd(1.0)
  fns = rl.make_state_fns(CFG, opt, mesh, with_value_head=False)
  hp = rl.UpdateHParams(num_minibatches=2, num_microbatches=2, shuffle=True,
                        kl_coef_in_loss=0.04, aggregation=rl.Aggregation.SEQ_MEAN_TOKEN_MEAN)
  return fns, rl.make_update_fn(CFG, hp, opt, mesh, fns.shardings), hp, opt


@pytest.mark.slow
def test_sharded_update_equals_single_device():
  fns1, update1, hp, opt = _single_device_update()
  mesh8 = shd.make_mesh(2, 2, 2)
  fns8 = rl.make_state_fns(CFG, opt, mesh8, with_value_head=False)
  update8 = rl.make_update_fn(CFG, hp, opt, mesh8, fns8.shardings)
  params = _params()
  s1 = fns1.from_params(params, jax.random.PRNGKey(5))
  s8 = fns8.from_params(params, jax.random.PRNGKey(5))
  q = s8.params["policy"]["layers"]["mlp"]["gate_proj"]
  assert len(q.sharding.device_set) == 8 and not q.sharding.is_fully_replicated
  batch = _batch(2)
  s1, m1 = update1(s1, batch)
  s8, m8 = update8(s8, batch)
  moved = jax.tree.map(lambda a, b: np.abs(np.asarray(a) - np.asarray(b)).max(),
                       s1.params["policy"], params)
  assert max(jax.tree.leaves(moved)) > 1e-3  # the update did something
  for a, b in zip(jax.tree.leaves(s8.params), jax.tree.leaves(s1.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5)
  for k in m1:
    np.testing.assert_allclose(m8[k], m1[k], atol=1e-5, rtol=1e-5, err_msg=k)


@pytest.mark.slow
def test_five_steps_compile_once_and_nonfinite_guard():
  fns, update, hp, opt = _single_device_update()
  state = fns.init_random(jax.random.PRNGKey(0))
  for i in range(5):
    state, metrics = update(state, _batch(10 + i))
    assert np.isfinite(float(metrics["loss"]))
  assert update._cache_size() == 1
  assert int(state.step) == 5 and int(state.nonfinite_total) == 0

  mesh = _one_device_mesh()
  poisoned = rl.make_update_fn(CFG, hp, opt, mesh, fns.shardings,
                               nonfinite_hook=lambda step: step >= 1)
  state = fns.init_random(jax.random.PRNGKey(0))
  state, _ = poisoned(state, _batch(20))  # step 0: applied
  before = jax.device_get(state.params)
  opt_before = jax.device_get(state.opt_state)
  state, metrics = poisoned(state, _batch(21))  # step 1: both optimizer updates skipped
  assert float(metrics["skipped"]) == 1.0
  assert int(state.nonfinite_consecutive) == 2 and int(state.nonfinite_total) == 2
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(before)):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(state.opt_state), jax.tree.leaves(opt_before)):
    np.testing.assert_array_equal(a, b)
  assert rl.should_stop(state, 2) and not rl.should_stop(state, 3)


def test_state_init_shapes_and_shardings():
  mesh = shd.make_mesh(2, 2, 2)
  opt = rl.make_optimizer(rl.make_schedule(rl.Schedule.COSINE, 1e-3, 2, 10), weight_decay=0.1)
  fns = rl.make_state_fns(CFG, opt, mesh, with_value_head=True)
  abstract = jax.eval_shape(fns.init_random, jax.random.PRNGKey(0))
  assert abstract.params["value_head"]["kernel"].shape == (CFG.hidden_size,)
  # Adam moments are sharded like their parameters.
  mu = optax.tree_utils.tree_get(fns.shardings.opt_state, "mu")
  assert mu["policy"]["embed"] == fns.shardings.params["policy"]["embed"]
  assert fns.shardings.params["policy"]["embed"].spec == jax.sharding.PartitionSpec(
      "tensor", "fsdp")


def test_masked_truncated_rows_do_not_move_the_update():
  """DAPO overlong filtering: what a truncated row holds cannot change the update."""
  mesh = _one_device_mesh()
  opt = optax.sgd(0.1)
  fns = rl.make_state_fns(CFG, opt, mesh, with_value_head=False)
  hp = rl.UpdateHParams(kl_coef_in_loss=0.04, aggregation=rl.Aggregation.parse("token_mean"))
  update = rl.make_update_fn(CFG, hp, opt, mesh, fns.shardings)
  batch = _batch(3)
  finished = np.ones((B,), bool)
  finished[[1, 6, 11]] = False
  batch["completion_mask"] = np.asarray(shaping.mask_truncated(batch["completion_mask"],
                                                               finished))
  assert batch["completion_mask"][[1, 6, 11]].sum() == 0
  assert batch["completion_mask"][finished].sum() > 0
  other = dict(batch)
  other["advantages"] = batch["advantages"].copy()
  other["advantages"][[1, 6, 11]] += 5.0  # a truncated row's advantage, and its log-probs
  other["old_logp"] = batch["old_logp"].copy()
  other["old_logp"][[1, 6, 11]] -= 1.0
  s1, m1 = update(fns.init_random(jax.random.PRNGKey(2)), batch)
  s2, m2 = update(fns.init_random(jax.random.PRNGKey(2)), other)
  assert float(m1["loss"]) == float(m2["loss"])
  for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # Unmasked, the same change moves the parameters.
  loose = dict(other, completion_mask=_batch(3)["completion_mask"])
  s3, _ = update(fns.init_random(jax.random.PRNGKey(2)), loose)
  s4, _ = update(fns.init_random(jax.random.PRNGKey(2)), dict(batch, completion_mask=loose[
      "completion_mask"]))
  assert any(not np.array_equal(np.asarray(a), np.asarray(b))
             for a, b in zip(jax.tree.leaves(s3.params), jax.tree.leaves(s4.params)))
