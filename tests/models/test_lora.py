"""LoRA adapters: exactness at init, merge against NumPy and transformers, axes, gradients.

Relative error is max|ours - ref| / max|ref| (`reference_models.rel_err`).
"""

import copy
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax.sharding import PartitionSpec as P

from pbrl_jax.models import decoder, from_pretrained, lora
from pbrl_jax.models.config import DecoderConfig
from pbrl_jax.models.sharding import DEFAULT_RULES, make_mesh, param_shardings
from reference_models import rel_err, tiny_hf_model, torch_logits

TOL = 1e-4
ALPHA, RANK = 16.0, 4
# HF module name of each target (per layer i).
HF_NAMES = {
    "q_proj": "model.layers.{i}.self_attn.q_proj.weight",
    "k_proj": "model.layers.{i}.self_attn.k_proj.weight",
    "v_proj": "model.layers.{i}.self_attn.v_proj.weight",
    "o_proj": "model.layers.{i}.self_attn.o_proj.weight",
    "gate_proj": "model.layers.{i}.mlp.gate_proj.weight",
    "up_proj": "model.layers.{i}.mlp.up_proj.weight",
    "down_proj": "model.layers.{i}.mlp.down_proj.weight",
}


def _tiny_config(**kw) -> DecoderConfig:
  fields = dict(model_type="qwen3", vocab_size=97, hidden_size=32, intermediate_size=48,
                num_layers=2, num_heads=4, num_kv_heads=2, head_dim=12, qk_norm=True)
  fields.update(kw)
  return DecoderConfig(**fields)


