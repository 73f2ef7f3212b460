"""The LoRA path of the train state, scoring and update steps on a tiny decoder.

The state holds only adapters (+ value head); the frozen base is passed next to it and is the
reference. A fresh adapter (B = 0) scores exactly like the base; one SGD step moves B by
-lr * scale * A^T dL/dW', with dL/dW' from the full fine-tuning loss at W' = merged weights.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pbrl_jax import rl
from pbrl_jax.models import decoder, lora
from pbrl_jax.models import sharding as shd
from pbrl_jax.models.config import DecoderConfig
from pbrl_jax.rl import losses

CFG = DecoderConfig(model_type="llama", vocab_size=48, hidden_size=32, intermediate_size=64,
                    num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8)
B, P, M = 8, 3, 5
SPEC = lora.LoraSpec(rank=4, alpha=8.0, targets=("q_proj", "o_proj", "down_proj"))
LR = 0.5


def _batch(seed: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, CFG.vocab_size, (B, P + M)).astype(np.int32)
  prompt = np.ones((B, P), np.int32)
  prompt[::3, :1] = 0
  completion = (np.arange(M)[None] < rng.integers(1, M + 1, (B, 1))).astype(np.int32)
  return dict(tokens=tokens, valid=np.concatenate([prompt, completion], 1),
              completion_mask=completion,
              old_logp=(rng.normal(size=(B, M)) * 0.2 - 3.8).astype(np.float32),
              ref_logp=(rng.normal(size=(B, M)) * 0.2 - 3.8).astype(np.float32),
              advantages=rng.normal(size=(B,)).astype(np.float32),
              returns=rng.normal(size=(B, M)).astype(np.float32),
              old_values=(rng.normal(size=(B, M)) * 0.1).astype(np.float32))


def test_lora_state_score_and_update():
  mesh = shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  opt = optax.sgd(LR)
  fns = rl.make_state_fns(CFG, opt, mesh, with_value_head=True, lora=SPEC)
  base_host = jax.device_get(decoder.init_params(CFG, jax.random.PRNGKey(0)))
  base = jax.device_put(base_host, fns.policy_shardings)
  state = fns.from_params(base, jax.random.PRNGKey(1))
  # Only adapters and the value head are trainable; no copy of the base in the state.
  assert set(state.params) == {"lora", "value_head"}
  assert set(state.params["lora"]["layers"]["attn"]) == {"q_proj", "o_proj"}
  assert len(jax.tree.leaves(state.params)) == 2 * len(SPEC.targets) + 2

  # A fresh adapter: policy == reference == base, exactly.
  score = rl.make_score_fn(CFG, mesh, params_shardings=fns.shardings.params, lora=SPEC,
                           ref_shardings=fns.policy_shardings)
  batch = _batch(0)
  out = score(state.params, base, {k: batch[k] for k in ("tokens", "valid", "completion_mask")})
  np.testing.assert_array_equal(out["logp"], out["ref_logp"])
  assert np.all(np.asarray(out["logp"])[batch["completion_mask"] == 1] < 0.0)

  # Reference gradient: the full fine-tuning loss, differentiated w.r.t. the merged weights.
  hp = rl.UpdateHParams(kl_coef_in_loss=0.04, with_value_head=True)
  adapters0 = jax.device_get(state.params["lora"])
  merged = lora.apply_lora(base_host, adapters0, SPEC.alpha, SPEC.rank)
  full = {"policy": merged, "value_head": jax.device_get(state.params["value_head"])}
  mb = {k: jnp.asarray(v) for k, v in batch.items()}
  mb["advantages"] = jnp.broadcast_to(mb["advantages"][:, None], (B, M))
  m = mb["completion_mask"].astype(jnp.float32)
  dens = {"policy": jnp.maximum(losses.aggregation_denominator(m, hp.aggregation, None), 1.0),
          "tokens": jnp.sum(m)}
  g_full = jax.grad(lambda p: rl.make_loss_fn(CFG, hp)(p, mb, dens)[0])(full)

  update = rl.make_update_fn(CFG, hp, opt, mesh, fns.shardings, lora=SPEC,
                             base_shardings=fns.policy_shardings)
  new_state, metrics = update(state, batch, base)
  assert np.isfinite(float(metrics["loss"])) and int(new_state.step) == 1
  # The base is neither donated nor changed.
  for a, b in zip(jax.tree.leaves(base), jax.tree.leaves(base_host)):
    np.testing.assert_array_equal(np.asarray(a), b)
  scale = SPEC.alpha / SPEC.rank
  for name in SPEC.targets:
    group, kernel = lora.TARGETS[name].path
    a0 = np.asarray(adapters0["layers"][group][kernel]["a"])
    new = jax.device_get(new_state.params["lora"]["layers"][group][kernel])
    gw = np.asarray(g_full["policy"]["layers"][group][kernel])  # [L, I..., O...]
    l, r = a0.shape[0], a0.shape[-1]
    grad_b = scale * np.einsum("lir,lio->lro", a0.reshape(l, -1, r), gw.reshape(
        l, a0[..., 0].size // l, -1))
    step_b = np.asarray(new["b"]).reshape(grad_b.shape)  # B was 0
    assert np.abs(grad_b).max() > 1e-4, name
    np.testing.assert_allclose(step_b, -LR * grad_b, rtol=1e-4, atol=1e-6, err_msg=name)
    # dL/dA = scale * dL/dW' B^T = 0 while B = 0.
    np.testing.assert_array_equal(new["a"], a0)
  np.testing.assert_allclose(
      np.asarray(new_state.params["value_head"]["kernel"]),
      np.asarray(full["value_head"]["kernel"]) - LR * np.asarray(g_full["value_head"]["kernel"]),
      rtol=1e-4, atol=1e-6)

  # After the step the policy differs from the reference (the base), which is unchanged.
  out = score(new_state.params, base,
              {k: batch[k] for k in ("tokens", "valid", "completion_mask")})
  real = batch["completion_mask"] == 1
  assert np.abs(np.asarray(out["logp"] - out["ref_logp"])[real]).max() > 1e-4
