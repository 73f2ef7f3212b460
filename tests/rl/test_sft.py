"""SFT through the shared update step: the gradient equals PyTorch's cross-entropy gradient.

The trainer's SFT feeds reference completions to the RL update with unit advantages, and the
update takes its own log-probs as the old ones (ratio exactly 1, `UpdateHParams.ratio_to_self`:
no scoring forward) and reports the references' NLL. Checked here against transformers' own
`LlamaForCausalLM(labels=...)` loss (token mean over the labelled tokens) and its backward
pass on the same random weights: NLL and every parameter's gradient within 1e-4 relative
(fp32). Then `pbrl-train` with `configs/tiny.py:sft` runs end to end.
"""

import os

import jax
import numpy as np
import optax
import pytest
import torch

from pbrl_jax import rl
from pbrl_jax.models import sharding as shd
from pbrl_jax.models.hf import hf_state_dict, load_hf_params, read_hf_config
from pbrl_jax.rl import steps
from pbrl_jax.rl.spec import RLSpec

B, P, M = 4, 6, 9
RTOL = 1e-4


def _tiny_hf_model(out_dir):
  from transformers import LlamaConfig, LlamaForCausalLM
  torch.manual_seed(0)
  model = LlamaForCausalLM(LlamaConfig(
      vocab_size=61, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
      pad_token_id=0, bos_token_id=1, eos_token_id=2)).to(torch.float32)
  model.save_pretrained(out_dir, safe_serialization=True)
  return model


def _batch():
  rng = np.random.default_rng(3)
  tokens = rng.integers(3, 61, (B, P + M)).astype(np.int32)
  lengths = np.array([M, 5, 1, 7])  # reference lengths; right padding after them
  comp = (np.arange(M)[None] < lengths[:, None])
  tokens[:, P:][~comp] = 0
  valid = np.concatenate([np.ones((B, P), bool), comp], 1)
  return tokens, valid, comp


def test_sft_update_gradient_matches_torch_cross_entropy(tmp_path):
  model = _tiny_hf_model(str(tmp_path))
  config = read_hf_config(str(tmp_path), dtype="float32", param_dtype="float32")
  params = load_hf_params(str(tmp_path), config)
  tokens, valid, comp = _batch()

  # PyTorch: labels -100 on the prompt and the padding; loss = mean over labelled tokens.
  labels = np.where(valid, tokens, -100)
  labels[:, :P] = -100
  out = model(input_ids=torch.tensor(tokens, dtype=torch.long),
              attention_mask=torch.tensor(valid, dtype=torch.long),
              labels=torch.tensor(labels, dtype=torch.long))
  out.loss.backward()
  torch_grads = {n: p.grad.detach().numpy() for n, p in model.named_parameters()}

  # Ours: the RL update with the SFT section, SGD(1) so that old - new params = gradient.
  spec = RLSpec.from_config(_sft_section())
  hp = spec.update_hparams(temperature=1.0, max_completion_length=M)
  mesh = shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  opt = optax.sgd(1.0)
  with jax.set_mesh(mesh), shd.axis_rules():
    fns = rl.make_state_fns(config, opt, mesh, with_value_head=False)
    state = fns.from_params(jax.device_put(params, fns.policy_shardings),
                            jax.random.PRNGKey(0))
    before = jax.device_get(state.params["policy"])
    logp, _, _ = jax.jit(lambda p: steps.completion_outputs(
        p, config, tokens, valid, M, 1.0))(state.params)
    logp = np.asarray(logp) * comp
    nll = -logp.sum() / comp.sum()
    update = rl.make_update_fn(config, hp, opt, mesh, fns.shardings)
    # As the trainer feeds it: no reference log-probs (SFT has no KL term to read them), and
    # old log-probs of zero that the update does not read (it takes its own).
    assert not spec.uses_reference and hp.ratio_to_self
    batch = dict(tokens=tokens, valid=valid, completion_mask=comp.astype(np.int32),
                 old_logp=np.zeros_like(logp), advantages=comp.astype(np.float32))
    state, metrics = update(state, batch)
    after = jax.device_get(state.params["policy"])
  assert nll == pytest.approx(float(out.loss), rel=RTOL)
  assert float(metrics["nll"]) == pytest.approx(float(out.loss), rel=RTOL)  # the update's own
  assert float(metrics["ratio_mean"]) == pytest.approx(1.0, abs=1e-6)
  grads = dict(hf_state_dict(jax.tree.map(lambda a, b: a - b, before, after), config))
  assert set(grads) == set(torch_grads)
  scale = max(np.abs(g).max() for g in torch_grads.values())
  for name, want in torch_grads.items():
    np.testing.assert_allclose(grads[name], want, rtol=RTOL, atol=RTOL * scale, err_msg=name)


def _sft_section():
  from configs import rl_defaults
  return rl_defaults.sft()


@pytest.mark.slow
def test_tiny_sft_run(tmp_path):
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "train"))
  import train_testlib as tl  # pylint: disable=import-outside-toplevel
  from pbrl_jax import metrics as metrics_lib  # pylint: disable=import-outside-toplevel
  workdir = str(tmp_path / "sft")
  tl.build_tiny_pivot(workdir)
  proc = subprocess.run(
      [sys.executable, "-m", "pbrl_jax.cli.train_main", f"--config={tl.TINY}:sft",
       f"--workdir={workdir}", "--config.total_steps=3"],
      env=tl.cli_env(), capture_output=True, text=True, timeout=900, cwd=tl.REPO)
  assert proc.returncode == 0, proc.stderr[-4000:]
  rows = metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  assert [r["step"] for r in rows] == [1, 2, 3]
  for r in rows:
    assert np.isfinite(r["sft/nll"]) and r["loss"] == r["sft/nll"]
    assert "reward_mean" not in r  # nothing is sampled or scored
  # lr 1e-3 on a random model fed English references: the NLL falls within three steps.
  assert rows[-1]["sft/nll"] < rows[0]["sft/nll"]
  # No reference forward is run (no KL term reads it), so no KL is claimed.
  assert not any("kl" in r for r in rows)
