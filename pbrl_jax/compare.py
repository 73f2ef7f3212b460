"""The same GRPO experiment in TRL and in pbrl_jax: matched presets, step parity, curves, speed.

  pbrl-compare --quick --out /tmp/cmp          # tiny random model, seconds
  pbrl-compare --model DIR --steps 10 --out /tmp/cmp

Three measurements, all from one process and one checkpoint:

1. Step-level parity. Completions are sampled once (by our sampler) and fed to both sides.
   TRL's own `GRPOTrainer.compute_loss` and our `rl.make_loss_fn` then compute the first
   update's per-token log-probs, loss and gradient on identical tensors. Two probes: at the
   checkpoint (policy == reference, ratio 1), and with a perturbed policy whose old log-probs
   are the reference's, so the k3 KL term, the ratio and the clipping all carry weight.
2. Training curves: N steps of each with sampling on, same prompts, same reward callable,
   matched presets (`Preset`), reward mean, KL and loss per step.
3. Speed: seconds per step and completion tokens per second, with a phase breakdown
   (generation, reward, reference forward, update; TRL's update split into policy forward and
   backward + optimizer by wrapping its methods).

Axis letters: R prompts, G completions per prompt, B = R*G rows, P prompt tokens
(left-padded), M completion tokens (right-padded), T = P + M.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import tempfile
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pbrl_jax import rl
from pbrl_jax import sampling
from pbrl_jax.models import bundle as bundle_lib
from pbrl_jax.models import sharding as shd
from pbrl_jax.models.config import SUPPORTED_ARCHITECTURES, DecoderConfig
from pbrl_jax.models.hf import hf_state_dict, load_hf_params
from pbrl_jax.models.tokenizer import load_hf_tokenizer
from pbrl_jax.rewards import answers

Array = jax.Array
RewardFunc = Callable[..., list[float]]

# Parity is asserted at this relative error (fp32 on both sides).
PARITY_RTOL = 1e-4


# ---------------------------------------------------------------------------------------------
# Prompts: a fixed multilingual arithmetic set in the style of multilingual GSM-Symbolic.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Prompt:
  """One question, its gold answer and the English reference solution (the pivot answer)."""

  lang: str
  question: str
  answer: str
  reference: str


PROMPTS: tuple[Prompt, ...] = (
    Prompt("en", "Tom has 3 boxes with 4 apples in each box. How many apples does he have? "
           "End with '#### <number>'.", "12",
           "Each box has 4 apples and there are 3 boxes, so 3 * 4 = 12. #### 12"),
    Prompt("de", "Anna kauft 5 Hefte zu je 2 Euro. Wie viel Euro bezahlt sie? "
           "Schließe mit '#### <Zahl>'.", "10",
           "Each notebook costs 2 euros and she buys 5, so 5 * 2 = 10. #### 10"),
    Prompt("fr", "Paul a 20 billes et en donne 7 à sa sœur. Combien lui en reste-t-il ? "
           "Termine par '#### <nombre>'.", "13",
           "He starts with 20 marbles and gives away 7, so 20 - 7 = 13. #### 13"),
    Prompt("es", "Un tren recorre 60 km cada hora. ¿Cuántos km recorre en 3 horas? "
           "Termina con '#### <número>'.", "180",
           "The train travels 60 km per hour for 3 hours, so 60 * 3 = 180. #### 180"),
    Prompt("pt", "Maria tem 15 laranjas e compra mais 9. Quantas laranjas ela tem agora? "
           "Termine com '#### <número>'.", "24",
           "She has 15 oranges and buys 9 more, so 15 + 9 = 24. #### 24"),
    Prompt("ru", "В классе 28 учеников, их делят на 4 равные группы. Сколько учеников в "
           "каждой группе? Закончи ответ строкой '#### <число>'.", "7",
           "28 students in 4 equal groups gives 28 / 4 = 7 per group. #### 7"),
    Prompt("zh", "小明有 8 支铅笔，又买了 6 支，然后送给朋友 5 支。他现在有几支铅笔？"
           "最后写 '#### <数字>'。", "9",
           "He has 8 pencils, buys 6 (14), then gives away 5, so 14 - 5 = 9. #### 9"),
    Prompt("ja", "りんごが 1 箱に 12 個入っています。5 箱では全部で何個ですか？"
           "最後に '#### <数字>' と書いてください。", "60",
           "There are 12 apples in each of 5 boxes, so 12 * 5 = 60. #### 60"),
)


def select_prompts(n: int) -> list[Prompt]:
  """The first `n` prompts of PROMPTS, cycled when n exceeds the list."""
  if n < 1:
    raise ValueError(f"need at least one prompt, got {n}")
  return [PROMPTS[i % len(PROMPTS)] for i in range(n)]


# ---------------------------------------------------------------------------------------------
# Rewards as plain Python callables: what TRL calls, and what our loop calls.
# ---------------------------------------------------------------------------------------------


def completion_text(completion: Any) -> str:
  """TRL passes conversational completions as [{'role': 'assistant', 'content': ...}]."""
  if isinstance(completion, str):
    return completion
  if isinstance(completion, (list, tuple)) and completion and isinstance(completion[-1], Mapping):
    return str(completion[-1].get("content", ""))
  return str(completion)


def verifiable_reward_func(prompts: Sequence[Any], completions: Sequence[Any], *,
                           answer: Sequence[str], lang: Sequence[str] | None = None,
                           **unused: Any) -> list[float]:
  """1.0 when a completion's final answer equals the gold answer, else 0.0 (TRL signature)."""
  del prompts, unused
  langs = lang if lang is not None else [None] * len(completions)
  return [answers.verifiable_reward(completion_text(c), a, l)
          for c, a, l in zip(completions, answer, langs)]


def make_semantic_reward_func(spec: Any, models: Any | None = None) -> RewardFunc:
  """Adapts `pbrl_jax.rewards.score_batch` to TRL's `reward_func(prompts, completions, **kw)`.

  The dataset columns `lang`, `reference` (English pivot answer), `answer` (gold) and
  `question` reach the callable as keyword lists, one entry per completion.

  Args:
    spec: a `pbrl_jax.rewards.RewardSpec`.
    models: loaded reward models; None loads them from the spec.

  Returns:
    The callable; its `__name__` is `semantic_<kind>` (TRL logs rewards under that name).
  """
  from pbrl_jax import rewards  # the encoders are only needed on this path

  if models is None:
    models = rewards.load_reward_models(spec)

  def reward_func(prompts: Sequence[Any], completions: Sequence[Any], **columns: Any
                  ) -> list[float]:
    n = len(completions)
    col = lambda k: columns.get(k) or [None] * n
    items = [{"lang": l, "response": completion_text(c), "reference": r, "answer": a,
              "question": q}
             for c, l, r, a, q in zip(completions, col("lang"), col("reference"),
                                      col("answer"), col("question"))]
    return [float(row["reward"]) for row in rewards.score_batch(spec, models, items)]

  reward_func.__name__ = f"semantic_{spec.kind}"
  return reward_func