def _perturb_b(lora_params, seed: int, std: float = 0.1):
  """Random B everywhere (a fresh adapter has B = 0 and would hide merge mistakes)."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(lora_params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  out = [std * jax.random.normal(k, x.shape, x.dtype) if path[-1].key == "b" else x
         for k, (path, x) in zip(keys, leaves)]
  return jax.tree_util.tree_unflatten(treedef, out)


def _tokens(vocab: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(3, vocab, size=(2, 11))
  valid = np.ones_like(ids)
  valid[1, :4] = 0
  return np.where(valid == 1, ids, 0), valid


_logits = jax.jit(decoder.logits_fn, static_argnums=1)
_init_base = jax.jit(decoder.init_params, static_argnums=0)
_init_lora = jax.jit(lora.init_lora, static_argnums=(0, 1, 2))
_apply = jax.jit(lora.apply_lora, static_argnums=(2, 3))


@functools.partial(jax.jit, static_argnums=1)
def _unmerged_logits(base, config, adapters, ids, valid):
  """Logits with the adapters applied inside each projection (no merged kernel)."""
  v = valid.astype(bool)
  hidden, _ = decoder.forward(base, config, ids, decoder.positions_from_mask(v),
                              decoder.causal_mask(v), lora=adapters, lora_scale=ALPHA / RANK)
  return decoder.unembed(base, config, hidden)


def test_zero_b_gives_exactly_the_base_logits():
  config = _tiny_config()
  base = _init_base(config, jax.random.PRNGKey(0))
  adapters = _init_lora(config, lora.ALL_TARGETS, RANK, jax.random.PRNGKey(1))
  merged = _apply(base, adapters, ALPHA, RANK)
  ids, valid = _tokens(config.vocab_size)
  np.testing.assert_array_equal(np.asarray(_logits(merged, config, ids, valid)),
                                np.asarray(_logits(base, config, ids, valid)))
  # A is random (so only B = 0 makes this exact), and untargeted weights are passed through.
  a = adapters["layers"]["attn"]["q_proj"]["a"]
  assert float(jnp.abs(a).min()) > 0
  assert set(merged) == set(base)
  np.testing.assert_array_equal(merged["embed"], base["embed"])


def test_init_shapes_and_scale():
  config = _tiny_config(hidden_size=64, num_layers=3, intermediate_size=80)
  adapters = lora.init_lora(config, lora.ALL_TARGETS, 8, jax.random.PRNGKey(0))
  l, d, n, k, h, f = 3, 64, 4, 2, 12, 80
  expected = {
      ("attn", "q_proj"): ((l, d, 8), (l, 8, n, h), d),
      ("attn", "k_proj"): ((l, d, 8), (l, 8, k, h), d),
      ("attn", "v_proj"): ((l, d, 8), (l, 8, k, h), d),
      ("attn", "o_proj"): ((l, n, h, 8), (l, 8, d), n * h),
      ("mlp", "gate_proj"): ((l, d, 8), (l, 8, f), d),
      ("mlp", "up_proj"): ((l, d, 8), (l, 8, f), d),
      ("mlp", "down_proj"): ((l, f, 8), (l, 8, d), f),
  }
  got = {(g, name): v for g, sub in adapters["layers"].items() for name, v in sub.items()}
  assert set(got) == set(expected)
  for key, (a_shape, b_shape, d_in) in expected.items():
    a, b = np.asarray(got[key]["a"]), np.asarray(got[key]["b"])
    assert a.shape == a_shape and b.shape == b_shape and a.dtype == np.float32, key
    assert not b.any(), key
    # std 1/sqrt(d_in), within sampling error of >= 1536 draws (~2% std of the estimate).
    assert abs(a.std() * np.sqrt(d_in) - 1.0) < 0.1, (key, a.std() * np.sqrt(d_in))


@pytest.mark.parametrize("family", ["llama", "qwen3_tied"])
def test_merge_matches_numpy_and_transformers(family, tmp_path):
  from transformers import AutoModelForCausalLM
  model, path = tiny_hf_model(family, tmp_path)
  bundle = from_pretrained(path)
  config = bundle.config
  adapters = _perturb_b(_init_lora(config, lora.ALL_TARGETS, RANK, jax.random.PRNGKey(3)),
                        seed=4)
  ids, valid = _tokens(config.vocab_size, 5)
  real = valid == 1
  ours = np.asarray(_logits(_apply(bundle.params, adapters, ALPHA, RANK), config, ids, valid))

  # Reference merge in NumPy, on transformers' own [out, in] weights:
  # W_hf + scale * (A_flat [in, R] @ B_flat [R, out]).T, heads flattened row-major.
  scale = ALPHA / RANK
  state = {k: v.detach().numpy().astype(np.float64) for k, v in model.state_dict().items()}
  for name, t in lora.TARGETS.items():
    ad = adapters["layers"][t.path[0]][t.path[1]]
    a, b = np.asarray(ad["a"], np.float64), np.asarray(ad["b"], np.float64)
    for i in range(config.num_layers):
      delta = a[i].reshape(-1, RANK) @ b[i].reshape(RANK, -1)  # [in, out]
      state[HF_NAMES[name].format(i=i)] += scale * delta.T
  adapted = copy.deepcopy(model)
  adapted.load_state_dict({k: torch.as_tensor(v, dtype=torch.float32) for k, v in state.items()})
  ref = torch_logits(adapted, ids, valid)

  # The adapters change the model a lot, so agreeing with `ref` is not agreeing with the base.
  assert rel_err(torch_logits(model, ids, valid)[real], ref[real]) > 0.05
  err_torch = rel_err(ours[real], ref[real])
  assert err_torch <= TOL, err_torch
  # The unmerged path (what training, scoring and sampling run) gives the same model.
  unmerged = np.asarray(_unmerged_logits(bundle.params, config, adapters, ids, valid))
  err_unmerged = rel_err(unmerged[real], ref[real])
  assert err_unmerged <= TOL, err_unmerged

  # Our forward on the NumPy-merged weights (through our loader) matches our merged forward.
  ref_dir = str(tmp_path / "numpy_merged")
  adapted.save_pretrained(ref_dir, safe_serialization=True)
  numpy_merged = from_pretrained(ref_dir)
  ours_ref = np.asarray(_logits(numpy_merged.params, config, ids, valid))
  assert rel_err(ours[real], ours_ref[real]) <= 1e-5

  # The merged export loads in transformers as the adapted model.
  out = lora.merge_and_export(bundle.params, adapters, config, bundle.tokenizer,
                              str(tmp_path / "export"), alpha=ALPHA, rank=RANK)
  reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  assert type(reloaded) is type(model)
  err_export = rel_err(torch_logits(reloaded, ids, valid)[real], ref[real])
  assert err_export <= TOL, err_export
  assert not os.path.exists(os.path.join(out, "adapter_config.json"))  # a plain checkpoint


def test_subset_of_targets_changes_only_those_kernels():
  config = _tiny_config()
  base = _init_base(config, jax.random.PRNGKey(0))
  adapters = _perturb_b(_init_lora(config, ("q_proj", "down_proj"), RANK,
                                    jax.random.PRNGKey(1)), seed=2)
  merged = _apply(base, adapters, ALPHA, RANK)
  changed = {("layers", "attn", "q_proj"), ("layers", "mlp", "down_proj")}
  flat = lambda tree: {tuple(k.key for k in path): np.asarray(x)
                       for path, x in jax.tree_util.tree_leaves_with_path(tree)}
  base_flat, merged_flat = flat(base), flat(merged)
  assert set(base_flat) == set(merged_flat) and changed <= set(base_flat)
  for key, w in base_flat.items():
    assert np.array_equal(w, merged_flat[key]) != (key in changed), key


def test_bad_arguments_raise():
  config = _tiny_config()
  base = _init_base(config, jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="lm_head"):
    lora.init_lora(config, ("q_proj", "lm_head"), RANK, jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="rank"):
    lora.init_lora(config, ("q_proj",), 0, jax.random.PRNGKey(0))
  adapters = lora.init_lora(config, ("q_proj",), RANK, jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="rank"):
    lora.apply_lora(base, adapters, ALPHA, RANK + 1)
  bogus = {"layers": {"attn": {"q_norm": adapters["layers"]["attn"]["q_proj"]}}}
  with pytest.raises(ValueError, match="q_norm"):
    lora.apply_lora(base, bogus, ALPHA, RANK)


def test_logical_axes_match_params_and_shard():
  config = _tiny_config(num_heads=4, num_kv_heads=2, intermediate_size=48)
  adapters = _init_lora(config, lora.ALL_TARGETS, RANK, jax.random.PRNGKey(0))
  axes = lora.lora_logical_axes(config, lora.ALL_TARGETS, RANK)
  is_spec = lambda x: isinstance(x, P)
  assert (jax.tree.structure(axes, is_leaf=is_spec) == jax.tree.structure(adapters))
  known = {name for name, _ in DEFAULT_RULES}
  for spec, x in zip(jax.tree.leaves(axes, is_leaf=is_spec), jax.tree.leaves(adapters)):
    assert len(spec) == x.ndim and set(spec) <= known, spec
    assert spec[0] == "layers" and lora.RANK_AXIS in spec
  assert axes["layers"]["attn"]["q_proj"]["b"] == P("layers", "lora_rank", "q_heads", "head_dim")
  assert axes["layers"]["attn"]["o_proj"]["a"] == P("layers", "q_heads", "head_dim", "lora_rank")
  # A shards like the kernel's input dims, B like its output dims; R is replicated.
  mesh = make_mesh(data=2, fsdp=2, tensor=2)
  sh = param_shardings(axes, lora.lora_shapes(config, lora.ALL_TARGETS, RANK), mesh)
  assert sh["layers"]["attn"]["q_proj"]["a"].spec == P(None, "fsdp", None)
  assert sh["layers"]["attn"]["q_proj"]["b"].spec == P(None, None, "tensor", None)
  assert sh["layers"]["attn"]["o_proj"]["a"].spec == P(None, "tensor", None, None)
  assert sh["layers"]["mlp"]["down_proj"]["b"].spec == P(None, None, "fsdp")
  placed = jax.device_put(adapters, sh)
  base = _init_base(config, jax.random.PRNGKey(1))
  ids, valid = _tokens(config.vocab_size)
  np.testing.assert_allclose(
      np.asarray(_logits(_apply(base, placed, ALPHA, RANK), config, ids, valid)),
      np.asarray(_logits(_apply(base, adapters, ALPHA, RANK), config, ids, valid)),
      rtol=0, atol=1e-5)


def test_gradients_reach_only_the_adapters():
  config = _tiny_config()
  base = _init_base(config, jax.random.PRNGKey(0))
  fresh = _init_lora(config, lora.ALL_TARGETS, RANK, jax.random.PRNGKey(1))
  ids, valid = _tokens(config.vocab_size)
  weights = jax.random.normal(jax.random.PRNGKey(2), (2, 11, config.vocab_size))

  def loss(base_params, lora_params):
    merged = lora.apply_lora(base_params, lora_params, ALPHA, RANK)
    return jnp.sum(decoder.logits_fn(merged, config, ids, valid) * weights)

  grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
  adapters = _perturb_b(fresh, seed=3)
  g_base, g_lora = grad(base, adapters)
  # The base is frozen: zero gradient everywhere, even when asked for.
  assert all(not np.asarray(g).any() for g in jax.tree.leaves(g_base))
  # Every adapter leaf gets a gradient.
  assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(g_lora))
  # It is the right gradient: a central difference along a random direction.
  leaves, treedef = jax.tree.flatten(adapters)
  keys = jax.random.split(jax.random.PRNGKey(4), len(leaves))
  v = jax.tree.unflatten(treedef, [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])
  eps = 1e-3
  f = jax.jit(loss)
  shift = lambda s: jax.tree.map(lambda x, d: x + s * d, adapters, v)
  numeric = (float(f(base, shift(eps))) - float(f(base, shift(-eps)))) / (2 * eps)
  analytic = sum(float(jnp.vdot(g, d)) for g, d in zip(jax.tree.leaves(g_lora),
                                                          jax.tree.leaves(v)))
  assert abs(numeric - analytic) <= 1e-2 * abs(analytic), (numeric, analytic)
  # With B = 0 (a fresh adapter) only B gets a gradient: dW'/dA = scale * B = 0.
  _, g_fresh = grad(base, fresh)
  for group in g_fresh["layers"].values():
    for ad in group.values():
      assert not np.asarray(ad["a"]).any() and np.abs(np.asarray(ad["b"])).max() > 0
