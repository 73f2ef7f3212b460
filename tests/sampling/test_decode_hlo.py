"""A decode step reads the KV cache and the weights where they lie: no large copies.

XLA's CPU backend copies an operand whose layout does not suit its contraction. With the
cache stored as [L,B,S,K,H], every decode step copied each layer's keys and values into the
contraction layouts (SmolLM2-135M, 16 rows, 256 slots: about 380 MB read and written per
step, against 540 MB of weights), and
o_proj's weights were transposed at every step (benchmarks/RESULTS.md, "Sampler"). This test
compiles one decode step of a SmolLM2-shaped model (two layers, small vocabulary) in each
decode path (the per-layer one also with LoRA adapters) and fails if the optimized program
still holds a copy or transpose the size of a layer's cache slice or of a weight matrix:
what is left are per-token activations (at most B x F or B x K x G x S elements).
"""

import re

import jax
import jax.numpy as jnp
import pytest

from pbrl_jax import sampling
from pbrl_jax.models import decoder
from pbrl_jax.models import lora as lora_lib
from pbrl_jax.models.config import DecoderConfig

B, S = 16, 256
CONFIG = DecoderConfig(model_type="llama", vocab_size=1024, hidden_size=576,
                       intermediate_size=1536, num_layers=2, num_heads=9, num_kv_heads=3,
                       head_dim=64, tie_word_embeddings=True)
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Smaller than a layer's key slice B*K*H*S (196,608) and than the smallest weight matrix
# (k_proj, D*K*H = 110,592); larger than any per-token activation here (B*F = 24,576,
# attention scores B*K*G*S = 36,864).
MAX_ELEMENTS = 65_536
_OP = re.compile(r"=\s*\w+\[([\d,]*)\]\{[\d,]*\}\s+(copy|transpose)\(")


def large_copies(hlo: str) -> list[str]:
  """Lines of `hlo` whose copy or transpose produces at least MAX_ELEMENTS elements."""
  found = []
  for line in hlo.splitlines():
    m = _OP.search(line)
    if m:
      elements = 1
      for dim in filter(None, m.group(1).split(",")):
        elements *= int(dim)
      if elements >= MAX_ELEMENTS:
        found.append(line.strip()[:160])
  return found


def generic_dots(hlo: str) -> list[str]:
  """Contractions left outside XLA's fused matmul kernels: a `dot` whose operands are not the
  parameters of a fused computation runs in XLA's generic CPU emitter, which took 1 ms per
  layer and step for q.k with keys stored [L,B,K,H,S] (the YNNPACK fusions: about 0.15 ms)."""
  return [line.strip()[:160] for line in hlo.splitlines()
          if re.search(r"=\s*\w+\[[\d,]*\]\{[\d,]*\}\s+dot\((?!%param)", line)]


def test_large_copies_finds_a_cache_sized_transpose():
  hlo = ("%transpose.58 = f32[16,3,64,256]{2,1,3,0} transpose(%bitcast.90), "
         "dimensions={0,2,3,1}\n%copy.1 = f32[16,1,576]{2,1,0} copy(%bitcast.2)")
  assert len(large_copies(hlo)) == 1


# The CPU's per-layer path with and without adapters (the demo's rollouts run it with
# unmerged LoRA), and the stacked path that accelerators run.
@pytest.mark.parametrize("per_layer,with_lora", [(True, False), (True, True), (False, False)],
                         ids=["per_layer", "per_layer_lora", "stacked"])
def test_decode_step_copies_no_cache_slice_or_weight(per_layer, with_lora):
  params = decoder.init_params(CONFIG, jax.random.PRNGKey(0))
  adapters = (lora_lib.init_lora(CONFIG, TARGETS, 16, jax.random.PRNGKey(1))
              if with_lora else None)
  per_layer_kw = {}
  if per_layer:
    per_layer_kw["layers"] = decoder.unstack_layers(params["layers"])
    if with_lora:
      per_layer_kw["lora_layers"] = decoder.unstack_layers(adapters["layers"])

  def step(params, adapters, token, cache):
    return sampling.decode_step(params, CONFIG, token, jnp.full((B,), 100), jnp.int32(100),
                                jnp.ones((B, S), bool), cache, adapters, **per_layer_kw)

  cache = decoder.init_cache(CONFIG, B, S)
  hlo = jax.jit(step, donate_argnums=(3,)).lower(
      params, adapters, jnp.zeros((B,), jnp.int32), cache).compile().as_text()
  assert "dot" in hlo  # the step compiled to a program that computes
  assert not large_copies(hlo), large_copies(hlo)
  assert not generic_dots(hlo), generic_dots(hlo)