# ---------------------------------------------------------------------------------------------
# The matched preset: one place that says what each side is configured with.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Preset:
  """GRPO hyperparameters shared by both sides (TRL names; our equivalents in `rows`).

  Attributes:
    beta: KL coefficient in the loss (k3 estimator on both sides).
    loss_type: TRL loss_type: 'grpo' (sequence-mean of token-means), 'dr_grpo' (sum over
      B * max_completion_length) or 'dapo' (token mean).
    num_generations: G completions per prompt.
    temperature: sampling temperature; logits are divided by it in the loss as well.
    learning_rate: constant AdamW learning rate (no warmup, no decay).
    max_completion_length: completion token limit (and the Dr.GRPO constant).
    epsilon: lower clip range.
    epsilon_high: upper clip range.
    use_bias_correction_kl: multiply the per-token KL by the ratio (TRL's default).
    max_grad_norm: global-norm clipping before the optimizer.
    adam_b1, adam_b2, adam_eps, weight_decay: AdamW (TRL / transformers defaults).
    seed: seed of both sides (TRL's `seed`; our sampler and init keys).
  """

  beta: float = 0.04
  loss_type: str = "grpo"
  num_generations: int = 4
  temperature: float = 1.0
  learning_rate: float = 1e-6
  max_completion_length: int = 64
  epsilon: float = 0.2
  epsilon_high: float = 0.2
  use_bias_correction_kl: bool = True
  max_grad_norm: float = 1.0
  adam_b1: float = 0.9
  adam_b2: float = 0.999
  adam_eps: float = 1e-8
  weight_decay: float = 0.0
  seed: int = 0

  def __post_init__(self):
    rl.Aggregation.parse(self.loss_type)  # raises on an unknown name
    if self.loss_type not in ("grpo", "dr_grpo", "dapo"):
      raise ValueError(f"loss_type {self.loss_type!r}; expected grpo, dr_grpo or dapo")
    if self.num_generations < 2:
      raise ValueError("GRPO needs num_generations >= 2")
    if self.temperature <= 0:
      raise ValueError("sampling temperature must be > 0")

  def update_hparams(self) -> rl.UpdateHParams:
    """Our update step's settings for this preset."""
    return rl.UpdateHParams(
        eps_low=self.epsilon, eps_high=self.epsilon_high,
        aggregation=rl.Aggregation.parse(self.loss_type),
        max_completion_length=self.max_completion_length,
        kl_estimator=rl.KLEstimator.K3, kl_coef_in_loss=self.beta,
        kl_ratio_correction=self.use_bias_correction_kl, temperature=self.temperature)

  def optimizer(self) -> optax.GradientTransformation:
    """clip_by_global_norm -> AdamW at a constant learning rate (TRL: lr_scheduler 'constant')."""
    schedule = rl.make_schedule(rl.Schedule.CONSTANT, self.learning_rate, 0, 1)
    return rl.make_optimizer(schedule, b1=self.adam_b1, b2=self.adam_b2, eps=self.adam_eps,
                             weight_decay=self.weight_decay, max_grad_norm=self.max_grad_norm)

  def trl_kwargs(self) -> dict[str, Any]:
    """The GRPOConfig arguments this preset sets."""
    return dict(beta=self.beta, loss_type=self.loss_type, num_generations=self.num_generations,
                temperature=self.temperature, top_p=1.0, top_k=0,
                learning_rate=self.learning_rate, lr_scheduler_type="constant", warmup_steps=0,
                max_completion_length=self.max_completion_length, epsilon=self.epsilon,
                epsilon_high=self.epsilon_high,
                use_bias_correction_kl=self.use_bias_correction_kl,
                max_grad_norm=self.max_grad_norm, adam_beta1=self.adam_b1,
                adam_beta2=self.adam_b2, adam_epsilon=self.adam_eps,
                weight_decay=self.weight_decay, scale_rewards="group", num_iterations=1,
                seed=self.seed, data_seed=self.seed)

  def rows(self) -> list[tuple[str, str, str]]:
    """(setting, TRL GRPOConfig, pbrl_jax) for the printed preset table."""
    agg = rl.Aggregation.parse(self.loss_type)
    return [
        ("KL coefficient", f"beta={self.beta}", f"kl_coef_in_loss={self.beta}"),
        ("KL estimator", "k3 in the loss (fixed)", "kl_estimator=k3"),
        ("KL ratio correction", f"use_bias_correction_kl={self.use_bias_correction_kl}",
         f"kl_ratio_correction={self.use_bias_correction_kl}"),
        ("aggregation", f"loss_type={self.loss_type}", f"aggregation={agg.value}"),
        ("completions per prompt", f"num_generations={self.num_generations}",
         f"num_samples={self.num_generations}"),
        ("advantages", "scale_rewards=group (std ddof=1, +1e-4)",
         "grpo_advantages (ddof=1, eps=1e-4)"),
        ("sampling", f"temperature={self.temperature}, top_p=1, top_k=0",
         f"temperature={self.temperature}, top_p=1, top_k=0"),
        ("max completion tokens", f"max_completion_length={self.max_completion_length}",
         f"max_new_tokens={self.max_completion_length}"),
        ("clip range", f"epsilon={self.epsilon}, epsilon_high={self.epsilon_high}",
         f"eps_low={self.epsilon}, eps_high={self.epsilon_high}"),
        ("optimizer", f"AdamW lr={self.learning_rate} constant, betas=({self.adam_b1}, "
         f"{self.adam_b2}), eps={self.adam_eps}, wd={self.weight_decay}",
         f"make_optimizer(constant {self.learning_rate}), same betas/eps/wd"),
        ("grad clipping", f"max_grad_norm={self.max_grad_norm}",
         f"clip_by_global_norm({self.max_grad_norm})"),
        ("updates per batch", "num_iterations=1, one optimizer step",
         "num_epochs=1, num_minibatches=1"),
        ("seed", f"seed={self.seed}", f"PRNGKey({self.seed})"),
    ]


def preset_table(preset: Preset) -> str:
  """The preset as a markdown table."""
  lines = ["| setting | TRL 1.16 GRPOConfig | pbrl_jax |", "|---|---|---|"]
  lines += [f"| {a} | `{b}` | `{c}` |" for a, b, c in preset.rows()]
  return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Models: the tiny random one for --quick, and the default SmolLM2 HF directory.
# ---------------------------------------------------------------------------------------------


def write_tiny_model(out_dir: str, seed: int = 0) -> str:
  """A tiny random transformers Llama with a byte-level tokenizer, saved as an HF directory.

  Byte-level BPE without merges: every UTF-8 byte is one token, so any prompt encodes, and
  the gold answers can be decoded. Ids 0, 1, 2 are <pad>, <s>, </s>.

  Args:
    out_dir: the directory to create (written into a temp directory, then renamed).
    seed: torch seed of the weights.

  Returns:
    out_dir.
  """
  import torch
  import transformers
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers

  if os.path.isfile(os.path.join(out_dir, "config.json")):
    return out_dir
  vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
  for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
    vocab[ch] = len(vocab)
  tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
  tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
  tk.decoder = decoders.ByteLevel()
  tokenizer = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
  config = transformers.LlamaConfig(
      vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
      rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True, bos_token_id=1,
      eos_token_id=2, pad_token_id=0)
  torch.manual_seed(seed)
  model = transformers.LlamaForCausalLM(config).to(torch.float32)
  parent = os.path.dirname(os.path.abspath(out_dir))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".tiny_model.tmp-", dir=parent)
  model.save_pretrained(tmp, safe_serialization=True)
  tokenizer.save_pretrained(tmp)
  try:
    os.rename(tmp, out_dir)
  except OSError:
    if not os.path.isfile(os.path.join(out_dir, "config.json")):
      raise
  return out_dir


def default_model_dir(cache_dir: str) -> str:
  """SmolLM2-135M-Instruct as an HF directory: our GGUF load exported once with `export_hf`
  (TRL cannot load a GGUF itself)."""
  from pbrl_jax.models import export_hf, from_pretrained, smollm2_gguf_path
  out = os.path.join(cache_dir, "smollm2_135m_instruct_hf_fp32")
  if not os.path.isfile(os.path.join(out, "config.json")):
    export_hf(from_pretrained(smollm2_gguf_path()), out, dtype="float32")
  return out


