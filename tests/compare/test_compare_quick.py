"""`pbrl-compare --quick`: TRL 1.16 GRPOTrainer and pbrl_jax on a tiny random Llama.

The quick comparison runs in-process (the same code path as the CLI): step-level parity on
identical completions must hold within 1e-4 relative in fp32, on probes where the gradient,
the KL term and the clipping all carry weight; both training loops must produce finite
curves and timings, and the report files must be written.
"""

import json
import math
import os

import numpy as np
import pytest

import torch  # noqa: F401 (missing: the test fails, never skips)
import trl

from pbrl_jax import compare  # pylint: disable=g-import-not-at-top
from pbrl_jax import rl  # pylint: disable=g-import-not-at-top


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
  """The --quick comparison (tiny model, 4 prompts x 4, 16 tokens, 2 steps), run once."""
  out = str(tmp_path_factory.mktemp("compare_quick"))
  model = compare.write_tiny_model(os.path.join(out, "tiny_model"))
  opts = compare.Options(model_dir=model, out_dir=out, steps=2, num_prompts=4,
                         preset=compare.Preset(max_completion_length=16, seed=0))
  return out, compare.run(opts, log=lambda _: None)


@pytest.mark.slow
def test_step_parity_within_tolerance(quick):
  _, result = quick
  par = result["parity"]
  assert set(par["probes"]) == {"checkpoint", "perturbed"}
  assert par["prompt_group"] == 4  # the trainer's shared-prompt path was compared
  for name, pr in par["probes"].items():
    for key in ("loss_rel_err", "logp_rel_err", "ref_logp_rel_err", "grad_rel_err",
                "grad_norm_rel_err"):
      assert pr[key] <= compare.PARITY_RTOL, (name, key, pr[key])
    # Not a vacuous match: real gradients over every matched tensor.
    assert pr["grad_norm_trl"] > 1e-4, (name, pr["grad_norm_trl"])
    assert pr["grad_tensors"] >= 10 and pr["grad_tensors_unmatched"] == 0
  pert = par["probes"]["perturbed"]
  assert pert["kl_k3_mean"] > 1e-6  # the KL term carries weight
  assert pert["ratio_outside_clip_frac"] > 0.05  # and so does the clipping
  assert abs(pert["loss_trl"]) > 1e-4
  # On a tiny model both fp32 implementations sit well within rtol of TRL's float64 result.
  for pr in par["probes"].values():
    assert pr["grad_rel_err_ours_vs_fp64"] <= compare.PARITY_RTOL
    assert pr["loss_rel_err_ours_vs_fp64"] <= compare.PARITY_RTOL
    assert pr["loss_scale"] >= abs(pr["loss_trl"])
    assert abs(pr["loss_fp64"] - pr["loss_trl"]) <= compare.PARITY_RTOL * max(
        abs(pr["loss_trl"]), 1.0)
  assert par["passed"] and par["max_rel_err"] <= compare.PARITY_RTOL
  assert par["checks"] and all(c["passed"] for c in par["checks"].values())


def _parity_only(tmp_path, **preset):
  """The step parity of a --quick comparison with `preset` (no training steps): each probe's
  loss, gradient and gradient norm within PARITY_RTOL of TRL, on real gradients."""
  model = compare.write_tiny_model(str(tmp_path / "tiny_model"))
  opts = compare.Options(model_dir=model, out_dir=str(tmp_path), steps=0, num_prompts=4,
                         preset=compare.Preset(max_completion_length=16, seed=0, **preset))
  par = compare.run(opts, log=lambda _: None)["parity"]
  for name, pr in par["probes"].items():
    for key in ("loss_rel_err", "grad_rel_err", "grad_norm_rel_err"):
      assert pr[key] <= compare.PARITY_RTOL, (name, key, pr[key])
    assert pr["grad_norm_trl"] > 1e-4, (name, pr["grad_norm_trl"])
  assert par["passed"]
  return par


