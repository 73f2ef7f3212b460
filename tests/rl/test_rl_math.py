"""Advantages, KL estimators and losses against plain NumPy loops (fp64 and fp32)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rl_numpy_refs as ref
from pbrl_jax import rl

DTYPES = [("float64", 1e-9), ("float32", 1e-5)]


def _x64(dtype):
  return jax.enable_x64(dtype == "float64")


def _mask(rng, b, t):
  lengths = rng.integers(1, t + 1, size=(b, 1))
  m = (np.arange(t)[None] < lengths).astype(np.float64)
  m[0] = 0.0  # one fully masked row
  return m


@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_group_advantages(dtype, tol):
  rng = np.random.default_rng(0)
  g = 4
  r = rng.normal(size=16)
  r[4:8] = 0.3  # a zero-std group
  r[9] = r[8]  # a tie
  with _x64(dtype):
    x = jnp.asarray(r, dtype)
    np.testing.assert_allclose(rl.grpo_advantages(x, g), ref.grpo(r, g), atol=tol, rtol=tol)
    np.testing.assert_allclose(rl.grpo_advantages(x, g, std_floor=0.5, eps=1e-6, ddof=0),
                               ref.grpo(r, g, 0.5, 1e-6, 0), atol=tol, rtol=tol)
    np.testing.assert_allclose(rl.dr_grpo_advantages(x, g), ref.grpo(r, g, scale=False),
                               atol=tol, rtol=tol)
    np.testing.assert_allclose(rl.rloo_advantages(x, g), ref.rloo(r, g), atol=tol, rtol=tol)
    np.testing.assert_allclose(rl.rank_advantages(x, g), ref.rank(r, g), atol=tol, rtol=tol)
    spread = rl.group_spread_metrics(x, g)
    np.testing.assert_allclose(spread["reward_zero_std_group_frac"], 0.25)
    np.testing.assert_allclose(spread["reward_group_std_mean"],
                               np.mean(np.std(r.reshape(-1, g), axis=-1)), rtol=1e-5)


def test_group_advantages_reject_bad_groups():
  with pytest.raises(ValueError, match="multiple of group size"):
    rl.grpo_advantages(jnp.zeros(6), 4)
  with pytest.raises(ValueError, match="advantage estimator"):
    rl.AdvantageEstimator.parse("grpoo")


@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_gae_and_whiten(dtype, tol):
  rng = np.random.default_rng(1)
  b, t = 5, 7
  rewards, values = rng.normal(size=(b, t)), rng.normal(size=(b, t))
  mask = _mask(rng, b, t)
  mask[1] = 1.0  # a truncated row: the bootstrap value enters
  boot = rng.normal(size=b)
  for gamma, lam in [(1.0, 0.95), (0.9, 0.8)]:
    want_adv, want_ret = ref.gae(rewards, values, mask, gamma, lam, boot)
    with _x64(dtype):
      adv, ret = rl.gae(jnp.asarray(rewards, dtype), jnp.asarray(values, dtype),
                        jnp.asarray(mask, dtype), gamma, lam, jnp.asarray(boot, dtype))
    np.testing.assert_allclose(adv, want_adv, atol=tol * 10, rtol=tol)
    np.testing.assert_allclose(ret, want_ret, atol=tol * 10, rtol=tol)
  x = rng.normal(size=(b, t)) * 3 + 1
  for shift in (True, False):
    with _x64(dtype):
      got = rl.masked_whiten(jnp.asarray(x, dtype), jnp.asarray(mask, dtype), shift_mean=shift)
    np.testing.assert_allclose(got, ref.whiten(x, mask, shift), atol=tol * 10, rtol=tol)


@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_surrogate_value_kl(dtype, tol):
  rng = np.random.default_rng(2)
  b, t = 6, 5
  logp = rng.normal(size=(b, t)) * 0.3 - 2
  old = logp + rng.normal(size=(b, t)) * 0.3
  ref_lp = logp + rng.normal(size=(b, t)) * 0.3
  adv = rng.normal(size=b)
  with _x64(dtype):
    j = lambda x: jnp.asarray(x, dtype)
    for dual in (None, 3.0):
      got = rl.clipped_surrogate(j(logp), j(old), j(adv), 0.2, 0.28, dual)
      for g, w in zip(got, ref.surrogate(logp, old, adv, 0.2, 0.28, dual)):
        np.testing.assert_allclose(g, w, atol=tol, rtol=tol)
    # [B,T] advantages broadcast the same way as [B].
    got_bt = rl.clipped_surrogate(j(logp), j(old), j(np.repeat(adv[:, None], t, 1)), 0.2, 0.28)
    np.testing.assert_allclose(got_bt[0], ref.surrogate(logp, old, adv, 0.2, 0.28)[0],
                               atol=tol, rtol=tol)
    v, old_v, ret = rng.normal(size=(3, b, t))
    got_v, _ = rl.clipped_value_loss(j(v), j(old_v), j(ret), 0.2)
    np.testing.assert_allclose(got_v, ref.value_loss(v, old_v, ret, 0.2), atol=tol, rtol=tol)
    for kind in ("k1", "k2", "k3"):
      got_kl = rl.kl_estimate(rl.KLEstimator.parse(kind), j(logp), j(ref_lp))
      np.testing.assert_allclose(got_kl, ref.kl(logp, ref_lp, kind), atol=tol, rtol=tol)
    clamped = rl.kl_estimate(rl.KLEstimator.K1, j(logp), j(ref_lp), clamp=(-0.1, 0.1))
    np.testing.assert_allclose(clamped, np.clip(ref.kl(logp, ref_lp, "k1"), -0.1, 0.1),
                               atol=tol)


@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_sequence_weights_cispo_and_sapo(dtype, tol):
  rng = np.random.default_rng(5)
  b, t = 6, 5
  logp = rng.normal(size=(b, t)) * 0.3 - 2
  old = logp + rng.normal(size=(b, t)) * 0.4
  adv = rng.normal(size=b)  # both signs: SAPO's two temperatures (A = 0 gives 0 with either)
  mask = _mask(rng, b, t)
  with _x64(dtype):
    j = lambda x: jnp.asarray(x, dtype)
    seq = rl.log_importance_weights(j(logp), j(old), j(mask), rl.ImportanceLevel.SEQUENCE)
    assert seq.shape == (b, 1)
    np.testing.assert_allclose(np.exp(seq[:, 0]), ref.sequence_weights(logp, old, mask),
                               atol=tol, rtol=tol)
    tok = rl.log_importance_weights(j(logp), j(old), j(mask), rl.ImportanceLevel.TOKEN)
    np.testing.assert_allclose(tok, logp - old, atol=tol, rtol=tol)
    w = np.exp(logp - old)
    for eps_high in (0.9, 1.2, 5.0):
      got, clipped = rl.cispo_surrogate(j(logp), j(w), j(adv), eps_high)
      want, want_clipped = ref.cispo(logp, w, adv, eps_high)
      np.testing.assert_allclose(got, want, atol=tol, rtol=tol)
      np.testing.assert_array_equal(clipped, want_clipped)
    np.testing.assert_allclose(rl.sapo_surrogate(j(w), j(adv), 1.0, 1.05),
                               ref.sapo(w, adv, 1.0, 1.05), atol=tol, rtol=tol)
    # Sequence weights [B,1] broadcast over the tokens like token weights.
    ws = np.repeat(ref.sequence_weights(logp, old, mask)[:, None], t, 1)
    got = rl.sapo_surrogate(j(np.exp(seq)), j(adv), 1.0, 1.05)
    assert got.shape == (b, 1)
    np.testing.assert_allclose(np.broadcast_to(got, ws.shape), ref.sapo(ws, adv, 1.0, 1.05),
                               atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_vespo_weight_and_loss(dtype, tol):
  rng = np.random.default_rng(8)
  b, t = 8, 6
  logp = rng.normal(size=(b, t)) * 0.3 - 2
  old = logp + rng.normal(size=(b, t)) * 0.25  # W from about e^-1.5 to e^1.5
  old[0, :] = logp[0, :] + 30.0  # a token log-ratio past the +-20 clip, and W below 1e-8
  adv = rng.normal(size=b)
  adv[1] = 0.0  # A = 0 takes the positive pair
  mask = _mask(rng, b, t)
  mask[0, :2] = mask[2, :2] = 1
  rho = np.exp(rng.normal(size=(b, t)) * 0.2)
  rho[2, 1] = 0.0  # a masked-out token (token_mask) sinks its sequence
  params = (2.0, 3.0, 3.0, 2.0)
  with _x64(dtype):
    j = lambda x: jnp.asarray(x, dtype)
    for weight in (None, rho):
      log_w = rl.vespo_log_weight(j(logp), j(old), j(mask),
                                  None if weight is None else j(weight))
      got, phi = rl.vespo_surrogate(j(logp), log_w, j(adv), *params)
      want, want_phi = ref.vespo(logp, old, mask, adv, *params, rollout_weight=weight)
      assert log_w.shape == phi.shape == (b, 1)
      np.testing.assert_allclose(phi[:, 0], want_phi, atol=tol, rtol=tol)
      np.testing.assert_allclose(got, want, atol=tol, rtol=tol)
      assert want_phi[0] < 1e-12  # W clipped to 1e-8: the sequence is dropped
      assert (want_phi[2] < 1e-12) == (weight is not None)  # and so by a masked-out token
    # phi(1) = 1: on-policy sequences keep the plain policy-gradient term -A log pi.
    one, _ = rl.vespo_surrogate(j(logp), jnp.zeros((b, 1), dtype), j(adv), *params)
    np.testing.assert_allclose(one, -adv[:, None] * logp, atol=tol, rtol=tol)
    # The weight is detached: the gradient of sum(loss) in log pi is -phi A.
    grad = jax.grad(lambda lp: jnp.sum(rl.vespo_surrogate(lp, log_w, j(adv), *params)[0]))(
        j(logp))
    np.testing.assert_allclose(grad, -want_phi[:, None] * adv[:, None] * np.ones((b, t)),
                               atol=tol, rtol=tol)


def test_cispo_and_sequence_weight_gradients():
  """CISPO's weight is detached (gradient -min(w, eps) A per token); GSPO's sequence weight
  sends d/dlogp_t = w A / n to every real token: both against central differences (fp64)."""
  rng = np.random.default_rng(6)
  b, t = 4, 5
  logp = rng.normal(size=(b, t)) * 0.3 - 2
  old = logp + rng.normal(size=(b, t)) * 0.4
  adv = rng.normal(size=b)
  mask = _mask(rng, b, t)
  with jax.enable_x64(True):
    def cispo_sum(lp):
      w = jax.lax.stop_gradient(jnp.exp(lp - old))
      return jnp.sum(rl.cispo_surrogate(lp, w, jnp.asarray(adv), 1.2)[0] * mask)

    def gspo_sum(lp):
      w = jnp.exp(rl.log_importance_weights(lp, jnp.asarray(old), jnp.asarray(mask),
                                            rl.ImportanceLevel.SEQUENCE))
      loss, _, _ = rl.clip_surrogate_of_weights(w, jnp.asarray(adv), 10.0, 10.0)
      return jnp.sum(jnp.broadcast_to(loss, lp.shape) * mask)

    g_cispo = np.asarray(jax.grad(cispo_sum)(jnp.asarray(logp)))
    np.testing.assert_allclose(
        g_cispo, -np.minimum(np.exp(logp - old), 1.2) * adv[:, None] * mask, atol=1e-12)
    g_gspo = np.asarray(jax.grad(gspo_sum)(jnp.asarray(logp)))

    def numeric(f, x, h=1e-6):
      out = np.zeros_like(x)
      for idx in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[idx] += h
        down[idx] -= h
        out[idx] = (float(f(jnp.asarray(up))) - float(f(jnp.asarray(down)))) / (2 * h)
      return out

    np.testing.assert_allclose(g_gspo, numeric(gspo_sum, logp), atol=1e-7)
    assert np.abs(g_gspo).max() > 1e-2


@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_aggregation_and_kl_reward(dtype, tol):
  rng = np.random.default_rng(3)
  b, t = 6, 5
  per_token = rng.normal(size=(b, t))
  mask = _mask(rng, b, t)
  with _x64(dtype):
    j = lambda x: jnp.asarray(x, dtype)
    for name, mode in [("dapo", "token_mean"), ("grpo", "seq_mean_token_mean"),
                       ("dr_grpo", "constant"), ("seq_sum", "seq_sum")]:
      agg = rl.Aggregation.parse(name)
      assert agg is rl.Aggregation(mode)
      s, d = rl.aggregate(j(per_token), j(mask), agg, max_completion_length=8)
      ws, wd = ref.aggregate(per_token, mask, mode, 8)
      np.testing.assert_allclose([s, d], [ws, wd], atol=tol, rtol=tol)
      np.testing.assert_allclose(rl.aggregation_denominator(j(mask), agg, 8), wd, rtol=tol)
      # Sums and denominators add over disjoint micro-batches.
      s1, d1 = rl.aggregate(j(per_token[:2]), j(mask[:2]), agg, 8)
      s2, d2 = rl.aggregate(j(per_token[2:]), j(mask[2:]), agg, 8)
      np.testing.assert_allclose((s1 + s2) / (d1 + d2), ws / wd, atol=tol, rtol=tol)
    scores, kl_tok = rng.normal(size=b), rng.normal(size=(b, t))
    got = rl.kl_penalized_rewards(j(scores), j(kl_tok), j(mask), 0.05)
    np.testing.assert_allclose(got, ref.kl_reward(scores, kl_tok, mask, 0.05), atol=tol)
  with pytest.raises(ValueError,
                     match=r"aggregation 'seq_mean'; expected one of .*'token_mean'.*'dapo'"):
    rl.Aggregation.parse("seq_mean")


def test_explained_variance():
  rng = np.random.default_rng(4)
  ret = rng.normal(size=(4, 6))
  mask = np.ones((4, 6))
  np.testing.assert_allclose(rl.explained_variance(jnp.asarray(ret), jnp.asarray(ret),
                                                   jnp.asarray(mask)), 1.0, atol=1e-6)
  np.testing.assert_allclose(
      rl.explained_variance(jnp.full((4, 6), float(ret.mean())), jnp.asarray(ret),
                            jnp.asarray(mask)), 0.0, atol=1e-5)


def test_kl_zero_when_policy_is_reference():
  lp = jnp.asarray(np.random.default_rng(5).normal(size=(3, 4)) - 2)
  for est in rl.KLEstimator:
    np.testing.assert_array_equal(rl.kl_estimate(est, lp, lp), 0.0)


@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_rollout_correction_weights_match_loops(dtype, tol):
  rng = np.random.default_rng(11)
  b, t = 7, 6
  sampler = rng.normal(size=(b, t)) * 0.5 - 2
  trainer = sampler + rng.normal(size=(b, t)) * 0.6  # ratios on both sides of the bounds
  mask = _mask(rng, b, t)
  with _x64(dtype):
    j = lambda x: jnp.asarray(x, dtype)
    for mode in ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask"):
      for low, high in ((None, 3.0), (0.5, 2.0), (0.8, None), (None, None)):
        got, stats = rl.rollout_correction_weights(
            j(trainer), j(sampler), j(mask), rl.RolloutCorrection.parse(mode), low, high)
        want, bounded = ref.rollout_correction(trainer, sampler, mask, mode, low, high)
        np.testing.assert_allclose(got, want, atol=tol, rtol=tol, err_msg=f"{mode} {low} {high}")
        assert float(stats["mismatch/bounded_frac"]) == pytest.approx(bounded, abs=tol)
        if low is not None and mode.endswith("mask"):
          assert bounded > 0  # the bounds bite in this draw: not a vacuous match
    _, stats = rl.rollout_correction_weights(j(trainer), j(sampler), j(mask),
                                             rl.RolloutCorrection.TOKEN_TRUNCATE, None, None)
    diffs = [abs(trainer[i, k] - sampler[i, k]) for i in range(b) for k in range(t)
             if mask[i, k]]
    assert float(stats["mismatch/logp_diff_mean"]) == pytest.approx(np.mean(diffs), rel=tol)
    assert float(stats["mismatch/logp_diff_max"]) == pytest.approx(max(diffs), rel=tol)
    ratios = [math.exp(trainer[i, k] - sampler[i, k]) for i in range(b) for k in range(t)
              if mask[i, k]]
    assert float(stats["mismatch/is_ratio_min"]) == pytest.approx(min(ratios), rel=tol)
    assert float(stats["mismatch/is_ratio_mean"]) == pytest.approx(np.mean(ratios), rel=tol)
    assert float(stats["mismatch/is_ratio_max"]) == pytest.approx(max(ratios), rel=tol)
    # Per sequence: one ratio per row with a valid token.
    _, stats = rl.rollout_correction_weights(j(trainer), j(sampler), j(mask),
                                             rl.RolloutCorrection.SEQUENCE_MASK, None, None)
    seq = [math.exp(sum(trainer[i, k] - sampler[i, k] for k in range(t) if mask[i, k]))
           for i in range(b) if mask[i].any()]
    assert float(stats["mismatch/is_ratio_mean"]) == pytest.approx(np.mean(seq), rel=tol)
  # Identical log-probs (an fp32 sampler that is the trainer): every weight is 1.
  same, stats = rl.rollout_correction_weights(jnp.asarray(sampler), jnp.asarray(sampler),
                                              jnp.asarray(mask),
                                              rl.RolloutCorrection.SEQUENCE_MASK, None, 3.0)
  np.testing.assert_array_equal(np.asarray(same), np.ones((b, t)))
  assert float(stats["mismatch/logp_diff_max"]) == 0.0


@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_entropy_quantile_mask_matches_loop(dtype, tol):
  rng = np.random.default_rng(12)
  b, t = 6, 7
  entropy = rng.gamma(2.0, 0.5, size=(b, t))
  mask = _mask(rng, b, t)
  with _x64(dtype):
    for q in (1.0, 0.8, 0.5, 0.2, 0.05):
      got = rl.entropy_quantile_mask(jnp.asarray(entropy, dtype), jnp.asarray(mask, dtype), q)
      want = ref.entropy_mask(entropy.astype(dtype), mask, q)
      np.testing.assert_array_equal(np.asarray(got), want, err_msg=f"quantile {q}")
      kept = want.sum() / mask.sum()
      assert kept >= q - 1.0 / mask.sum() - 1e-12  # about the top q of the valid tokens
  nothing = rl.entropy_quantile_mask(jnp.asarray(entropy), jnp.zeros((b, t)), 0.2)
  np.testing.assert_array_equal(np.asarray(nothing), np.zeros((b, t)))