def trl_loadable_dir(model_dir: str, work_dir: str) -> str:
  """`model_dir`, or a view of it that TRL can load.

  TRL picks the model class from `architectures` in config.json; directories written without
  it (e.g. by transformers' own GGUF conversion) get a view in `work_dir`: symlinks to every
  file plus a config.json with the architecture of its `model_type` added.
  """
  with open(os.path.join(model_dir, "config.json")) as f:
    config = json.load(f)
  if config.get("architectures"):
    return model_dir
  arch = SUPPORTED_ARCHITECTURES.get(config.get("model_type"))
  if arch is None:
    raise ValueError(f"{model_dir}/config.json: no `architectures` and model_type "
                     f"{config.get('model_type')!r} is not one of "
                     f"{sorted(SUPPORTED_ARCHITECTURES)}")
  view = os.path.join(work_dir, "model_view")
  os.makedirs(view, exist_ok=True)
  for name in os.listdir(model_dir):
    src, dst = os.path.abspath(os.path.join(model_dir, name)), os.path.join(view, name)
    if name != "config.json" and not os.path.lexists(dst):
      os.symlink(src, dst)
  config["architectures"] = [arch]
  atomic_write(os.path.join(view, "config.json"), json.dumps(config, indent=2))
  return view


# ---------------------------------------------------------------------------------------------
# Tokens: prompts in, left-padded prompt rows and right-padded completion rows out.
# ---------------------------------------------------------------------------------------------


def uses_chat(tokenizer: Any) -> bool:
  """Chat-formatted prompts when the tokenizer has a template (TRL's conversational format)."""
  return bool(getattr(tokenizer, "chat_template", None))


def prompt_arrays(tokenizer: Any, prompts: Sequence[Prompt], pad_id: int
                  ) -> tuple[np.ndarray, np.ndarray]:
  """Left-padded [R,P] prompt tokens and validity, P a sampler prompt bucket."""
  ids = sampling.encode_prompts(tokenizer, [p.question for p in prompts],
                                chat=uses_chat(tokenizer))
  length = sampling.bucket_length(max(len(x) for x in ids), sampling.PROMPT_BUCKETS)
  tokens, valid = sampling.left_pad(ids, length, pad_id)
  return np.asarray(tokens, np.int32), np.asarray(valid, np.int32)


def eos_ids(config: DecoderConfig, tokenizer: Any) -> list[int]:
  """The ids that end a completion: the model's and the tokenizer's EOS (as TRL does)."""
  eos = set(config.eos_token_ids)
  if getattr(tokenizer, "eos_token_id", None) is not None:
    eos.add(int(tokenizer.eos_token_id))
  return sorted(eos)


def rollout_batch(prompt_tokens: np.ndarray, prompt_valid: np.ndarray, out: Any,
                  group_size: int) -> dict[str, np.ndarray]:
  """tokens [B,T], valid [B,T], completion_mask [B,M] from a sampler output (row i*G + j)."""
  ptok = np.repeat(prompt_tokens, group_size, axis=0)
  pval = np.repeat(prompt_valid, group_size, axis=0)
  ctok = np.asarray(out.tokens, np.int32)
  cmask = np.asarray(out.valid, np.int32)
  return {"tokens": np.concatenate([ptok, ctok], 1),
          "valid": np.concatenate([pval, cmask], 1), "completion_mask": cmask}


def decode_completions(tokenizer: Any, tokens: np.ndarray, lengths: np.ndarray) -> list[str]:
  return [tokenizer.decode(t[:n].tolist(), skip_special_tokens=True)
          for t, n in zip(tokens, lengths)]


def reward_columns(prompts: Sequence[Prompt], group_size: int) -> dict[str, list[Any]]:
  """Dataset columns repeated per completion, as TRL hands them to reward functions."""
  rep = lambda xs: [x for x in xs for _ in range(group_size)]
  return {"answer": rep([p.answer for p in prompts]), "lang": rep([p.lang for p in prompts]),
          "reference": rep([p.reference for p in prompts]),
          "question": rep([p.question for p in prompts])}


def trl_prompt(tokenizer: Any, prompt: Prompt) -> Any:
  return ([{"role": "user", "content": prompt.question}] if uses_chat(tokenizer)
          else prompt.question)


# ---------------------------------------------------------------------------------------------
# pbrl_jax side: rollout, reward, reference log-probs, advantages, update.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class JaxSide:
  """Everything the JAX loop holds between steps.

  Attributes:
    bundle: the loaded model (config, params, tokenizer).
    preset: the matched preset.
    mesh: a one-device mesh.
    fns: state initialisers and shardings.
    update: the jitted update (donates the state).
    ref_logp: jitted (ref_params, tokens, valid, completion_len) -> [B,M] reference log-probs.
    ref_params: the frozen reference parameters.
    state: the train state.
  """

  bundle: Any
  preset: Preset
  mesh: Any
  fns: rl.StateFns
  update: Callable[..., Any]
  ref_logp: Callable[..., Array]
  ref_params: Any
  state: rl.TrainState


def make_ref_logp_fn(config: DecoderConfig, temperature: float, mesh: Any,
                     policy_shardings: Any) -> Callable[..., Array]:
  """Jitted reference log-probs of the completion tokens (the reference-only half of
  `make_score_fn`: with one update per batch the old log-probs come from the sampler)."""
  batch_sh = shd.batch_sharding(mesh, 1)

  def ref_logp(ref_params: Any, tokens: Array, valid: Array, completion_mask: Array) -> Array:
    with shd.axis_rules():
      logp, _, _ = rl.completion_outputs({"policy": ref_params}, config, tokens, valid,
                                         completion_mask.shape[1], temperature)
    return logp * completion_mask.astype(jnp.float32)

  return jax.jit(ref_logp, in_shardings=(policy_shardings, batch_sh, batch_sh, batch_sh),
                 out_shardings=batch_sh)


def one_device_mesh() -> Any:
  return shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])


def build_jax_side(model_dir: str, preset: Preset, num_microbatches: int = 1) -> JaxSide:
  """Loads the checkpoint; the reference is the loaded params (never donated), the policy
  starts from a copy of them inside the train state.

  `num_microbatches` splits our update's forward/backward into accumulated chunks: the same
  gradient (tests/rl/test_rl_steps.py), a quarter of the activation memory at 4. SmolLM2 with
  32 rows of ~170 tokens peaks at 18.4 GB RSS in one chunk (which, beside TRL's process
  memory, exhausted a 24 GB host) and at 7.6 GB in four, and runs faster (52 s vs 72 s).
  """
  bundle = bundle_lib.from_pretrained(model_dir, dtype="float32")
  mesh = one_device_mesh()
  optimizer = preset.optimizer()
  fns = rl.make_state_fns(bundle.config, optimizer, mesh, with_value_head=False)
  ref_params = jax.device_put(bundle.params, fns.policy_shardings)
  state = fns.from_params(ref_params, jax.random.PRNGKey(preset.seed))
  hp = dataclasses.replace(preset.update_hparams(), num_microbatches=num_microbatches)
  update = rl.make_update_fn(bundle.config, hp, optimizer, mesh, fns.shardings)
  ref_logp = make_ref_logp_fn(bundle.config, preset.temperature, mesh, fns.policy_shardings)
  return JaxSide(bundle=bundle, preset=preset, mesh=mesh, fns=fns, update=update,
                 ref_logp=ref_logp, ref_params=ref_params, state=state)


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
  t0 = time.perf_counter()
  out = jax.block_until_ready(fn())
  return out, time.perf_counter() - t0