@pytest.mark.slow
def test_step_parity_with_the_top_entropy_mask(tmp_path):
  """TRL's top_entropy_quantile in its own compute_loss against rl.top_entropy_quantile in
  our loss, on the same completions."""
  _parity_only(tmp_path, top_entropy_quantile=0.5)


@pytest.mark.slow
@pytest.mark.parametrize("loss_type,mode,low,high", [
    # TRL's default mode; its default bound 3.0 rarely bites on 16 rows of <= 16 tokens.
    ("grpo", "sequence_mask", None, 1.5),
    ("vespo", "token_truncate", 0.8, 1.25),  # folded into VESPO's sequence weight
])
def test_step_parity_with_the_sampler_mismatch_correction(tmp_path, loss_type, mode, low,
                                                          high):
  """TRL's vLLM importance-sampling correction in its own compute_loss against
  rl.rollout_correction in ours, both fed the same seeded sampler log-probs."""
  par = _parity_only(tmp_path, loss_type=loss_type, vllm_importance_sampling_mode=mode,
                     vllm_importance_sampling_clip_min=low,
                     vllm_importance_sampling_clip_max=high)
  for name, pr in par["probes"].items():
    # The bounds bite on some tokens but not all: the weights carry weight.
    assert 0.0 < pr["rollout_bounded_frac"] < 0.9, (name, pr["rollout_bounded_frac"])


