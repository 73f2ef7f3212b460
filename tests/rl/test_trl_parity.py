"""GRPO loss and gradients against TRL 1.16's own GRPOTrainer._compute_loss.

A real GRPOTrainer is built on a tiny random transformers Llama (saved to a temp directory so
TRL can also build its reference model from it). Its model forward is replaced by log-probs
computed from one shared logits tensor, so TRL's own loss code (ratio, clipping, k3 KL,
aggregation by loss_type) runs on exactly the tensors our `policy_objective` sees. Loss and
gradient with respect to the logits must agree within 1e-5 for the matched presets of
docs/presets.md.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pbrl_jax import rl
from pbrl_jax.models import decoder

import torch
import trl

B, G, M, V = 8, 4, 6, 11
EPS_LOW, EPS_HIGH = 0.2, 0.28


@functools.lru_cache(maxsize=None)
def _tiny_model_dir() -> str:
  import tempfile
  from tokenizers import Tokenizer, models, pre_tokenizers
  from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
  out = tempfile.mkdtemp(prefix="trl_parity_")
  torch.manual_seed(0)
  LlamaForCausalLM(LlamaConfig(vocab_size=V, hidden_size=16, intermediate_size=32,
                               num_hidden_layers=1, num_attention_heads=2,
                               num_key_value_heads=2)).save_pretrained(out)
  vocab = {f"t{i}": i for i in range(V - 2)}
  vocab.update({"<pad>": V - 2, "<unk>": V - 1})
  tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tk.pre_tokenizer = pre_tokenizers.Whitespace()
  PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>",
                          eos_token="<pad>").save_pretrained(out)
  return out


@functools.lru_cache(maxsize=None)
def _trainer(beta: float, loss_type: str, correction: bool, level: str = "token",
             eps_high: float = EPS_HIGH, entropy_quantile: float = 1.0,
             rollout_ratio: bool = False):
  import datasets
  args = trl.GRPOConfig(
      output_dir=_tiny_model_dir() + (f"/out_{beta}_{loss_type}_{correction}_{level}_{eps_high}"
                                      f"_{entropy_quantile}_{rollout_ratio}"),
      beta=beta, loss_type=loss_type,
      num_generations=G, per_device_train_batch_size=B, max_completion_length=M,
      epsilon=EPS_LOW, epsilon_high=eps_high, report_to=[], use_cpu=True, bf16=False,
      logging_steps=1, use_bias_correction_kl=correction, importance_sampling_level=level,
      top_entropy_quantile=entropy_quantile)
  trainer = trl.GRPOTrainer(
      model=_tiny_model_dir(), reward_funcs=lambda completions, **kw: [0.0] * len(completions),
      args=args, train_dataset=datasets.Dataset.from_dict({"prompt": ["t1 t2", "t3"]}))
  trainer.current_gradient_accumulation_steps = 1
  if rollout_ratio:
    # TRL applies the sampler-mismatch ratio (inputs["importance_sampling_ratio"]) only with
    # vLLM generation; the loss code is the same, so switch it on without vLLM.
    trainer.use_vllm = True
    trainer.vllm_importance_sampling_correction = True
  trainer.model.train()
  return trainer


def _entropy(logits):
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  return -(np.exp(logp) * logp).sum(-1)


def _inputs(seed: int):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(B, M, V)) * 2
  completion = rng.integers(0, V, size=(B, M))
  lengths = rng.integers(1, M + 1, size=(B, 1))
  mask = (np.arange(M)[None] < lengths).astype(np.float32)
  logp_now = np.take_along_axis(logits - np.log(np.exp(logits).sum(-1, keepdims=True)),
                                completion[..., None], -1)[..., 0]
  old = logp_now + rng.normal(size=(B, M)) * 0.3  # ratios well outside [0.8, 1.28]
  ref = logp_now + rng.normal(size=(B, M)) * 0.5
  rewards = rng.normal(size=B)
  adv = np.asarray(rl.grpo_advantages(jnp.asarray(rewards, jnp.float32), G))
  return logits.astype(np.float32), completion, mask, old.astype(np.float32), \
      ref.astype(np.float32), adv.astype(np.float32)


def _trl_loss_and_grad(beta, loss_type, correction, logits, completion, mask, old, ref, adv,
                       level="token", eps_high=EPS_HIGH, entropy_quantile=1.0,
                       rollout_ratio=None):
  trainer = _trainer(beta, loss_type, correction, level, eps_high, entropy_quantile,
                     rollout_ratio is not None)
  leaf = torch.tensor(logits, requires_grad=True)
  targets = torch.tensor(completion)

  def fake_forward(model, input_ids, attention_mask, logits_to_keep, **kwargs):
    logp = torch.log_softmax(leaf, dim=-1).gather(-1, targets[..., None])[..., 0]
    return logp, torch.tensor(_entropy(logits)), None

  trainer._get_per_token_logps_and_entropies = fake_forward
  inputs = {
      "prompt_ids": torch.zeros((B, 2), dtype=torch.long),
      "prompt_mask": torch.ones((B, 2), dtype=torch.long),
      "completion_ids": targets,
      "completion_mask": torch.tensor(mask, dtype=torch.long),
      "advantages": torch.tensor(adv),
      "old_per_token_logps": torch.tensor(old),
      "ref_per_token_logps": torch.tensor(ref),
      "num_items_in_batch": torch.tensor(float(mask.sum())),
  }
  if rollout_ratio is not None:
    inputs["importance_sampling_ratio"] = torch.tensor(rollout_ratio, dtype=torch.float32)
  loss = trainer._compute_loss(trainer.model, inputs)
  loss.backward()
  return float(loss.detach()), leaf.grad.numpy()


def _our_loss_and_grad(beta, loss_type, correction, logits, completion, mask, old, ref, adv,
                       level="token", eps_high=EPS_HIGH, entropy_quantile=1.0,
                       rollout=None):
  """`rollout`: (sampler log-probs, mode, low, high) of a rollout correction, or None."""
  policy_loss, aggregation, _ = rl.TRL_LOSS_TYPES[loss_type]
  hp = rl.UpdateHParams(eps_low=EPS_LOW, eps_high=eps_high,
                        policy_loss=rl.PolicyLoss.parse(policy_loss),
                        importance_level=rl.ImportanceLevel.parse(level),
                        aggregation=rl.Aggregation.parse(aggregation), max_completion_length=M,
                        kl_estimator=rl.KLEstimator.K3, kl_coef_in_loss=beta,
                        kl_ratio_correction=correction)

  m = jnp.asarray(mask)
  weight = is_weight = None
  if entropy_quantile < 1.0:
    weight = rl.entropy_quantile_mask(jnp.asarray(_entropy(logits)), m, entropy_quantile)
  if rollout is not None:
    sampler, mode, low, high = rollout
    is_weight, _ = rl.rollout_correction_weights(jnp.asarray(old), jnp.asarray(sampler), m,
                                                 rl.RolloutCorrection.parse(mode), low, high)

  def loss_fn(lg):
    logp = decoder.token_logprobs(lg, jnp.asarray(completion))
    total, den, _ = rl.policy_objective(logp, jnp.asarray(old), jnp.asarray(ref),
                                        jnp.asarray(adv), m, hp, weight, is_weight)
    return total / jnp.maximum(den, 1.0)

  loss, grad = jax.value_and_grad(loss_fn)(jnp.asarray(logits))
  return float(loss), np.asarray(grad)


@pytest.mark.slow
@pytest.mark.parametrize("beta,correction", [(0.0, True), (0.04, True), (0.04, False)])
@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_grpo_loss_matches_trl(beta, correction, loss_type):
  """TRL 1.16 defaults use_bias_correction_kl=True (beta * k3 * rho); both settings match."""
  data = _inputs(seed=int(beta * 100) + len(loss_type))
  trl_loss, trl_grad = _trl_loss_and_grad(beta, loss_type, correction, *data)
  our_loss, our_grad = _our_loss_and_grad(beta, loss_type, correction, *data)
  assert abs(trl_loss) > 1e-3 and np.abs(trl_grad).max() > 1e-3  # not a vacuous match
  np.testing.assert_allclose(our_loss, trl_loss, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(our_grad, trl_grad, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("loss_type,level,eps_high", [
    ("grpo", "sequence", EPS_HIGH),  # GSPO
    ("luspo", "sequence", EPS_HIGH),  # LUSPO: sequence weights, length-scaled
    ("cispo", "token", 1.3),  # eps_high is CISPO's bound on the weight
    ("sapo", "token", EPS_HIGH),
    ("sapo", "sequence", EPS_HIGH),
    ("bnpo", "token", EPS_HIGH),
    ("vespo", "token", EPS_HIGH),  # the Gamma weight of the sequence ratio, TRL's defaults
])
def test_policy_loss_family_matches_trl(loss_type, level, eps_high):
  """TRL 1.16's loss_type / importance_sampling_level settings (issue: the policy-gradient
  family) through TRL's own _compute_loss and ours, with beta * k3 * w (its default)."""
  data = _inputs(seed=len(loss_type) + 7 * len(level))
  trl_loss, trl_grad = _trl_loss_and_grad(0.04, loss_type, True, *data, level=level,
                                          eps_high=eps_high)
  our_loss, our_grad = _our_loss_and_grad(0.04, loss_type, True, *data, level=level,
                                          eps_high=eps_high)
  assert abs(trl_loss) > 1e-3 and np.abs(trl_grad).max() > 1e-3  # not a vacuous match
  np.testing.assert_allclose(our_loss, trl_loss, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(our_grad, trl_grad, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("loss_type,quantile,mode,bounds", [
    ("grpo", 0.3, None, None),  # top-entropy quantile alone
    ("dapo", 0.6, "token_truncate", (0.7, 1.5)),  # with a token-level truncated correction
    ("grpo", 1.0, "token_mask", (0.7, 1.5)),
    ("dr_grpo", 1.0, "sequence_truncate", (None, 3.0)),
    ("grpo", 1.0, "sequence_mask", (None, 3.0)),  # TRL's default mode and bound
    ("vespo", 0.6, "token_truncate", (0.7, 1.5)),  # VESPO folds the weights into its W
    ("vespo", 1.0, "token_mask", (0.7, 1.5)),  # a masked token sinks its sequence
])
def test_entropy_mask_and_rollout_correction_match_trl(loss_type, quantile, mode, bounds):
  """TRL's top_entropy_quantile and its sampler-mismatch ratio through its own _compute_loss.

  TRL computes the ratio while generating (inline, not callable alone), so TRL is fed the
  ratio of the NumPy loop reference (tests/rl/rl_numpy_refs.py, checked against ours in
  test_rl_math) and ours computes its own from the same sampler log-probs."""
  import rl_numpy_refs as numpy_refs
  data = _inputs(seed=31 + len(loss_type) + int(quantile * 10))
  logits, completion, mask, old, ref, adv = data
  sampler = old + np.random.default_rng(3).normal(size=old.shape).astype(np.float32) * 0.2
  rollout = trl_ratio = None
  if mode is not None:
    low, high = bounds
    rollout = (sampler, mode, low, high)
    trl_ratio, bounded = numpy_refs.rollout_correction(old.astype(np.float64),
                                                       sampler.astype(np.float64), mask,
                                                       mode, low, high)
    assert 0 < bounded < 1 or mode.startswith("sequence")  # token bounds bite, not all
  trl_loss, trl_grad = _trl_loss_and_grad(0.04, loss_type, True, *data,
                                          entropy_quantile=quantile, rollout_ratio=trl_ratio)
  our_loss, our_grad = _our_loss_and_grad(0.04, loss_type, True, *data,
                                          entropy_quantile=quantile, rollout=rollout)
  plain_loss, _ = _our_loss_and_grad(0.04, loss_type, True, *data)
  assert abs(our_loss - plain_loss) > 1e-4  # the mask / weights change the loss here
  assert abs(trl_loss) > 1e-3 and np.abs(trl_grad).max() > 1e-3  # not a vacuous match
  np.testing.assert_allclose(our_loss, trl_loss, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(our_grad, trl_grad, atol=1e-5, rtol=1e-5)