def jax_train_step(side: JaxSide, prompts: Sequence[Prompt], reward_func: RewardFunc,
                   step: int) -> dict[str, float]:
  """One GRPO step: rollout -> reward -> reference log-probs -> advantages -> update.

  Returns:
    Metrics (reward_mean, kl, loss, grad_norm, entropy, completion_tokens, ...) and phase
    seconds (time_generation, time_reward, time_reference_forward, time_update, time_step).
  """
  p = side.preset
  config, tokenizer = side.bundle.config, side.bundle.tokenizer
  g = p.num_generations
  t_start = time.perf_counter()
  ptok, pval = prompt_arrays(tokenizer, prompts, config.pad_token_id)
  rng = jax.random.fold_in(jax.random.PRNGKey(p.seed), step)
  out, t_gen = _timed(lambda: sampling.sample(
      side.state.params["policy"], config, ptok, pval, rng, num_samples=g,
      max_new_tokens=p.max_completion_length, temperature=p.temperature,
      eos_ids=eos_ids(config, tokenizer)))

  t0 = time.perf_counter()
  tokens, lengths, old_logp = jax.device_get((out.tokens, out.lengths, out.sample_logprobs))
  texts = decode_completions(tokenizer, tokens, lengths)
  rewards = np.asarray(reward_func(prompts=[pr.question for pr in prompts for _ in range(g)],
                                   completions=texts, **reward_columns(prompts, g)), np.float32)
  batch = rollout_batch(ptok, pval, out, g)
  t_reward = time.perf_counter() - t0

  if p.beta:
    ref_logp, t_ref = _timed(lambda: side.ref_logp(side.ref_params, batch["tokens"],
                                                   batch["valid"], batch["completion_mask"]))
  else:
    ref_logp, t_ref = np.zeros(batch["completion_mask"].shape, np.float32), 0.0
  batch.update(old_logp=np.asarray(old_logp, np.float32), ref_logp=ref_logp,
               advantages=np.asarray(rl.grpo_advantages(jnp.asarray(rewards), g)))

  def do_update():
    side.state, metrics = side.update(side.state, batch)
    return metrics

  metrics, t_update = _timed(do_update)
  metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
  spread = rl.group_spread_metrics(jnp.asarray(rewards), g)
  n_tok = int(np.sum(lengths))
  t_step = time.perf_counter() - t_start
  return {
      "step": step + 1, "reward_mean": float(np.mean(rewards)),
      "reward_std": float(np.std(rewards, ddof=1)) if rewards.size > 1 else 0.0,
      "frac_reward_zero_std": float(spread["reward_zero_std_group_frac"]),
      "kl": metrics["kl"], "loss": metrics["loss"], "grad_norm": metrics["grad_norm"],
      "entropy": metrics["entropy"], "clip_frac_low": metrics["clip_frac_low"],
      "clip_frac_high": metrics["clip_frac_high"], "completion_tokens": n_tok,
      "completion_mean_length": n_tok / len(lengths),
      "time_generation": t_gen, "time_reward": t_reward, "time_reference_forward": t_ref,
      "time_update": t_update, "time_step": t_step,
  }


# ---------------------------------------------------------------------------------------------
# TRL side: the trainer, offline, and phase timers around its methods.
# ---------------------------------------------------------------------------------------------


def build_trl_trainer(model_dir: str, preset: Preset, prompts: Sequence[Prompt],
                      reward_func: RewardFunc, steps: int, out_dir: str, bf16: bool = False
                      ) -> Any:
  """A GRPOTrainer on CPU over an in-memory dataset; no logging integrations, no hub.

  One optimizer step per generation batch of all prompts x G completions (per-device batch
  = R * G rows, gradient accumulation 1), as our update does.
  """
  import datasets
  import torch
  import trl

  tokenizer = load_hf_tokenizer(model_dir)
  rows = [{"prompt": trl_prompt(tokenizer, p), "answer": p.answer, "lang": p.lang,
           "reference": p.reference, "question": p.question} for p in prompts]
  args = trl.GRPOConfig(
      output_dir=out_dir, per_device_train_batch_size=len(prompts) * preset.num_generations,
      gradient_accumulation_steps=1, max_steps=steps, logging_steps=1, report_to=[],
      save_strategy="no", use_cpu=True, bf16=bf16, fp16=False, gradient_checkpointing=False,
      disable_dropout=True, shuffle_dataset=False, dataloader_num_workers=0, disable_tqdm=True,
      log_completions=False, push_to_hub=False,
      model_init_kwargs={"dtype": torch.bfloat16 if bf16 else torch.float32},
      **preset.trl_kwargs())
  trainer = trl.GRPOTrainer(model=model_dir, reward_funcs=reward_func, args=args,
                            train_dataset=datasets.Dataset.from_list(rows),
                            processing_class=tokenizer)
  # transformers builds the input embedding with `padding_idx = pad_token_id`, and PyTorch
  # then drops the input-side gradient of that row, also where the token is real (SmolLM2's
  # pad is its <|im_end|>, which every chat turn contains). The true gradient keeps it, as
  # ours does; unset padding_idx so both sides differentiate the same function.
  for module in trainer.model.modules():
    if isinstance(module, torch.nn.Embedding):
      module.padding_idx = None
  return trainer