@pytest.mark.slow
def test_curves_speed_and_reports(quick):
  out, result = quick
  for side in ("trl_steps", "jax_steps"):
    steps = result[side]
    assert [s["step"] for s in steps] == [1, 2], side
    for s in steps:
      for key in ("reward_mean", "kl", "loss", "grad_norm", "time_step"):
        assert math.isfinite(s[key]), (side, key)
      assert 0 < s["completion_tokens"] <= 4 * 4 * 16
      phases = sum(v for k, v in s.items() if k.startswith("time_")
                   and k not in ("time_step", "time_update"))
      assert phases <= s["time_step"] * 1.001 + 1e-3, (side, s)
  trl_last = result["trl_steps"][-1]
  assert trl_last["time_generation"] > 0 and trl_last["time_policy_forward"] > 0
  assert trl_last["time_reference_forward"] > 0  # beta > 0: TRL scores the reference
  speed = result["speed"]
  for side in ("trl", "jax"):
    assert speed[side]["seconds_per_step"] > 0
    assert speed[side]["completion_tokens_per_second"] > 0
  assert speed["tokens_per_second_ratio"] > 0
  with open(os.path.join(out, "results.json")) as f:
    saved = json.load(f)
  assert saved["parity"]["max_rel_err"] == result["parity"]["max_rel_err"]
  assert saved["preset"]["beta"] == 0.04 and saved["preset"]["seed"] == 0
  with open(os.path.join(out, "report.md")) as f:
    report = f.read()
  assert "PASS" in report and "| seed |" in report and "tokens / s" in report
  with open(os.path.join(out, "curves.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_our_side_is_the_trainers_spec_with_shared_prompt():
  """Our side compiles the trainer's step functions from a validated spec: GRPO advantages
  without a floor (TRL's), one update per batch, each group's prompt run once."""
  preset = compare.Preset(num_generations=4, max_completion_length=16, temperature=0.7)
  spec = preset.trainer_spec("unused", num_prompts=6, num_microbatches=3)
  assert spec.prompt_group == 4 and spec.pipeline.group_size == 4
  assert spec.rl.advantage is rl.AdvantageEstimator.GRPO and spec.rl.std_floor == 0.0
  assert (spec.rl.num_epochs, spec.rl.num_minibatches, spec.rl.num_microbatches) == (1, 1, 3)
  assert (spec.rollout.temperature, spec.rollout.max_new_tokens) == (0.7, 16)
  assert spec.rl.overlong_buffer == 0 and not spec.rl.mask_truncated
  from configs import common
  assert spec.model.vocab_block == common.model_config().vocab_block  # the trainer's scoring
  from pbrl_jax.config_schema import ConfigError
  with pytest.raises(ConfigError, match="does not divide"):
    preset.trainer_spec("unused", num_prompts=6, num_microbatches=4)
  with pytest.raises(ValueError, match="whole groups"):
    compare.Options(model_dir="x", out_dir="y", num_prompts=6, jax_microbatches=4)


@pytest.mark.parametrize("loss_type,level", [("grpo", "token"), ("dr_grpo", "token"),
                                              ("dapo", "token"), ("grpo", "sequence"),
                                              ("luspo", "sequence"), ("cispo", "token"),
                                              ("sapo", "token"), ("vespo", "token")])
def test_preset_sets_trl_config_and_our_hparams(loss_type, level, tmp_path):
  preset = compare.Preset(beta=0.02, loss_type=loss_type, num_generations=3, temperature=0.7,
                          learning_rate=3e-6, max_completion_length=48, epsilon=0.2,
                          epsilon_high=0.28, importance_sampling_level=level, seed=7)
  args = trl.GRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to=[],
                        per_device_train_batch_size=6, **preset.trl_kwargs())
  assert (args.beta, args.loss_type, args.num_generations) == (0.02, loss_type, 3)
  assert (args.temperature, args.learning_rate, args.max_completion_length) == (0.7, 3e-6, 48)
  assert (args.epsilon, args.epsilon_high, args.seed) == (0.2, 0.28, 7)
  assert args.use_bias_correction_kl and args.scale_rewards == "group"
  assert args.importance_sampling_level == level
  hp = preset.update_hparams()
  policy_loss, aggregation, _ = rl.TRL_LOSS_TYPES[loss_type]
  assert hp.aggregation is rl.Aggregation(aggregation)
  assert hp.policy_loss is rl.PolicyLoss(policy_loss)
  assert hp.importance_level is rl.ImportanceLevel(level)
  assert (hp.eps_low, hp.eps_high, hp.kl_coef_in_loss) == (0.2, 0.28, 0.02)
  assert hp.kl_estimator is rl.KLEstimator.K3 and hp.kl_ratio_correction
  assert hp.temperature == 0.7 and hp.max_completion_length == 48
  assert "| seed | `seed=7` |" in compare.preset_table(preset)
  assert args.top_entropy_quantile == 1.0 and not args.mask_truncated_completions
  masked = compare.Preset(top_entropy_quantile=0.2, mask_truncated_completions=True)
  args = trl.GRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to=[],
                        per_device_train_batch_size=8, **masked.trl_kwargs())
  assert args.top_entropy_quantile == 0.2 and args.mask_truncated_completions
  assert masked.update_hparams().top_entropy_quantile == 0.2
  assert masked.trainer_spec("unused", num_prompts=2).rl.mask_truncated
  with pytest.raises(ValueError, match="needs importance_sampling_level"):
    compare.Preset(loss_type="luspo")
  with pytest.raises(ValueError, match="needs importance_sampling_level"):
    compare.Preset(loss_type="vespo", importance_sampling_level="sequence")
  with pytest.raises(ValueError, match="loss_type"):
    compare.Preset(loss_type="gspo")  # TRL's name for it is importance_sampling_level
  vespo = compare.Preset(loss_type="vespo", vespo_k_pos=1.5, vespo_lambda_neg=2.5)
  args = trl.GRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to=[],
                        per_device_train_batch_size=8, **vespo.trl_kwargs())
  hp = vespo.update_hparams()
  corrected = compare.Preset(vllm_importance_sampling_mode="token_mask",
                             vllm_importance_sampling_clip_min=0.5)
  args_c = trl.GRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to=[],
                          per_device_train_batch_size=8, **corrected.trl_kwargs())
  assert args_c.vllm_importance_sampling_correction and args_c.vllm_importance_sampling_mode \
      == "token_mask"
  assert (args_c.vllm_importance_sampling_clip_min, args_c.vllm_importance_sampling_clip_max) \
      == (0.5, 3.0)
  rl_c = corrected.trainer_spec("unused", num_prompts=2).rl
  assert rl_c.rollout_correction is rl.RolloutCorrection.TOKEN_MASK
  assert (rl_c.rollout_correction_low, rl_c.rollout_correction_high) == (0.5, 3.0)
  assert not trl.GRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to=[],
                            per_device_train_batch_size=8, **compare.Preset().trl_kwargs()
                            ).vllm_importance_sampling_correction
  assert (args.vespo_k_pos, args.vespo_lambda_pos, args.vespo_k_neg, args.vespo_lambda_neg) \
      == (hp.vespo_k_pos, hp.vespo_lambda_pos, hp.vespo_k_neg, hp.vespo_lambda_neg) \
      == (1.5, 3.0, 3.0, 2.5)


def _probe_errors(**overrides):
  probe = {"loss_rel_err": 1e-6, "logp_rel_err": 1e-6, "ref_logp_rel_err": 1e-6,
           "grad_rel_err": 1e-6, "grad_norm_rel_err": 1e-6,
           "grad_rel_err_ours_vs_fp64": 1e-6, "grad_rel_err_trl_vs_fp64": 1e-6,
           "grad_norm_rel_err_ours_vs_fp64": 1e-6, "grad_norm_rel_err_trl_vs_fp64": 1e-6}
  probe.update(overrides)
  return {k: c["passed"] for k, c in compare.parity_checks(probe, 1e-4).items()}


def test_parity_checks_bounds():
  assert all(_probe_errors().values())
  assert not _probe_errors(loss_rel_err=2e-4)["loss_rel_err"]
  assert not _probe_errors(logp_rel_err=2e-4)["logp_rel_err"]
  # A gradient error above rtol passes only if fp32 rounding explains it: TRL itself is that
  # far from the float64 result, ours is no further than twice that, and neither error
  # exceeds the absolute limit.
  assert _probe_errors(grad_rel_err=5e-4, grad_rel_err_ours_vs_fp64=4e-4,
                       grad_rel_err_trl_vs_fp64=3e-4)["grad_rel_err"]
  assert compare.GRAD_ABS_LIMIT == 1e-3
  assert not _probe_errors(grad_rel_err=3e-2, grad_rel_err_ours_vs_fp64=2e-2,
                           grad_rel_err_trl_vs_fp64=2e-2)["grad_rel_err"]
  assert not _probe_errors(grad_rel_err=5e-4, grad_rel_err_ours_vs_fp64=2e-3,
                           grad_rel_err_trl_vs_fp64=2e-3)["grad_rel_err"]
  assert not _probe_errors(grad_rel_err=3e-2, grad_rel_err_ours_vs_fp64=3e-2,
                           grad_rel_err_trl_vs_fp64=1e-6)["grad_rel_err"]
  assert not _probe_errors(grad_norm_rel_err=2e-4, grad_norm_rel_err_ours_vs_fp64=5e-4,
                           grad_norm_rel_err_trl_vs_fp64=2e-4)["grad_norm_rel_err"]


def test_preset_rejects_unmatched_settings():
  with pytest.raises(ValueError):
    compare.Preset(loss_type="gpo")  # not a TRL 1.16 loss_type
  with pytest.raises(ValueError):
    compare.Preset(num_generations=1)


def test_semantic_comparisons_score_with_the_reward_users_train_with(monkeypatch):
  """`pbrl-compare --reward hybrid` scores with configs/reward_defaults.py (reward v2), only
  the kind changed: the dataclass once carried older defaults of its own (alpha 0.5, exact
  match, no format term) and the comparison silently used those."""
  import importlib
  from configs import reward_defaults
  from pbrl_jax.rewards import RewardSpec
  run_lib = importlib.import_module("pbrl_jax.compare.run")  # `compare.run` is the function
  seen = []
  monkeypatch.setattr(run_lib, "make_semantic_reward_func", seen.append)
  for kind in ("hybrid", "embedding"):
    run_lib.make_reward_func(kind)
    want = reward_defaults.get_config()
    want.kind = kind
    assert seen[-1] == RewardSpec.from_config(want)
  assert seen[0].alpha == 0.6 and seen[0].answer_precision == "graded"