class TrlPhaseTimer:
  """Wall-clock seconds per phase of each TRL step, by wrapping the trainer's own methods.

  generation: `_generate_single_turn` (transformers `generate`); reward: `_calculate_rewards`;
  reference_forward / policy_forward: `_get_per_token_logps_and_entropies` on the reference
  model / on the policy; backward_optimizer: the rest of the step (backward, clipping,
  optimizer, bookkeeping), i.e. step - the phases above. A step is on_step_begin ->
  on_step_end of the transformers Trainer loop.
  """

  PHASES = ("generation", "reward", "reference_forward", "policy_forward")

  def __init__(self, trainer: Any):
    import transformers
    self.trainer = trainer
    self.acc = dict.fromkeys(self.PHASES, 0.0)
    self.completion_tokens = 0
    self.steps: list[dict[str, float]] = []
    self._t0 = 0.0
    self._wrap("_generate_single_turn", self._generation)
    self._wrap("_calculate_rewards", lambda orig, *a, **k: self._time("reward", orig, *a, **k))
    self._wrap("_get_per_token_logps_and_entropies", self._logps)
    timer = self

    class _Callback(transformers.TrainerCallback):

      def on_step_begin(self, args, state, control, **kwargs):
        timer._begin()

      def on_step_end(self, args, state, control, **kwargs):
        timer._end()

    trainer.add_callback(_Callback())

  def _wrap(self, name: str, wrapper: Callable[..., Any]) -> None:
    orig = getattr(self.trainer, name)
    setattr(self.trainer, name, functools.partial(wrapper, orig))

  def _time(self, phase: str, orig: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    t0 = time.perf_counter()
    try:
      return orig(*args, **kwargs)
    finally:
      self.acc[phase] += time.perf_counter() - t0

  def _generation(self, orig: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    completion_ids, logprobs = self._time("generation", orig, *args, **kwargs)
    self.completion_tokens += sum(len(c) for c in completion_ids)
    return completion_ids, logprobs

  def _logps(self, orig: Callable[..., Any], model: Any, *args: Any, **kwargs: Any) -> Any:
    phase = ("reference_forward" if model is self.trainer.ref_model else "policy_forward")
    return self._time(phase, orig, model, *args, **kwargs)

  def _begin(self) -> None:
    self.acc = dict.fromkeys(self.PHASES, 0.0)
    self.completion_tokens = 0
    self._t0 = time.perf_counter()

  def _end(self) -> None:
    total = time.perf_counter() - self._t0
    rec = {f"time_{k}": v for k, v in self.acc.items()}
    rec["time_backward_optimizer"] = max(total - sum(self.acc.values()), 0.0)
    rec["time_update"] = rec["time_policy_forward"] + rec["time_backward_optimizer"]
    rec["time_step"] = total
    rec["completion_tokens"] = self.completion_tokens
    self.steps.append(rec)


def run_trl(trainer: Any) -> list[dict[str, float]]:
  """Trains and returns one record per step: TRL's logged metrics plus the phase timings."""
  timer = TrlPhaseTimer(trainer)
  trainer.train()
  logs = [h for h in trainer.state.log_history if "loss" in h and "step" in h]
  out = []
  for i, rec in enumerate(timer.steps):
    h = logs[i] if i < len(logs) else {}
    n = rec["completion_tokens"]
    rows = trainer.args.per_device_train_batch_size
    out.append({
        "step": i + 1, "reward_mean": h.get("reward", math.nan),
        "reward_std": h.get("reward_std", math.nan),
        "frac_reward_zero_std": h.get("frac_reward_zero_std", math.nan),
        "kl": h.get("kl", 0.0), "loss": h.get("loss", math.nan),
        "grad_norm": h.get("grad_norm", math.nan), "entropy": h.get("entropy", math.nan),
        "clip_frac_low": h.get("clip_ratio/low_mean", math.nan),
        "clip_frac_high": h.get("clip_ratio/high_mean", math.nan),
        "completion_mean_length": n / rows, **rec})
  return out


# ---------------------------------------------------------------------------------------------
# Step-level parity: the same completions through TRL's compute_loss and our loss.
# ---------------------------------------------------------------------------------------------


def rel_err(ours: Any, ref: Any) -> float:
  """max|ours - ref| / max|ref| (the repository's parity metric)."""
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  scale = np.abs(ref).max()
  return float(np.abs(ours - ref).max() / scale) if scale > 0 else float(np.abs(ours).max())


def _trl_inputs(batch: Mapping[str, Any], advantages: np.ndarray, ref_logp: np.ndarray,
                old_logp: np.ndarray | None) -> dict[str, Any]:
  import torch
  p = batch["prompt_len"]
  long = lambda x: torch.tensor(np.asarray(x), dtype=torch.long)
  cm = batch["completion_mask"]
  inputs = {
      "prompt_ids": long(batch["tokens"][:, :p]), "prompt_mask": long(batch["valid"][:, :p]),
      "completion_ids": long(batch["tokens"][:, p:]), "completion_mask": long(cm),
      "advantages": torch.tensor(advantages, dtype=torch.float32),
      "num_items_in_batch": torch.tensor(float(cm.sum())),
      "ref_per_token_logps": torch.tensor(ref_logp, dtype=torch.float32),
  }
  if old_logp is not None:
    inputs["old_per_token_logps"] = torch.tensor(old_logp, dtype=torch.float32)
  return inputs


def _trl_logps(trainer: Any, model: Any, batch: Mapping[str, Any]) -> np.ndarray:
  import torch
  ids = torch.tensor(batch["tokens"], dtype=torch.long)
  mask = torch.tensor(batch["valid"], dtype=torch.long)
  m = batch["completion_mask"].shape[1]
  logps_fn = trainer._get_per_token_logps_and_entropies  # pylint: disable=protected-access
  with torch.no_grad():
    logp, _, _ = logps_fn(model, ids, mask, m)
  return logp.float().numpy() * batch["completion_mask"]


def _trl_loss_and_grads(trainer: Any, inputs: Mapping[str, Any], float64: bool = False
                        ) -> tuple[float, dict[str, np.ndarray]]:
  """TRL's `compute_loss` and `backward` on prepared inputs; grads as numpy (model dtype).

  With `float64`, the policy and the float inputs are cast to float64 for the call (and the
  policy back to float32 after: float32 -> float64 -> float32 is exact), giving a reference
  for how far each fp32 implementation is from the exact result.
  """
  import torch
  model = trainer.model
  model.train()
  model.zero_grad(set_to_none=True)
  trainer.current_gradient_accumulation_steps = 1
  inputs = dict(inputs)
  if float64:
    model.double()
    inputs = {k: v.double() if torch.is_floating_point(v) else v for k, v in inputs.items()}
  try:
    loss = trainer.compute_loss(model, inputs)
    loss.backward()
    grads = {n: p.grad.detach().numpy().copy() for n, p in model.named_parameters()
             if p.grad is not None}
  finally:
    model.zero_grad(set_to_none=True)
    if float64:
      model.float()
  return float(loss.detach()), grads


@functools.lru_cache(maxsize=None)
def _jax_loss_and_grad_fn(config: DecoderConfig, hp: rl.UpdateHParams) -> Callable[..., Any]:
  loss_fn = rl.make_loss_fn(config, hp)

  def loss_and_grad(params: Any, batch: Mapping[str, Array]) -> tuple[Array, Any]:
    m = batch["completion_mask"].astype(jnp.float32)
    dens = {"policy": jnp.maximum(rl.aggregation_denominator(
        m, hp.aggregation, hp.max_completion_length), 1.0), "tokens": jnp.maximum(m.sum(), 1.0)}
    (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, dens)
    return loss, grads

  return jax.jit(loss_and_grad)


def _perturb_torch_model(model: Any, scale: float, seed: int) -> None:
  """Adds seeded Gaussian noise of `scale` times each tensor's std, in place."""
  import torch
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for _, p in sorted(model.named_parameters()):
      noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
      p.add_((noise * scale * p.float().std().clamp(min=1e-3)).to(p.dtype))


def _probe(trainer: Any, side: JaxSide, policy_params: Any, batch: Mapping[str, Any],
           advantages: np.ndarray, old_noise: float) -> dict[str, float]:
  """TRL vs ours on one batch: log-probs, reference log-probs, loss and gradient.

  Both sides get identical reference and old log-probs (ours). With `old_noise` == 0 the old
  log-probs are omitted on TRL's side (its on-policy path: current log-probs, detached) and
  are our current log-probs on ours; otherwise they are the reference log-probs plus seeded
  N(0, old_noise^2) noise, so ratios leave the clip range.
  """
  p = side.preset
  config = side.bundle.config
  m = batch["completion_mask"]
  mask = m.astype(bool)
  trl_logp = _trl_logps(trainer, trainer.model, batch)
  ours_logp = np.asarray(side.ref_logp(policy_params, batch["tokens"], batch["valid"], m))
  trl_ref = (_trl_logps(trainer, trainer.ref_model, batch)
             if trainer.ref_model is not None else None)
  ours_ref = np.asarray(side.ref_logp(side.ref_params, batch["tokens"], batch["valid"], m))
  if old_noise:
    noise = np.random.default_rng(p.seed + 2).normal(size=m.shape).astype(np.float32)
    old = (ours_ref + old_noise * noise) * m
  else:
    old = None
  inputs = _trl_inputs(batch, advantages, ours_ref, old)
  trl_loss, trl_grads = _trl_loss_and_grads(trainer, inputs)
  exact_loss, exact_grads = _trl_loss_and_grads(trainer, inputs, float64=True)
  jbatch = {"tokens": batch["tokens"], "valid": batch["valid"], "completion_mask": m,
            "old_logp": ours_logp if old is None else old, "ref_logp": ours_ref,
            "advantages": np.broadcast_to(advantages[:, None], m.shape).astype(np.float32)}
  loss, grads = _jax_loss_and_grad_fn(config, p.update_hparams())(
      {"policy": policy_params}, jbatch)
  ours_grads = dict(hf_state_dict(jax.device_get(grads["policy"]), config))
  names = sorted(set(ours_grads) & set(trl_grads))
  # Tensor by tensor (no concatenated copies of a whole model's gradients in memory).
  stats = {k: 0.0 for k in ("max_trl", "max_exact", "d_ours_trl", "d_ours_exact",
                            "d_trl_exact", "sq_ours", "sq_trl", "sq_exact")}
  per_tensor = []
  for n in names:
    go, gt, ge = (np.asarray(g[n], np.float64) for g in (ours_grads, trl_grads, exact_grads))
    stats["max_trl"] = max(stats["max_trl"], float(np.abs(gt).max()))
    stats["max_exact"] = max(stats["max_exact"], float(np.abs(ge).max()))
    for key, a, b in (("d_ours_trl", go, gt), ("d_ours_exact", go, ge), ("d_trl_exact", gt, ge)):
      stats[key] = max(stats[key], float(np.abs(a - b).max()))
    for key, a in (("sq_ours", go), ("sq_trl", gt), ("sq_exact", ge)):
      stats[key] += float(np.sum(np.square(a)))
    per_tensor.append((rel_err(go, ge), rel_err(gt, ge), n))
  norm = {k: math.sqrt(stats[f"sq_{k}"]) for k in ("ours", "trl", "exact")}
  norm_err = lambda a, b: abs(norm[a] - norm[b]) / max(norm[b], 1e-30)
  ratio = np.exp(ours_logp - jbatch["old_logp"])[mask]
  x = (ours_ref - ours_logp)[mask]
  # The policy term of each sequence is about -A at ratio 1; group-centred advantages make
  # the loss itself nearly cancel, so its error is measured against that scale.
  loss_scale = max(abs(trl_loss), float(np.mean(np.abs(advantages))))
  out = {
      "loss_trl": trl_loss, "loss_ours": float(loss), "loss_fp64": exact_loss,
      "loss_rel_err": abs(float(loss) - trl_loss) / loss_scale,
      "logp_rel_err": rel_err(ours_logp[mask], trl_logp[mask]),
      "grad_rel_err": stats["d_ours_trl"] / max(stats["max_trl"], 1e-30),
      "grad_norm_trl": norm["trl"], "grad_norm_ours": norm["ours"],
      "grad_norm_fp64": norm["exact"],
      "grad_norm_rel_err": norm_err("ours", "trl"),
      # Distance of each fp32 implementation from TRL's float64 result.
      "grad_rel_err_ours_vs_fp64": stats["d_ours_exact"] / max(stats["max_exact"], 1e-30),
      "grad_rel_err_trl_vs_fp64": stats["d_trl_exact"] / max(stats["max_exact"], 1e-30),
      "grad_norm_rel_err_ours_vs_fp64": norm_err("ours", "exact"),
      "grad_norm_rel_err_trl_vs_fp64": norm_err("trl", "exact"),
      "grad_tensors": len(names),
      "grad_tensors_unmatched": len(set(ours_grads) ^ set(trl_grads)),
      "kl_k3_mean": float(np.mean(np.exp(x) - x - 1.0)),
      "ratio_outside_clip_frac": float(np.mean((ratio < 1 - p.epsilon)
                                               | (ratio > 1 + p.epsilon_high))),
  }
  per_tensor.sort(reverse=True)
  out["grad_worst_tensors"] = [{"name": n, "ours_vs_fp64": a, "trl_vs_fp64": b}
                               for a, b, n in per_tensor[:5]]
  if trl_ref is not None:
    out["ref_logp_rel_err"] = rel_err(ours_ref[mask], trl_ref[mask])
  return out


def step_parity(trainer: Any, side: JaxSide, prompts: Sequence[Prompt],
                reward_func: RewardFunc, perturb_scale: float = 0.05, old_noise: float = 0.3
                ) -> dict[str, Any]:
  """Feeds one set of sampled completions to both sides and compares the first update.

  Probe 'checkpoint': policy == reference, old log-probs = current (TRL's on-policy path).
  Probe 'perturbed': both policies get the same seeded weight noise (`perturb_scale` times
  each tensor's std), and the old log-probs are the reference's plus N(0, old_noise^2), so
  the KL term, the ratio and the clipping are all exercised.

  Advantages come from the reward callable; when every group's rewards are equal (all
  advantages 0, as for a random model) they come from seeded N(0,1) rewards instead, so the
  gradient is never vacuous. `advantages_source` says which.

  Returns:
    {'probes': {name: errors}, 'max_rel_err': ..., 'passed': bool, ...}.
  """
  p = side.preset
  config, tokenizer = side.bundle.config, side.bundle.tokenizer
  g = p.num_generations
  ptok, pval = prompt_arrays(tokenizer, prompts, config.pad_token_id)
  out = sampling.sample(side.ref_params, config, ptok, pval,
                        jax.random.PRNGKey(p.seed + 1), num_samples=g,
                        max_new_tokens=p.max_completion_length, temperature=p.temperature,
                        eos_ids=eos_ids(config, tokenizer))
  tokens, lengths = jax.device_get((out.tokens, out.lengths))
  texts = decode_completions(tokenizer, tokens, lengths)
  rewards = np.asarray(reward_func(prompts=[pr.question for pr in prompts for _ in range(g)],
                                   completions=texts, **reward_columns(prompts, g)), np.float32)
  source = "reward_func"
  if np.all(rewards.reshape(-1, g).std(1) == 0):
    rewards = np.random.default_rng(p.seed).normal(size=rewards.shape).astype(np.float32)
    source = "seeded_normal"
  advantages = np.asarray(rl.grpo_advantages(jnp.asarray(rewards), g), np.float32)
  # Same shapes as the first training step, so the jitted functions are shared.
  batch = dict(rollout_batch(ptok, pval, out, g), prompt_len=ptok.shape[1])

  probes = {"checkpoint": _probe(trainer, side, side.ref_params, batch, advantages, 0.0)}

  # The perturbed policy: TRL's model in place (restored afterwards), ours via a safetensors
  # round trip of the same tensors.
  import torch
  model = trainer.model
  saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
  try:
    _perturb_torch_model(model, perturb_scale, p.seed)
    with tempfile.TemporaryDirectory(prefix="pbrl_compare_perturbed_") as tmp:
      model.save_pretrained(tmp, safe_serialization=True)
      perturbed = load_hf_params(tmp, config)
    perturbed = jax.device_put(perturbed, side.fns.policy_shardings)
    probes["perturbed"] = _probe(trainer, side, perturbed, batch, advantages, old_noise)
  finally:
    with torch.no_grad():
      model.load_state_dict(saved)
  trainer._metrics["train"].clear()  # pylint: disable=protected-access
  checks = {f"{name}/{k}": v for name, pr in probes.items()
            for k, v in parity_checks(pr, PARITY_RTOL).items()}
  max_err = max(pr[k] for pr in probes.values() for k in PARITY_KEYS if k in pr)
  return {"probes": probes, "advantages_source": source, "rtol": PARITY_RTOL,
          "rows": int(batch["tokens"].shape[0]),
          "completion_tokens": int(batch["completion_mask"].sum()),
          "max_rel_err": max_err, "checks": checks,
          "passed": all(c["passed"] for c in checks.values())}


# The most a gradient may differ from TRL's (and from the float64 result), relative, even
# where TRL's own float32 rounding error exceeds the tolerance.
GRAD_ABS_LIMIT = 1e-3
PARITY_KEYS = ("loss_rel_err", "logp_rel_err", "ref_logp_rel_err", "grad_rel_err",
               "grad_norm_rel_err")


def parity_checks(probe: Mapping[str, float], rtol: float) -> dict[str, dict[str, Any]]:
  """Pass/fail of each error of one probe.

  Loss and log-probs: error to TRL (fp32) <= rtol. Gradient and gradient norm: error to TRL
  <= rtol, or, where float32 rounding alone moves TRL further than rtol from its own float64
  result (the gradient of a group-centred loss is a near-cancelling sum), our distance to that
  float64 result <= 2x TRL's, and never above GRAD_ABS_LIMIT whatever TRL's own error: a
  gradient 1e-3 away from the float64 result is a bug, not rounding.
  """
  out = {}
  for key in ("loss_rel_err", "logp_rel_err", "ref_logp_rel_err"):
    if key in probe:
      out[key] = {"value": probe[key], "bound": rtol, "passed": bool(probe[key] <= rtol)}
  for key in ("grad_rel_err", "grad_norm_rel_err"):
    base = key.removesuffix("_rel_err")
    ours, trl = probe[f"{base}_rel_err_ours_vs_fp64"], probe[f"{base}_rel_err_trl_vs_fp64"]
    ok = probe[key] <= rtol or (ours <= 2.0 * trl and probe[key] <= GRAD_ABS_LIMIT
                                and ours <= GRAD_ABS_LIMIT)
    out[key] = {"value": probe[key], "bound": rtol, "ours_vs_fp64": ours, "trl_vs_fp64": trl,
                "abs_limit": GRAD_ABS_LIMIT, "passed": bool(ok)}
  return out


# ---------------------------------------------------------------------------------------------
# Reports: JSON, markdown, PNG.
# ---------------------------------------------------------------------------------------------


def _steady(records: Sequence[Mapping[str, float]], key: str) -> float:
  """Median over steps after the first (compilation / warm-up), or the only step."""
  vals = [r[key] for r in records[1:]] or [r[key] for r in records]
  return float(np.median(vals)) if vals else math.nan


def speed_summary(records: Sequence[Mapping[str, float]], phases: Sequence[str]
                  ) -> dict[str, float]:
  """Steady-state seconds per step, completion tokens per step and per second, phases."""
  sec = _steady(records, "time_step")
  tok = _steady(records, "completion_tokens")
  out = {"seconds_per_step": sec, "completion_tokens_per_step": tok,
         "completion_tokens_per_second": tok / sec if sec > 0 else math.nan,
         "first_step_seconds": records[0]["time_step"] if records else math.nan}
  for ph in phases:
    out[f"seconds_{ph}"] = _steady(records, f"time_{ph}")
    out[f"share_{ph}"] = out[f"seconds_{ph}"] / sec if sec > 0 else math.nan
  return out


TRL_PHASES = ("generation", "reward", "reference_forward", "policy_forward",
              "backward_optimizer")
JAX_PHASES = ("generation", "reward", "reference_forward", "update")


def atomic_write(path: str, data: str | bytes) -> None:
  """Writes through a temp file in the same directory, then renames it into place."""
  d = os.path.dirname(os.path.abspath(path))
  os.makedirs(d, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".tmp-", dir=d)
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def _fmt(x: Any, spec: str = ".4g") -> str:
  return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def markdown_report(result: Mapping[str, Any]) -> str:
  """Preset, parity, curves and speed as markdown."""
  lines = [f"# GRPO: TRL {result['versions']['trl']} vs pbrl_jax", "",
           f"model: `{result['model']}`; prompts: {result['num_prompts']} x "
           f"{result['preset']['num_generations']} completions; seed {result['preset']['seed']};"
           f" reward: `{result['reward']}`; TRL dtype: {result['trl_dtype']}", "",
           "## Matched preset", "", result["preset_table"], ""]
  par = result.get("parity")
  if par:
    e = lambda x: _fmt(x, ".1e")
    lines += ["## Step-level parity (same completions, fp32)", "",
              f"advantages from: {par['advantages_source']}; rows {par['rows']}, completion "
              f"tokens {par['completion_tokens']}; tolerance {par['rtol']:g} relative. Errors"
              " are max|ours - TRL| / max|TRL|; 'vs fp64' columns: distance of ours / TRL"
              " (both fp32) to TRL run in float64.", "",
              "| probe | loss TRL | loss ours | loss | log-probs | ref log-probs | gradient |"
              " grad norm | gradient vs fp64 (ours / TRL) | grad norm vs fp64 (ours / TRL) |"
              " KL k3 mean | ratio outside clip |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, pr in par["probes"].items():
      lines.append(
          f"| {name} | {_fmt(pr['loss_trl'], '.6g')} | {_fmt(pr['loss_ours'], '.6g')}"
          f" | {e(pr['loss_rel_err'])} | {e(pr['logp_rel_err'])} |"
          f" {e(pr.get('ref_logp_rel_err'))} | {e(pr['grad_rel_err'])} |"
          f" {e(pr['grad_norm_rel_err'])} |"
          f" {e(pr['grad_rel_err_ours_vs_fp64'])} / {e(pr['grad_rel_err_trl_vs_fp64'])} |"
          f" {e(pr['grad_norm_rel_err_ours_vs_fp64'])} /"
          f" {e(pr['grad_norm_rel_err_trl_vs_fp64'])} |"
          f" {_fmt(pr['kl_k3_mean'], '.2e')} | {_fmt(pr['ratio_outside_clip_frac'], '.2f')} |")
    for name, pr in par["probes"].items():
      worst = ", ".join(f"`{w['name']}` {e(w['ours_vs_fp64'])} / {e(w['trl_vs_fp64'])}"
                        for w in pr["grad_worst_tensors"][:3])
      lines.append(f"\n{name}: largest per-tensor gradient errors vs fp64 (ours / TRL): {worst}")
    failed = sorted(k for k, c in par["checks"].items() if not c["passed"])
    lines += ["", f"max relative error to TRL {par['max_rel_err']:.2e}: "
              f"{'PASS' if par['passed'] else 'FAIL: ' + ', '.join(failed)}", ""]
  trl_c, jax_c = result.get("trl_steps", []), result.get("jax_steps", [])
  if trl_c or jax_c:
    lines += ["## Training curves", "",
              "| step | reward TRL | reward ours | KL TRL | KL ours | loss TRL | loss ours |"
              " s/step TRL | s/step ours |", "|---|---|---|---|---|---|---|---|---|"]
    for i in range(max(len(trl_c), len(jax_c))):
      t = trl_c[i] if i < len(trl_c) else {}
      j = jax_c[i] if i < len(jax_c) else {}
      lines.append(f"| {i + 1} | {_fmt(t.get('reward_mean'))} | {_fmt(j.get('reward_mean'))} |"
                   f" {_fmt(t.get('kl'))} | {_fmt(j.get('kl'))} | {_fmt(t.get('loss'))} |"
                   f" {_fmt(j.get('loss'))} | {_fmt(t.get('time_step'), '.2f')} |"
                   f" {_fmt(j.get('time_step'), '.2f')} |")
    lines.append("")
  speed = result.get("speed")
  if speed:
    t, j = speed["trl"], speed["jax"]
    lines += ["## Speed (steady state: median of steps after the first)", "",
              "| | TRL | pbrl_jax |", "|---|---|---|",
              f"| seconds / step | {_fmt(t['seconds_per_step'], '.3f')} |"
              f" {_fmt(j['seconds_per_step'], '.3f')} |",
              f"| completion tokens / step | {_fmt(t['completion_tokens_per_step'], '.0f')} |"
              f" {_fmt(j['completion_tokens_per_step'], '.0f')} |",
              f"| completion tokens / s | {_fmt(t['completion_tokens_per_second'], '.1f')} |"
              f" {_fmt(j['completion_tokens_per_second'], '.1f')} |",
              f"| first step seconds | {_fmt(t['first_step_seconds'], '.2f')} |"
              f" {_fmt(j['first_step_seconds'], '.2f')} |"]
    for ph in ("generation", "reward", "reference_forward"):
      lines.append(f"| {ph} | {_fmt(t[f'seconds_{ph}'], '.3f')} s"
                   f" ({_fmt(100 * t[f'share_{ph}'], '.0f')}%) |"
                   f" {_fmt(j[f'seconds_{ph}'], '.3f')} s ({_fmt(100 * j[f'share_{ph}'], '.0f')}%)"
                   " |")
    lines.append(f"| update (policy forward + backward + optimizer) |"
                 f" {_fmt(t['seconds_policy_forward'] + t['seconds_backward_optimizer'], '.3f')} s"
                 f" (policy forward {_fmt(t['seconds_policy_forward'], '.3f')} s) |"
                 f" {_fmt(j['seconds_update'], '.3f')} s (one jit) |")
    lines += [f"| tokens/s ratio pbrl_jax / TRL | | {_fmt(speed['tokens_per_second_ratio'], '.2f')}"
              " |", ""]
  return "\n".join(lines)


def plot_curves(result: Mapping[str, Any], path: str) -> None:
  """Reward mean, KL and loss per step, TRL and pbrl_jax side by side, one PNG."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
  for ax, key, title in zip(axes, ("reward_mean", "kl", "loss"), ("reward mean", "KL", "loss")):
    for name, recs, style in (("TRL", result.get("trl_steps", []), "o-"),
                              ("pbrl_jax", result.get("jax_steps", []), "s--")):
      if recs:
        ax.plot([r["step"] for r in recs], [r[key] for r in recs], style, label=name)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
  axes[0].legend()
  p = result["preset"]
  fig.suptitle(f"GRPO {result['model_name']}: beta={p['beta']} loss_type={p['loss_type']} "
               f"G={p['num_generations']} seed={p['seed']}", fontsize=10)
  fig.tight_layout()
  fd, tmp = tempfile.mkstemp(suffix=".png", dir=os.path.dirname(os.path.abspath(path)))
  os.close(fd)
  try:
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
  finally:
    plt.close(fig)
    if os.path.exists(tmp):
      os.remove(tmp)


# ---------------------------------------------------------------------------------------------
# The whole comparison.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Options:
  """What `pbrl-compare` runs.

  Attributes:
    model_dir: HF model directory ('' builds the default SmolLM2 directory in cache_dir).
    out_dir: where results, report.md, curves.png and TRL's output dir go.
    steps: training steps per side (0: parity only).
    num_prompts: prompts per step (all of them every step).
    preset: the matched hyperparameters.
    reward: 'verifiable', or a semantic kind of `RewardSpec` ('embedding', 'hybrid', 'mt').
    parity: run the step-level parity check.
    trl_bf16: run TRL's training in bf16 autocast (parity stays fp32).
    cache_dir: where the default model directory is cached.
    jax_microbatches: gradient-accumulation chunks of our update (memory only: the gradient
      is the same); must divide prompts x G.
  """

  model_dir: str
  out_dir: str
  steps: int = 5
  num_prompts: int = 8
  preset: Preset = Preset()
  reward: str = "verifiable"
  parity: bool = True
  trl_bf16: bool = False
  cache_dir: str = os.path.join(os.path.expanduser("~"), ".cache", "pbrl_jax")
  jax_microbatches: int = 1

  def __post_init__(self):
    rows = self.num_prompts * self.preset.num_generations
    if self.jax_microbatches < 1 or rows % self.jax_microbatches:
      raise ValueError(f"jax_microbatches {self.jax_microbatches} must divide prompts x G ="
                       f" {rows}")


def make_reward_func(kind: str) -> RewardFunc:
  """The reward callable both sides call."""
  if kind == "verifiable":
    return verifiable_reward_func
  from pbrl_jax.rewards import RewardSpec
  return make_semantic_reward_func(RewardSpec(kind=kind))


def run(opts: Options, log: Callable[[str], None] = print) -> dict[str, Any]:
  """Runs parity, both training loops and the speed summary; writes the reports.

  Files in `opts.out_dir`: results.json (every number), report.md, curves.png (when steps > 0).

  Returns:
    The results dict (as written to results.json).
  """
  import torch
  import transformers
  import trl

  os.makedirs(opts.out_dir, exist_ok=True)
  source_dir = opts.model_dir or default_model_dir(opts.cache_dir)
  model_dir = trl_loadable_dir(source_dir, opts.out_dir)
  prompts = select_prompts(opts.num_prompts)
  preset = opts.preset
  reward_func = make_reward_func(opts.reward)
  result: dict[str, Any] = {
      # Home shortened to '~': the results are shared, this machine's paths are not.
      "model": os.path.abspath(source_dir).replace(os.path.expanduser("~"), "~", 1),
      "model_name": os.path.basename(os.path.abspath(source_dir)),
      "num_prompts": len(prompts), "steps": opts.steps, "reward": opts.reward,
      "jax_microbatches": opts.jax_microbatches,
      "trl_dtype": "bfloat16 autocast" if opts.trl_bf16 else "float32",
      "preset": dataclasses.asdict(preset), "preset_table": preset_table(preset),
      "prompts": [dataclasses.asdict(p) for p in prompts],
      "versions": {"trl": trl.__version__, "transformers": transformers.__version__,
                   "torch": torch.__version__, "jax": jax.__version__},
      "devices": {"jax": str(jax.devices()[0].platform), "torch_threads":
                  torch.get_num_threads()},
  }
  log(f"model {source_dir}; {len(prompts)} prompts x {preset.num_generations}; seed {preset.seed}")
  log(preset_table(preset))

  side = build_jax_side(model_dir, preset, opts.jax_microbatches)
  torch.manual_seed(preset.seed)
  trainer = build_trl_trainer(model_dir, preset, prompts, reward_func, max(opts.steps, 1),
                              os.path.join(opts.out_dir, "trl_output"), bf16=False)
  if opts.parity:
    t0 = time.perf_counter()
    result["parity"] = step_parity(trainer, side, prompts, reward_func)
    log(f"parity: max relative error to TRL {result['parity']['max_rel_err']:.2e} "
        f"({'PASS' if result['parity']['passed'] else 'FAIL'}, "
        f"{time.perf_counter() - t0:.1f} s)")

  if opts.steps > 0:
    if opts.trl_bf16:
      torch.manual_seed(preset.seed)
      trainer = build_trl_trainer(model_dir, preset, prompts, reward_func, opts.steps,
                                  os.path.join(opts.out_dir, "trl_output"), bf16=True)
    log(f"TRL: {opts.steps} steps")
    result["trl_steps"] = run_trl(trainer)
    log(f"pbrl_jax: {opts.steps} steps")
    result["jax_steps"] = [jax_train_step(side, prompts, reward_func, i)
                           for i in range(opts.steps)]
    trl_speed = speed_summary(result["trl_steps"], TRL_PHASES)
    jax_speed = speed_summary(result["jax_steps"], JAX_PHASES)
    ratio = jax_speed["completion_tokens_per_second"] / trl_speed["completion_tokens_per_second"]
    result["speed"] = {"trl": trl_speed, "jax": jax_speed, "tokens_per_second_ratio": ratio,
                       "timing_note": "steady state = median of steps after the first; TRL "
                       "backward_optimizer = step - (generation + reward + reference_forward "
                       "+ policy_forward)"}
    plot_curves(result, os.path.join(opts.out_dir, "curves.png"))

  report = markdown_report(result)
  atomic_write(os.path.join(opts.out_dir, "results.json"),
               json.dumps(result, indent=2, default=float))
  atomic_write(os.path.join(opts.out_dir, "report.md"), report)
  log(f"wrote {opts.out_dir}/results.json, report.md" + (", curves.png" if opts.steps else ""))
  return result