def test_reward_callables_take_trl_arguments():
  plain = ["so 3 * 4 = 12. #### 12", "#### 11"]
  chat = [[{"role": "assistant", "content": c}] for c in plain]
  for completions in (plain, chat):
    got = compare.verifiable_reward_func(prompts=["q", "q"], completions=completions,
                                         answer=["12", "12"], lang=["en", "en"])
    assert got == [1.0, 0.0]
  from configs import reward_defaults
  from pbrl_jax.rewards import RewardSpec
  cfg = reward_defaults.get_config()
  cfg.kind = "verifiable"
  semantic = compare.make_semantic_reward_func(RewardSpec.from_config(cfg))
  assert semantic.__name__ == "semantic_verifiable"
  cols = compare.reward_columns(compare.select_prompts(1), 2)
  got = semantic(prompts=["q", "q"], completions=chat, **cols)
  assert got == [1.0, 0.0]


def test_tiny_model_round_trips_text(tmp_path):
  from pbrl_jax.models.tokenizer import load_hf_tokenizer
  d = compare.write_tiny_model(str(tmp_path / "tiny"))
  tok = load_hf_tokenizer(d)
  text = compare.PROMPTS[6].question  # Chinese: multi-byte UTF-8
  ids = tok(text)["input_ids"]
  assert len(ids) == len(text.encode()) and tok.decode(ids) == text
  assert not compare.uses_chat(tok)
  tokens, valid = compare.prompt_arrays(tok, compare.select_prompts(3), tok.pad_token_id)
  assert tokens.shape == valid.shape and np.all(valid[:, -1] == 1)


def test_cli_quick_flags_and_outputs(tmp_path):
  """The absl entry point in a subprocess (its flags stay out of this process): --quick
  builds the tiny model, explicit flags override the quick defaults, reports are written."""
  import subprocess
  import sys
  out = tmp_path / "cli"
  proc = subprocess.run(
      [sys.executable, "-m", "pbrl_jax.cli.compare_main", "--quick", f"--out={out}",
       "--steps=0", "--noparity", "--prompts=3", "--loss_type=dapo", "--beta=0.0",
       "--seed=5"], capture_output=True, text=True, timeout=600,
      env={**os.environ, "XLA_FLAGS": ""})
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(out / "results.json") as f:
    saved = json.load(f)
  assert saved["num_prompts"] == 3 and saved["steps"] == 0 and "parity" not in saved
  assert saved["preset"]["max_completion_length"] == 16  # the --quick default
  assert (saved["preset"]["loss_type"], saved["preset"]["beta"]) == ("dapo", 0.0)
  assert saved["preset"]["seed"] == 5
  assert os.path.isfile(out / "tiny_model" / "config.json")
  assert "| seed | `seed=5` |" in proc.stdout


def test_trl_loadable_dir_adds_missing_architecture(tmp_path):
  src = tmp_path / "src"
  src.mkdir()
  (src / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 7}))
  (src / "model.safetensors").write_bytes(b"weights")
  view = compare.trl_loadable_dir(str(src), str(tmp_path / "work"))
  assert view != str(src)
  with open(os.path.join(view, "config.json")) as f:
    config = json.load(f)
  assert config == {"model_type": "llama", "vocab_size": 7,
                    "architectures": ["LlamaForCausalLM"]}
  with open(os.path.join(view, "model.safetensors"), "rb") as f:
    assert f.read() == b"weights"
  assert compare.trl_loadable_dir(view, str(tmp_path / "work2")) == view  # already loadable
  (src / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
  with pytest.raises(ValueError, match="gpt2"):
    compare.trl_loadable_dir(str(src), str(tmp_path / "work3"))
